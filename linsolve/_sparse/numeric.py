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
import jax
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
    """A static index array, kept out of XLA's constant folding.

    Index arithmetic on it (broadcasts over tril indices etc.) then runs in the program
    instead of being folded into large literals at compile time.
    """
    return lax.optimization_barrier(jnp.asarray(x))


def _after(x: Array, token: Array) -> Array:
    """`x`, but computed only once `token` is (a zero-valued data dependency, no gradient)."""
    dep = lax.stop_gradient(token[..., :1, :1].sum()) * 0
    return x + dep.astype(x.dtype)


def _tril_sym(x: Array) -> Array:
    """Symmetric matrix from the lower triangle of the last two axes."""
    lower = jnp.tril(x)
    return lower + jnp.swapaxes(jnp.tril(x, -1), -1, -2)


def _assemble(B: Bucket, vals_ext: Array, pool: Array | None) -> Array:
    """The lower triangles of a bucket's fronts, shape (size, N, N).

    One flat scatter-add of the stored values of A and of the lower triangles of the
    children's update matrices (read from the level pool). The children's flat indices are
    computed in-graph from O(rows) arrays; padding rows (rel == N) are sent out of bounds
    and dropped. A flat scatter is markedly faster on XLA:CPU than a 3-index one.
    """
    N = B.N
    total = B.size * N * N
    idx = [_const(B.a_dst)]
    upd = [vals_ext[_const(B.a_src)]]
    for ea in B.ea:
        ti, tj = np.tril_indices(ea.width)
        ti_, tj_ = _const(ti.astype(np.int32)), _const(tj.astype(np.int32))
        src = _const(ea.base)[:, None] + _const((ti * ea.width + tj).astype(np.int32))[None, :]
        rel = _const(ea.rel)
        ri, rj = rel[:, ti_], rel[:, tj_]
        dst = (_const(ea.slot)[:, None] * N + ri) * N + rj
        dst = jnp.where((ri < N) & (rj < N), dst, total)
        idx.append(dst.reshape(-1))
        upd.append(pool.at[src.reshape(-1)].get(mode="clip"))
    flat = jnp.zeros(total, vals_ext.dtype)
    flat = flat.at[jnp.concatenate(idx)].add(jnp.concatenate(upd), mode="drop")
    return flat.reshape(B.size, N, N)


@jax.custom_jvp
def _partial_cholesky(f11: Array, f21: Array) -> Array:
    """Dense kernel of one bucket: `X = [L^-T; F21 L^-T]` where `F11 = L L^T`.

    `f11` must be symmetric. Non-positive-definite blocks give NaN (LAPACK info != 0).
    """
    K = f11.shape[-1]
    L = lax.linalg.cholesky(f11, symmetrize_input=False)
    eye = jnp.broadcast_to(jnp.eye(K, dtype=f11.dtype), f11.shape)
    rhs = jnp.concatenate([eye, f21], axis=-2)
    # X L^T = [I; F21]
    return lax.linalg.triangular_solve(L, rhs, left_side=False, lower=True, transpose_a=True)


@_partial_cholesky.defjvp
def _partial_cholesky_jvp(primals, tangents):
    # Written with matmuls only (no triangular solves, no LAPACK): with Xt = L^-T,
    #   dL = L Phi(S),  S = Xt^T dF11 Xt,  Phi = lower triangle with halved diagonal,
    #   d(L^-T) = -Xt Phi(S)^T,  d(F21 L^-T) = dF21 Xt - (F21 L^-T) Phi(S)^T.
    # Being linear in the tangents and made of matmuls, it transposes to matmuls too, so
    # reverse mode never calls LAPACK either (see the deadlock note in `factor`).
    f11, f21 = primals
    df11, df21 = tangents
    K = f11.shape[-1]
    X = _partial_cholesky(f11, f21)
    xt = X[..., :K, :]
    S = jnp.matmul(jnp.swapaxes(xt, -1, -2), jnp.matmul(df11, xt, precision=_HI), precision=_HI)
    phi = jnp.tril(S) - 0.5 * jnp.eye(K, dtype=S.dtype) * S
    dX = -jnp.matmul(X, jnp.swapaxes(phi, -1, -2), precision=_HI)
    if f21.shape[-2]:
        dX = dX.at[..., K:, :].add(jnp.matmul(df21, xt, precision=_HI))
    return X, dX


def factor(sym: Symbolic, values: Float[Array, " nnz"]) -> Factor:
    """Numeric factorization of the matrix with pattern `sym` and stored `values`.

    `values` is aligned with the CSC pattern given to `symbolic.analyse`; only the entries
    with row >= col are read (duplicates are summed).

    The dense LAPACK calls of successive buckets are chained by a data dependency so they
    never run concurrently: jaxlib 0.10's batched CPU LAPACK kernels split a batch over the
    intra-op thread pool and block on it, which deadlocks when as many of them as the pool
    has threads run at once (two on a 2-core machine). XLA:CPU does not order independent
    work across an optimization barrier, hence a real (zero-valued) dependency.
    """
    values = jnp.asarray(values)
    if values.shape != (sym.nnz,):
        raise ValueError(f"expected values of shape ({sym.nnz},), got {values.shape}")
    if jnp.issubdtype(values.dtype, jnp.complexfloating):
        raise NotImplementedError("complex sparse Cholesky is not supported")
    if not jnp.issubdtype(values.dtype, jnp.floating):
        values = values.astype(jnp.result_type(float))
    dtype = values.dtype
    # Index nnz reads the constant 1 placed on padding pivots.
    vals_ext = jnp.concatenate([values, jnp.ones((1,), dtype)])
    g: list = [None] * len(sym.buckets)
    pivots = []
    pool = None  # update matrices of the level below
    token = None  # last dense kernel output, to serialise LAPACK calls
    for level in sym.levels:
        parts = []
        for b in level:
            B = sym.buckets[b]
            K, M, N = B.K, B.M, B.N
            F = _assemble(B, vals_ext, pool)
            f11 = _tril_sym(F[:, :K, :K])
            f21 = F[:, K:, :K]
            if token is not None:
                f11 = _after(f11, token)
            X = _partial_cholesky(f11, f21)  # [L11^-T; L21]
            token = X
            xt = X[:, :K]
            pivots.append(jnp.diagonal(xt, axis1=-2, axis2=-1).reshape(-1))  # 1 / diag(L11)
            linv = jnp.swapaxes(xt, -1, -2)
            if M:
                L21 = X[:, K:]
                # L21 @ [L11^-1, L21^T] = [W, L21 L21^T]
                Y = jnp.matmul(L21, jnp.swapaxes(X, -1, -2), precision=_HI)
                parts.append((F[:, K:, K:] - Y[:, :, K:]).reshape(-1))
                g[b] = jnp.concatenate([linv, -Y[:, :, :K]], axis=1)
            else:
                g[b] = linv
        pool = jnp.concatenate(parts) if parts else None
    d = jnp.concatenate(pivots)
    ok = jnp.all(d > 0) & jnp.all(jnp.isfinite(d))
    logdet = -2 * jnp.sum(jnp.log(d))
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
