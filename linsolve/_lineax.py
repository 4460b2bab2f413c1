"""Operators across the lineax border, both ways.

- `from_lineax`: any `lineax.AbstractLinearOperator` becomes a linsolve operator. Kinds
  with a linsolve counterpart are converted (so that solvers see their structure: a
  lineax matrix is a dense `MatrixOperator`, a tridiagonal one a `SparseOperator`, sums
  and products stay sums and products); matrix-free kinds (function, Jacobian, user
  subclasses) are wrapped in `LineaxOperator` and applied through their own `mv`.
  Operators on PyTrees of arrays are seen on the flattened vector (lineax's
  `as_matrix` order).
- `to_lineax`: any linsolve operator becomes a `lineax.AbstractLinearOperator`
  (`LinsolveLinearOperator`) whose `mv` and `as_matrix` are linsolve's, so lineax sees
  the structure convention, and whose lineax tags are the ones linsolve's tags imply.

`from_lineax(to_lineax(op)) is op` and `to_lineax(from_lineax(op)) is op` for a wrapped
`op`: a round trip loses nothing (a `SparseOperator` handed to lineax and back into a
linsolve solver is still sparse).
"""

import functools as ft
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, PyTree

from ._dtype import check_supported
from ._operator import (
    AbstractOperator,
    AddOperator,
    ComposedOperator,
    DiagonalOperator,
    FunctionOperator,
    IdentityOperator,
    MatrixOperator,
    ScaledOperator,
    as_operator,
    is_complex,
    is_matrix_free,
    with_tags,
)
from ._sparse.operator import SparseOperator
from ._tags import (
    FROM_LINEAX,
    TO_LINEAX,
    diagonal_tag,
    hermitian_tag,
    implied_tags,
    lower_triangular_tag,
    upper_triangular_tag,
)


_LINEAX_CHECKS = (
    (lx.is_symmetric, lx.symmetric_tag),
    (lx.is_positive_semidefinite, lx.positive_semidefinite_tag),
    (lx.is_negative_semidefinite, lx.negative_semidefinite_tag),
    (lx.is_lower_triangular, lx.lower_triangular_tag),
    (lx.is_upper_triangular, lx.upper_triangular_tag),
    (lx.is_diagonal, lx.diagonal_tag),
    (lx.has_unit_diagonal, lx.unit_diagonal_tag),
)


def is_lineax_operator(op: Any) -> bool:
    return isinstance(op, lx.AbstractLinearOperator)


# -- PyTree structures <-> flat vectors ---------------------------------------------------


def flat_structure(structure: PyTree[jax.ShapeDtypeStruct], what: str) -> tuple[int, Any]:
    """`(size, dtype)` of the flat vector a lineax structure is seen as. Every leaf must
    share one dtype (a flat vector has one)."""
    leaves = jax.tree_util.tree_leaves(structure)
    if not leaves or not all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves):
        raise ValueError(
            f"linsolve cannot use a lineax operator with {what} structure {structure}."
        )
    dtypes = {jnp.dtype(leaf.dtype) for leaf in leaves}
    if len(dtypes) != 1:
        raise ValueError(
            f"linsolve needs one dtype across a lineax operator's {what} structure; got "
            f"{sorted(map(str, dtypes))}."
        )
    return sum(math.prod(leaf.shape) for leaf in leaves), dtypes.pop()


def ravel(tree: PyTree[Array]) -> Array:
    """The flat vector of a PyTree of arrays (leaf order, row-major, as lineax's
    `as_matrix`)."""
    leaves = jax.tree_util.tree_leaves(tree)
    if len(leaves) == 1:
        return jnp.reshape(leaves[0], -1)
    return jnp.concatenate([jnp.reshape(leaf, -1) for leaf in leaves])


def unravel(vector: Array, structure: PyTree[jax.ShapeDtypeStruct]) -> PyTree[Array]:
    """Inverse of `ravel` for the given structure."""
    leaves, treedef = jax.tree_util.tree_flatten(structure)
    if len(leaves) == 1 and vector.shape == leaves[0].shape:
        return jax.tree_util.tree_unflatten(treedef, [vector])
    splits = np.cumsum([math.prod(leaf.shape) for leaf in leaves])[:-1]
    parts = jnp.split(vector, splits)
    return jax.tree_util.tree_unflatten(
        treedef, [p.reshape(leaf.shape) for p, leaf in zip(parts, leaves)]
    )


# -- lineax in -----------------------------------------------------------------------------


def _lineax_tags(op: lx.AbstractLinearOperator) -> frozenset:
    """lineax's tags of `op`: its structure predicates plus any `tags` attribute. A user
    subclass that registers no predicate counts as untagged for it."""
    found: set[object] = set(getattr(op, "tags", ()))
    for check, tag in _LINEAX_CHECKS:
        try:
            if check(op):
                found.add(tag)
        except NotImplementedError:
            pass
    return frozenset(found)


def _linsolve_tags(op: lx.AbstractLinearOperator) -> frozenset:
    tags = frozenset(FROM_LINEAX[t] for t in _lineax_tags(op) if t in FROM_LINEAX)
    if lower_triangular_tag in tags and upper_triangular_tag in tags:
        # lineax calls every diagonal operator triangular both ways; so does linsolve.
        tags = tags | {diagonal_tag}
    return tags


class LineaxOperator(AbstractOperator):
    """A lineax operator seen through linsolve's interface: `mv` is the lineax operator's
    own (on the flattened vector), `as_matrix` is lineax's, and lineax's tags are mapped
    to linsolve's. Used for matrix-free lineax operators (function, Jacobian, user
    subclasses); see [`linsolve.from_lineax`][]."""

    operator: lx.AbstractLinearOperator

    def __check_init__(self):
        flat_structure(self.operator.in_structure(), "input")
        flat_structure(self.operator.out_structure(), "output")
        check_supported(self.dtype, "the lineax operator")

    def _mv(self, x):
        return ravel(self.operator.mv(unravel(x, self.operator.in_structure())))

    def as_matrix(self):
        return self.operator.as_matrix()

    def transpose(self):
        return LineaxOperator(self.operator.T)

    @property
    def shape(self):
        return (self.operator.out_size(), self.operator.in_size())

    @property
    def dtype(self):
        return jnp.result_type(
            flat_structure(self.operator.in_structure(), "input")[1],
            flat_structure(self.operator.out_structure(), "output")[1],
        )

    @property
    def tags(self):
        return _linsolve_tags(self.operator)


def _tridiagonal(op: lx.TridiagonalLinearOperator):
    """A lineax tridiagonal operator as a CSC `SparseOperator` (static pattern; the
    values gather the three diagonals, so gradients flow back to them)."""
    n = op.diagonal.shape[0]
    # Column j holds rows j-1 (upper[j-1]), j (diagonal[j]), j+1 (lower[j]); the
    # sources index into concatenate([diagonal, lower, upper]).
    rows, sources = [], []
    for j in range(n):
        if j > 0:
            rows.append(j - 1)
            sources.append(2 * n - 1 + j - 1)
        rows.append(j)
        sources.append(j)
        if j < n - 1:
            rows.append(j + 1)
            sources.append(n + j)
    counts = np.full(n, 3) - (np.arange(n) == 0) - (np.arange(n) == n - 1)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    stacked = jnp.concatenate([op.diagonal, op.lower_diagonal, op.upper_diagonal])
    return SparseOperator(stacked[np.asarray(sources)], np.asarray(rows), indptr, (n, n))


def _retag(inner: AbstractOperator, tags: frozenset, op: lx.AbstractLinearOperator):
    """`inner` (converted from a lineax operator) with extra linsolve `tags` from a lineax
    `TaggedLinearOperator` `op`. Stored-array kinds keep their kind (and so read the
    entries the tags say, as everywhere in linsolve); other non-matrix-free kinds are
    materialised; matrix-free ones stay lineax-applied."""
    retagged = with_tags(inner, tags)
    if retagged is not None:
        return retagged
    if not is_matrix_free(inner):
        return MatrixOperator(inner.as_matrix(), inner.tags | tags)
    return LineaxOperator(op)


def _is_flat(op: lx.AbstractLinearOperator) -> bool:
    return all(
        isinstance(s, jax.ShapeDtypeStruct) and len(s.shape) == 1
        for s in (op.in_structure(), op.out_structure())
    )


def from_lineax(operator: lx.AbstractLinearOperator) -> AbstractOperator:
    """A lineax operator as a linsolve operator. Every linsolve function calls this on
    lineax input, so there is rarely a need to call it directly.

    | lineax | linsolve |
    | --- | --- |
    | `MatrixLinearOperator(A, tags)` | `MatrixOperator(A, tags)` |
    | `PyTreeLinearOperator` | `MatrixOperator(op.as_matrix(), tags)` |
    | `DiagonalLinearOperator(d)` (one 1-D array) | `DiagonalOperator(d)` |
    | `IdentityLinearOperator` (square, one structure) | `IdentityOperator` |
    | `TridiagonalLinearOperator` | `SparseOperator` (CSC, 3n − 2 entries) |
    | `TaggedLinearOperator(inner, tags)` | `inner` converted, with `tags` added |
    | `A + B`, `c * A`, `A / c`, `-A`, `A @ B` | the same expression of converted parts |
    | `linsolve.to_lineax(op)` | `op` itself |
    | function, Jacobian, anything else | [`linsolve.LineaxOperator`][] (its own `mv`) |

    lineax tags become linsolve tags (`symmetric_tag`, `positive_semidefinite_tag`, …).
    A tagged stored matrix then follows linsolve's structure convention: a symmetric or
    semidefinite one is read by its lower triangle, a triangular one by its triangle.
    Operators on PyTrees are seen on the flattened vector (the order of lineax's
    `as_matrix`); all leaves must share one dtype.

    **Arguments:**

    - `operator`: any `lineax.AbstractLinearOperator`.

    **Returns:**

    A [`linsolve.AbstractOperator`][] applying the same matrix.
    """
    op = operator
    if isinstance(op, LinsolveLinearOperator):
        return op.operator
    if not is_lineax_operator(op):
        raise TypeError(f"from_lineax needs a lineax operator, got {type(op).__name__}.")
    flat_structure(op.in_structure(), "input")
    flat_structure(op.out_structure(), "output")
    if isinstance(op, lx.TaggedLinearOperator):
        return _retag(from_lineax(op.operator), _linsolve_tags(op), op)
    if isinstance(op, (lx.AddLinearOperator, lx.ComposedLinearOperator)):
        a, b = from_lineax(op.operator1), from_lineax(op.operator2)
        return AddOperator(a, b) if isinstance(op, lx.AddLinearOperator) else ComposedOperator(a, b)
    if isinstance(op, lx.MulLinearOperator):
        return ScaledOperator(op.scalar, from_lineax(op.operator))
    if isinstance(op, lx.DivLinearOperator):
        return ScaledOperator(1 / op.scalar, from_lineax(op.operator))
    if isinstance(op, lx.NegLinearOperator):
        return -from_lineax(op.operator)
    if isinstance(op, lx.MatrixLinearOperator):
        return MatrixOperator(op.matrix, _linsolve_tags(op))
    if isinstance(op, lx.PyTreeLinearOperator):
        return MatrixOperator(op.as_matrix(), _linsolve_tags(op))
    if isinstance(op, lx.TridiagonalLinearOperator):
        return _tridiagonal(op)
    if _is_flat(op) and isinstance(op, lx.DiagonalLinearOperator):
        return DiagonalOperator(op.diagonal)
    if isinstance(op, lx.IdentityLinearOperator) and op.in_structure() == op.out_structure():
        n, dtype = flat_structure(op.in_structure(), "input")
        return IdentityOperator(n, dtype)
    return LineaxOperator(op)


# -- lineax out ----------------------------------------------------------------------------


def lineax_tags(operator: AbstractOperator) -> frozenset:
    """The lineax tags that `operator`'s linsolve tags imply. For a real dtype hermitian
    means symmetric; a complex hermitian operator that is not semidefinite has no lineax
    tag (lineax has no hermitian tag)."""
    tags = implied_tags(operator.tags, is_complex(operator.dtype))
    out = {TO_LINEAX[t] for t in tags if t in TO_LINEAX}
    if not is_complex(operator.dtype) and hermitian_tag in tags:
        out.add(lx.symmetric_tag)
    return frozenset(out)


class LinsolveLinearOperator(lx.AbstractLinearOperator):
    """A linsolve operator as a `lineax.AbstractLinearOperator` on 1-D vectors: `mv`,
    `as_matrix` and `transpose` are linsolve's (so the structure convention holds, and a
    `SparseOperator` applies its sparse product; `as_matrix` densifies it), and `tags`
    are the lineax tags linsolve's tags imply. Make one with [`linsolve.to_lineax`][]."""

    operator: AbstractOperator

    def mv(self, vector):
        return self.operator.mv(vector)

    def as_matrix(self):
        return self.operator.as_matrix()

    def transpose(self):
        return LinsolveLinearOperator(self.operator.T)

    def in_structure(self):
        return jax.ShapeDtypeStruct((self.operator.shape[1],), self.operator.dtype)

    def out_structure(self):
        return jax.ShapeDtypeStruct((self.operator.shape[0],), self.operator.dtype)

    @property
    def tags(self) -> frozenset:
        return lineax_tags(self.operator)


def to_lineax(operator: Any) -> lx.AbstractLinearOperator:
    """Hand a linsolve operator to lineax (or optimistix).

    The result is a `lineax.AbstractLinearOperator` on 1-D vectors whose `mv`,
    `as_matrix` and `transpose` are the linsolve operator's: lineax's own solvers and
    [`linsolve.as_lineax_solver`][] see exactly the matrix linsolve defines (a tagged dense
    matrix read by its lower triangle; a `SparseOperator` applied by its sparse product,
    densified only by `as_matrix`), and differentiating through it gives linsolve's
    gradients (unread entries get zero). Its lineax tags (`lineax.is_symmetric`,
    `is_positive_semidefinite`, `is_diagonal`, the triangular and unit-diagonal ones) are
    those linsolve's tags imply; lineax has no hermitian tag, so a complex hermitian
    operator that is not semidefinite carries none.

    A lineax operator is returned unchanged, and one that came from lineax through
    [`linsolve.from_lineax`][] is unwrapped: `from_lineax(to_lineax(op)) is op`.

    **Arguments:**

    - `operator`: a linsolve operator (any kind), or a lineax operator.

    **Returns:**

    A `lineax.AbstractLinearOperator`.
    """
    if is_lineax_operator(operator):
        return operator
    if not isinstance(operator, AbstractOperator):
        raise TypeError(
            f"to_lineax needs a linsolve operator, got {type(operator).__name__}. Wrap "
            "arrays with `linsolve.MatrixOperator(matrix, tags)`."
        )
    if isinstance(operator, LineaxOperator):
        return operator.operator
    return LinsolveLinearOperator(operator)


# lineax's structure queries are single-dispatch functions; these registrations let
# lineax's own solvers and optimistix query and transform a `LinsolveLinearOperator`.


def _register(fn, impl):
    fn.register(LinsolveLinearOperator)(impl)


for _check, _tag in _LINEAX_CHECKS:
    if _check is not lx.is_symmetric:
        _register(_check, lambda op, _tag=_tag: _tag in op.tags)
_register(
    lx.is_symmetric,
    # A diagonal operator is symmetric, as lineax's own checks say.
    lambda op: bool(op.tags & {lx.symmetric_tag, lx.diagonal_tag}),
)
_register(lx.is_tridiagonal, lambda op: lx.diagonal_tag in op.tags)
_register(lx.linearise, lambda op: op)
_register(lx.diagonal, lambda op: op.operator.diag())


@lx.materialise.register(LinsolveLinearOperator)
def _materialise(op):
    if lx.diagonal_tag in op.tags:
        return lx.DiagonalLinearOperator(op.operator.diag())
    return lx.MatrixLinearOperator(op.as_matrix(), op.tags)


@lx.tridiagonal.register(LinsolveLinearOperator)
def _tridiagonal_of(op):
    matrix = op.as_matrix()
    return jnp.diagonal(matrix), jnp.diagonal(matrix, -1), jnp.diagonal(matrix, 1)


@lx.conj.register(LinsolveLinearOperator)
def _conj(op):
    inner = op.operator
    if not is_complex(inner.dtype):
        return op
    if not is_matrix_free(inner):
        # Every stored-array operator is real-polynomial in its arrays (the hermitian
        # completion included), so conjugating the arrays conjugates the matrix.
        return LinsolveLinearOperator(
            jax.tree_util.tree_map(lambda x: jnp.conj(x) if eqx.is_inexact_array(x) else x, inner)
        )
    x = jax.ShapeDtypeStruct((inner.shape[1],), inner.dtype)
    conj_mv = ft.partial(lambda o, v: jnp.conj(o.mv(jnp.conj(v))), inner)
    return LinsolveLinearOperator(FunctionOperator(conj_mv, x, inner.tags))


# linsolve's own queries (see `_operator.py`) for the kinds defined here.
as_operator.register(lx.AbstractLinearOperator)(lambda op: from_lineax(op))
is_matrix_free.register(LineaxOperator)(lambda operator: True)
