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
    "_k_times_lower",
    "_k_lower_gram",
    "_k_cholinv",
    "_k_extend_add_targets",
    "_k_scalar_front",
    "_k_scalar_leaf_selinv",
    "_k_factor",
    "_k_takahashi",
    "_k_solve",
)


@functools.cache
def compiled() -> types.SimpleNamespace:
    """The jitted kernels. Each replaces its Python function in this module's globals
    (callees first), so that a kernel calling another calls the compiled one."""
    import numba

    def jit(fn):
        try:
            return numba.njit(cache=True, nogil=True)(fn)
        except RuntimeError:  # no writable cache directory: compile in every process
            return numba.njit(cache=False, nogil=True)(fn)

    out = {}
    for name in _KERNELS:
        out[name] = globals()[name] = jit(globals()[name])
    return types.SimpleNamespace(**out)


_NB = 32  # block size of the pivot blocks' Cholesky and inverse


@no_type_check
def _k_conj_t(x):
    return np.ascontiguousarray(np.conj(x).T)


# Pivot blocks from `tri[0]` columns on skip the zero triangle of `L11^-1` in their
# products, by column blocks of `tri[1]`: fewer flops pay only for large fronts (3-D
# problems; measured: slower for the 2-D grids' 30-250 column fronts).
TRI = (256, 128)


@no_type_check
def _k_times_lower(A, Lw, herm, tri):
    """`A Lw` (or `A Lw^H` with `herm`) for lower-triangular `Lw` (k x k)."""
    mr, k = A.shape
    cb = tri[1]
    if k < tri[0]:
        if herm:
            return np.dot(A, _k_conj_t(Lw))
        return np.dot(A, np.ascontiguousarray(Lw))
    out = np.empty((mr, k), A.dtype)
    for c0 in range(0, k, cb):
        c1 = min(c0 + cb, k)
        if herm:
            blk = np.dot(np.ascontiguousarray(A[:, :c1]), _k_conj_t(Lw[c0:c1, :c1]))
        else:
            blk = np.dot(np.ascontiguousarray(A[:, c0:]), np.ascontiguousarray(Lw[c0:, c0:c1]))
        out[:, c0:c1] = blk
    return out


@no_type_check
def _k_lower_gram(X, Y, triangular, tri):
    """`X^H Y` (k x k, both (r x k)), exact in its lower triangle only (the upper one is
    not read); with `triangular`, `X` and `Y` are lower triangular (r = k) and their zero
    rows are skipped."""
    r, k = X.shape
    cb = tri[1]
    if k < tri[0]:
        return np.dot(_k_conj_t(X), np.ascontiguousarray(Y))
    out = np.zeros((k, k), X.dtype)
    for i0 in range(0, k, cb):
        i1 = min(i0 + cb, k)
        p0 = i0 if triangular else 0
        out[i0:i1, :i1] = np.dot(_k_conj_t(X[p0:, i0:i1]), np.ascontiguousarray(Y[p0:, :i1]))
    return out


@no_type_check
def _k_cholinv(A, k):
    """`L^-1` (lower) for the hermitian matrix whose lower triangle is `A[:k, :k]`; NaN if
    it is not positive definite. Blocked: the block updates are BLAS products."""
    L = np.zeros((k, k), A.dtype)
    for i in range(k):
        for j in range(i + 1):
            L[i, j] = A[i, j]
    Li = np.zeros((k, k), A.dtype)
    ok = True
    for j0 in range(0, k, _NB):
        j1 = min(j0 + _NB, k)
        if j0 > 0:
            L[j0:, j0:j1] -= np.dot(np.ascontiguousarray(L[j0:, :j0]), _k_conj_t(L[j0:j1, :j0]))
        # unblocked Cholesky of the diagonal block
        for j in range(j0, j1):
            d = L[j, j].real
            if not d > 0:
                ok = False
                d = np.nan
            d = np.sqrt(d)
            L[j, j] = d
            for i in range(j + 1, j1):
                L[i, j] /= d
            for jj in range(j + 1, j1):
                v = np.conj(L[jj, j])
                for i in range(jj, j1):
                    L[i, jj] -= L[i, j] * v
        # inverse of the diagonal block
        for j in range(j0, j1):
            Li[j, j] = 1 / L[j, j]
            for i in range(j + 1, j1):
                acc = L[i, j] * Li[j, j]
                for p in range(j + 1, i):
                    acc += L[i, p] * Li[p, j]
                Li[i, j] = -acc / L[i, i]
        if j1 < k:
            L[j1:, j0:j1] = np.dot(np.ascontiguousarray(L[j1:, j0:j1]), _k_conj_t(Li[j0:j1, j0:j1]))
        if j0 > 0:
            # rows j0:j1 of L^-1: -D^-1 (L[J, :j0] L^-1[:j0, :j0])
            Li[j0:j1, :j0] = -np.dot(
                np.ascontiguousarray(Li[j0:j1, j0:j1]),
                np.dot(np.ascontiguousarray(L[j0:j1, :j0]), np.ascontiguousarray(Li[:j0, :j0])),
            )
    if not ok:
        Li[:, :] = np.nan
    return Li


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
def _k_factor(flat, vals, vsrc, vdst, off, K, k, m, parent, relptr, rel, tri):
    """Multifrontal factorization into the flat padded layout `flat` (zeroed here)."""
    flat[:] = 0
    for q in range(vsrc.shape[0]):
        flat[vdst[q]] += vals[vsrc[q]]
    ns = off.shape[0]
    upd = [np.zeros((0, 0), flat.dtype) for _ in range(ns)]
    for s in range(ns):
        ks, ms, Ks = k[s], m[s], K[s]
        N = Ks + ms  # rows of the block actually used (padding rows beyond stay zero)
        G = flat[off[s] : off[s] + N * Ks].reshape(N, Ks)
        if ks == 1:
            # A scalar pivot (most leaves of a nested-dissection tree): no temporaries.
            _k_scalar_front(G, Ks, ms, upd, s, flat, off, K, m, parent, relptr, rel)
            continue
        Li = _k_cholinv(G, ks)
        if ms:
            F21 = np.ascontiguousarray(G[Ks : Ks + ms, :ks])
            L21 = _k_times_lower(F21, Li, True, tri)
            W = _k_times_lower(L21, Li, False, tri)
        for i in range(ks):
            for j in range(ks):
                G[i, j] = Li[i, j]
        if not ms:
            continue
        for i in range(ms):
            for j in range(ks):
                G[Ks + i, j] = -W[i, j]
        U, has_u, Gp, Up, Kp = _k_extend_add_targets(flat, upd, s, off, K, m, parent)
        r0 = relptr[s]
        L21h = _k_conj_t(L21)
        # Extend-add of U - L21 L21^H (lower triangle) into the parent's front, one block
        # of rows at a time: the product of a block is made, then scattered at once.
        for i0 in range(0, ms, 256):
            i1 = min(i0 + 256, ms)
            S = np.dot(np.ascontiguousarray(L21[i0:i1]), np.ascontiguousarray(L21h[:, :i1]))
            for a in range(i0, i1):
                ra = rel[r0 + a]
                for b in range(a + 1):
                    v = U[a, b] - S[a - i0, b] if has_u else -S[a - i0, b]
                    rb = rel[r0 + b]
                    if rb < Kp:
                        Gp[ra, rb] += v
                    else:
                        Up[ra - Kp, rb - Kp] += v
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
def _k_takahashi(z, g, off, K, k, m, parent, children, relptr, rel, tri):
    """Selected inverse blocks `[Z[J, J]; Z[I, J]]` in the flat padded layout, roots first.
    `z` comes zeroed, or is `g` itself: a supernode's factor blocks are read (copied) before
    its own selected-inverse blocks overwrite them, and only ancestors' blocks are read
    from `z`, so the recurrence can run in place."""
    ns = off.shape[0]
    w = np.empty(m.max() if ns else 0, z.dtype)
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
        Li = np.ascontiguousarray(G[:ks, :ks])
        Z11 = _k_lower_gram(Li, Li, True, tri)
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
                    # ra >= rb: the lower triangle of the parent's front
                    v = Zp[ra, rb] if rb < Kp else Z22p[ra - Kp, rb - Kp]
                    Z22[a, b] = v
                    Z22[b, a] = np.conj(v)
            Wn = np.ascontiguousarray(G[Ks : Ks + ms, :ks])
            Z21 = np.dot(Z22, Wn)
            Z11 += _k_lower_gram(Wn, Z21, False, tri)
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
