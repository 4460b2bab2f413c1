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
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jaxtyping import Array, ArrayLike, Inexact

from .._operator import AbstractOperator, TransposedOperator, _check_square_for, _is_complex
from .._tags import (
    as_tags,
    diagonal_tag,
    is_hermitian,
    is_self_adjoint,
    lower_triangular_tag,
    unit_diagonal_tag,
    upper_triangular_tag,
)


class Pattern:
    """A static CSC sparsity pattern: hashable (by content), so it can be pytree metadata
    and key the caches of everything derived from it (e.g. the symbolic factorization)."""

    def __init__(self, indices, indptr, shape):
        self.indices = np.ascontiguousarray(indices, dtype=np.int64)
        self.indptr = np.ascontiguousarray(indptr, dtype=np.int64)
        self.shape = (int(shape[0]), int(shape[1]))
        if self.indptr.shape != (self.shape[1] + 1,):
            raise ValueError(
                f"indptr must have shape ({self.shape[1] + 1},) for a matrix of shape "
                f"{self.shape}; got {self.indptr.shape}."
            )
        if self.indices.shape != (int(self.indptr[-1]),):
            raise ValueError(
                f"indices must have shape ({int(self.indptr[-1])},) (= indptr[-1]); got "
                f"{self.indices.shape}."
            )
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= self.shape[0]):
            raise ValueError(f"row indices out of range for shape {self.shape}.")
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

    @functools.lru_cache(maxsize=None)
    def read(self, tags: frozenset) -> tuple[np.ndarray, np.ndarray]:
        """Positions (into the stored values) of the entries the tags say are read, split
        into strict-triangle/general entries and diagonal entries."""
        r, c = self.rows, self.cols
        if diagonal_tag in tags or (is_self_adjoint(tags) and tags & {lower_triangular_tag, upper_triangular_tag}):
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

    - `values`: the stored entries, shape `(nnz,)`, in CSC order.
    - `indices`: row index of each stored entry, shape `(nnz,)` (host data, static).
    - `indptr`: column pointers, shape `(n_cols + 1,)` (host data, static).
    - `shape`: `(m, n)`.
    - `tags`: as for [`linsolve.MatrixOperator`][]. A symmetric / PSD operator is defined
      by its lower triangle: storing only that is enough (and cheapest).

    Build one from scipy with [`linsolve.SparseOperator.from_scipy`][] or from a
    `jax.experimental.sparse` array with [`linsolve.SparseOperator.from_bcoo`][].
    Duplicate entries are summed.
    """

    values: Inexact[Array, " nnz"]
    pattern: Pattern = eqx.field(static=True)
    _tags: frozenset = eqx.field(static=True)

    def __init__(self, values: ArrayLike, indices, indptr, shape, tags: Any = ()):
        values = jnp.asarray(values)
        if not jnp.issubdtype(values.dtype, jnp.inexact):
            values = values.astype(jnp.result_type(float))
        try:
            indices, indptr = np.asarray(indices), np.asarray(indptr)
        except jax.errors.TracerArrayConversionError as e:
            raise TypeError(
                "SparseOperator's sparsity pattern (indices, indptr) must be concrete host "
                "data; only the values may be traced."
            ) from e
        pattern = Pattern(indices, indptr, shape)
        if values.ndim != 1 or values.shape[0] != pattern.nnz:
            raise ValueError(
                f"values must have shape ({pattern.nnz},) to match the pattern; got {values.shape}."
            )
        tags = as_tags(tags)
        _check_square_for(tags, pattern.shape)
        self.values = values
        self.pattern = pattern
        self._tags = tags

    # -- construction --------------------------------------------------------------------
    @classmethod
    def from_scipy(cls, matrix, tags: Any = ()) -> "SparseOperator":
        """From any `scipy.sparse` matrix or array (converted to CSC, duplicates summed,
        indices sorted). Explicitly stored zeros stay in the pattern."""
        csc = sp.csc_matrix(matrix, copy=True)
        csc.sum_duplicates()
        csc.sort_indices()
        return cls(csc.data, csc.indices, csc.indptr, csc.shape, tags)

    @classmethod
    def from_bcoo(cls, matrix, tags: Any = ()) -> "SparseOperator":
        """From a `jax.experimental.sparse.BCOO` (or `BCSR`) matrix. Its indices must be
        concrete; its data may be traced (the gradient flows back to it)."""
        from jax.experimental import sparse as jsparse

        if isinstance(matrix, jsparse.BCSR):
            matrix = matrix.to_bcoo()
        if matrix.n_batch or matrix.n_dense or matrix.ndim != 2:
            raise ValueError("from_bcoo supports unbatched 2-D BCOO matrices without dense dimensions.")
        idx = np.asarray(matrix.indices)
        m, n = matrix.shape
        rows, cols = idx[:, 0], idx[:, 1]
        valid = (rows < m) & (cols < n)  # BCOO pads with out-of-range indices
        key = cols.astype(np.int64) * m + rows
        uniq, inverse = np.unique(key[valid], return_inverse=True)
        data = jnp.asarray(matrix.data)[np.flatnonzero(valid)]
        values = jax.ops.segment_sum(data, jnp.asarray(inverse), num_segments=uniq.size)
        u_rows, u_cols = uniq % m, uniq // m
        indptr = np.concatenate([[0], np.cumsum(np.bincount(u_cols, minlength=n))])
        return cls(values, u_rows, indptr, (m, n), tags)

    def to_scipy(self) -> sp.csc_matrix:
        """The stored matrix (all stored entries, as given) as a scipy CSC matrix."""
        p = self.pattern
        return sp.csc_matrix((np.asarray(self.values), p.indices, p.indptr), shape=p.shape)

    # -- what is read --------------------------------------------------------------------
    def _hermitian(self) -> bool:
        return is_hermitian(self._tags, _is_complex(self.values.dtype))

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
                return SparseOperator(jnp.conj(self.values), p.indices, p.indptr, p.shape, self._tags)
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
