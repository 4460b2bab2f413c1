"""The host kernels of `host.py`: plain Python here, compiled by numba on first use
(`compiled()`; numba is imported then, not at `import linsolve`), per dtype, and cached on
disk. `no_type_check`: a runtime type checker (jaxtyping's import hook) must leave them
plain functions, which numba can compile."""

from __future__ import annotations

import functools
import types
from typing import no_type_check

import numpy as np


_KERNELS = (
    "_k_conj_t",
    "_ld",
    "_b_potrf",
    "_b_trtri",
    "_b_lauum",
    "_b_tri_r",
    "_b_herk",
    "_b_gemm",
    "_b_gemm_nh",
    "_b_gemm_hn",
    "_b_hemm_l",
    "_k_extend_add_targets",
    "_k_scalar_front",
    "_k_scalar_leaf_selinv",
    "_k_factor",
    "_k_takahashi",
    "_k_solve",
    "_k_l_pattern",
    "_k_counting_sort",
    "_k_csc_order",
    "_k_take",
)


@functools.cache
def compiled() -> types.SimpleNamespace:
    """The jitted kernels. Each replaces its Python function in this module's globals
    (callees first), so that a kernel calling another calls the compiled one."""
    import numba

    _register_blas()

    def jit(fn):
        try:
            return numba.njit(cache=True, nogil=True)(fn)
        except RuntimeError:  # no writable cache directory: compile in every process
            return numba.njit(cache=False, nogil=True)(fn)

    out = {}
    for name in _KERNELS:
        out[name] = globals()[name] = jit(globals()[name])
    return types.SimpleNamespace(**out)


@no_type_check
def _k_conj_t(x):
    return np.ascontiguousarray(np.conj(x).T)


# ---------------------------------------------------------------------------------------
# BLAS and LAPACK in the kernels: the routines `np.dot` cannot stand in for without
# spending flops (Cholesky and inverse of a triangle in place, triangular products and
# solves, half of a hermitian product, L^H L), called through scipy's Cython bindings —
# the library numba's own `np.dot` calls — by address. The symbols are registered with
# LLVM under fixed names before compiling, so the kernels stay cacheable on disk.
#
# The kernels' blocks are row-major with rows `ld` apart; BLAS reads the same memory as
# the column-major transpose. So a row-major lower triangle is BLAS's upper one, and each
# helper below states the row-major operation it performs (on `A[:r, :c]` etc. of views
# whose rows may be longer: padded blocks are used in place).
# ---------------------------------------------------------------------------------------

# (routine, number of arguments); the prefix s/d/c/z is chosen from the dtype.
_ROUTINES = {
    "potrf": ("lapack", "potrf", 5),
    "trtri": ("lapack", "trtri", 6),
    "lauum": ("lapack", "lauum", 5),
    "trsm": ("blas", "trsm", 11),
    "trmm": ("blas", "trmm", 11),
    "herk": ("blas", "herk", 10),  # syrk for real dtypes
    "gemm": ("blas", "gemm", 13),
    "hemm": ("blas", "hemm", 12),  # symm for real dtypes
}
_U, _N, _C, _L, _R = ord("U"), ord("N"), ord("C"), ord("L"), ord("R")


# Typed per dtype by `_register_blas` (numba overloads); never called as Python.
def _x_potrf(x, *args): ...
def _x_trtri(x, *args): ...
def _x_lauum(x, *args): ...
def _x_trsm(x, *args): ...
def _x_trmm(x, *args): ...
def _x_herk(x, *args): ...
def _x_gemm(x, *args): ...
def _x_hemm(x, *args): ...


def _register_blas() -> None:
    import ctypes

    import scipy.linalg.cython_blas
    import scipy.linalg.cython_lapack
    from llvmlite import binding
    from numba import types as nt
    from numba.extending import overload

    capsule_name = ctypes.pythonapi.PyCapsule_GetName
    capsule_name.restype, capsule_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    capsule_ptr = ctypes.pythonapi.PyCapsule_GetPointer
    capsule_ptr.restype = ctypes.c_void_p
    capsule_ptr.argtypes = [ctypes.py_object, ctypes.c_char_p]
    libs = {"blas": scipy.linalg.cython_blas, "lapack": scipy.linalg.cython_lapack}
    prefix = {nt.float32: "s", nt.float64: "d", nt.complex64: "c", nt.complex128: "z"}

    def routine(op, p):
        lib, name, nargs = _ROUTINES[op]
        if p in "sd":
            name = {"herk": "syrk", "hemm": "symm"}.get(name, name)
        name = p + name
        return lib, name, nargs

    # Every symbol now, not when a kernel is typed: kernels loaded from numba's disk
    # cache are linked against these names without being typed again.
    for op in _ROUTINES:
        for p in "sdcz":
            lib, name, _ = routine(op, p)
            cap = libs[lib].__pyx_capi__[name]
            binding.add_symbol(f"linsolve_{name}", capsule_ptr(cap, capsule_name(cap)))

    def external(op, dtype):
        _, name, nargs = routine(op, prefix[dtype])
        return nt.ExternalFunction(f"linsolve_{name}", nt.void(*([nt.voidptr] * nargs)))

    def register(op, stub):
        def ol(x, *args):
            f = external(op, x.dtype)
            return lambda x, *args: f(*args)

        overload(stub)(ol)

    for op in _ROUTINES:
        register(op, globals()[f"_x_{op}"])


# The helpers' scratch: `iw` (int32, 16) holds BLAS's character and integer arguments
# (a character as the first byte of an int32 slot), `sw` (2 of the dtype) and `rw` (2
# of its real type) the scalars alpha and beta. Allocated once per kernel call.


@no_type_check
def _ld(A):
    return max(A.strides[0] // A.itemsize, 1)


@no_type_check
def _b_potrf(A, k, iw):
    """lower(A[:k, :k]) <- its Cholesky factor L (A = L L^H); returns LAPACK's info
    (> 0: not positive definite)."""
    iw[0], iw[1], iw[2], iw[3] = _U, k, _ld(A), 0
    _x_potrf(A, iw[0:].ctypes, iw[1:].ctypes, A.ctypes, iw[2:].ctypes, iw[3:].ctypes)
    return iw[3]


@no_type_check
def _b_trtri(A, k, iw):
    """lower(A[:k, :k]) <- its inverse (lower triangular)."""
    iw[0], iw[1], iw[2], iw[3], iw[4] = _U, _N, k, _ld(A), 0
    _x_trtri(A, iw[0:].ctypes, iw[1:].ctypes, iw[2:].ctypes, A.ctypes, iw[3:].ctypes, iw[4:].ctypes)


@no_type_check
def _b_lauum(A, k, iw):
    """lower(A[:k, :k]) <- L^H L for L = lower(A[:k, :k])."""
    iw[0], iw[1], iw[2], iw[3] = _U, k, _ld(A), 0
    _x_lauum(A, iw[0:].ctypes, iw[1:].ctypes, A.ctypes, iw[2:].ctypes, iw[3:].ctypes)


@no_type_check
def _b_tri_r(solve, L, B, k, m, alpha, herm, iw, sw):
    """B[:m, :k] <- alpha B op(L)^-1 (`solve`) or alpha B op(L), op(L) = L^H (`herm`) or L,
    for L = lower(L[:k, :k])."""
    if m == 0:
        return
    iw[0], iw[1], iw[2], iw[3] = _L, _U, _C if herm else _N, _N
    iw[4], iw[5], iw[6], iw[7] = k, m, _ld(L), _ld(B)
    sw[0] = alpha
    i = iw
    args = (i[0:].ctypes, i[1:].ctypes, i[2:].ctypes, i[3:].ctypes, i[4:].ctypes, i[5:].ctypes)
    args2 = (sw.ctypes, L.ctypes, i[6:].ctypes, B.ctypes, i[7:].ctypes)
    if solve:  # the two routines take the same arguments
        _x_trsm(B, *args, *args2)
    else:
        _x_trmm(B, *args, *args2)


@no_type_check
def _b_herk(C, A, r, k, alpha, beta, iw, rw):
    """lower(C[:r, :r]) <- alpha A A^H + beta C for A = A[:r, :k] (alpha, beta real)."""
    if r == 0:
        return
    iw[0], iw[1], iw[2], iw[3], iw[4], iw[5] = _U, _C, r, k, _ld(A), _ld(C)
    rw[0], rw[1] = alpha, beta
    i = iw
    args = (i[0:].ctypes, i[1:].ctypes, i[2:].ctypes, i[3:].ctypes, rw[0:].ctypes)
    _x_herk(C, *args, A.ctypes, i[4:].ctypes, rw[1:].ctypes, C.ctypes, i[5:].ctypes)


@no_type_check
def _b_gemm(C, A, B, ta, tb, M, N, K, alpha, beta, iw, sw):
    """BLAS's own gemm on the column-major views: C <- alpha op(A) op(B) + beta C, with
    C of M x N (the row-major helpers below set the operands)."""
    if M == 0 or N == 0:
        return
    iw[0], iw[1], iw[2], iw[3], iw[4] = ta, tb, M, N, K
    iw[5], iw[6], iw[7] = _ld(A), _ld(B), _ld(C)
    sw[0], sw[1] = alpha, beta
    i = iw
    args = (i[0:].ctypes, i[1:].ctypes, i[2:].ctypes, i[3:].ctypes, i[4:].ctypes, sw[0:].ctypes)
    _x_gemm(C, *args, A.ctypes, i[5:].ctypes, B.ctypes, i[6:].ctypes, sw[1:].ctypes, C.ctypes, i[7:].ctypes)  # fmt: skip


@no_type_check
def _b_gemm_nh(C, A, B, r, c, k, alpha, beta, iw, sw):
    """C[:r, :c] <- alpha A[:r, :k] B[:c, :k]^H + beta C."""
    _b_gemm(C, B, A, _C, _N, c, r, k, alpha, beta, iw, sw)


@no_type_check
def _b_gemm_hn(C, A, B, k, c, m, alpha, beta, iw, sw):
    """C[:k, :c] <- alpha A[:m, :k]^H B[:m, :c] + beta C."""
    _b_gemm(C, B, A, _N, _C, c, k, m, alpha, beta, iw, sw)


@no_type_check
def _b_hemm_l(C, H, B, m, k, alpha, beta, iw, sw):
    """C[:m, :k] <- alpha H B[:m, :k] + beta C for H (m x m) hermitian, given by its lower
    triangle."""
    if m == 0 or k == 0:
        return
    iw[0], iw[1], iw[2], iw[3] = _R, _U, k, m
    iw[4], iw[5], iw[6] = _ld(H), _ld(B), _ld(C)
    sw[0], sw[1] = alpha, beta
    i = iw
    args = (i[0:].ctypes, i[1:].ctypes, i[2:].ctypes, i[3:].ctypes, sw[0:].ctypes)
    _x_hemm(C, *args, H.ctypes, i[4:].ctypes, B.ctypes, i[5:].ctypes, sw[1:].ctypes, C.ctypes, i[6:].ctypes)  # fmt: skip


@no_type_check
def _k_extend_add_targets(flat, upd, s, off, K, m, parent):
    """For supernode `s` of `_k_factor`: its children's contributions to its update
    matrix (taken out of `upd`; empty if none, and whether there were any), and where its
    own update goes — the parent's pivot-column block, its update matrix (made on first
    use) and its padded pivot count."""
    U = upd[s]
    upd[s] = np.zeros((0, 0), flat.dtype)
    p = parent[s]
    Kp = K[p]
    Gp = flat[off[p] : off[p] + (Kp + m[p]) * Kp].reshape(Kp + m[p], Kp)
    if upd[p].shape[0] == 0 and m[p] > 0:
        upd[p] = np.zeros((m[p], m[p]), flat.dtype)
    return U, U.shape[0] > 0, Gp, upd[p], Kp


@no_type_check
def _k_scalar_front(G, Ks, ms, upd, s, flat, off, K, m, parent, relptr, rel):
    """`_k_factor`'s step for a supernode of one pivot column, elementwise."""
    d = G[0, 0].real
    li = 1 / np.sqrt(d) if d > 0 else np.nan
    G[0, 0] = li
    if not ms:
        return
    U, has_u, Gp, Up, Kp = _k_extend_add_targets(flat, upd, s, off, K, m, parent)
    r0 = relptr[s]
    for a in range(ms):
        la = G[Ks + a, 0] * li  # L21
        ra = rel[r0 + a]
        for b in range(a + 1):
            v = -la * np.conj(G[Ks + b, 0] * li)
            if has_u:
                v += U[a, b]
            rb = rel[r0 + b]
            if rb < Kp:
                Gp[ra, rb] += v
            else:
                Up[ra - Kp, rb - Kp] += v
    for a in range(ms):
        G[Ks + a, 0] = -(G[Ks + a, 0] * li) * li  # -W


@no_type_check
def _k_factor(flat, vals, vsrc, vdst, off, K, k, m, parent, relptr, rel):
    """Multifrontal factorization into the flat padded layout `flat`, which comes zeroed
    (fresh pages: the operating system's zeros, no second pass). A front's blocks are
    factored in place: `F11 -> L11 -> L11^-1` and `F21 -> L21 -> -W`."""
    for q in range(vsrc.shape[0]):
        flat[vdst[q]] += vals[vsrc[q]]
    ns = off.shape[0]
    upd = [np.zeros((0, 0), flat.dtype) for _ in range(ns)]
    iw = np.zeros(16, np.int32)
    sw = np.zeros(2, flat.dtype)
    rw = np.zeros(2, flat.dtype).real
    for s in range(ns):
        ks, ms, Ks = k[s], m[s], K[s]
        N = Ks + ms  # rows of the block actually used (padding rows beyond stay zero)
        G = flat[off[s] : off[s] + N * Ks].reshape(N, Ks)
        if ks == 1:
            # A scalar pivot (most leaves of a nested-dissection tree): no temporaries.
            _k_scalar_front(G, Ks, ms, upd, s, flat, off, K, m, parent, relptr, rel)
            continue
        if _b_potrf(G, ks, iw) != 0:
            # Not positive definite: NaN, propagated to the ancestors.
            for i in range(ks):
                for j in range(i + 1):
                    G[i, j] = np.nan
        L21 = G[Ks:]
        _b_tri_r(True, G, L21, ks, ms, 1, True, iw, sw)  # L21 = F21 L11^-H
        if ms:
            U, has_u, Gp, Up, Kp = _k_extend_add_targets(flat, upd, s, off, K, m, parent)
            r0 = relptr[s]
            # Extend-add of U - L21 L21^H (lower triangle) into the parent's front, one
            # block of rows at a time: the block's product is made, then scattered.
            for i0 in range(0, ms, 256):
                i1 = min(i0 + 256, ms)
                S = np.empty((i1 - i0, i1), flat.dtype)
                _b_gemm_nh(S, L21[i0:i1], L21, i1 - i0, i0, ks, 1, 0, iw, sw)
                _b_herk(S[:, i0:], L21[i0:i1], i1 - i0, ks, 1, 0, iw, rw)
                for a in range(i0, i1):
                    ra = rel[r0 + a]
                    for b in range(a + 1):
                        v = U[a, b] - S[a - i0, b] if has_u else -S[a - i0, b]
                        rb = rel[r0 + b]
                        if rb < Kp:
                            Gp[ra, rb] += v
                        else:
                            Up[ra - Kp, rb - Kp] += v
        _b_trtri(G, ks, iw)  # L11^-1
        _b_tri_r(False, G, L21, ks, ms, -1, False, iw, sw)  # -W = -L21 L11^-1
    return flat


@no_type_check
def _k_scalar_leaf_selinv(Zs, G, Ks, ms, z, Z22p, off, K, m, p, r0, rel, w):
    """`_k_takahashi`'s step for a supernode of one pivot column without children:
    `Z[I, J] = Z[I, I] (-W)` and `Z[J, J]`, read straight from the parent's blocks. `w`:
    scratch for the column `-W` (`Zs` may be `G`: in place)."""
    li = G[0, 0]
    z11 = li * np.conj(li)
    if ms:
        Kp = K[p]
        Zp = z[off[p] : off[p] + (Kp + m[p]) * Kp].reshape(Kp + m[p], Kp)
        for b in range(ms):
            w[b] = G[Ks + b, 0]
        for a in range(ms):
            ra = rel[r0 + a]
            acc = 0 * li
            for b in range(ms):
                rb = rel[r0 + b]
                hi, lo = max(ra, rb), min(ra, rb)
                v = Zp[hi, lo] if lo < Kp else Z22p[hi - Kp, lo - Kp]
                if ra < rb:
                    v = np.conj(v)
                acc += v * w[b]
            Zs[Ks + a, 0] = acc
            z11 += np.conj(w[a]) * acc
    Zs[0, 0] = z11


@no_type_check
def _k_takahashi(z, g, off, K, k, m, parent, children, relptr, rel):
    """Selected inverse blocks `[Z[J, J]; Z[I, J]]` in the flat padded layout, roots first.
    `z` comes zeroed, or is `g` itself: a supernode's factor blocks are read (copied) before
    its own selected-inverse blocks overwrite them, and only ancestors' blocks are read
    from `z`, so the recurrence can run in place."""
    ns = off.shape[0]
    w = np.empty(m.max() if ns else 0, z.dtype)
    iw = np.zeros(16, np.int32)
    sw = np.zeros(2, z.dtype)
    zii = [np.zeros((0, 0), z.dtype) for _ in range(ns)]
    left = children.copy()
    for s in range(ns - 1, -1, -1):
        ks, ms, Ks = k[s], m[s], K[s]
        G = g[off[s] : off[s] + (Ks + ms) * Ks].reshape(Ks + ms, Ks)
        Zs = z[off[s] : off[s] + (Ks + ms) * Ks].reshape(Ks + ms, Ks)
        if ks == 1 and not children[s]:
            # A scalar-pivot leaf (most of a nested-dissection tree): no temporaries.
            _k_scalar_leaf_selinv(
                Zs, G, Ks, ms, z, zii[parent[s]], off, K, m, parent[s], relptr[s], rel, w
            )
            if ms:
                left[parent[s]] -= 1
                if left[parent[s]] == 0:
                    zii[parent[s]] = np.zeros((0, 0), z.dtype)
            continue
        # Only the lower triangle of Z[J, J] is ever read (here and by the children).
        Z11 = np.zeros((ks, ks), z.dtype)
        for i in range(ks):
            for j in range(i + 1):
                Z11[i, j] = G[i, j]
        _b_lauum(Z11, ks, iw)  # L11^-H L11^-1
        if ms:
            p = parent[s]
            Kp = K[p]
            Zp = z[off[p] : off[p] + (Kp + m[p]) * Kp].reshape(Kp + m[p], Kp)
            Z22p = zii[p]
            Z22 = np.empty((ms, ms), z.dtype)
            r0 = relptr[s]
            for a in range(ms):
                ra = rel[r0 + a]
                for b in range(a + 1):
                    rb = rel[r0 + b]
                    # ra >= rb: the lower triangle of the parent's front (and of Z22:
                    # the only one read, here by hemm and by the children)
                    Z22[a, b] = Zp[ra, rb] if rb < Kp else Z22p[ra - Kp, rb - Kp]
            Wn = G[Ks:]
            Z21 = np.empty((ms, ks), z.dtype)
            _b_hemm_l(Z21, Z22, Wn, ms, ks, 1, 0, iw, sw)  # Z[I, J] = Z[I, I] (-W)
            _b_gemm_hn(Z11, Wn, Z21, ks, ks, ms, 1, 1, iw, sw)  # + W^H Z[I, J]
            for i in range(ms):
                for j in range(ks):
                    Zs[Ks + i, j] = Z21[i, j]
            left[p] -= 1
            if left[p] == 0:
                zii[p] = np.zeros((0, 0), z.dtype)
            if children[s]:
                zii[s] = Z22
        for i in range(ks):
            for j in range(ks):
                Zs[i, j] = Z11[i, j]
    return z


@no_type_check
def _k_solve(x, g, off, K, k, m, sn_start, relptr, rowind, lower):
    """`L^-1 x` (leaves first) or `L^-H x` (roots first) in the permuted ordering, in place;
    `x` is `(n, nrhs)`."""
    ns = off.shape[0]
    nrhs = x.shape[1]
    for q in range(ns):
        s = q if lower else ns - 1 - q
        ks, ms, Ks = k[s], m[s], K[s]
        G = g[off[s] : off[s] + (Ks + ms) * Ks].reshape(Ks + ms, Ks)
        c0 = sn_start[s]
        r0 = relptr[s]
        if ks == 1:  # a scalar pivot: elementwise
            if lower:
                for j in range(nrhs):
                    xc = x[c0, j]
                    x[c0, j] = G[0, 0] * xc
                    for i in range(ms):
                        x[rowind[r0 + i], j] += G[Ks + i, 0] * xc
            else:
                for j in range(nrhs):
                    acc = np.conj(G[0, 0]) * x[c0, j]
                    for i in range(ms):
                        acc += np.conj(G[Ks + i, 0]) * x[rowind[r0 + i], j]
                    x[c0, j] = acc
            continue
        if lower:
            xc = x[c0 : c0 + ks].copy()
            y = np.dot(np.ascontiguousarray(G[:ks, :ks]), xc)
            x[c0 : c0 + ks] = y
            if ms:
                u = np.dot(np.ascontiguousarray(G[Ks : Ks + ms, :ks]), xc)
                for i in range(ms):
                    r = rowind[r0 + i]
                    for j in range(nrhs):
                        x[r, j] += u[i, j]
        else:
            v = np.dot(_k_conj_t(G[:ks, :ks]), np.ascontiguousarray(x[c0 : c0 + ks]))
            if ms:
                xr = np.empty((ms, nrhs), x.dtype)
                for i in range(ms):
                    xr[i] = x[rowind[r0 + i]]
                v += np.dot(_k_conj_t(G[Ks : Ks + ms, :ks]), xr)
            x[c0 : c0 + ks] = v
    return x


# ---------------------------------------------------------------------------------------
# The pattern of L (for `selinv.selected_inverse_on_l`)
# ---------------------------------------------------------------------------------------


@no_type_check
def _k_l_pattern(order, start, relptr, rowind, off, K, k, m, slot, bsize, bM, perm, total):
    """Every entry of the supernodes' pivot columns, front by front in `order`, row by row
    (pivot rows `r >= j`, then the below rows): as an entry `(hi, lo)` of the lower
    triangle in the original ordering (`perm`), whether it mirrors the permuted entry
    (`flip`: complex values are conjugated), its position in the flat padded layout, and
    in its bucket's blocks as the traced recurrence numbers them (`Bucket.block_pos`)."""
    hi = np.empty(total, np.int64)
    lo = np.empty(total, np.int64)
    flip = np.empty(total, np.bool_)
    flat = np.empty(total, np.int64)
    pos = np.empty(total, np.int64)
    q = 0
    for s in order:
        Ks, ks, ms, t, c0 = K[s], k[s], m[s], slot[s], start[s]
        for r in range(ks + ms):
            row = perm[c0 + r] if r < ks else perm[rowind[relptr[s] + r - ks]]
            fr = r if r < ks else Ks + r - ks
            for j in range(min(r + 1, ks)):
                col = perm[c0 + j]
                hi[q], lo[q], flip[q] = max(row, col), min(row, col), row < col
                flat[q] = off[s] + fr * Ks + j
                if fr < Ks:
                    pos[q] = (t * Ks + fr) * Ks + j
                else:
                    pos[q] = bsize[s] * Ks * Ks + (t * bM[s] + fr - Ks) * Ks + j
                q += 1
    return hi, lo, flip, flat, pos


@no_type_check
def _k_counting_sort(keys, src, dst, n):
    """`dst` <- the entries `src`, stably sorted by `keys[src]` (in `range(n)`)."""
    count = np.zeros(n + 1, np.int64)
    for q in range(src.shape[0]):
        count[keys[src[q]] + 1] += 1
    for i in range(n):
        count[i + 1] += count[i]
    for q in range(src.shape[0]):
        e = src[q]
        dst[count[keys[e]]] = e
        count[keys[e]] += 1


@no_type_check
def _k_csc_order(row, col, n):
    """The permutation that sorts entries by column, then row (two stable counting
    sorts)."""
    by_row = np.empty(row.shape[0], np.int64)
    _k_counting_sort(row, np.arange(row.shape[0]), by_row, n)
    out = np.empty(row.shape[0], np.int64)
    _k_counting_sort(col, by_row, out, n)
    return out


@no_type_check
def _k_take(x, idx):
    out = np.empty(idx.shape[0], x.dtype)
    for q in range(idx.shape[0]):
        out[q] = x[idx[q]]
    return out
