"""Tags: promises a user makes about an operator, and how they propagate.

A tag selects algorithms *and* says which stored entries are read (see
`_structure.py`). Propagation rules are deliberately conservative: a tag survives an
operation only where the mathematics guarantees it.
"""

from collections.abc import Iterable
from typing import Any

import lineax as lx
import numpy as np


class _Tag:
    """A singleton sentinel. Compared by identity, hashable, picklable by name."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"linsolve.{self.name}"

    def __reduce__(self):
        return self.name


symmetric_tag = _Tag("symmetric_tag")
hermitian_tag = _Tag("hermitian_tag")
positive_semidefinite_tag = _Tag("positive_semidefinite_tag")
negative_semidefinite_tag = _Tag("negative_semidefinite_tag")
lower_triangular_tag = _Tag("lower_triangular_tag")
upper_triangular_tag = _Tag("upper_triangular_tag")
diagonal_tag = _Tag("diagonal_tag")
unit_diagonal_tag = _Tag("unit_diagonal_tag")

ALL_TAGS = frozenset(
    {
        symmetric_tag,
        hermitian_tag,
        positive_semidefinite_tag,
        negative_semidefinite_tag,
        lower_triangular_tag,
        upper_triangular_tag,
        diagonal_tag,
        unit_diagonal_tag,
    }
)

# lineax has no hermitian tag: its semidefinite tags mean hermitian for complex dtypes,
# as linsolve's do, and its symmetric tag is plain (complex-)symmetric, as linsolve's is.
_TAG_PAIRS = (
    (lx.symmetric_tag, symmetric_tag),
    (lx.positive_semidefinite_tag, positive_semidefinite_tag),
    (lx.negative_semidefinite_tag, negative_semidefinite_tag),
    (lx.lower_triangular_tag, lower_triangular_tag),
    (lx.upper_triangular_tag, upper_triangular_tag),
    (lx.diagonal_tag, diagonal_tag),
    (lx.unit_diagonal_tag, unit_diagonal_tag),
)
FROM_LINEAX = dict(_TAG_PAIRS)
TO_LINEAX = {ours: theirs for theirs, ours in _TAG_PAIRS}


def linsolve_tag_of(tag: Any):
    """The linsolve tag a lineax tag object stands for; `None` if `tag` is not a lineax
    tag. lineax's `tridiagonal_tag` has no linsolve counterpart and is refused."""
    if tag is lx.tridiagonal_tag:
        raise ValueError(
            "lineax's tridiagonal_tag has no linsolve counterpart: pass a "
            "`lineax.TridiagonalLinearOperator` (converted to a `linsolve.SparseOperator`) "
            "or build a `linsolve.SparseOperator` directly."
        )
    try:
        return FROM_LINEAX.get(tag)
    except TypeError:  # unhashable: not a tag
        return None


_SEMIDEFINITE = frozenset({positive_semidefinite_tag, negative_semidefinite_tag})
_SELF_ADJOINT = frozenset({symmetric_tag, hermitian_tag}) | _SEMIDEFINITE


_BY_NAME = {tag.name.removesuffix("_tag"): tag for tag in ALL_TAGS}


def _one_tag(tag: Any) -> "_Tag":
    """One tag: a linsolve tag, its name as a string ("symmetric" or "symmetric_tag"), or
    a lineax tag object (translated)."""
    if isinstance(tag, _Tag):
        return tag
    if isinstance(tag, str):
        found = _BY_NAME.get(tag.removesuffix("_tag"))
        if found is None:
            raise ValueError(
                f"Unknown tag name {tag!r}; the tag names are {sorted(_BY_NAME)} (or use the "
                "tag objects, e.g. `linsolve.symmetric_tag`)."
            )
        return found
    found = linsolve_tag_of(tag)
    if found is None:
        raise TypeError(
            f"Unknown tag {tag!r}; use the linsolve tag objects (e.g. "
            '`linsolve.symmetric_tag`), their names (e.g. "symmetric") or lineax\'s tags.'
        )
    return found


def as_tags(tags: Any) -> frozenset:
    """Normalise a `tags=` argument to a frozenset of linsolve tags. Accepted: one tag or an
    iterable of tags, where a tag is a linsolve tag object, its name as a string
    (`"symmetric"` or `"symmetric_tag"`), or one of lineax's tag objects."""
    if isinstance(tags, (_Tag, str)) or linsolve_tag_of(tags) is not None:
        tags = (tags,)
    elif not isinstance(tags, Iterable):
        raise TypeError(f"`tags` must be a tag or an iterable of tags, got {tags!r}.")
    out = frozenset(_one_tag(t) for t in tags)
    if positive_semidefinite_tag in out and negative_semidefinite_tag in out:
        # Only the zero matrix is both; almost always a user mistake.
        raise ValueError("An operator cannot be tagged both positive and negative semidefinite.")
    return out


def is_self_adjoint(tags: frozenset) -> bool:
    """Whether the operator is defined by its lower triangle (symmetric/hermitian/(P|N)SD)."""
    return bool(tags & _SELF_ADJOINT)


def is_hermitian(tags: frozenset, complex_dtype: bool) -> bool:
    """Hermitian completion (conjugate transpose) applies: hermitian tag, or a semidefinite
    tag on a complex operator. For real dtypes hermitian and symmetric coincide."""
    if not complex_dtype:
        return False
    return hermitian_tag in tags or bool(tags & _SEMIDEFINITE)


def implied_tags(tags: frozenset, complex_dtype: bool) -> frozenset:
    """Add what tags imply, so that set operations (e.g. for sums) do not lose structure:
    a semidefinite operator is hermitian (complex) or symmetric (real); for real dtypes
    hermitian and symmetric are the same promise."""
    out = set(tags)
    if tags & _SEMIDEFINITE:
        out.add(hermitian_tag if complex_dtype else symmetric_tag)
    if not complex_dtype and out & {symmetric_tag, hermitian_tag}:
        out |= {symmetric_tag, hermitian_tag}
    return frozenset(out)


def transpose_tags(tags: frozenset) -> frozenset:
    """Tags of `A.T`: lower and upper swap; everything else is kept (the transpose of a
    hermitian matrix is its conjugate, still hermitian with the same definiteness)."""
    out = set(tags)
    lower = lower_triangular_tag in tags
    upper = upper_triangular_tag in tags
    out.discard(lower_triangular_tag)
    out.discard(upper_triangular_tag)
    if lower:
        out.add(upper_triangular_tag)
    if upper:
        out.add(lower_triangular_tag)
    return frozenset(out)


def add_tags(tags1: frozenset, tags2: frozenset) -> frozenset:
    """Tags of `A + B`: the structural tags both share. A unit diagonal does not survive
    a sum (the diagonal becomes 2)."""
    return (tags1 & tags2) - {unit_diagonal_tag}


def matmul_tags(tags1: frozenset, tags2: frozenset) -> frozenset:
    """Tags of `A @ B` for two unrelated operators: products of triangular (resp. diagonal,
    unit-diagonal triangular) matrices of the same kind keep that kind. Symmetry is lost in
    general (``A.T @ A`` is handled by the caller, which can see that the factors match)."""
    out = set()
    for tag in (lower_triangular_tag, upper_triangular_tag, diagonal_tag):
        if tag in tags1 and tag in tags2:
            out.add(tag)
    if unit_diagonal_tag in tags1 and unit_diagonal_tag in tags2 and out:
        out.add(unit_diagonal_tag)
    if diagonal_tag in out:
        # Products of diagonal matrices commute: symmetric ones stay symmetric.
        out |= tags1 & tags2 & {symmetric_tag}
    return frozenset(out)


def scale_tags(tags: frozenset, scalar: Any) -> frozenset:
    """Tags of `c * A`. Structure (triangles, diagonal, symmetry) is kept. Definiteness is
    kept for a concrete real `c >= 0` and swapped for `c < 0`; a traced scalar drops it
    (its sign is unknown at trace time). Hermitian survives only a real scalar."""
    try:
        value = complex(scalar)
    except Exception:  # a tracer
        value = None
    if value == 1:
        return tags
    out = set(tags) - {unit_diagonal_tag}
    if value is None:
        out -= _SEMIDEFINITE
        dtype = getattr(scalar, "dtype", None)
        if dtype is not None and np.issubdtype(dtype, np.complexfloating):
            out.discard(hermitian_tag)
        return frozenset(out)
    if value.imag != 0:
        return frozenset(out - _SEMIDEFINITE - {hermitian_tag})
    if value.real < 0:
        swapped = {
            {positive_semidefinite_tag: negative_semidefinite_tag}.get(t, positive_semidefinite_tag)
            for t in out & _SEMIDEFINITE
        }
        out = (out - _SEMIDEFINITE) | swapped
    return frozenset(out)


def neg_tags(tags: frozenset) -> frozenset:
    """Tags of `-A`: definiteness swaps, unit diagonal is lost."""
    return scale_tags(tags, -1.0)
