"""Selected inverse (Takahashi recurrences) and the log-determinant with its cheap derivative.

For a supernode with pivot columns J and below rows I, and its factor blocks
`L11^-1` and `W = L21 L11^-1` (kept by `numeric.factor` as `G = [L11^-1; -W]`), the entries of
`Z = A^-1` on the pattern of L satisfy

    Z[I, J] = -Z[I, I] W
    Z[J, J] = L11^-T L11^-1 - W^T Z[I, J]  ( = G^T [L11^-1; Z[I, J]] )

where `Z[I, I]` is a block of the parent's front (I is a clique of the filled graph, inside
the parent's rows). So the recurrence runs from the roots down, one tree level at a time,
every bucket of a level batched: gather `Z[I, I]` from the parent level's fronts, two batched
matmuls, and write the new front `[[Z[J, J], Z[I, J]^T], [Z[I, J], Z[I, I]]]` to this level's
flat pool for the children. Only entries on the pattern of L are ever formed, never a dense
inverse. Costs about twice the factorization.

`logdet` has a `jax.custom_jvp` whose tangent is `sum_e w_e Z[row_e, col_e] dv_e` over the
stored entries (w = 1 on the diagonal, 2 off it since a stored lower entry defines both
(i, j) and (j, i), 0 for unread upper entries), computed from the selected inverse. It is
linear in the tangent, so reverse mode follows by transposition, and `selected_inverse` is
itself differentiable (by autodiff through the recurrences), so Hessian-vector products work.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from . import numeric
from .numeric import _H, _HI, Factor, _const
from .symbolic import Bucket, Symbolic


def _fronts(sym: Symbolic, fac: Factor, emit):
    """Run the Takahashi recurrence; call `emit(b, z11, z21, z22)` with each bucket's blocks
    Z[J, J] (b, K, K), Z[I, J] (b, M, K) and Z[I, I] (b, M, M) (the last two None if M = 0).
    """
    pool = None  # blocks of the level above, flat (see `Bucket.z_offset`)
    for level in reversed(sym.levels):  # roots first
        parts = []
        for b in level:
            B = sym.buckets[b]
            K, M = B.K, B.M
            G = fac.g[b]
            linv = G[:, :K]
            if M:
                z22 = _gather_zii(B, pool)
                z21 = jnp.matmul(z22, G[:, K:], precision=_HI)  # -Z[I,I] W
                # Z[J,J] = L11^-H L11^-1 - W^H Z[I,J]
                z11 = jnp.matmul(_H(linv), linv, precision=_HI) + jnp.matmul(
                    _H(G[:, K:]), z21, precision=_HI
                )
                parts += [z11.reshape(-1), z21.reshape(-1), z22.reshape(-1)]
            else:
                z11 = jnp.matmul(_H(linv), linv, precision=_HI)
                z21 = z22 = None
                parts.append(z11.reshape(-1))
            emit(b, z11, z21, z22)
        pool = jnp.concatenate(parts)


def _gather_zii(B: Bucket, pool: Array) -> Array:
    """Z[I, I] of every supernode of the bucket, read from its parent's blocks.

    The flat index of parent-front entry (r, c) is computed in-graph from O(b M) arrays
    (XLA fuses it into the gather), reading the lower triangle and mirroring the upper.
    """
    rel = _const(B.up_rel)
    r, c = rel[:, :, None], rel[:, None, :]
    hi, lo = jnp.maximum(r, c), jnp.minimum(r, c)
    K = _const(B.up_K)[:, None, None]
    M = _const(B.up_M)[:, None, None]
    b11 = _const(B.up_b11)[:, None, None]
    b21 = _const(B.up_b21)[:, None, None]
    b22 = _const(B.up_b22)[:, None, None]
    src = jnp.where(
        lo < K,
        jnp.where(hi < K, b11 + hi * K + lo, b21 + (hi - K) * K + lo),
        b22 + (hi - K) * M + lo - K,
    )
    # Padding rows/columns (rel == -1) read zero: send them past the end of the pool.
    src = jnp.where(lo >= 0, src, pool.shape[0])
    z = pool.at[src].get(mode="fill", fill_value=0)
    if jnp.iscomplexobj(z):  # the upper triangle mirrors the lower: Z[r, c] = conj(Z[c, r])
        z = jnp.where(r < c, jnp.conj(z), z)
    return z


def _selinv(sym: Symbolic, fac: Factor, entries: bool = True, diag: bool = False):
    """One Takahashi pass: (values at the stored entries or None, diag(A^-1) or None)."""
    chunks: dict[int, Array] = {}
    diags: dict[int, Array] = {}

    def emit(b, z11, z21, z22):
        B = sym.buckets[b]
        if entries and B.sel_pos.size:
            flat = _flat_blocks(z11, z21)
            chunks[b] = flat.at[_const(B.sel_pos)].get(mode="fill", fill_value=0)
        if diag:
            diags[b] = jnp.diagonal(z11, axis1=-2, axis2=-1)

    _fronts(sym, fac, emit)
    out_e = out_d = None
    if entries:
        cat = jnp.concatenate([chunks[b] for b in sorted(chunks)])
        out_e = cat[_const(sym.sel_order)]
        if jnp.iscomplexobj(out_e):
            # Entries are read from the lower triangle of the permuted inverse: where that is
            # the mirror of the entry, A^-1[i, j] = conj(A^-1[j, i]).
            out_e = jnp.where(_const(sym.entry_flip), jnp.conj(out_e), out_e)
    if diag:
        d = jnp.zeros(sym.n, fac.g[0].dtype)
        for b, v in diags.items():
            d = d.at[_const(sym.buckets[b].col_idx)].set(v, mode="drop")
        out_d = d[sym.iperm]
    return out_e, out_d


def _flat_blocks(z11, z21):
    """The pivot-column blocks of a bucket, flat, as `Bucket.block_pos` numbers them (the
    Z[I, I] block, which comes last there, is never read back: its entries belong to
    ancestors)."""
    if z21 is None:
        return z11.reshape(-1)
    return jnp.concatenate([z11.reshape(-1), z21.reshape(-1)])


def _entries_from_factor(sym: Symbolic, fac: Factor) -> Float[Array, " nnz"]:
    return _selinv(sym, fac, entries=True)[0]


def selected_inverse_and_diag(
    sym: Symbolic, fac: Factor
) -> tuple[Float[Array, " nnz"], Float[Array, " n"]]:
    """`(selected_inverse_from_factor, diag_inverse_from_factor)` in a single pass."""
    return _selinv(sym, fac, entries=True, diag=True)


def selected_inverse(sym: Symbolic, values: Float[Array, " nnz"]) -> Float[Array, " nnz"]:
    """Entries of `A^-1` at the stored entries, aligned with `values`.

    A stored strict-upper entry (full symmetric storage) gets the value of its mirror
    `A^-1[j, i]` (equal by symmetry), or 0 if that mirror is not on the pattern of L.
    """
    return _entries_from_factor(sym, numeric.factor(sym, values))


def selected_inverse_from_factor(sym: Symbolic, fac: Factor) -> Float[Array, " nnz"]:
    """As `selected_inverse`, reusing a factorization."""
    return _entries_from_factor(sym, fac)


def diag_inverse(sym: Symbolic, values: Float[Array, " nnz"]) -> Float[Array, " n"]:
    """diag(A^-1) in the original ordering (e.g. marginal variances of a GMRF)."""
    return diag_inverse_from_factor(sym, numeric.factor(sym, values))


def diag_inverse_from_factor(sym: Symbolic, fac: Factor) -> Float[Array, " n"]:
    """As `diag_inverse`, reusing a factorization."""
    return _selinv(sym, fac, entries=False, diag=True)[1]


def l_pattern(sym: Symbolic) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the supernodal pattern of L (lower triangle with the diagonal) in the
    ORIGINAL ordering, in the order `selected_inverse_on_l` returns its values.

    Includes the explicit zeros added by supernode amalgamation.
    """
    rows, cols, _ = _l_pattern_maps(sym)
    return rows, cols


@functools.lru_cache(maxsize=8)
def _l_pattern_maps(sym: Symbolic):
    rows, cols, pos = [], [], []
    for b, B in enumerate(sym.buckets):
        # every (supernode t, front row r, pivot column j < ncols[t]) with r >= j real
        kk = B.ncols.astype(np.int64)
        mm = B.nrows.astype(np.int64)
        t, r, j = np.nonzero(
            (np.arange(B.N)[None, :, None] >= np.arange(B.K)[None, None, :])
            & (np.arange(B.K)[None, None, :] < kk[:, None, None])
            & (
                (np.arange(B.N)[None, :, None] < kk[:, None, None])
                | (
                    (np.arange(B.N)[None, :, None] >= B.K)
                    & (np.arange(B.N)[None, :, None] < B.K + mm[:, None, None])
                )
            )
        )
        full = np.concatenate([B.col_idx, B.row_idx], axis=1).astype(np.int64)
        rows.append(full[t, r])
        cols.append(B.col_idx[t, j].astype(np.int64))
        pos.append(np.stack([np.full(t.shape[0], b), B.block_pos(t, r, j)], 1))
    rows = sym.perm[np.concatenate(rows)]
    cols = sym.perm[np.concatenate(cols)]
    pos = np.concatenate(pos)
    # lower triangle in the original ordering; values read from above the diagonal there
    # are conjugated (complex hermitian)
    lo, hi = np.minimum(rows, cols), np.maximum(rows, cols)
    return hi, lo, (pos, rows < cols)


def selected_inverse_on_l(sym: Symbolic, values: Float[Array, " nnz"]) -> Float[Array, " nnzL"]:
    """Entries of `A^-1` on the whole (supernodal) pattern of L, aligned with `l_pattern`."""
    fac = numeric.factor(sym, values)
    _, _, (pos, flip) = _l_pattern_maps(sym)
    chunks = {}

    def emit(b, z11, z21, z22):
        chunks[b] = _flat_blocks(z11, z21)

    _fronts(sym, fac, emit)
    out = []
    order = []
    for b in sorted(chunks):
        sel = np.nonzero(pos[:, 0] == b)[0]
        if sel.size:
            out.append(chunks[b][_const(pos[sel, 1].astype(np.int32))])
            order.append(sel)
    order = np.concatenate(order)
    inv = np.empty_like(order)
    inv[order] = np.arange(order.shape[0])
    out = jnp.concatenate(out)[_const(inv)]
    if jnp.iscomplexobj(out):
        out = jnp.where(_const(flip), jnp.conj(out), out)
    return out


# ---------------------------------------------------------------------------------------
# log-determinant with its derivative from the selected inverse
# ---------------------------------------------------------------------------------------


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def logdet_and_ok(sym: Symbolic, values: Float[Array, " nnz"]) -> tuple[Array, Array]:
    """`(log det A, ok)`, ok False when A is not (numerically) positive definite.

    Derivative w.r.t. `values`: `weight * selected_inverse` (see module docstring).
    """
    fac = numeric.factor(sym, values)
    return fac.logdet, fac.ok


@logdet_and_ok.defjvp
def _logdet_jvp(sym, primals, tangents):
    (values,), (dv,) = primals, tangents
    fac = numeric.factor(sym, values)
    z = _entries_from_factor(sym, fac)
    w = jnp.asarray(sym.logdet_weight, dtype=z.dtype)
    # d log det A = tr(A^-1 dA); a stored lower entry v at (i, j), i > j, is A[i, j] and,
    # conjugated, A[j, i]: its term is 2 Re(conj(Z[i, j]) dv) (Re(Z[i, i] dv) on the
    # diagonal, whose imaginary part is not read).
    if jnp.iscomplexobj(z):  # Z[i, i] is real: no derivative w.r.t. Im of the diagonal
        z = jnp.where(_const(sym.entry_row == sym.entry_col), jnp.real(z).astype(z.dtype), z)
    tangent = jnp.sum(w * jnp.conj(z) * dv)
    if jnp.iscomplexobj(tangent):
        tangent = jnp.real(tangent)
    return (fac.logdet, fac.ok), (tangent, np.zeros((), dtype=jax.dtypes.float0))


def logdet(sym: Symbolic, values: Float[Array, " nnz"]) -> Float[Array, ""]:
    """log det A for SPD A (NaN if A is not positive definite)."""
    return logdet_and_ok(sym, values)[0]


def logdet_grad_weights(sym: Symbolic) -> np.ndarray:
    """d logdet / d values = logdet_grad_weights * selected_inverse (1 diag, 2 off, 0 unread)."""
    return sym.logdet_weight
