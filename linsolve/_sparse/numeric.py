"""Numeric supernodal Cholesky factorization and triangular solves, traced in JAX.

Multifrontal, one tree level at a time: `symbolic.analyse` put every supernode on the level
just below its parent and split each level into buckets of supernodes padded to a common
size. For each bucket this module

1. assembles the frontal matrices of all its supernodes at once (`level_buffer`): the
   stored values of A through a static O(nnz) map, and the update matrices of the children
   (computed on the level below) at destinations computed in the program from each
   child's rows' positions in its parent (`extend_add_index`). Only lower triangles are
   assembled;
2. partially factorizes them with dense batched kernels: `L11 = chol(F11)`, then one
   triangular solve gives both `L11^-T` and `L21 = F21 L11^-T`, and one matmul gives both
   `W = L21 L11^-1` and the update matrix `U = F22 - L21 L21^T` for the parent.

The factor keeps, per bucket, `G = [L11^-1; -W]` (shape `(b, N, K)`). With it both triangular
solves are a gather, one batched matmul and a scatter per bucket (no triangular solves at
solve time), and the selected inverse (`selinv.py`) needs exactly `L11^-1` and `W`.

This traced phase is what runs on GPU; on the CPU backend `factor` and `solve` hand the
same work, in the same data layout, to the host kernels of `host.py` (one callback per
phase: compile time that does not grow with the problem). Either way `factor`, `solve`
and `logdet` work under `jit`, `vmap` (a batch of value arrays sharing one pattern),
`grad` and `jvp`, in float32 and float64. A matrix that is not positive definite does not raise: the Cholesky
kernel returns NaN for a failed block, NaNs reach the root, and `Factor.ok` is False.

Index arithmetic on the static maps is done in-graph from small arrays (behind an
optimization barrier so XLA does not constant-fold it into huge literals): XLA embeds
constants in the compiled program, and O(front size^2) maps would dominate compile time.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Bool, Float, Inexact

from . import host
from .symbolic import Bucket, Level, Symbolic


HIGHEST = lax.Precision.HIGHEST  # no TF32/bf16 shortcuts on GPU: this is a direct solver


class Factor(eqx.Module):
    """Supernodal Cholesky factor of `P A P^T` (the pattern lives in `Symbolic`).

    `g[b]` holds `[L11^-1; -L21 L11^-1]` for the supernodes of bucket `b`, shape
    `(size, K + M, K)` (identity on padding pivots, zero on padding rows); from the host
    kernels, `flat` holds them joined (read them with `blocks`).
    """

    g: tuple[Inexact[Array, "_b _N _K"], ...]  # (sizes differ between buckets)
    logdet: Float[Array, ""]
    ok: Bool[Array, ""]
    # The blocks joined, when the host kernels made them (`host.py`; `g` is then empty:
    # `blocks` gives them): the host solves and selected inverse read it.
    flat: Inexact[Array, " size"] | None = None


def const(x: np.ndarray) -> Array:
    """A static index array, kept out of XLA's constant folding.

    Index arithmetic on it (broadcasts over tril indices etc.) then runs in the program
    instead of being folded into large literals at compile time.
    """
    return lax.optimization_barrier(jnp.asarray(x))


def after(x: Array | np.ndarray, token: Array) -> Array:
    """`x` (never differentiated: constants, index maps), computed only once `token` is.

    An order for XLA's scheduler, which otherwise computes whatever depends on constants
    alone (index maps, zero-filled buffers, identities) at the start of the program and
    keeps it alive until used: at 32³ that tripled the factorization's memory. The
    dependency is `x + 0 · token[0]` (NaN-safe); under `vmap` it reads one batch member's
    token, so `x` stays unbatched. (An `optimization_barrier` does not do it: XLA:CPU
    lowers it to control dependencies that do not survive on constant operands.)
    """
    return _order(jnp.asarray(x), lax.stop_gradient(token))


@jax.custom_batching.custom_vmap
def _order(x: Array, token: Array) -> Array:
    dep = jnp.nan_to_num(jnp.real(token.reshape(-1)[0]) * 0)
    return x + dep.astype(x.dtype)


@_order.def_vmap
def _order_vmap(axis_size, in_batched, x, token):
    del axis_size
    x_batched, token_batched = in_batched
    if token_batched:
        token = token[0]
    return _order(x, token), x_batched


def _after(x: Array, token: Array) -> Array:
    """`x` (differentiable), computed only once `token` is: `after`'s zero added to it."""
    return x + after(np.zeros((), x.dtype), token)


def conj_transpose(x: Array) -> Array:
    """Conjugate transpose of the last two axes (the transpose for real arrays)."""
    x = jnp.swapaxes(x, -1, -2)
    return jnp.conj(x) if jnp.iscomplexobj(x) else x


def tril_sym(x: Array) -> Array:
    """Hermitian (symmetric) matrix from the lower triangle of the last two axes; for
    complex input the diagonal's imaginary part is not read."""
    low = jnp.tril(x, -1)
    d = jnp.diagonal(x, axis1=-2, axis2=-1)
    if jnp.iscomplexobj(x):
        d = jnp.real(d).astype(x.dtype)
    return low + conj_transpose(low) + d[..., None] * jnp.eye(x.shape[-1], dtype=x.dtype)


_GATHER_1D = lax.GatherDimensionNumbers(
    offset_dims=(), collapsed_slice_dims=(0,), start_index_map=(0,)
)
_SCATTER_1D = lax.ScatterDimensionNumbers(
    update_window_dims=(), inserted_window_dims=(0,), scatter_dims_to_operand_dims=(0,)
)


def _gather(x: Array, idx: np.ndarray) -> Array:
    """`x[idx]` for a static, in-bounds, non-negative index map (no index normalisation or
    clamping at run time)."""
    return lax.gather(
        x,
        const(idx)[:, None],
        _GATHER_1D,
        (1,),
        mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS,
        indices_are_sorted=False,
        unique_indices=False,
    )


def extend_add_index(B: Bucket, token: Array) -> Array:
    """Destinations of the update matrices `(b, M, M)` of bucket `B` in its parent level's
    flat `[P | U]` buffer (see `symbolic.Level`), computed in the program from O(b M)
    arrays; entries that are not real lower-triangle entries point past any buffer (the
    scatter drops them).

    Child row `i` sits at row/column `r = up_rel[t, i]` of the parent's front: entry
    `(r, c)`, `r >= c`, lands in the parent's pivot columns when `c < K` and in its update
    matrix otherwise. Computed once `token` (the update matrices) is: the `(b, M, M)`
    result is not made before it is needed.
    """
    rel = after(B.up_rel, token)
    r, c = rel[:, :, None], rel[:, None, :]
    K = const(B.up_K)[:, None, None]
    M = const(B.up_M)[:, None, None]
    pbase = const(B.up_pbase)[:, None, None]
    ubase = const(B.up_ubase)[:, None, None]
    dst = jnp.where(c < K, pbase + r * K + c, ubase + (r - K) * M + c - K)
    return jnp.where((c >= 0) & (r >= c), dst, np.iinfo(np.int32).max)


def level_buffer(
    lev: Level,
    init: Array,
    values: Array | None,
    updates: list[tuple[Array, Array]],
    token: Array | None = None,
) -> Array:
    """The flat `[P | U]` buffer of level `lev`: `init` (its P part, or all of it), plus the
    stored values (`[values, 1]`, or None) and the children's update matrices
    (`(extend_add_index, U)` pairs, one per bucket of the level below), once `token`
    (default: the last update matrix) is computed.

    One scatter-add per child bucket, straight from its `(b, M, M)` update matrices (their
    upper triangles dropped by the index): measured at 512², as fast as the static maps
    were, while packing the lower triangles first (a gather) or concatenating the
    buckets into one scatter (a copy) cost 15–40 % more.
    """
    size = lev.p_size + lev.u_size
    # Not before the level below is done (its last update matrix): the buffers of all
    # levels would otherwise be filled and assembled at the start and all kept alive.
    if token is None and updates:
        token = updates[-1][1]
    zero = after(np.zeros((), init.dtype), token) if token is not None else 0
    out = jnp.concatenate([init, jnp.full((size - init.shape[0],), zero, init.dtype)])
    if values is not None and lev.v_dst.size:
        out = lax.scatter_add(
            out,
            const(lev.v_dst)[:, None],
            _gather(values, lev.v_src),
            _SCATTER_1D,
            indices_are_sorted=True,
            unique_indices=False,
            mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS,
        )
    for idx, u in updates:
        out = lax.scatter_add(
            out,
            idx.reshape(-1, 1),
            u.reshape(-1),
            _SCATTER_1D,
            indices_are_sorted=False,
            unique_indices=False,
            mode=lax.GatherScatterMode.FILL_OR_DROP,
        )
    return out


def front_blocks(buf: Array, lev: Level, B: Bucket) -> tuple[Array, Array]:
    """Bucket `B`'s pivot columns `(b, N, K)` and update matrices `(b, M, M)` in the flat
    `[P | U]` buffer of its level."""
    P = buf[B.p_offset : B.p_offset + B.size * B.N * B.K].reshape(B.size, B.N, B.K)
    start = lev.p_size + B.u_offset
    U = buf[start : start + B.size * B.M * B.M].reshape(B.size, B.M, B.M)
    return P, U


@jax.custom_jvp
def _partial_cholesky(f11: Array, f21: Array) -> Array:
    """Dense kernel of one bucket: `X = [L^-H; F21 L^-H]` where `F11 = L L^H`.

    Only the lower triangle of `f11` is read (the hermitian matrix it defines is the one
    factorized). Non-positive-definite blocks give NaN (LAPACK info != 0).
    """
    K = f11.shape[-1]
    if K <= _SMALL_PIVOT_BLOCK:
        return _small_partial_cholesky(f11, f21)

    def one(blocks):
        a11, a21 = blocks
        L = lax.linalg.cholesky(a11, symmetrize_input=False)
        # The identity built in the loop (not hoisted out of it as a constant, alive for
        # the whole program: K² entries, 345 MB for the root of a 64³ grid).
        eye = jnp.eye(K, dtype=a11.dtype) * after(np.ones((), a11.dtype), a11)
        rhs = jnp.concatenate([eye, a21], axis=-2)
        # X L^H = [I; F21]
        return lax.linalg.triangular_solve(
            L, rhs, left_side=False, lower=True, transpose_a=True, conjugate_a=True
        )

    # Never a batched LAPACK call: jaxlib 0.10 runs the matrices of a batched CPU LAPACK
    # call in parallel on XLA's thread pool, and two such calls at once deadlock on
    # machines with few cores. Chaining the calls of one factorization (see `factor`)
    # cannot order them against another factorization (or any batched LAPACK call) in the
    # same program. So large blocks go one at a time through unbatched LAPACK calls (they
    # are few, and their O(K³) work hides the loop), small ones through plain XLA ops.
    return lax.map(one, (f11, f21))


# Pivot blocks up to this size are factorized by `_small_partial_cholesky`.
_SMALL_PIVOT_BLOCK = 8


def _small_partial_cholesky(f11: Array, f21: Array) -> Array:
    """`_partial_cholesky` for small pivot blocks, in vectorised XLA ops over the batch.

    Right-looking Cholesky of `F11` with the rows of `I` stacked below it: step `j` turns
    column `j` of the stack into column `j` of `L` (rows of F11) and of `L^-H` (the
    stacked rows, by the same rank-one updates a forward substitution does), so one
    `fori_loop` over the `K` columns gives `L^-H` (a loop, not unrolled: compile time
    stays that of one step; one loop, not two: XLA:CPU compiles every loop body on its
    own). `F21 L^-H` is then one matmul. Reads the lower triangle of `F11` only. A
    non-positive pivot gives NaN, like LAPACK's failure path.
    """
    K = f11.shape[-1]
    eye = jnp.broadcast_to(jnp.eye(K, dtype=f11.dtype), f11.shape)
    a = jnp.concatenate([f11, eye], axis=-2)  # (b, 2K, K)
    row = jnp.arange(2 * K)
    col = jnp.arange(K)

    def step(j, a):
        d = jnp.sqrt(jnp.real(a[:, j, j])).astype(a.dtype)
        v = jnp.where(row >= j, a[:, :, j] / d[:, None], 0)  # column j of L and of L^-H
        below = jnp.where(row > j, v, 0)
        upd = below[:, :, None] * jnp.conj(v[:, None, :K])
        a = a - jnp.where(col > j, upd, 0)
        return jnp.where(col == j, v[:, :, None], a)

    xt = lax.fori_loop(0, K, step, a)[:, K:]  # L^-H
    return jnp.concatenate([xt, jnp.matmul(f21, xt, precision=HIGHEST)], axis=-2)


@_partial_cholesky.defjvp
def _partial_cholesky_jvp(primals, tangents):
    # Written with matmuls only (no triangular solves, no LAPACK): with Xt = L^-H,
    #   dL = L Phi(S),  S = Xt^H dF11 Xt,  Phi = lower triangle with halved diagonal,
    #   d(L^-H) = -Xt Phi(S)^H,  d(F21 L^-H) = dF21 Xt - (F21 L^-H) Phi(S)^H.
    # Being linear in the tangents and made of matmuls, it transposes to matmuls too, so
    # reverse mode never calls LAPACK either (see the deadlock note in `factor`).
    f11, f21 = primals
    df11, df21 = tangents
    K = f11.shape[-1]
    X = _partial_cholesky(f11, f21)
    xt = X[..., :K, :]
    # the primal reads the lower triangle of F11: so does its tangent
    S = jnp.matmul(
        conj_transpose(xt), jnp.matmul(tril_sym(df11), xt, precision=HIGHEST), precision=HIGHEST
    )
    phi = jnp.tril(S) - 0.5 * jnp.eye(K, dtype=S.dtype) * S
    dX = -jnp.matmul(X, conj_transpose(phi), precision=HIGHEST)
    if f21.shape[-2]:
        dX = dX.at[..., K:, :].add(jnp.matmul(df21, xt, precision=HIGHEST))
    return X, dX


def _diag(x: Array) -> Array:
    """Diagonal of the last two (square) axes, as a strided slice (`jnp.diagonal` is a
    gather: a kernel of its own in XLA:CPU)."""
    K = x.shape[-1]
    return x.reshape(x.shape[:-2] + (K * K,))[..., :: K + 1]


def factor(sym: Symbolic, values: Inexact[Array, " nnz"]) -> Factor:
    """Numeric factorization of the matrix with pattern `sym` and stored `values`.

    `values` is aligned with the CSC pattern given to `symbolic.analyse`; only the entries
    with row >= col are read (duplicates are summed). On the CPU backend the host kernels
    do it (`host.py`: compile time independent of the problem), elsewhere `traced_factor`.
    """
    values = checked_values(sym, values)
    if not host.enabled():
        return traced_factor(sym, values)
    flat, d = _host_factor(sym, values)
    return Factor(g=(), logdet=-2 * jnp.sum(jnp.log(d)), ok=_pivots_ok(d), flat=flat)


def blocks(sym: Symbolic, fac: Factor) -> tuple[Array, ...]:
    """The factor's per-bucket blocks `G` (views of `fac.flat` for the host kernels')."""
    return fac.g if fac.flat is None else host.split(sym, fac.flat)


def checked_values(sym: Symbolic, values) -> Array:
    values = jnp.asarray(values)
    if values.shape != (sym.nnz,):
        raise ValueError(f"expected values of shape ({sym.nnz},), got {values.shape}")
    if not jnp.issubdtype(values.dtype, jnp.inexact):
        values = values.astype(jnp.result_type(float))
    return values


def _pivots_ok(d: Array) -> Array:
    return jnp.all(d > 0) & jnp.all(jnp.isfinite(d))


def traced_factor(sym: Symbolic, values: Inexact[Array, " nnz"]) -> Factor:
    """`factor` traced in XLA ops, one tree level and bucket at a time (any backend).

    No batched LAPACK call is made (see `_partial_cholesky`: they can deadlock on CPU
    with jaxlib 0.10). The dense kernels of successive buckets are also chained by a
    (zero-valued) data dependency, so one factorization runs them one after another.
    """
    values = checked_values(sym, values)
    dtype = values.dtype
    if jnp.iscomplexobj(values):
        # The lower triangle of P A P^T holds conj(v) where an entry lands above the diagonal.
        values = jnp.where(const(sym.entry_flip), jnp.conj(values), values)
    # Index nnz reads the constant 1 placed on padding pivots.
    vals_ext = jnp.concatenate([values, jnp.ones((1,), dtype)])
    g: list = [None] * len(sym.buckets)
    pivots = []
    updates: list[tuple[Array, Array]] = []  # of the level below: (destinations, U)
    token = None  # last LAPACK output, to serialise LAPACK calls
    for lev in sym.level_maps:
        buf = level_buffer(lev, jnp.zeros((0,), dtype), vals_ext, updates)
        updates = []
        for b in lev.buckets:
            B = sym.buckets[b]
            K, M = B.K, B.M
            P, U = front_blocks(buf, lev, B)
            f21 = P[:, K:]
            W = S = None  # the update blocks (M > 0 only)
            if K == 1:
                # Scalar pivots (most leaves of a nested-dissection tree): elementwise, no
                # LAPACK call per supernode.
                xt = lax.rsqrt(jnp.real(P[:, :1])).astype(dtype)  # 1 / L11 = L11^-H
                L21 = f21 * xt
                W = L21 * xt
                S = L21 * conj_transpose(L21) if M else None
            else:
                f11 = P[:, :K]  # lower triangle read
                if token is not None:
                    f11 = _after(f11, token)
                X = _partial_cholesky(f11, f21)  # [L11^-H; L21]
                token = X
                xt, L21 = X[:, :K], X[:, K:]
                if M:
                    # [W, S] = L21 [L11^-1, L21^H] in one matmul
                    WS = jnp.matmul(L21, conj_transpose(X), precision=HIGHEST)
                    W, S = WS[:, :, :K], WS[:, :, K:]
            # 1 / diag(L11) (real)
            pivots.append(jnp.real(_diag(xt)).reshape(-1))
            if M:
                assert W is not None and S is not None
                # The update matrix: the children's contributions minus L21 L21^H.
                upd = U - S
                # destinations computed now, not at the start of the program
                updates.append((extend_add_index(B, upd), upd))
                g[b] = jnp.concatenate([conj_transpose(xt), -W], axis=1)
            else:
                g[b] = conj_transpose(xt)
            # Materialized here: XLA would otherwise recompute a scalar-pivot bucket's
            # blocks inside their late consumers (the selected inverse, the solves) from
            # the level buffer, keeping every level's buffer alive to the end.
            g[b] = lax.optimization_barrier(g[b])
    d = jnp.concatenate(pivots)
    ok = _pivots_ok(d)
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


def solve(sym: Symbolic, fac: Factor, b: Inexact[Array, "n *k"]) -> Inexact[Array, "n *k"]:  # noqa: F821
    """Solve `A x = b` with the factor, for `b` of shape (n,) or (n, k)."""
    b = jnp.asarray(b)
    if b.ndim not in (1, 2) or b.shape[0] != sym.n:
        raise ValueError(f"expected b of shape ({sym.n},) or ({sym.n}, k), got {b.shape}")
    vector = b.ndim == 1
    x = b[:, None] if vector else b
    x = x.astype(jnp.result_type(x.dtype, (fac.g[0] if fac.flat is None else fac.flat).dtype))
    if fac.flat is not None:
        x = _host_solve(sym, fac.flat, x)
    else:
        x = _traced_solve(sym, fac.g, x)
    return x[:, 0] if vector else x


def _traced_solve(sym: Symbolic, g, x: Array) -> Array:
    x = solve_lower(sym, g, x[sym.perm])
    return solve_upper(sym, g, x)[sym.iperm]


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _host_solve(sym: Symbolic, flat: Array, x: Array) -> Array:
    return host.solve(sym, flat, x)


@_host_solve.defjvp
def _host_solve_jvp(sym, primals, tangents):
    # linear in (flat, x) jointly only to first order: the traced solve's derivative
    return jax.jvp(lambda f, x: _traced_solve(sym, host.split(sym, f), x), primals, tangents)


def solve_lower(sym: Symbolic, g, x: Inexact[Array, "n k"]) -> Inexact[Array, "n k"]:
    """`L^-1 x` in the permuted ordering, leaves first, from the factor blocks `g`.

    Per supernode: x_cols <- L11^-1 x_cols and x_rows -= W x_cols_old, i.e. one scatter-add
    of `G x_cols - [x_cols; 0]`.
    """
    for level in sym.levels:
        for b in level:
            B = sym.buckets[b]
            cols = const(B.col_idx)
            xc = x.at[cols].get(mode="fill", fill_value=0)  # (size, K, k)
            r = jnp.matmul(g[b], xc, precision=HIGHEST)
            r = r.at[:, : B.K].add(-xc)
            x = x.at[const(_all_idx(B))].add(r, mode="drop")
    return x


def solve_upper(sym: Symbolic, g, x: Inexact[Array, "n k"]) -> Inexact[Array, "n k"]:
    """`L^-H x` in the permuted ordering, roots first: x_cols <- G^H [x_cols; x_rows]."""
    for level in reversed(sym.levels):
        for b in level:
            B = sym.buckets[b]
            v = x.at[const(_all_idx(B))].get(mode="fill", fill_value=0)  # (size, N, k)
            xc = jnp.matmul(conj_transpose(g[b]), v, precision=HIGHEST)
            x = x.at[const(B.col_idx)].set(xc, mode="drop")
    return x


# ---------------------------------------------------------------------------------------
# The factor's tangent from the factor (forward mode, leaves up): the derivative of the
# host factorization, and the first half of the selected inverse's derivative
# (`sandwich.py`)
# ---------------------------------------------------------------------------------------


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _host_factor(sym: Symbolic, values: Array) -> tuple[Array, Array]:
    """`(flat factor, diag(L^-1))` by the host kernels."""
    return host.factor_call(sym, values)


@_host_factor.defjvp
def _host_factor_jvp(sym, primals, tangents):
    # Written from the host factor, and differentiable again (traced XLA); never a
    # derivative of the traced factorization.
    (values,), (dv,) = primals, tangents
    flat, d = _host_factor(sym, values)
    x = [mask(B, xb) for B, xb in zip(sym.buckets, inject(sym, dv))]
    dflat = host.join(factor_tangent(sym, host.split(sym, flat), x, linear=True))
    return (flat, d), (dflat, jnp.real(dflat[host.plan(sym).diag]))


def mm(a: Array, b: Array) -> Array:
    """Batched matmul; an inner dimension of 1 (scalar pivots) as a broadcast product."""
    if a.shape[-1] == 1:
        return a * b
    return jnp.matmul(a, b, precision=HIGHEST)


@functools.lru_cache(maxsize=8)
def _inject_maps(sym: Symbolic):
    """Per bucket, (stored entries read into it, their flat index in its blocks laid out
    as the factor's `(b, N, K)`)."""
    bounds = np.cumsum([0] + [B.sel_pos.size for B in sym.buckets])
    owner = np.empty(sym.nnz, np.int64)  # entry -> position in concat(sel_pos)
    owner[:] = sym.sel_order
    maps = []
    for b, B in enumerate(sym.buckets):
        e = np.nonzero((owner >= bounds[b]) & (owner < bounds[b + 1]) & sym.entry_read)[0]
        pos = B.sel_pos[owner[e] - bounds[b]].astype(np.int64)
        K, M, N = B.K, B.M, B.N
        top = B.size * K * K
        t = np.where(pos < top, pos // (K * K), (pos - top) // max(M * K, 1))
        r = np.where(pos < top, (pos // K) % K, K + ((pos - top) // K) % max(M, 1))
        c = pos % K
        maps.append((e.astype(np.int32), ((t * N + r) * K + c).astype(np.int32)))
    return maps


def inject(sym: Symbolic, dv: Array):
    """The stored values `dv` as lower-triangle blocks of the fronts, in the layout of the
    factor (duplicates summed; for complex input the lower triangle of the permuted
    matrix holds conj(v) where an entry lands above the diagonal)."""
    if jnp.iscomplexobj(dv):
        dv = jnp.where(const(sym.entry_flip), jnp.conj(dv), dv)
    out = []
    for B, (e, pos) in zip(sym.buckets, _inject_maps(sym)):
        x = jnp.zeros((B.size * B.N * B.K,), dv.dtype)
        if e.size:
            x = x.at[const(pos)].add(dv[const(e)])
        out.append(x.reshape(B.size, B.N, B.K))
    return out


def valid_weights(B: Bucket, dtype):
    """Weights of the stored entries of a bucket's blocks (b, N, K): 1 on the diagonal,
    2 strictly below it, 0 above it and on padding (built in-graph from O(b) arrays)."""
    K, N = B.K, B.N
    ncols = const(B.ncols)[:, None, None]
    nrows = const(B.nrows)[:, None, None]
    r = jnp.arange(N)[None, :, None]
    c = jnp.arange(K)[None, None, :]
    ok = (c < ncols) & jnp.where(r < K, (r >= c) & (r < ncols), r - K < nrows)
    return jnp.where(ok, jnp.where(r == c, 1, 2), 0).astype(jnp.real(jnp.zeros((), dtype)).dtype)


def mask(B: Bucket, x):
    """`x` on the stored entries only (zero elsewhere; real diagonal)."""
    w = valid_weights(B, x.dtype)
    if jnp.iscomplexobj(x):
        r = jnp.arange(B.N)[None, :, None]
        c = jnp.arange(B.K)[None, None, :]
        x = jnp.where(r == c, jnp.real(x).astype(x.dtype), x)
    return jnp.where(w > 0, x, 0)


def factor_tangent(sym: Symbolic, g, x, linear: bool = False):
    """Forward-mode derivative of the factor blocks when `x` is added to the fronts'
    pivot columns (leaves first, the update matrices' tangents extend-added upwards).

    `linear`: `x` is a tangent that JAX will transpose this through (a `custom_jvp`
    rule), so the index maps are ordered by the factor blocks `g`, never by a value
    computed from `x`.
    """
    dtype = g[0].dtype
    dg: list = [None] * len(sym.buckets)
    # The stored values (and the constant 1 on padding pivots) have no tangent here.
    updates: list = []  # tangents of the level below's update matrices, with destinations
    tokens: list = []  # the factor blocks of the level below (`linear`)
    for lev in sym.level_maps:
        dp_all = jnp.concatenate([x[b].reshape(-1) for b in lev.buckets])
        prev = updates
        buf = level_buffer(
            lev, dp_all, None, updates, token=tokens[-1] if linear and prev else None
        )
        updates, tokens = [], []
        for b in lev.buckets:
            B = sym.buckets[b]
            K, M = B.K, B.M
            dP, du = front_blocks(buf, lev, B)
            y = g[b][:, :K]  # L11^-1
            df11 = tril_sym(dP[:, :K])
            s = mm(mm(y, df11), conj_transpose(y))
            phi = jnp.tril(s) - 0.5 * jnp.eye(K, dtype=dtype) * s
            dy = -mm(phi, y)
            if not M:
                dg[b] = dy
                continue
            wn = g[b][:, K:]  # -W
            df21 = dP[:, K:]
            wdf = mm(wn, df11)  # -W dF11
            dwn = -mm(mm(df21 + wdf, conj_transpose(y)), y)  # -dW
            t = df21 + 0.5 * wdf
            q = jnp.matmul(t, conj_transpose(wn), precision=HIGHEST)
            upd = du + q + conj_transpose(q)
            updates.append((extend_add_index(B, g[b] if linear else upd), upd))
            tokens.append(g[b])
            dg[b] = jnp.concatenate([dy, dwn], axis=1)
    return dg
