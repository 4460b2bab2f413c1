"""SparseOperator: a CSC sparse matrix whose pattern is static and whose values are traced.

The pattern (indices, indptr, shape) is host-side numpy data, hashed once, so that it can
be static metadata of the pytree and key the symbolic analysis cache; the values are an
ordinary JAX array, differentiable, batchable with `vmap` (a batch of value arrays
sharing one pattern).

The structure convention applies as for dense operators: a symmetric / hermitian /
semidefinite operator is defined by the entries of its lower triangle (users may store
only those), triangular ones by their triangle, unit-diagonal ones without the diagonal.
Entries that are not read are dropped by a static selection, so their gradient is
exactly zero.
"""

import functools
import operator as _operator
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jaxtyping import Array, ArrayLike, Inexact

from .._dtype import as_supported
from .._operator import (
    AbstractOperator,
    TransposedOperator,
    check_square_for,
    is_complex,
    is_matrix_free,
    is_sparse,
    with_tags,
)
from .._tags import (
    as_tags,
    diagonal_tag,
    is_hermitian,
    is_self_adjoint,
    lower_triangular_tag,
    unit_diagonal_tag,
    upper_triangular_tag,
)


def _shape_pair(shape) -> tuple[int, int]:
    """`shape` as a pair of non-negative Python ints, or a ValueError that says why not."""
    try:
        dims = tuple(shape)
    except TypeError:
        dims = None
    if dims is None or len(dims) != 2:
        raise ValueError(
            f"shape must be a pair (n_rows, n_cols) of non-negative integers; got {shape!r}."
        )
    out = []
    for axis, d in zip(("n_rows", "n_cols"), dims):
        if isinstance(d, (bool, np.bool_)):
            ok = False
        else:
            try:
                d = _operator.index(d)  # rejects floats (3.0, NaN, inf), as numpy/scipy shapes do
                ok = d >= 0
            except TypeError:
                ok = False
        if not ok:
            raise ValueError(
                f"shape must be a pair (n_rows, n_cols) of non-negative integers; got {shape!r} "
                f"({axis} = {dims[len(out)]!r})."
            )
        out.append(int(d))
    return out[0], out[1]


def _index_array(name: str, a) -> np.ndarray:
    """A 1-D int64 copy of the host index array `a`, or a ValueError naming the problem."""
    a = np.asarray(a)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array; got an array of shape {a.shape}.")
    if a.size == 0:  # e.g. `[]`, which numpy makes float64
        return np.zeros(0, np.int64)
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must have an integer dtype; got {a.dtype}.")
    if a.dtype == np.uint64 and a.max() > np.iinfo(np.int64).max:
        k = int(np.argmax(a > np.iinfo(np.int64).max))
        raise ValueError(f"{name}[{k}] = {a[k]} is too large for an index.")
    return np.ascontiguousarray(a, dtype=np.int64)


def _check_csc(indices, indptr, shape) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Validate CSC index arrays (everything but the order of the rows within a column):
    the shape, the dtypes and lengths, `indptr[0] == 0`, `indptr` non-decreasing, `indptr[-1]
    == len(indices)`, rows in `[0, n_rows)`. Returns `(indices, indptr, shape)` as int64
    arrays and a pair of ints; every error names the offending position."""
    shape = _shape_pair(shape)
    m, n = shape
    indptr = _index_array("indptr", indptr)
    indices = _index_array("indices", indices)
    if indptr.shape != (n + 1,):
        raise ValueError(
            f"indptr must have length n_cols + 1 = {n + 1} for a matrix of shape {shape}; "
            f"got length {indptr.shape[0]}."
        )
    if indptr[0] != 0:
        raise ValueError(f"indptr[0] must be 0; got indptr[0] = {indptr[0]}.")
    drop = np.flatnonzero(np.diff(indptr) < 0)
    if drop.size:
        j = int(drop[0])
        raise ValueError(
            f"indptr must be non-decreasing; indptr[{j + 1}] = {indptr[j + 1]} < indptr[{j}] = "
            f"{indptr[j]} (column {j} would have negative length)."
        )
    if indptr[-1] != indices.shape[0]:
        raise ValueError(
            f"indices must have length indptr[-1] = {indptr[-1]} (the number of stored entries); "
            f"got length {indices.shape[0]}."
        )
    bad = np.flatnonzero((indices < 0) | (indices >= m))
    if bad.size:
        k = int(bad[0])
        j = int(np.searchsorted(indptr, k, side="right") - 1)
        raise ValueError(
            f"row index out of range for shape {shape}: indices[{k}] = {indices[k]} (column {j}); "
            f"row indices must lie in [0, {m})."
        )
    return indices, indptr, shape


def _first_noncanonical(indices, indptr, n) -> int | None:
    """Position `k` of the first entry whose row is not strictly greater than the previous
    entry's row in the same column (unsorted or duplicate), or None if canonical."""
    cols = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    bad = np.flatnonzero((cols[1:] == cols[:-1]) & (indices[1:] <= indices[:-1]))
    return int(bad[0]) + 1 if bad.size else None


def _canonicalise(indices, indptr, n):
    """The canonical CSC pattern (rows sorted and unique within each column) of a valid CSC
    pattern, and the static map from stored values to canonical values:
    `canonical = segment_sum(values[perm], segments, nnz)` (duplicates summed)."""
    cols = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    perm = np.lexsort((indices, cols))  # stable: by column, then row
    r, c = indices[perm], cols[perm]
    first = np.ones(r.shape, bool)
    first[1:] = (r[1:] != r[:-1]) | (c[1:] != c[:-1])
    segments = np.cumsum(first) - 1
    new_indptr = np.concatenate([[0], np.cumsum(np.bincount(c[first], minlength=n))]).astype(
        np.int64
    )
    return r[first], new_indptr, perm, segments


class Pattern:
    """A static CSC sparsity pattern: hashable (by content), so it can be pytree metadata
    and key the caches of everything derived from it (e.g. the symbolic factorization).

    A `Pattern` is always canonical: `indptr[0] == 0`, `indptr` non-decreasing with
    `indptr[-1] == len(indices)`, and the row indices of each column strictly increasing
    (sorted, no duplicates) and in range. [`linsolve.SparseOperator`][] normalises its
    input to this form; building a `Pattern` directly from anything else raises."""

    def __init__(self, indices, indptr, shape, *, _checked: bool = False):
        if _checked:  # SparseOperator has validated and canonicalised these already
            self.indices, self.indptr, self.shape = indices, indptr, shape
            self._hash = hash((self.indices.tobytes(), self.indptr.tobytes(), self.shape))
            return
        self.indices, self.indptr, self.shape = _check_csc(indices, indptr, shape)
        k = _first_noncanonical(self.indices, self.indptr, self.shape[1])
        if k is not None:
            j = int(np.searchsorted(self.indptr, k, side="right") - 1)
            what = "duplicate" if self.indices[k] == self.indices[k - 1] else "unsorted"
            raise ValueError(
                f"{what} row indices in column {j}: indices[{k - 1}] = {self.indices[k - 1]}, "
                f"indices[{k}] = {self.indices[k]}. A Pattern needs sorted, duplicate-free rows "
                "in each column (SparseOperator sorts and sums duplicates for you)."
            )
        self._hash = hash((self.indices.tobytes(), self.indptr.tobytes(), self.shape))

    def __hash__(self):
        return self._hash

    def __eq__(self, other):
        return (
            isinstance(other, Pattern)
            and self._hash == other._hash
            and self.shape == other.shape
            and np.array_equal(self.indptr, other.indptr)
            and np.array_equal(self.indices, other.indices)
        )

    def __repr__(self):
        return f"Pattern(shape={self.shape}, nnz={self.nnz})"

    @property
    def nnz(self) -> int:
        return int(self.indices.size)

    @functools.cached_property
    def rows(self) -> np.ndarray:
        return self.indices

    @functools.cached_property
    def cols(self) -> np.ndarray:
        return np.repeat(np.arange(self.shape[1]), np.diff(self.indptr))

    @functools.cache  # noqa: B019 - few, long-lived operators; the host-side positions are the point
    def read(self, tags: frozenset) -> tuple[np.ndarray, np.ndarray]:
        """Positions (into the stored values) of the entries the tags say are read, split
        into strict-triangle/general entries and diagonal entries."""
        r, c = self.rows, self.cols
        if diagonal_tag in tags or (
            is_self_adjoint(tags) and tags & {lower_triangular_tag, upper_triangular_tag}
        ):
            keep = np.zeros(r.shape, bool)
        elif is_self_adjoint(tags) or lower_triangular_tag in tags:
            keep = r > c
        elif upper_triangular_tag in tags:
            keep = r < c
        else:
            keep = r != c
        diag = (r == c) & (unit_diagonal_tag not in tags)
        return np.flatnonzero(keep), np.flatnonzero(diag)


class SparseOperator(AbstractOperator):
    """A sparse matrix in CSC form with a static pattern and differentiable values.

    **Arguments:**

    - `values`: the stored entries, shape `(nnz,)`, in the order of `indices`; may be traced
      (`jit`, `vmap`, `grad`).
    - `indices`: row index of each stored entry, shape `(nnz,)`, integer dtype (host data,
      static).
    - `indptr`: column pointers, shape `(n_cols + 1,)`, integer dtype (host data, static):
      the entries of column `j` are `indices[indptr[j]:indptr[j + 1]]`.
    - `shape`: `(n_rows, n_cols)`, non-negative integers.
    - `tags`: as for [`linsolve.MatrixOperator`][]. A symmetric / PSD operator is defined
      by its lower triangle: storing only that is enough (and cheapest).

    Build one from scipy with [`linsolve.SparseOperator.from_scipy`][] or from a
    `jax.experimental.sparse` array with [`linsolve.SparseOperator.from_bcoo`][].

    **Input that is normalised** (as `scipy.sparse` does): the row indices within a column
    may come in any order, and a `(row, col)` may be stored more than once; duplicates are
    summed, as in `scipy.sparse` and `jax.experimental.sparse`. The operator then stores the
    canonical pattern (`op.pattern`: rows sorted and unique in each column) and canonical
    `op.values`, obtained from the given values by a static gather and segment-sum, so the
    gradient with respect to the given values is exact (each duplicate gets the gradient of
    their sum) under `jit`, `vmap` and any order of differentiation. Already canonical input
    is stored as given, at no cost. Explicitly stored zeros stay in the pattern.

    **Input that is rejected** with a `ValueError` naming the problem and the offending
    position: a `shape` that is not a pair of non-negative integers (e.g. floats or NaN);
    `indices` or `indptr` that are not 1-D or not of an integer dtype; `indptr` of length
    other than `n_cols + 1`, with `indptr[0] != 0`, decreasing anywhere, or with `indptr[-1]
    != len(indices)`; a row index outside `[0, n_rows)`; `values` whose shape is not
    `(len(indices),)`. Traced `indices` or `indptr` raise a `TypeError`: the pattern must be
    concrete.
    """

    values: Inexact[Array, " nnz"]
    pattern: Pattern = eqx.field(static=True)
    _tags: frozenset = eqx.field(static=True)

    def __init__(
        self,
        values: ArrayLike | sp.spmatrix | sp.sparray,
        indices=None,
        indptr=None,
        shape=None,
        tags: Any = (),
    ):
        if sp.issparse(values):  # `SparseOperator(scipy_matrix, tags=...)`: as from_scipy
            if not (indices is None and indptr is None and shape is None):
                raise TypeError(
                    "SparseOperator(scipy_matrix) takes no indices/indptr/shape; pass tags by "
                    "keyword, or use `SparseOperator.from_scipy(matrix, tags)`."
                )
            csc = sp.csc_matrix(values)
            nnz = int(csc.indptr[-1])  # scipy may store beyond indptr[-1]; not part of the matrix
            values, indices, indptr, shape = (
                csc.data[:nnz],
                csc.indices[:nnz],
                csc.indptr,
                csc.shape,
            )
        elif indices is None or indptr is None or shape is None:
            raise TypeError(
                "SparseOperator needs (values, indices, indptr, shape) in CSC form, or a scipy.sparse "
                "matrix (`SparseOperator.from_scipy(matrix, tags)`)."
            )
        values = as_supported(values, "the values of a SparseOperator")
        try:
            indices, indptr = np.asarray(indices), np.asarray(indptr)
        except jax.errors.TracerArrayConversionError as e:
            raise TypeError(
                "SparseOperator's sparsity pattern (indices, indptr) must be concrete host "
                "data; only the values may be traced."
            ) from e
        indices, indptr, shape = _check_csc(indices, indptr, shape)
        if values.ndim != 1 or values.shape[0] != indices.shape[0]:
            raise ValueError(
                f"values must have shape ({indices.shape[0]},) to match the pattern (one value "
                f"per entry of indices); got {values.shape}."
            )
        if _first_noncanonical(indices, indptr, shape[1]) is not None:
            indices, indptr, perm, segments = _canonicalise(indices, indptr, shape[1])
            values = values[perm]
            if indices.shape[0] < values.shape[0]:  # duplicates: sum them
                values = jax.ops.segment_sum(
                    values, segments, num_segments=indices.shape[0], indices_are_sorted=True
                )
        pattern = Pattern(indices, indptr, shape, _checked=True)
        tags = as_tags(tags)
        check_square_for(tags, pattern.shape)
        self.values = values
        self.pattern = pattern
        self._tags = tags

    # -- construction --------------------------------------------------------------------
    @classmethod
    def from_scipy(cls, matrix, tags: Any = ()) -> "SparseOperator":
        """From any `scipy.sparse` matrix or array (converted to CSC). Unsorted indices and
        duplicates (`has_canonical_format` false) are normalised exactly as by the
        constructor: rows sorted, duplicates summed. Explicitly stored zeros stay in the
        pattern."""
        return cls(matrix if sp.issparse(matrix) else sp.csc_matrix(matrix), tags=tags)

    @classmethod
    def from_bcoo(cls, matrix, tags: Any = ()) -> "SparseOperator":
        """From a `jax.experimental.sparse.BCOO` (or `BCSR`) matrix. Its indices must be
        concrete; its data may be traced (the gradient flows back to it). Duplicates are
        summed and entries are sorted as by the constructor; padding entries (indices at or
        beyond the shape, as BCOO uses) are dropped; negative indices are rejected."""
        from jax.experimental import sparse as jsparse

        if isinstance(matrix, jsparse.BCSR):
            matrix = matrix.to_bcoo()
        if matrix.n_batch or matrix.n_dense or matrix.ndim != 2:
            raise ValueError(
                "from_bcoo supports unbatched 2-D BCOO matrices without dense dimensions."
            )
        try:
            idx = np.asarray(matrix.indices).astype(np.int64)
        except jax.errors.TracerArrayConversionError as e:
            raise TypeError("from_bcoo needs concrete indices; only the data may be traced.") from e
        m, n = _shape_pair(matrix.shape)
        rows, cols = idx[:, 0], idx[:, 1]
        neg = np.flatnonzero((rows < 0) | (cols < 0))
        if neg.size:
            k = int(neg[0])
            raise ValueError(
                f"from_bcoo: negative index at entry {k}: (row, col) = ({rows[k]}, {cols[k]})."
            )
        valid = np.flatnonzero((rows < m) & (cols < n))  # BCOO pads with out-of-range indices
        order = valid[
            np.argsort(cols[valid], kind="stable")
        ]  # column-major; rows sorted by the constructor
        indptr = np.concatenate([[0], np.cumsum(np.bincount(cols[valid], minlength=n))])
        return cls(jnp.asarray(matrix.data)[order], rows[order], indptr, (m, n), tags)

    def to_scipy(self) -> sp.csc_matrix:
        """The stored matrix (all stored entries of the canonical pattern, read or not) as a
        scipy CSC matrix."""
        p = self.pattern
        return sp.csc_matrix((np.asarray(self.values), p.indices, p.indptr), shape=p.shape)

    # -- what is read --------------------------------------------------------------------
    def _hermitian(self) -> bool:
        return is_hermitian(self._tags, is_complex(self.values.dtype))

    def _entries(self):
        """(rows, cols, values) of the entries that are read, plus the diagonal part."""
        off, diag = self.pattern.read(self._tags)
        r, c = self.pattern.rows, self.pattern.cols
        d_vals = self.values[diag]
        if self._hermitian():
            d_vals = jnp.real(d_vals).astype(self.values.dtype)
        return (r[off], c[off], self.values[off]), (r[diag], d_vals)

    def _apply(self, x, transpose: bool):
        m, n = self.shape
        (r, c, v), (d_idx, d_vals) = self._entries()
        if transpose:
            r, c, m = c, r, n
        out_shape = (m,) + x.shape[1:]
        vb = v.reshape(v.shape + (1,) * (x.ndim - 1))
        y = jnp.zeros(out_shape, jnp.result_type(v, x)).at[r].add(vb * x[c])
        if is_self_adjoint(self._tags):
            mirror = jnp.conj(vb) if self._hermitian() else vb
            y = y.at[c].add(mirror * x[r])
        if unit_diagonal_tag in self._tags:
            y = y + x
        else:
            dv = d_vals.reshape(d_vals.shape + (1,) * (x.ndim - 1))
            y = y.at[d_idx].add(dv * x[d_idx])
        return y

    def _mv(self, x):
        return self._apply(x, transpose=False)

    def _mm(self, x):
        return self._apply(x, transpose=False)

    def rmv(self, y):
        if is_self_adjoint(self._tags) and not self._hermitian():
            return self._apply(y, transpose=False)
        return self._apply(y, transpose=True)

    def as_matrix(self):
        (r, c, v), (d_idx, d_vals) = self._entries()
        out = jnp.zeros(self.shape, self.values.dtype).at[r, c].add(v)
        if is_self_adjoint(self._tags):
            out = out.at[c, r].add(jnp.conj(v) if self._hermitian() else v)
        if unit_diagonal_tag in self._tags:
            return out + jnp.eye(*self.shape, dtype=out.dtype)
        return out.at[d_idx, d_idx].add(d_vals)

    def diag(self):
        if unit_diagonal_tag in self._tags:
            return jnp.ones(min(self.shape), self.values.dtype)
        _, (d_idx, d_vals) = self._entries()
        return jnp.zeros(min(self.shape), self.values.dtype).at[d_idx].add(d_vals)

    def transpose(self):
        if is_self_adjoint(self._tags):
            if self._hermitian():
                p = self.pattern
                return SparseOperator(
                    jnp.conj(self.values), p.indices, p.indptr, p.shape, self._tags
                )
            return self
        return TransposedOperator(self)

    @property
    def shape(self):
        return self.pattern.shape

    @property
    def dtype(self):
        return self.values.dtype

    @property
    def tags(self):
        return self._tags


# The operator queries of `_operator.py` for sparse operators.
is_matrix_free.register(SparseOperator)(lambda operator: False)
is_sparse.register(SparseOperator)(lambda operator: True)


@with_tags.register(SparseOperator)
def _with_tags(operator: SparseOperator, tags: frozenset) -> SparseOperator:
    p = operator.pattern
    return SparseOperator(operator.values, p.indices, p.indptr, p.shape, operator.tags | tags)
