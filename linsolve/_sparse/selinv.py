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

`selected_inverse`, `diag_inverse` and `selected_inverse_on_l` (functions of the stored
values) are differentiated by their own rule, not by tracing the recurrences:
`dZ = -P(Z dA Z)`, one more pass over the factor (`sandwich.py`), whose transpose is
itself, so reverse mode costs one such pass and stores nothing of the recurrences.

`logdet` has a `jax.custom_jvp` whose tangent is `sum_e w_e Z[row_e, col_e] dv_e` over the
stored entries (w = 1 on the diagonal, 2 off it since a stored lower entry defines both
(i, j) and (j, i), 0 for unread upper entries), computed from the selected inverse. It is
linear in the tangent, so reverse mode follows by transposition; its second derivatives
go by autodiff through the recurrences (`_entries_from_factor`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from . import host, host_kernels, numeric, sandwich
from .numeric import Factor, const, inject
from .symbolic import Symbolic
from .takahashi import fronts


# Outputs of a Takahashi pass: "entries" (A^-1 at the stored entries), "diag" (diag A^-1),
# "on_l" (A^-1 on the pattern of L). Each reads a small part of every bucket's blocks as
# the recurrence emits them (`_take`), then puts the parts together (`_finish`).


def _take(sym: Symbolic, what: str, b: int, z11: Array, z21: Array | None) -> Array | None:
    B = sym.buckets[b]
    if what == "diag":
        return jnp.diagonal(z11, axis1=-2, axis2=-1)
    pos = B.sel_pos if what == "entries" else _on_l_reads(sym)[b]
    if not pos.size:
        return None
    return _flat_blocks(z11, z21).at[const(pos)].get(mode="fill", fill_value=0)


def _finish(sym: Symbolic, what: str, chunks: dict, dtype) -> Array:
    if what == "diag":
        d = jnp.zeros(sym.n, dtype)
        for b, v in chunks.items():
            d = d.at[const(sym.buckets[b].col_idx)].add(v, mode="drop")  # real columns unique
        return d[sym.iperm]
    out = jnp.concatenate([chunks[b] for b in sorted(chunks) if chunks[b] is not None])
    if what == "entries":
        out = out[const(sym.sel_order)]
        flip = sym.entry_flip
    else:  # on_l: the buckets' reads, in the order of `l_pattern`
        maps = _l_pattern_maps(sym)
        out, flip = out[const(maps[5])], maps[3]
    if jnp.iscomplexobj(out):
        # Values are read from the lower triangle of the permuted inverse: where that is the
        # mirror of the entry, A^-1[i, j] = conj(A^-1[j, i]).
        out = jnp.where(const(flip), jnp.conj(out), out)
    return out


def _read(sym: Symbolic, whats: tuple[str, ...], fac: Factor) -> tuple[Array, ...]:
    """One Takahashi pass on the factor, giving each output in `whats` (by the host
    kernels when they made the factor)."""
    if fac.flat is not None:
        return _host_selected(sym, whats, fac.flat)
    if "logdet_grad" in whats:
        z = _read(sym, ("entries",), fac)[0]
        if jnp.iscomplexobj(z):  # Z[i, i] is real: no derivative w.r.t. Im of the diagonal
            z = jnp.where(const(sym.entry_row == sym.entry_col), jnp.real(z).astype(z.dtype), z)
        wz = jnp.asarray(sym.logdet_weight, dtype=z.dtype) * z
        return tuple(wz if w == "logdet_grad" else _read(sym, (w,), fac)[0] for w in whats)
    g = fac.g
    chunks: dict[str, dict] = {w: {} for w in whats}

    def emit(b, z11, z21):
        for w in whats:
            chunks[w][b] = _take(sym, w, b, z11, z21)

    fronts(sym, g, emit)
    return tuple(_finish(sym, w, chunks[w], g[0].dtype) for w in whats)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _host_selected(sym: Symbolic, whats: tuple[str, ...], flat: Array) -> tuple[Array, ...]:
    """Outputs `whats` of the selected inverse of the host factor `flat`, by the host
    kernels; derivative: the recurrence's tangent (`fronts`), from the factor."""
    return host.selected_call(sym, flat, [_lookup(sym, w) for w in whats])


@_host_selected.defjvp
def _host_selected_jvp(sym, whats, primals, tangents):
    (flat,), (dflat,) = primals, tangents
    z, dz = [None] * len(sym.buckets), [None] * len(sym.buckets)

    def emit(b, z11, z21, dz11, dz21):
        z[b] = z11 if z21 is None else jnp.concatenate([z11, z21], axis=-2)
        dz[b] = dz11 if dz21 is None else jnp.concatenate([dz11, dz21], axis=-2)

    fronts(sym, host.split(sym, flat), emit, host.split(sym, dflat))
    z, dz = host.join(z), host.join(dz)
    reads = [_lookup(sym, w) for w in whats]
    return tuple(host.take(z, r) for r in reads), tuple(host.take(dz, r) for r in reads)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _host_fused(
    sym: Symbolic, whats: tuple[str, ...], values: Array
) -> tuple[Array, Array, tuple[Array, ...]]:
    """`(log det A, ok, outputs whats)` from the stored values by one host call
    (factorization and recurrence in place: the factor never leaves the host); derivative:
    that of the factorization followed by the recurrence (`_host_factor`,
    `_host_selected`), which only differentiated programs trace."""
    return host.factor_selected_call(sym, values, [_lookup(sym, w) for w in whats])


@_host_fused.defjvp
def _host_fused_jvp(sym, whats, primals, tangents):
    def unfused(values):
        fac = numeric.factor(sym, values)
        return fac.logdet, fac.ok, _read(sym, whats, fac)

    return jax.jvp(unfused, primals, tangents)


@functools.lru_cache(maxsize=8)
def _lookup(sym: Symbolic, what: str) -> host.Read:
    """Where output `what` reads the selected inverse's flat blocks (`host.lookup`)."""
    if what == "diag":
        return host.Read(*host.diag_reads(sym))
    if what == "entries":
        return host.Read(*host.lookup(sym, sym.entry_row, sym.entry_col))
    if what == "logdet_grad":
        return dataclasses.replace(
            _lookup(sym, "entries"), weight=sym.logdet_weight, real=sym.entry_row == sym.entry_col
        )
    maps = _l_pattern_maps(sym)
    return host.Read(maps[4], maps[3])


def _read_blocks(sym: Symbolic, what: str, y) -> Array:
    """As `_read`, from blocks already computed, in the layout of the factor (`sandwich`)."""
    chunks = {}
    for b, B in enumerate(sym.buckets):
        z21 = y[b][:, B.K :] if B.M else None
        chunks[b] = _take(sym, what, b, y[b][:, : B.K], z21)
    return _finish(sym, what, chunks, y[0].dtype)


def _flat_blocks(z11, z21):
    """The pivot-column blocks of a bucket, flat, as `Bucket.block_pos` numbers them (the
    Z[I, I] block, which comes last there, is never read back: its entries belong to
    ancestors)."""
    if z21 is None:
        return z11.reshape(-1)
    return jnp.concatenate([z11.reshape(-1), z21.reshape(-1)])


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _selected(sym: Symbolic, what: str, values: Array) -> Array:
    """Output `what` of the selected inverse of the matrix with stored `values`.

    Derivative by its own rule: `dZ = -P(Z dA Z)`, computed from the factor by
    `sandwich` (one forward-mode pass of factorization + recurrence), whose transpose is
    itself; nothing of the recurrences is taped.
    """
    if host.enabled():
        return _host_fused(sym, (what,), values)[2][0]
    return _read(sym, (what,), numeric.factor(sym, values))[0]


@_selected.defjvp
def _selected_jvp(sym, what, primals, tangents):
    (values,), (dv,) = primals, tangents
    fac = numeric.factor(sym, values)
    out = _read(sym, (what,), fac)[0]
    dz = sandwich.sandwich(sym, numeric.blocks(sym, fac), inject(sym, dv))  # P(Z dA Z)
    return out, -_read_blocks(sym, what, dz)


def _entries_from_factor(sym: Symbolic, fac: Factor) -> Float[Array, " nnz"]:
    return _read(sym, ("entries",), fac)[0]


def selected_inverse_and_diag(
    sym: Symbolic, fac: Factor
) -> tuple[Float[Array, " nnz"], Float[Array, " n"]]:
    """`(selected_inverse_from_factor, diag_inverse_from_factor)` in a single pass."""
    entries, diag = _read(sym, ("entries", "diag"), fac)
    return entries, diag


def selected_inverse(sym: Symbolic, values: Float[Array, " nnz"]) -> Float[Array, " nnz"]:
    """Entries of `A^-1` at the stored entries, aligned with `values`.

    A stored strict-upper entry (full symmetric storage) gets the value of its mirror
    `A^-1[j, i]` (equal by symmetry), or 0 if that mirror is not on the pattern of L.
    """
    return _selected(sym, "entries", numeric.checked_values(sym, values))


def selected_inverse_from_factor(sym: Symbolic, fac: Factor) -> Float[Array, " nnz"]:
    """As `selected_inverse`, reusing a factorization (differentiated through the
    recurrence, not by the rule of `selected_inverse`)."""
    return _entries_from_factor(sym, fac)


def diag_inverse(sym: Symbolic, values: Float[Array, " nnz"]) -> Float[Array, " n"]:
    """diag(A^-1) in the original ordering (e.g. marginal variances of a GMRF)."""
    return _selected(sym, "diag", numeric.checked_values(sym, values))


def diag_inverse_from_factor(sym: Symbolic, fac: Factor) -> Float[Array, " n"]:
    """As `diag_inverse`, reusing a factorization (differentiated through the recurrence)."""
    return _read(sym, ("diag",), fac)[0]


def l_pattern(sym: Symbolic) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the supernodal pattern of L (lower triangle with the diagonal) in the
    ORIGINAL ordering, in CSC order (by column, then row), the order in which
    `selected_inverse_on_l` returns its values.

    Includes the explicit zeros added by supernode amalgamation.
    """
    rows, cols = _l_pattern_maps(sym)[:2]
    return rows, cols


@functools.lru_cache(maxsize=8)
def _l_pattern_maps(sym: Symbolic):
    """The pattern of L as `selected_inverse_on_l` returns it, in CSC order of the lower
    triangle in the original ordering: `(rows, cols, per-bucket block positions (bucket
    order, for the traced recurrence), conjugate?, flat positions (host layout), order
    (bucket order -> CSC))`. Made by compiled loops: nnz(L) entries."""
    P = host.plan(sym)
    kern = host_kernels.compiled()
    sizes = np.array([B.size for B in sym.buckets], np.int64)[sym.sn_bucket]
    Ms = np.array([B.M for B in sym.buckets], np.int64)[sym.sn_bucket]
    visit = np.concatenate([B.supernodes for B in sym.buckets]).astype(np.int64)
    per_sn = P.k * (P.k + 1) // 2 + P.m * P.k
    hi, lo, flip, flat, pos = kern._k_l_pattern(
        visit, P.start, P.relptr, P.rowind, P.off, P.K, P.k, P.m,
        sym.sn_slot.astype(np.int64), sizes, Ms, sym.perm.astype(np.int64),
        int(per_sn.sum()),
    )  # fmt: skip
    ends = np.cumsum([per_sn[B.supernodes].sum() for B in sym.buckets])
    pos = tuple(x.astype(np.int32) for x in np.split(pos, ends[:-1]))
    # Returned in CSC order (by column, then row), so a result operator needs no gather
    # (whose index map would be a program constant of nnz(L) entries); the traced
    # recurrence emits bucket by bucket and permutes by `order` (`_finish`).
    order = kern._k_csc_order(hi, lo, sym.n)
    hi, lo, flip, flat = (kern._k_take(x, order) for x in (hi, lo, flip, flat))
    return hi, lo, pos, flip, flat, order


def _on_l_reads(sym: Symbolic) -> tuple[np.ndarray, ...]:
    """Per bucket, the flat block positions `selected_inverse_on_l` reads (in order)."""
    return _l_pattern_maps(sym)[2]


def selected_inverse_on_l(sym: Symbolic, values: Float[Array, " nnz"]) -> Float[Array, " nnzL"]:
    """Entries of `A^-1` on the whole (supernodal) pattern of L, aligned with `l_pattern`."""
    return _selected(sym, "on_l", numeric.checked_values(sym, values))


# ---------------------------------------------------------------------------------------
# log-determinant with its derivative from the selected inverse
# ---------------------------------------------------------------------------------------


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def logdet_and_ok(sym: Symbolic, values: Float[Array, " nnz"]) -> tuple[Array, Array]:
    """`(log det A, ok)`, ok False when A is not (numerically) positive definite.

    Derivative w.r.t. `values`: `weight * selected_inverse` (see module docstring).
    """
    if host.enabled():  # nothing of the factor leaves the host
        logdet, ok, _ = _host_fused(sym, (), numeric.checked_values(sym, values))
        return logdet, ok
    fac = numeric.factor(sym, values)
    return fac.logdet, fac.ok


@logdet_and_ok.defjvp
def _logdet_jvp(sym, primals, tangents):
    (values,), (dv,) = primals, tangents
    values = numeric.checked_values(sym, values)
    if host.enabled():
        logdet, ok, (wz,) = _host_fused(sym, ("logdet_grad",), values)
    else:
        fac = numeric.factor(sym, values)
        logdet, ok, (wz,) = fac.logdet, fac.ok, _read(sym, ("logdet_grad",), fac)
    # d log det A = tr(A^-1 dA); a stored lower entry v at (i, j), i > j, is A[i, j] and,
    # conjugated, A[j, i]: its term is 2 Re(conj(Z[i, j]) dv) (Re(Z[i, i] dv) on the
    # diagonal, whose imaginary part is not read): `wz` = weight * Z at the entries.
    tangent = jnp.sum(jnp.conj(wz) * dv)
    if jnp.iscomplexobj(tangent):
        tangent = jnp.real(tangent)
    return (logdet, ok), (tangent, np.zeros((), dtype=jax.dtypes.float0))


def logdet(sym: Symbolic, values: Float[Array, " nnz"]) -> Float[Array, ""]:
    """log det A for SPD A (NaN if A is not positive definite)."""
    return logdet_and_ok(sym, values)[0]


def logdet_grad_weights(sym: Symbolic) -> np.ndarray:
    """d logdet / d values = logdet_grad_weights * selected_inverse (1 diag, 2 off, 0 unread)."""
    return sym.logdet_weight
