"""Numeric supernodal Cholesky factorization and triangular solves, traced in JAX.

Multifrontal, one tree level at a time: `symbolic.analyse` put every supernode on the level
just below its parent and split each level into buckets of supernodes padded to a common
size. For each bucket this module

1. assembles the frontal matrices of all its supernodes at once: the stored values of A are
   scattered in through a static map, and the update matrices of the children (computed on
   the level below, kept in one flat pool per level) are extend-added through static row
   maps. Only lower triangles are assembled (half the scatter traffic);
2. partially factorizes them with dense batched kernels: `L11 = chol(F11)`, then one
   triangular solve gives both `L11^-T` and `L21 = F21 L11^-T`, and one matmul gives both
   `W = L21 L11^-1` and the update matrix `U = F22 - L21 L21^T` for the parent.

The factor keeps, per bucket, `G = [L11^-1; -W]` (shape `(b, N, K)`). With it both triangular
solves are a gather, one batched matmul and a scatter per bucket (no triangular solves at
solve time), and the selected inverse (`selinv.py`) needs exactly `L11^-1` and `W`.

Nothing here calls back to the host, so `factor`, `solve` and `logdet` work under `jit`,
`vmap` (a batch of value arrays sharing one pattern), `grad` and `jvp`, on any backend, in
float32 and float64. A matrix that is not positive definite does not raise: the Cholesky
kernel returns NaN for a failed block, NaNs reach the root, and `Factor.ok` is False.

Index arithmetic on the static maps is done in-graph from small arrays (behind an
optimization barrier so XLA does not constant-fold it into huge literals): XLA embeds
constants in the compiled program, and O(front size^2) maps would dominate compile time.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Bool, Float

from .symbolic import Bucket, Symbolic


_HI = lax.Precision.HIGHEST  # no TF32/bf16 shortcuts on GPU: this is a direct solver


class Factor(eqx.Module):
    """Supernodal Cholesky factor of `P A P^T` (the pattern lives in `Symbolic`).

    `g[b]` holds `[L11^-1; -L21 L11^-1]` for the supernodes of bucket `b`, shape
    `(size, K + M, K)` (identity on padding pivots, zero on padding rows).
    """

    g: tuple[Float[Array, "b N K"], ...]
    logdet: Float[Array, ""]
    ok: Bool[Array, ""]


def _const(x: np.ndarray) -> Array:
    """A small static index array that XLA must not constant-fold into large derived ones."""
    return lax.optimization_barrier(jnp.asarray(x))


def _tril_sym(x: Array) -> Array:
    """Symmetric matrix from the lower triangle of the last two axes."""
    lower = jnp.tril(x)
    return lower + jnp.swapaxes(jnp.tril(x, -1), -1, -2)


def _extend_add(front: Array, B: Bucket, pool: Array) -> Array:
    """Add the lower triangles of the children's update matrices into the fronts."""
    width = B.ea_rel.shape[1]
    ti, tj = np.tril_indices(width)
    base = _const(B.ea_base)
    mc = _const(B.ea_m)
    rel = _const(B.ea_rel)
    ti_, tj_ = _const(ti.astype(np.int32)), _const(tj.astype(np.int32))
    # Child row/col beyond its bucket's padded width: clamp the read (its rel is N: dropped).
    ri = jnp.minimum(ti_[None, :], mc[:, None] - 1)
    rj = jnp.minimum(tj_[None, :], mc[:, None] - 1)
    src = base[:, None] + ri * mc[:, None] + rj
    upd = pool.at[src].get(mode="clip")
    dst_i = rel[:, ti_]
    dst_j = rel[:, tj_]
    slot = _const(B.ea_slot)[:, None]
    return front.at[slot, dst_i, dst_j].add(upd, mode="drop")


def factor(sym: Symbolic, values: Float[Array, " nnz"]) -> Factor:
    """Numeric factorization of the matrix with pattern `sym` and stored `values`.

    `values` is aligned with the CSC pattern given to `symbolic.analyse`; only the entries
    with row >= col are read (duplicates are summed).
    """
    values = jnp.asarray(values)
    if values.shape != (sym.nnz,):
        raise ValueError(f"expected values of shape ({sym.nnz},), got {values.shape}")
    if not jnp.issubdtype(values.dtype, jnp.floating):
        values = values.astype(jnp.result_type(float))
    if jnp.issubdtype(values.dtype, jnp.complexfloating):
        raise NotImplementedError("complex sparse Cholesky is not supported")
    dtype = values.dtype
    # Index nnz reads the constant 1 placed on padding pivots.
    vals_ext = jnp.concatenate([values, jnp.ones((1,), dtype)])
    g: list = [None] * len(sym.buckets)
    diags = []
    pool = None  # update matrices of the level below
    for level in sym.levels:
        parts = []
        for b in level:
            B = sym.buckets[b]
            K, M, N = B.K, B.M, B.N
            flat = jnp.zeros(B.size * N * N, dtype)
            flat = flat.at[_const(B.a_dst)].add(vals_ext[_const(B.a_src)], mode="drop")
            F = flat.reshape(B.size, N, N)
            if B.ea_base.size:
                F = _extend_add(F, B, pool)
            L11 = lax.linalg.cholesky(_tril_sym(F[:, :K, :K]), symmetrize_input=False)
            diags.append(jnp.diagonal(L11, axis1=-2, axis2=-1).reshape(-1))
            eye = jnp.broadcast_to(jnp.eye(K, dtype=dtype), (B.size, K, K))
            if M:
                # X L11^T = [I; F21]  =>  X = [L11^-T; L21]
                rhs = jnp.concatenate([eye, F[:, K:, :K]], axis=1)
                X = lax.linalg.triangular_solve(
                    L11, rhs, left_side=False, lower=True, transpose_a=True
                )
                L21 = X[:, K:]
                # L21 @ [L11^-1, L21^T] = [W, L21 L21^T]
                Y = jnp.matmul(L21, jnp.swapaxes(X, -1, -2), precision=_HI)
                parts.append((F[:, K:, K:] - Y[:, :, K:]).reshape(-1))
                g[b] = jnp.concatenate([jnp.swapaxes(X[:, :K], -1, -2), -Y[:, :, :K]], axis=1)
            else:
                g[b] = lax.linalg.triangular_solve(L11, eye, left_side=True, lower=True)
        pool = jnp.concatenate(parts) if parts else None
    d = jnp.concatenate(diags)
    ok = jnp.all(d > 0) & jnp.all(jnp.isfinite(d))
    logdet = 2 * jnp.sum(jnp.log(d))
    return Factor(g=tuple(g), logdet=logdet, ok=ok)


def logdet(sym: Symbolic, fac: Factor) -> Float[Array, ""]:
    """log det A = 2 sum log diag L (padding pivots contribute log 1 = 0).

    Differentiating this through `factor` is correct but slow; `selinv.logdet` has the cheap
    derivative.
    """
    del sym
    return fac.logdet


def _all_idx(B: Bucket) -> np.ndarray:
    return np.concatenate([B.col_idx, B.row_idx], axis=1)


def solve(sym: Symbolic, fac: Factor, b: Float[Array, "n *k"]) -> Float[Array, "n *k"]:
    """Solve `A x = b` with the factor, for `b` of shape (n,) or (n, k)."""
    b = jnp.asarray(b)
    if b.ndim not in (1, 2) or b.shape[0] != sym.n:
        raise ValueError(f"expected b of shape ({sym.n},) or ({sym.n}, k), got {b.shape}")
    vector = b.ndim == 1
    x = b[:, None] if vector else b
    x = x.astype(jnp.result_type(x.dtype, fac.g[0].dtype))[sym.perm]
    x = solve_lower(sym, fac, x)
    x = solve_upper(sym, fac, x)
    x = x[sym.iperm]
    return x[:, 0] if vector else x


def solve_lower(sym: Symbolic, fac: Factor, x: Float[Array, "n k"]) -> Float[Array, "n k"]:
    """`L^-1 x` in the permuted ordering, leaves first.

    Per supernode: x_cols <- L11^-1 x_cols and x_rows -= W x_cols_old, i.e. one scatter-add
    of `G x_cols - [x_cols; 0]`.
    """
    for level in sym.levels:
        for b in level:
            B = sym.buckets[b]
            cols = _const(B.col_idx)
            xc = x.at[cols].get(mode="fill", fill_value=0)  # (size, K, k)
            r = jnp.matmul(fac.g[b], xc, precision=_HI)
            r = r.at[:, : B.K].add(-xc)
            x = x.at[_const(_all_idx(B))].add(r, mode="drop")
    return x


def solve_upper(sym: Symbolic, fac: Factor, x: Float[Array, "n k"]) -> Float[Array, "n k"]:
    """`L^-T x` in the permuted ordering, roots first: x_cols <- G^T [x_cols; x_rows]."""
    for level in reversed(sym.levels):
        for b in level:
            B = sym.buckets[b]
            v = x.at[_const(_all_idx(B))].get(mode="fill", fill_value=0)  # (size, N, k)
            xc = jnp.matmul(jnp.swapaxes(fac.g[b], -1, -2), v, precision=_HI)
            x = x.at[_const(B.col_idx)].set(xc, mode="drop")
    return x
