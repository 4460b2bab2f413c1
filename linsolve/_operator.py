"""Linear operators: tagged equinox Modules (pytrees) with `mv`, `as_matrix` and `.T`.

Vectors are 1-D arrays of length `shape[1]` (input) and `shape[0]` (output); `mv` also
accepts an (n, k) block of vectors. Every dense read of a tagged array follows the
structure convention of `_structure.py`.
"""

import abc
import functools
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Inexact, Shaped

from ._dtype import as_supported, check_supported
from ._structure import effective_matrix, lower_read, read_diagonal, structured_matvec
from ._tags import (
    add_tags,
    as_tags,
    diagonal_tag,
    hermitian_tag,
    implied_tags,
    is_hermitian,
    is_self_adjoint,
    lower_triangular_tag,
    matmul_tags,
    positive_semidefinite_tag,
    scale_tags,
    symmetric_tag,
    transpose_tags,
    unit_diagonal_tag,
    upper_triangular_tag,
)


def is_complex(dtype) -> bool:
    """Whether `dtype` is a complex floating dtype."""
    return jnp.issubdtype(dtype, jnp.complexfloating)


class AbstractOperator(eqx.Module):
    """A linear operator `x ↦ A x` from vectors of length `shape[1]` to length `shape[0]`.

    Subclasses implement `_mv` (one vector), `as_matrix`, `transpose`, `shape`, `dtype`
    and `tags`. Operators compose with `+`, `-`, `@`, scalar `*` and unary `-`; `.T` is the
    (plain, non-conjugate) transpose.
    """

    @abc.abstractmethod
    def _mv(self, x: Array) -> Array:
        """Apply the operator to one vector of shape `(shape[1],)`."""

    @abc.abstractmethod
    def as_matrix(self) -> Inexact[Array, "m n"]:
        """The dense `(m, n)` matrix this operator applies (structure convention applied)."""

    @abc.abstractmethod
    def transpose(self) -> "AbstractOperator":
        """The operator `A.T` (plain transpose; no conjugation)."""

    @property
    @abc.abstractmethod
    def shape(self) -> tuple[int, int]:
        """`(m, n)`: output and input length."""

    @property
    @abc.abstractmethod
    def dtype(self) -> Any:
        """The dtype of the operator's entries."""

    @property
    @abc.abstractmethod
    def tags(self) -> frozenset:
        """The frozenset of tags (see `linsolve.symmetric_tag` and friends)."""

    def mv(self, x: Shaped[ArrayLike, " n"] | Shaped[ArrayLike, "n k"]) -> Array:
        """Apply the operator to a vector `x` of shape `(n,)` or a block `(n, k)`.

        **Arguments:**

        - `x`: the vector(s); `n = shape[1]`.

        **Returns:**

        `A x`, of shape `(m,)` or `(m, k)`.
        """
        x = jnp.asarray(x)
        n = self.shape[1]
        if x.ndim not in (1, 2) or x.shape[0] != n:
            raise ValueError(
                f"Operator of shape {self.shape} cannot be applied to an array of shape "
                f"{x.shape}: expected ({n},) or ({n}, k)."
            )
        if x.ndim == 2:
            return self._mm(x)
        return self._mv(x)

    def _mm(self, x: Array) -> Array:
        # Default block product: one `_mv` per column. Dense operators override it.
        return jax.vmap(self._mv, in_axes=1, out_axes=1)(x)

    def rmv(self, y: Array) -> Array:
        """`A.T y` (plain transpose). Defaults to transposing `mv` with JAX."""
        return self.transpose().mv(y)

    def diag(self) -> Array:
        """The diagonal of the matrix this operator applies (structure convention applied)."""
        return jnp.diagonal(self.as_matrix())

    @property
    def T(self) -> "AbstractOperator":
        """The transpose, `A.T`."""
        return self.transpose()

    # Composition -----------------------------------------------------------------

    def __add__(self, other):
        other = as_operator(other)
        return AddOperator(self, other)

    def __radd__(self, other):
        return as_operator(other).__add__(self)

    def __sub__(self, other):
        return AddOperator(self, -as_operator(other))

    def __rsub__(self, other):
        return as_operator(other).__sub__(self)

    def __neg__(self):
        return ScaledOperator(-1.0, self)

    def __mul__(self, scalar):
        if isinstance(scalar, (AbstractOperator,)) or jnp.ndim(scalar) != 0:
            return NotImplemented
        return ScaledOperator(scalar, self)

    __rmul__ = __mul__

    def __truediv__(self, scalar):
        if isinstance(scalar, AbstractOperator) or jnp.ndim(scalar) != 0:
            return NotImplemented
        return ScaledOperator(1 / scalar, self)

    def __matmul__(self, other):
        if isinstance(other, (jax.Array, np.ndarray)):
            return self.mv(other)
        return ComposedOperator(self, as_operator(other))

    def __rmatmul__(self, other):
        return ComposedOperator(as_operator(other), self)

    def __repr__(self) -> str:
        # Equinox's default repr shows private internals (frozensets, closure converters);
        # what a user needs is the kind, the shape, the dtype and the promises.
        return (
            f"{type(self).__name__}(shape={self.shape}, dtype={jnp.dtype(self.dtype).name}, "
            f"tags={tag_summary(self.tags)})"
        )


def tag_summary(tags: frozenset) -> str:
    """`{positive_semidefinite, symmetric}`: tag names without the `_tag` suffix."""
    return "{" + ", ".join(sorted(t.name.removesuffix("_tag") for t in tags)) + "}"


def _wrap_hint(op: Any) -> str:
    """How to make an operator of `op`, by what `op` is."""
    import scipy.sparse as sp

    if sp.issparse(op):
        return "Wrap a scipy.sparse matrix with `linsolve.SparseOperator.from_scipy(matrix, tags)`."
    if type(op).__module__.startswith("jax.experimental.sparse"):
        return "Wrap a jax.experimental.sparse matrix with `linsolve.SparseOperator.from_bcoo(matrix, tags)`."
    if callable(op) and not hasattr(op, "__array__"):
        return (
            "Wrap a linear function with `linsolve.FunctionOperator(fn, x_example, tags)` "
            "(`x_example`: an input of the right shape and dtype)."
        )
    return "Wrap arrays with `linsolve.MatrixOperator(matrix, tags)`."


def check_square_for(tags: frozenset, shape) -> None:
    """Raise if `tags` hold a structural promise (symmetry, triangles, diagonal: all about
    square matrices) for a non-square `shape`."""
    if tags and shape[0] != shape[1]:
        raise ValueError(
            f"Tags {sorted(map(repr, tags))} need a square operator, got shape {shape}."
        )


class MatrixOperator(AbstractOperator):
    """A dense matrix, read under the structure convention of its tags.

    A symmetric / hermitian / semidefinite operator is defined by its lower triangle; a
    triangular one by its triangle; a unit-diagonal one without its diagonal. Entries
    that are not read get exactly zero gradient.

    **Arguments:**

    - `matrix`: a 2-D array `(m, n)`.
    - `tags`: one tag or an iterable of tags. A tag is a linsolve tag object
      (`linsolve.symmetric_tag`, ...), its name as a string (`"symmetric"`,
      `"positive_semidefinite"`, with or without the `_tag` suffix), or lineax's tag object
      (`lineax.symmetric_tag`, ...), translated. The same holds for every operator's `tags`.
    """

    matrix: Inexact[Array, "m n"]
    _tags: frozenset = eqx.field(static=True)

    def __init__(self, matrix: ArrayLike, tags: Any = ()):
        matrix = jnp.asarray(matrix)
        if matrix.ndim != 2:
            raise ValueError(f"MatrixOperator needs a 2-D matrix, got shape {matrix.shape}.")
        matrix = as_supported(matrix, "the matrix of a MatrixOperator")
        tags = as_tags(tags)
        check_square_for(tags, matrix.shape)
        self.matrix = matrix
        self._tags = tags

    def _effective(self):
        return effective_matrix(self.matrix, self._tags)

    def _mv(self, x):
        return structured_matvec(self.matrix, x, self._tags)

    def _mm(self, x):
        return structured_matvec(self.matrix, x, self._tags)

    def rmv(self, y):
        return self._effective().T @ y

    def as_matrix(self):
        return self._effective()

    def transpose(self):
        if is_self_adjoint(self._tags) or diagonal_tag in self._tags:
            if is_hermitian(self._tags, is_complex(self.dtype)):
                # The transpose of a hermitian matrix is its conjugate, still defined by
                # the (conjugated) lower triangle.
                return MatrixOperator(jnp.conj(self.matrix), self._tags)
            return self
        return TransposedOperator(self)

    @property
    def shape(self):
        return tuple(self.matrix.shape)

    @property
    def dtype(self):
        return self.matrix.dtype

    @property
    def tags(self):
        return self._tags


class DiagonalOperator(AbstractOperator):
    """The diagonal matrix `diag(diagonal)`.

    **Arguments:**

    - `diagonal`: a 1-D array.
    - `tags`: extra tags, e.g. `positive_semidefinite_tag` (it is always tagged diagonal
      and symmetric; for real dtypes also hermitian).
    """

    diagonal: Inexact[Array, " n"]
    _tags: frozenset = eqx.field(static=True)

    def __init__(self, diagonal: ArrayLike, tags: Any = ()):
        diagonal = jnp.asarray(diagonal)
        if diagonal.ndim != 1:
            raise ValueError(f"DiagonalOperator needs a 1-D diagonal, got shape {diagonal.shape}.")
        diagonal = as_supported(diagonal, "the diagonal of a DiagonalOperator")
        extra = {diagonal_tag, symmetric_tag, lower_triangular_tag, upper_triangular_tag}
        if not is_complex(diagonal.dtype):
            extra.add(hermitian_tag)
        self.diagonal = diagonal
        self._tags = as_tags(tags) | extra

    def _values(self):
        return read_diagonal(self.diagonal, self._tags)

    def _mv(self, x):
        return self._values() * x

    def _mm(self, x):
        return self._values()[:, None] * x

    def rmv(self, y):
        return self.mv(y)

    def as_matrix(self):
        return jnp.diag(self._values())

    def diag(self):
        return self._values()

    def transpose(self):
        return self

    @property
    def shape(self):
        n = self.diagonal.shape[0]
        return (n, n)

    @property
    def dtype(self):
        return self.diagonal.dtype

    @property
    def tags(self):
        return self._tags


class IdentityOperator(AbstractOperator):
    """The `n × n` identity.

    **Arguments:**

    - `n`: the size.
    - `dtype`: the dtype (default: JAX's default float).
    """

    n: int = eqx.field(static=True)
    _dtype: Any = eqx.field(static=True)

    def __init__(self, n: int, dtype: Any = None):
        self.n = int(n)
        self._dtype = jnp.dtype(jnp.result_type(float) if dtype is None else dtype)
        check_supported(self._dtype, "an IdentityOperator")

    def _mv(self, x):
        return x

    def _mm(self, x):
        return x

    def rmv(self, y):
        return y

    def as_matrix(self):
        return jnp.eye(self.n, dtype=self._dtype)

    def diag(self):
        return jnp.ones(self.n, self._dtype)

    def transpose(self):
        return self

    @property
    def shape(self):
        return (self.n, self.n)

    @property
    def dtype(self):
        return self._dtype

    @property
    def tags(self):
        return frozenset(
            {
                symmetric_tag,
                hermitian_tag,
                positive_semidefinite_tag,
                diagonal_tag,
                unit_diagonal_tag,
                lower_triangular_tag,
                upper_triangular_tag,
            }
        )


class FunctionOperator(AbstractOperator):
    """A matrix-free operator from a function linear in its argument.

    Closed-over JAX arrays (including tracers) become leaves of the operator through
    `equinox.filter_closure_convert`, so gradients flow to them and the operator can be
    passed across `jit`/`vmap` boundaries.

    **Arguments:**

    - `fn`: a linear function of one array argument shaped like `x_example`.
    - `x_example`: an array (or `jax.ShapeDtypeStruct`) with the input's shape and dtype;
      inputs and outputs of any shape are flattened to vectors.
    - `tags`: promises about `fn` (e.g. `positive_semidefinite_tag` selects CG / Cholesky).
    """

    fn: Any
    in_shape: tuple = eqx.field(static=True)
    out_shape: tuple = eqx.field(static=True)
    _dtype: Any = eqx.field(static=True)
    _tags: frozenset = eqx.field(static=True)

    def __init__(self, fn, x_example, tags: Any = ()):
        example = jax.ShapeDtypeStruct(jnp.shape(x_example), jnp.result_type(x_example))
        self.fn = eqx.filter_closure_convert(fn, example)
        out = jax.eval_shape(self.fn, example)
        if not isinstance(out, jax.ShapeDtypeStruct):
            raise TypeError("FunctionOperator's `fn` must return a single array.")
        self.in_shape = tuple(example.shape)
        self.out_shape = tuple(out.shape)
        self._dtype = jnp.result_type(example.dtype, out.dtype)
        check_supported(self._dtype, "a FunctionOperator (its input or output)")
        tags = as_tags(tags)
        check_square_for(tags, self.shape)
        self._tags = tags

    def _mv(self, x):
        return self.fn(x.reshape(self.in_shape)).reshape(-1)

    def rmv(self, y):
        example = jax.ShapeDtypeStruct((self.shape[1],), self._dtype)
        (out,) = jax.linear_transpose(self._mv, example)(y)
        return out

    def as_matrix(self):
        eye = jnp.eye(self.shape[1], dtype=self._dtype)
        return jax.vmap(self._mv, in_axes=1, out_axes=1)(eye)

    def transpose(self):
        if is_self_adjoint(self._tags) and not is_hermitian(self._tags, is_complex(self._dtype)):
            return self
        return TransposedOperator(self)

    @property
    def shape(self):
        return (int(np.prod(self.out_shape)), int(np.prod(self.in_shape)))

    @property
    def dtype(self):
        return self._dtype

    @property
    def tags(self):
        return self._tags


class TransposedOperator(AbstractOperator):
    """`A.T` of an operator without a cheaper transposed representation."""

    operator: AbstractOperator

    def _mv(self, x):
        return self.operator.rmv(x)

    def _mm(self, x):
        return jax.vmap(self.operator.rmv, in_axes=1, out_axes=1)(x)

    def rmv(self, y):
        return self.operator.mv(y)

    def as_matrix(self):
        return self.operator.as_matrix().T

    def transpose(self):
        return self.operator

    @property
    def shape(self):
        m, n = self.operator.shape
        return (n, m)

    @property
    def dtype(self):
        return self.operator.dtype

    @property
    def tags(self):
        return transpose_tags(self.operator.tags)


def _check_same_shape(a, b, what):
    if a.shape != b.shape:
        raise ValueError(f"Cannot {what} operators of shapes {a.shape} and {b.shape}.")


class AddOperator(AbstractOperator):
    """`A + B`."""

    operator1: AbstractOperator
    operator2: AbstractOperator

    def __check_init__(self):
        _check_same_shape(self.operator1, self.operator2, "add")

    def _mv(self, x):
        return self.operator1.mv(x) + self.operator2.mv(x)

    def _mm(self, x):
        return self.operator1.mv(x) + self.operator2.mv(x)

    def rmv(self, y):
        return self.operator1.rmv(y) + self.operator2.rmv(y)

    def as_matrix(self):
        return self.operator1.as_matrix() + self.operator2.as_matrix()

    def transpose(self):
        return AddOperator(self.operator1.T, self.operator2.T)

    @property
    def shape(self):
        return self.operator1.shape

    @property
    def dtype(self):
        return jnp.result_type(self.operator1.dtype, self.operator2.dtype)

    @property
    def tags(self):
        c = is_complex(self.dtype)
        return add_tags(implied_tags(self.operator1.tags, c), implied_tags(self.operator2.tags, c))


class ScaledOperator(AbstractOperator):
    """`c * A` for a scalar `c` (a Python number or a 0-d array, differentiable)."""

    scalar: Array
    operator: AbstractOperator
    _tags: frozenset = eqx.field(static=True)

    def __init__(self, scalar, operator: AbstractOperator):
        self._tags = scale_tags(implied_tags(operator.tags, is_complex(operator.dtype)), scalar)
        if isinstance(scalar, (int, float, complex)):
            # Python scalars are weakly typed: they do not promote the operator's dtype.
            scalar = jnp.asarray(scalar, dtype=jnp.result_type(operator.dtype, scalar))
        self.scalar = jnp.asarray(scalar)
        self.operator = operator

    def _mv(self, x):
        return self.scalar * self.operator.mv(x)

    def _mm(self, x):
        return self.scalar * self.operator.mv(x)

    def rmv(self, y):
        return self.scalar * self.operator.rmv(y)

    def as_matrix(self):
        return self.scalar * self.operator.as_matrix()

    def transpose(self):
        return ScaledOperator(self.scalar, self.operator.T)

    @property
    def shape(self):
        return self.operator.shape

    @property
    def dtype(self):
        return jnp.result_type(self.scalar.dtype, self.operator.dtype)

    @property
    def tags(self):
        return self._tags


class ComposedOperator(AbstractOperator):
    """`A @ B`. `A.T @ A` and `A @ A.T` of a real operator are tagged positive
    semidefinite (complex: symmetric), since the factors are seen to match.

    That the factors match is seen once, when the product is formed (one operator object
    on both sides), and recorded as static metadata, so the tags survive flattening,
    `jit`, `vmap` and `eqx.partition`/`combine` (which make a new object of each leaf).
    """

    operator1: AbstractOperator
    operator2: AbstractOperator
    _gram: bool = eqx.field(static=True)

    def __init__(self, operator1: AbstractOperator, operator2: AbstractOperator):
        self.operator1 = operator1
        self.operator2 = operator2
        a, b = operator1, operator2
        self._gram = (isinstance(a, TransposedOperator) and a.operator is b) or (
            isinstance(b, TransposedOperator) and b.operator is a
        )

    def __check_init__(self):
        if self.operator1.shape[1] != self.operator2.shape[0]:
            raise ValueError(
                f"Cannot compose operators of shapes {self.operator1.shape} @ {self.operator2.shape}."
            )

    def _mv(self, x):
        return self.operator1.mv(self.operator2.mv(x))

    def _mm(self, x):
        return self.operator1.mv(self.operator2.mv(x))

    def rmv(self, y):
        return self.operator2.rmv(self.operator1.rmv(y))

    def as_matrix(self):
        return self.operator1.as_matrix() @ self.operator2.as_matrix()

    def transpose(self):
        if self._gram:
            return self
        return ComposedOperator(self.operator2.T, self.operator1.T)

    @property
    def shape(self):
        return (self.operator1.shape[0], self.operator2.shape[1])

    @property
    def dtype(self):
        return jnp.result_type(self.operator1.dtype, self.operator2.dtype)

    @property
    def tags(self):
        if self._gram:
            if is_complex(self.dtype):
                return frozenset({symmetric_tag})
            return frozenset({symmetric_tag, hermitian_tag, positive_semidefinite_tag})
        return matmul_tags(self.operator1.tags, self.operator2.tags)


# Operations on AbstractOperators ----------------------------------------------------------
# What other modules need to know about an operator, as single-dispatch functions (as in
# lineax): each operator module registers its own classes, so no module has to know every
# kind of operator, and a new kind plugs in by registering.


@functools.singledispatch
def as_operator(op: Any) -> AbstractOperator:
    """A linsolve operator for `op`: a linsolve operator itself, or a converted
    `lineax.AbstractLinearOperator` (registered in `_lineax.py`). Anything else raises a
    `TypeError` that says how to wrap it."""
    raise TypeError(
        f"Expected a linsolve or lineax operator, got {type(op).__name__}. {_wrap_hint(op)}"
    )


@as_operator.register(AbstractOperator)
def _(op):
    return op


@functools.singledispatch
def is_matrix_free(operator: AbstractOperator) -> bool:
    """Whether applying `operator` goes through a function rather than stored arrays (a
    `FunctionOperator`, a matrix-free lineax operator, or an expression involving one).
    Direct solvers then materialize it and check the symmetry its tags promise;
    `AutoSolver` prefers Krylov solvers for it. An operator kind that does not register
    counts as matrix-free."""
    del operator
    return True


@functools.singledispatch
def is_sparse(operator: AbstractOperator) -> bool:
    """Whether `operator` stores a sparse matrix that sparse solvers (`SparseCholesky`,
    sparse triangular substitution) work on directly, without densifying it."""
    del operator
    return False


@functools.singledispatch
def lower_matrix(operator: AbstractOperator) -> Array:
    """A matrix whose lower triangle (diagonal included) is that of `as_matrix()`, the strict
    upper triangle unspecified: what a factorization that reads one triangle (Cholesky)
    needs, so that a stored matrix gets no mirrored copy."""
    return operator.as_matrix()


@functools.singledispatch
def with_tags(operator: AbstractOperator, tags: frozenset) -> AbstractOperator | None:
    """`operator` with `tags` added, of the same kind (a stored matrix then reads the entries
    the new tags say), or `None` where its kind cannot carry extra tags."""
    del operator, tags
    return None


for _kind in (MatrixOperator, DiagonalOperator, IdentityOperator):
    is_matrix_free.register(_kind)(lambda operator: False)
for _kind in (TransposedOperator, ScaledOperator):
    is_matrix_free.register(_kind)(lambda operator: is_matrix_free(operator.operator))
for _kind in (AddOperator, ComposedOperator):
    is_matrix_free.register(_kind)(
        lambda operator: is_matrix_free(operator.operator1) or is_matrix_free(operator.operator2)
    )
lower_matrix.register(MatrixOperator)(lambda operator: lower_read(operator.matrix, operator.tags))
with_tags.register(MatrixOperator)(lambda op, tags: MatrixOperator(op.matrix, op.tags | tags))
with_tags.register(DiagonalOperator)(lambda op, tags: DiagonalOperator(op.diagonal, op.tags | tags))
# The identity already carries every tag that can hold for it.
with_tags.register(IdentityOperator)(lambda op, tags: op)


__all__ = [
    "AbstractOperator",
    "MatrixOperator",
    "DiagonalOperator",
    "IdentityOperator",
    "FunctionOperator",
    "TransposedOperator",
    "AddOperator",
    "ScaledOperator",
    "ComposedOperator",
    "as_operator",
    "check_square_for",
    "is_complex",
    "is_matrix_free",
    "is_sparse",
    "lower_matrix",
    "with_tags",
]
