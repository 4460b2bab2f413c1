"""Numeric supernodal Cholesky factorization and triangular solves, traced in JAX.

Multifrontal, level by level: `symbolic.analyse` grouped the supernodes by their height in
the supernodal elimination tree and, inside a level, into buckets of equal padded size. For
every bucket this module

1. assembles the frontal matrices `F = [[F11, .], [F21, F22]]` of all its supernodes at once:
   the stored values of A are scattered in through a static map, and the update matrices of
   the children (computed at lower levels) are extend-added through static row maps;
2. partially factorizes them with dense batched kernels: `L11 = chol(F11)`,
   `L21 = F21 L11^-T`, and the update matrix `U = F22 - L21 L21^T` handed to the parent.

The factor is the list of the `(L11, L21)` blocks of all buckets. Nothing here calls back to
the host, so `factor`, `solve` and `logdet` work under `jit`, `vmap` (a batch of value arrays
sharing one pattern), `grad` and `jvp`, on any backend, in float32 and float64.

A non-positive-definite input does not raise: the Cholesky kernel returns NaN for a failed
block, the NaNs propagate to the ancestors, and `Factor.ok` is False.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Bool, Float

from .symbolic import Symbolic


_HI = lax.Precision.HIGHEST  # no TF32/bf16 shortcuts on GPU: this is a direct solver


class Factor(eqx.Module):
    """Supernodal Cholesky factor `P A P^T = L L^T` (the symbolic part lives in `Symbolic`).

    `l11[b]` is `(size, K, K)` lower triangular (identity on padding pivots), `l21[b]` is
    `(size, M, K)`, for each bucket `b` of the symbolic analysis.
    """

    l11: tuple[Float[Array, "b K K"], ...]
    l21: tuple[Float[Array, "b M K"], ...]
    ok: Bool[Array, ""]


def _assemble_values(sym: Symbolic, bucket, values: Float[Array, " nnz"]) -> Array:
    """The stored values of A scattered into a bucket's fronts, shape (size, N, N)."""
    N = bucket.N
    flat = jnp.zeros(bucket.size * N * N, values.dtype)
    if bucket.a_src.size:
        flat = flat.at[bucket.a_dst].add(values[bucket.a_src], unique_indices=False)
    return flat.reshape(bucket.size, N, N)


def _extend_add(front: Array, link, update: Array) -> Array:
    """Add child update matrices into their parents' fronts through the row map `rel`."""
    if link.child_rows.shape[0] != update.shape[0] or not np.array_equal(
        link.child_rows, np.arange(update.shape[0])
    ):
        update = update[link.child_rows]
    rel = link.rel
    return front.at[
        link.parent_rows[:, None, None], rel[:, :, None], rel[:, None, :]
    ].add(update, mode="drop")


def _eye_pad(bucket, dtype) -> Array:
    """Identity on the padding pivots (so padded columns are inert), zero elsewhere."""
    K = bucket.K
    return jnp.asarray(bucket.pad_pivot[:, :, None] * np.eye(K, dtype=bool)[None], dtype)


def factor(sym: Symbolic, values: Float[Array, " nnz"]) -> Factor:
    """Numeric factorization of the matrix with the pattern `sym` and stored `values`.

    `values` is aligned with the CSC pattern given to `symbolic.analyse`; only its lower
    triangle entries are read (duplicates are summed).
    """
    values = jnp.asarray(values)
    if values.shape != (sym.nnz,):
        raise ValueError(f"expected values of shape ({sym.nnz},), got {values.shape}")
    if not jnp.issubdtype(values.dtype, jnp.floating):
        values = values.astype(jnp.result_type(float))
    dtype = values.dtype
    nb = len(sym.buckets)
    l11: list = [None] * nb
    l21: list = [None] * nb
    updates: dict[int, Array] = {}
    pending = _consumers(sym)
    ok = jnp.array(True)
    for level in sym.levels:
        for b in level:
            B = sym.buckets[b]
            K = B.K
            F = _assemble_values(sym, B, values)
            for link in B.children:
                F = _extend_add(F, link, updates[link.child_bucket])
                pending[link.child_bucket] -= 1
                if pending[link.child_bucket] == 0:
                    del updates[link.child_bucket]  # let XLA free it early
            F11 = F[:, :K, :K] + _eye_pad(B, dtype)
            L11 = lax.linalg.cholesky(F11, symmetrize_input=False)
            d = jnp.diagonal(L11, axis1=-2, axis2=-1)
            ok = ok & jnp.all(d > 0) & jnp.all(jnp.isfinite(d))
            l11[b] = L11
            if B.M:
                F21 = F[:, K:, :K]
                L21 = lax.linalg.triangular_solve(
                    L11, F21, left_side=False, lower=True, transpose_a=True
                )
                l21[b] = L21
                if pending.get(b, 0):
                    updates[b] = F[:, K:, K:] - jnp.matmul(
                        L21, jnp.swapaxes(L21, -1, -2), precision=_HI
                    )
            else:
                l21[b] = jnp.zeros((B.size, 0, K), dtype)
    return Factor(l11=tuple(l11), l21=tuple(l21), ok=ok)


def _consumers(sym: Symbolic) -> dict[int, int]:
    """How many parent buckets read the update matrices of each bucket."""
    count: dict[int, int] = {}
    for B in sym.buckets:
        for link in B.children:
            count[link.child_bucket] = count.get(link.child_bucket, 0) + 1
    return count


def logdet(sym: Symbolic, fac: Factor) -> Float[Array, ""]:
    """log det A = 2 sum log diag L (padding pivots contribute log 1 = 0)."""
    total = jnp.zeros((), fac.l11[0].dtype) if fac.l11 else jnp.zeros(())
    for L11 in fac.l11:
        total = total + 2 * jnp.sum(jnp.log(jnp.diagonal(L11, axis1=-2, axis2=-1)))
    return total


def _gather_rows(x: Array, idx: np.ndarray) -> Array:
    """x[idx] with out-of-range indices (padding, == n) reading zero."""
    return x.at[idx].get(mode="fill", fill_value=0)


def solve(sym: Symbolic, fac: Factor, b: Float[Array, "n *k"]) -> Float[Array, "n *k"]:
    """Solve `A x = b` with the factor, for `b` of shape (n,) or (n, k)."""
    b = jnp.asarray(b)
    vector = b.ndim == 1
    if b.shape[0] != sym.n or b.ndim not in (1, 2):
        raise ValueError(f"expected b of shape ({sym.n},) or ({sym.n}, k), got {b.shape}")
    x = b[:, None] if vector else b
    dtype = jnp.result_type(x.dtype, fac.l11[0].dtype) if fac.l11 else x.dtype
    x = x.astype(dtype)[sym.perm]
    x = _forward(sym, fac, x)
    x = _backward(sym, fac, x)
    x = x[sym.iperm]
    return x[:, 0] if vector else x


def _forward(sym: Symbolic, fac: Factor, x: Array) -> Array:
    """L y = x, in place over the permuted vector, leaves first."""
    for level in sym.levels:
        for b in level:
            B = sym.buckets[b]
            y = _gather_rows(x, B.col_idx)  # (size, K, k)
            y = lax.linalg.triangular_solve(fac.l11[b], y, left_side=True, lower=True)
            x = x.at[B.col_idx].set(y, mode="drop")
            if B.M:
                upd = jnp.matmul(fac.l21[b], y, precision=_HI)
                x = x.at[B.row_idx].add(-upd, mode="drop")
    return x


def _backward(sym: Symbolic, fac: Factor, y: Array) -> Array:
    """L^T x = y, roots first."""
    for level in reversed(sym.levels):
        for b in level:
            B = sym.buckets[b]
            r = _gather_rows(y, B.col_idx)
            if B.M:
                z = _gather_rows(y, B.row_idx)
                r = r - jnp.matmul(jnp.swapaxes(fac.l21[b], -1, -2), z, precision=_HI)
            xs = lax.linalg.triangular_solve(
                fac.l11[b], r, left_side=True, lower=True, transpose_a=True
            )
            y = y.at[B.col_idx].set(xs, mode="drop")
    return y
