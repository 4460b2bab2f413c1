"""The numeric phase on the host, for the CPU backend: factorization, selected inverse and
triangular solves as compiled (numba) loops over the supernodes, called from the program
through `jax.pure_callback`.

Why: the traced numeric phase (`numeric.py`, `takahashi.py`) is one XLA kernel (or
several) per tree level and bucket, and XLA:CPU spends ~40 ms of code generation per
kernel, so its compile time grows with the problem (20–80 s at 128²–512²). Here the
program holds one callback per phase whatever the size; the loops are compiled once per
dtype by numba and cached on disk, and the dense work of a front goes to BLAS and LAPACK
(`host_kernels`: potrf, trtri, trsm, trmm, herk, lauum, gemm), in place on the padded
blocks. On other backends (GPU) the traced phase is used.

What a program needs of the factor decides how many callbacks it makes: `logdet`, and
the first-order derivative of `logdet`, `diag_inverse` and `selected_inverse` of the
values, take one (`factor_selected_call`: the factorization, then the recurrence in
place of the factor, returning only what is read), so the factor never leaves the host
and its memory is one padded factor; a solve takes the factor (`factor_call`) and
passes it to the solve callback.

The data layout is the traced phase's: the factor is the concatenation of the buckets'
padded blocks `G = [L11^-1; -W]` (`Factor.g`, flattened), and the selected inverse's
blocks `[Z[J, J]; Z[I, J]]` use the same layout. So every consumer of `Factor.g` (the
selected inverse's derivative rule, `sandwich.py`) works unchanged, and the host phases'
derivatives are written from their outputs in traced XLA (`numeric._host_factor`:
the factor's tangent; `selinv._host_selected`: the recurrence's tangent; the solves:
the traced solves' derivative), which only differentiated programs (second order, the
derivative of a selected inverse) compile. The host kernels are never differentiated.

A front that is not positive definite gives NaN blocks (propagated to its ancestors), as in
the traced phase.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from . import host_kernels
from .elimination import _kernels as _elimination_kernels
from .symbolic import Symbolic


# "auto": the host phase on the CPU backend, the traced one elsewhere; "host" / "traced"
# force one (tests run both). Read at trace time.
MODE = os.environ.get("LINSOLVE_SPARSE_KERNELS", "auto")


def enabled() -> bool:
    if MODE == "host":
        return True
    if MODE == "traced":
        return False
    return jax.default_backend() == "cpu"


# ---------------------------------------------------------------------------------------
# Plan: the padded layout's offsets, per supernode
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
    size: int  # entries of the flat padded factor
    bucket_base: np.ndarray  # (buckets + 1,) start of each bucket's blocks
    off: np.ndarray  # (ns,) int64 start of supernode s's (N, K) block
    K: np.ndarray  # (ns,) padded pivots
    k: np.ndarray  # (ns,) real pivots
    m: np.ndarray  # (ns,) real below rows
    parent: np.ndarray  # (ns,) int64, -1 for roots
    children: np.ndarray  # (ns,) number of children
    relptr: np.ndarray  # (ns + 1,) int64
    rel: np.ndarray  # position of each below row in the parent's padded front
    rowind: np.ndarray  # int64 `Symbolic.sn_rowind`
    start: np.ndarray  # int64 `Symbolic.sn_start`
    vsrc: np.ndarray  # stored values -> flat: flat[vdst] += [values, 1][vsrc]
    vdst: np.ndarray
    diag: np.ndarray  # flat positions of the real pivots' diagonal (L11^-1)


@functools.lru_cache(maxsize=8)
def plan(sym: Symbolic) -> Plan:
    sizes = [B.size * B.N * B.K for B in sym.buckets]
    base = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    ns = sym.num_supernodes
    bk = sym.sn_bucket
    t = sym.sn_slot.astype(np.int64)
    Ks = np.array([B.K for B in sym.buckets], np.int64)[bk]
    Ns = np.array([B.N for B in sym.buckets], np.int64)[bk]
    off = base[bk] + t * Ns * Ks
    k = np.diff(sym.sn_start).astype(np.int64)
    m = np.diff(sym.sn_rowptr).astype(np.int64)
    parent = sym.sn_parent.astype(np.int64)
    children = np.bincount(parent[parent >= 0], minlength=ns).astype(np.int64)
    rel = np.empty(int(sym.sn_rowptr[-1]), np.int64)
    for B in sym.buckets:
        s = B.supernodes.astype(np.int64)
        mm = m[s]
        if not mm.sum():
            continue
        rows = np.repeat(np.arange(s.size), mm)
        pos = np.arange(mm.sum()) - np.repeat(np.cumsum(mm) - mm, mm)
        rel[np.repeat(sym.sn_rowptr[s], mm) + pos] = B.up_rel[rows, pos]
    # Stored values: each level's map into its buckets' P blocks, which are the buckets'
    # G blocks of the flat layout.
    vsrc, vdst = [], []
    for lev in sym.level_maps:
        for b in lev.buckets:
            B = sym.buckets[b]
            lo, hi = B.p_offset, B.p_offset + B.size * B.N * B.K
            sel = (lev.v_dst >= lo) & (lev.v_dst < hi)
            vsrc.append(lev.v_src[sel].astype(np.int64))
            vdst.append(lev.v_dst[sel].astype(np.int64) - lo + base[b])
    s_of = np.repeat(np.arange(ns), k)
    c = np.arange(sym.n, dtype=np.int64) - sym.sn_start[s_of]
    diag = off[s_of] + c * Ks[s_of] + c
    return Plan(
        size=int(base[-1]),
        bucket_base=base,
        off=off,
        K=Ks,
        k=k,
        m=m,
        parent=parent,
        children=children,
        relptr=sym.sn_rowptr.astype(np.int64),
        rel=rel,
        rowind=sym.sn_rowind.astype(np.int64),
        start=sym.sn_start.astype(np.int64),
        vsrc=np.concatenate(vsrc) if vsrc else np.zeros(0, np.int64),
        vdst=np.concatenate(vdst) if vdst else np.zeros(0, np.int64),
        diag=diag,
    )


@functools.lru_cache(maxsize=8)
def compact_plan(sym: Symbolic) -> Plan:
    """`plan` without the buckets' padding: supernode `s`'s block is `(k + m) x k`, blocks
    in supernode order. For what stays on the host (`factor_selected_call`): the padding
    is there for the traced phase's batched kernels and the derivative rules, which read
    the factor in the program; the kernels take any layout (`off`, `K`, `rel`). At 128²
    the padded factor is 3.5 x the compact one, at 512² 1.6 x."""
    P = plan(sym)
    sizes = (P.k + P.m) * P.k
    off = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    # a child's below rows in the parent's front: after the parent's k real pivots
    Kp = np.repeat(P.K[P.parent], P.m)
    kp = np.repeat(P.k[P.parent], P.m)
    rel = np.where(P.rel < Kp, P.rel, P.rel - Kp + kp)
    C = dataclasses.replace(
        P, size=int(sizes.sum()), bucket_base=np.zeros(0, np.int64), off=off, K=P.k, rel=rel
    )
    vdst = _to_compact(P, C, P.vdst)
    real = vdst < C.size  # not the ones the traced phase puts on padded pivots
    return dataclasses.replace(
        C, vsrc=P.vsrc[real], vdst=vdst[real], diag=_to_compact(P, C, P.diag)
    )


def _to_compact(P: Plan, C: Plan, pos: np.ndarray) -> np.ndarray:
    """Positions in the padded layout `P` -> in the compact one `C`; padding and past the
    end -> past the end."""
    order = np.argsort(P.off, kind="stable")
    s = order[np.searchsorted(P.off[order], np.minimum(pos, P.size - 1), side="right") - 1]
    K, k = P.K[s], P.k[s]
    r, c = np.divmod(pos - P.off[s], K)
    real = (pos < P.size) & (c < k) & ((r < k) | ((r >= K) & (r < K + P.m[s])))
    r = np.where(r < K, r, r - K + k)
    return np.where(real, C.off[s] + r * k + c, C.size)


@functools.lru_cache(maxsize=32)
def _compact_read(sym: Symbolic, r: Read) -> Read:
    return dataclasses.replace(r, pos=_to_compact(plan(sym), compact_plan(sym), r.pos))


def split(sym: Symbolic, flat: Array) -> tuple[Array, ...]:
    """The buckets' `(size, N, K)` blocks of a flat padded array."""
    base = plan(sym).bucket_base
    return tuple(
        flat[..., base[b] : base[b + 1]].reshape(flat.shape[:-1] + (B.size, B.N, B.K))
        for b, B in enumerate(sym.buckets)
    )


def join(blocks) -> Array:
    return jnp.concatenate([x.reshape(x.shape[:-3] + (-1,)) for x in blocks], axis=-1)


def _kernels():
    return host_kernels.compiled()


# ---------------------------------------------------------------------------------------
# The host functions (numpy in, numpy out)
# ---------------------------------------------------------------------------------------


def factor_np(sym: Symbolic, values: np.ndarray, compact: bool = False) -> np.ndarray:
    """The flat padded factor of the matrix with (conj-flipped) stored `values` (in the
    `compact_plan` layout with `compact`)."""
    P = compact_plan(sym) if compact else plan(sym)
    vals = np.concatenate([np.asarray(values), np.ones(1, values.dtype)])
    flat = np.zeros(P.size, values.dtype)
    return _kernels()._k_factor(
        flat, vals, P.vsrc, P.vdst, P.off, P.K, P.k, P.m, P.parent, P.relptr, P.rel
    )


def takahashi_np(
    sym: Symbolic, g: np.ndarray, in_place: bool = False, compact: bool = False
) -> np.ndarray:
    """The selected inverse's blocks `[Z[J, J]; Z[I, J]]`, flat padded, from the factor
    (`in_place`: overwriting the factor `g`, which must then be writable; `compact`: in
    the `compact_plan` layout)."""
    P = compact_plan(sym) if compact else plan(sym)
    g = g if in_place else np.ascontiguousarray(g)
    z = g if in_place else np.zeros_like(g)
    return _kernels()._k_takahashi(
        z, g, P.off, P.K, P.k, P.m, P.parent, P.children, P.relptr, P.rel
    )


def solve_np(sym: Symbolic, g: np.ndarray, x: np.ndarray) -> np.ndarray:
    """`A^-1 x` for `x` of shape (n, nrhs) in the original ordering."""
    P = plan(sym)
    y = np.ascontiguousarray(x[sym.perm], dtype=np.result_type(x.dtype, g.dtype))
    g = np.ascontiguousarray(g)
    kern = _kernels()._k_solve
    for lower in (True, False):
        y = kern(y, g, P.off, P.K, P.k, P.m, P.start, P.relptr, P.rowind, lower)
    return y[sym.iperm]


# ---------------------------------------------------------------------------------------
# In the program: the callbacks (their derivatives: `numeric`, `selinv`)
# ---------------------------------------------------------------------------------------


def _call(fn, shapes, *args):
    # "sequential": under vmap, one call per batch member (the kernels take one matrix).
    return jax.pure_callback(fn, shapes, *args, vmap_method="sequential")


def factor_call(sym: Symbolic, values: Array) -> tuple[Array, Array]:
    """The flat padded factor (`Factor.g`, joined) of the matrix with stored `values`, and
    the real diagonal of `L^-1` (permuted order), by the host kernel (no derivative: see
    `numeric.factor`). The diagonal comes from the host: read in the program, its index
    map (n integers) would be a constant of the program."""

    def run(v):
        flat = factor_np(sym, np.asarray(v))
        return flat, np.real(flat[plan(sym).diag])

    shapes = (
        jax.ShapeDtypeStruct((plan(sym).size,), values.dtype),
        jax.ShapeDtypeStruct((sym.n,), _real(values.dtype)),
    )
    return _call(run, shapes, _lower(sym, values))


def _lower(sym: Symbolic, values: Array) -> Array:
    """The values as the lower triangle of `P A P^T` holds them: conjugated where an entry
    lands above the diagonal (complex)."""
    if jnp.iscomplexobj(values):
        values = jnp.where(sym.entry_flip, jnp.conj(values), values)
    return values


def _real(dtype):
    return jnp.real(jnp.zeros((), dtype)).dtype


def factor_selected_call(
    sym: Symbolic, values: Array, reads: list[Read]
) -> tuple[Array, Array, tuple[Array, ...]]:
    """`(log det A, ok, reads of A^-1)` from the stored `values` in one host call: the
    factorization, then (if there are reads) the selected inverse in place of the factor,
    so nothing of the factor is copied out and the host holds one factor-sized buffer
    (`factor_call` then `selected_call` hold and copy several), without the buckets'
    padding (`compact_plan`). `ok` is False where a
    pivot is not positive (as `numeric.factor`'s). No derivative (see `selinv._host_fused`)."""
    real = _real(values.dtype)

    compact = [_compact_read(sym, r) for r in reads]

    def run(v):
        flat = factor_np(sym, np.asarray(v), compact=True)
        d = np.real(flat[compact_plan(sym).diag])
        with np.errstate(invalid="ignore", divide="ignore"):
            logdet = np.asarray(-2 * np.sum(np.log(d)), real)
        ok = np.asarray(np.all(d > 0) & np.all(np.isfinite(d)))
        if not reads:
            return logdet, ok
        z = takahashi_np(sym, flat, in_place=True, compact=True)
        return (logdet, ok, *(_read_np(z, r) for r in compact))

    shapes = (
        jax.ShapeDtypeStruct((), real),
        jax.ShapeDtypeStruct((), jnp.bool_),
        *(jax.ShapeDtypeStruct(r.pos.shape, values.dtype) for r in reads),
    )
    logdet, ok, *out = _call(run, shapes, _lower(sym, values))
    return logdet, ok, tuple(out)


@dataclasses.dataclass(frozen=True, eq=False)
class Read:
    """Values of the selected inverse, read from its flat blocks: `z[pos]` (0 where
    `pos` is past the end: not on the pattern of L), conjugated where `flip`; then, where
    `real` (if given), the real part only; then times `weight` (if given)."""

    pos: np.ndarray
    flip: np.ndarray
    weight: np.ndarray | None = None
    real: np.ndarray | None = None


def selected_call(sym: Symbolic, flat: Array, reads: list[Read]) -> tuple[Array, ...]:
    """The selected inverse's values for each of `reads`, by the host kernels: only these
    values come back, not the selected inverse's blocks, and the reads' maps stay on the
    host (no derivative: see `selinv`)."""

    def run(g):
        z = takahashi_np(sym, np.asarray(g))
        return tuple(_read_np(z, r) for r in reads)

    shapes = tuple(jax.ShapeDtypeStruct(r.pos.shape, flat.dtype) for r in reads)
    return _call(run, shapes, flat)


def _read_np(z: np.ndarray, r: Read) -> np.ndarray:
    out = z[np.minimum(r.pos, z.size - 1)]
    out[r.pos >= z.size] = 0
    if np.iscomplexobj(out):
        out = np.where(r.flip, np.conj(out), out)
        if r.real is not None:
            out = np.where(r.real, np.real(out), out).astype(z.dtype)
    if r.weight is not None:
        out = out * r.weight.astype(out.dtype)
    return out


def solve(sym: Symbolic, flat: Array, b: Array) -> Array:
    """`A^-1 b` for `b` of shape (n, k) from the flat factor."""
    shape = jax.ShapeDtypeStruct(b.shape, jnp.result_type(b.dtype, flat.dtype))
    return _call(lambda g, x: solve_np(sym, np.asarray(g), np.asarray(x)), shape, flat, b)


def lookup(sym: Symbolic, row: np.ndarray, col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat positions of `A^-1[row, col]` (original ordering) in the selected inverse's
    blocks (`plan.size` where not on the pattern of L: reads 0), and whether the value
    there must be conjugated."""
    P = plan(sym)
    pi, pj = sym.iperm[row].astype(np.int64), sym.iperm[col].astype(np.int64)
    hi, lo = np.maximum(pi, pj), np.minimum(pi, pj)
    s = np.repeat(np.arange(sym.num_supernodes), P.k)[lo]  # the supernode of column lo
    local, kind = _elimination_kernels().front_rows(P.start, P.relptr, P.rowind, s, hi)
    r = np.where(kind == 1, local, P.K[s] + local)
    pos = np.where(kind > 0, P.off[s] + r * P.K[s] + lo - sym.sn_start[s], P.size)
    return pos.astype(np.int64), pi < pj


def diag_reads(sym: Symbolic) -> tuple[np.ndarray, np.ndarray]:
    """`lookup`'s answer for diag(A^-1) in the original ordering."""
    return plan(sym).diag[sym.iperm], np.zeros(sym.n, bool)


def take(z: Array, r: Read) -> Array:
    """`Read` `r` from the selected inverse's flat blocks `z` in the program (its maps
    then are constants of the program: derivative programs only)."""
    out = jnp.concatenate([z, jnp.zeros(z.shape[:-1] + (1,), z.dtype)], axis=-1)[..., r.pos]
    if jnp.iscomplexobj(out):
        out = jnp.where(r.flip, jnp.conj(out), out)
        if r.real is not None:
            out = jnp.where(r.real, jnp.real(out).astype(out.dtype), out)
    if r.weight is not None:
        out = out * r.weight.astype(out.dtype)
    return out
