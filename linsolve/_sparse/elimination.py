"""Structural analysis of a sparse symmetric pattern, on the host: fill-reducing ordering,
elimination tree, postorder, column counts and supernodes (with relaxed amalgamation).

This is the part of the symbolic phase that depends only on the graph; `symbolic.py` turns
its result into the schedule and index maps of the numeric phase.

The graph algorithms (elimination tree, postorder, column counts, amalgamation, supernode
row structures) are the classical sequential ones, O(nnz(A) alpha(n)) or
O(sum of supernode row counts); they are compiled with numba on first use (cached on disk,
so later processes only load them) and never run as Python loops. The orderings are
compiled libraries: METIS nested dissection (pymetis, the default) and AMD (SuiteSparse's,
through cvxopt, on the sparse pattern; optional: `pip install linsolve[amd]`).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import no_type_check

import numpy as np
import scipy.sparse as sp
import scipy.sparse.csgraph as csgraph


@dataclasses.dataclass(frozen=True, eq=False)
class Structure:
    """Ordering and supernodal structure of the Cholesky factor of one pattern."""

    ordering: str  # which ordering was actually used
    perm: np.ndarray  # (n,) new -> old: row/col k of the permuted matrix is perm[k]
    iperm: np.ndarray  # (n,) old -> new
    entry_row: np.ndarray  # (nnz,) original row index of each stored entry
    entry_col: np.ndarray  # (nnz,) original column index
    entry_read: np.ndarray  # (nnz,) bool: entry is in the lower triangle (row >= col)
    sn_start: np.ndarray  # (ns + 1,) first permuted column of each supernode (postordered)
    sn_parent: np.ndarray  # (ns,) parent supernode, -1 for roots (parents have larger ids)
    sn_rowptr: np.ndarray  # (ns + 1,) below-diagonal rows of supernode s are
    sn_rowind: np.ndarray  #   sn_rowind[sn_rowptr[s]:sn_rowptr[s + 1]] (permuted, sorted)
    nnz_L: int  # nonzeros of L including the diagonal (without amalgamation zeros)


# The fill-reducing orderings `supernodal_structure` (and `SparseCholesky`) accept.
ORDERINGS = ("auto", "metis", "amd", "rcm", "natural")


def supernodal_structure(indptr, indices, n: int, ordering: str, relax: bool) -> Structure:
    """Ordering, elimination tree and supernodes of the CSC pattern `(indptr, indices)`.

    Only the lower triangle (row >= col) of the pattern is read; the diagonal of L is always
    structurally nonzero.
    """
    if ordering not in ORDERINGS:
        raise ValueError(f"unknown ordering {ordering!r}")
    indptr = np.asarray(indptr).astype(np.int64, copy=False)
    entry_row = np.asarray(indices).astype(np.int64)
    if (
        indptr.shape != (n + 1,)
        or indptr[0] != 0
        or indptr[-1] != entry_row.shape[0]
        or bool(np.any(np.diff(indptr) < 0))
        or (entry_row.size and (entry_row.min() < 0 or entry_row.max() >= n))
    ):
        # Checked here: the compiled kernels below do not bounds-check their indexing.
        raise ValueError(f"invalid CSC pattern for an {n} x {n} matrix")
    entry_col = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    read = entry_row >= entry_col

    # Strict lower pattern of the original matrix, as sorted distinct keys col * n + row.
    r, c = entry_row[read], entry_col[read]
    off = r != c
    key = c[off] * n + r[off]
    if key.size > 1 and not bool(np.all(key[1:] > key[:-1])):
        key = _unique(key)  # unsorted columns or duplicate entries
    lc, lr = key // n, key % n
    kern = _kernels()
    # Symmetric adjacency graph (no self loops) of the lower-triangle pattern, as CSR.
    gp, gi = kern.adjacency(n, lc, lr)
    anz = n + lc.shape[0]  # nnz of the lower triangle of A, diagonal included

    perm, parent, counts, used = _order_and_analyse(kern, gp, gi, lc, lr, n, anz, ordering)
    iperm = np.empty(n, dtype=np.int64)
    iperm[perm] = np.arange(n, dtype=np.int64)
    nnz_L = int(counts.sum())

    sn_start = _fundamental_supernodes(n, parent, counts)
    if relax:
        sn_start = _relaxed_amalgamation(sn_start, parent, counts)
    ns = sn_start.shape[0] - 1
    col2sn = np.repeat(np.arange(ns, dtype=np.int64), np.diff(sn_start))
    sn_last = sn_start[1:] - 1
    sn_parent = np.where(parent[sn_last] >= 0, col2sn[np.maximum(parent[sn_last], 0)], -1)

    # A supernode's below-diagonal rows are those of its last column.
    sn_rowptr = np.zeros(ns + 1, dtype=np.int64)
    np.cumsum(counts[sn_last] - 1, out=sn_rowptr[1:])
    sn_rowind, bad = kern.supernode_rows(sn_start, sn_parent, sn_rowptr, gp, gi, perm, iperm)
    if bad >= 0:
        raise AssertionError("internal error: supernode structure disagrees with column counts")

    return Structure(
        ordering=used,
        perm=perm,
        iperm=iperm,
        entry_row=entry_row,
        entry_col=entry_col,
        entry_read=read,
        sn_start=sn_start,
        sn_parent=sn_parent,
        sn_rowptr=sn_rowptr,
        sn_rowind=sn_rowind,
        nnz_L=nnz_L,
    )


def _unique(x: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an integer array (`np.unique` is hash-based since NumPy 2.3
    and much slower than a plain sort on the millions of keys handled here)."""
    x = np.sort(x)
    keep = np.empty(x.shape[0], dtype=bool)
    keep[:1] = True
    np.not_equal(x[1:], x[:-1], out=keep[1:])
    return x[keep]


# ---------------------------------------------------------------------------------------
# Ordering
# ---------------------------------------------------------------------------------------


def _order_and_analyse(kern, gp, gi, lc, lr, n, anz, ordering):
    """Fill-reducing ordering, then postordered etree and column counts.

    "auto" is METIS nested dissection when pymetis is installed, else AMD (cvxopt), else
    reverse Cuthill-McKee. Nested dissection is preferred over AMD, although it takes longer
    to compute (about 2 s against 0.3 s at n = 512^2): its elimination tree is balanced, with
    far fewer levels than AMD's (15 against 36 on a 256^2 grid), and the numeric phase runs
    one level at a time, so it is faster to compile and to run, with less fill on grids.
    Returns `(perm, parent, counts, used)` with `perm` new -> old, already composed with the
    postorder, and `parent`, `counts` in the new labels.
    """
    del anz
    if ordering == "natural" or gi.shape[0] == 0 or n <= 2:
        return _analyse_perm(kern, gp, gi, np.arange(n, dtype=np.int64)) + ("natural",)
    if ordering == "rcm":
        return _analyse_perm(kern, gp, gi, _order_rcm(gp, gi, n)) + ("rcm",)
    if ordering == "amd":
        return _analyse_perm(kern, gp, gi, _order_amd(lc, lr, n)) + ("amd",)
    if ordering == "metis":
        return _analyse_perm(kern, gp, gi, _order_metis(gp, gi, n)) + ("metis",)
    for order, name in ((_order_metis, "metis"), (_order_amd, "amd")):
        try:
            perm = order(gp, gi, n) if name == "metis" else order(lc, lr, n)
        except ImportError:
            continue
        return _analyse_perm(kern, gp, gi, perm) + (name,)
    warnings.warn(
        "neither pymetis nor cvxopt (AMD) is installed: falling back to reverse "
        "Cuthill-McKee ordering, which fills in much more",
        stacklevel=4,
    )
    return _analyse_perm(kern, gp, gi, _order_rcm(gp, gi, n)) + ("rcm",)


def _cost(counts: np.ndarray) -> tuple[int, float]:
    """Comparison key of an ordering: nnz(L), then the factorization flops."""
    return int(counts.sum()), float(np.dot(counts.astype(np.float64), counts))


def _analyse_perm(kern, gp, gi, perm0):
    """Postordered `(perm, parent, counts)` for the fill-reducing ordering `perm0`."""
    n = perm0.shape[0]
    ip0 = np.empty(n, dtype=np.int64)
    ip0[perm0] = np.arange(n, dtype=np.int64)
    parent0 = kern.etree(n, gp, gi, perm0, ip0)
    post = kern.postorder(parent0)
    # Compose: new label k <- old permuted label post[k].
    perm = perm0[post]
    ipost = np.empty(n, dtype=np.int64)
    ipost[post] = np.arange(n, dtype=np.int64)
    p = parent0[post]
    parent = np.where(p >= 0, ipost[np.maximum(p, 0)], -1)
    iperm = np.empty(n, dtype=np.int64)
    iperm[perm] = np.arange(n, dtype=np.int64)
    counts = kern.column_counts(n, parent, gp, gi, perm, iperm)
    return perm, parent, counts


def _order_rcm(gp, gi, n) -> np.ndarray:
    graph = sp.csr_matrix((np.ones(gi.shape[0], dtype=np.int8), gi, gp), shape=(n, n))
    perm = csgraph.reverse_cuthill_mckee(graph, symmetric_mode=True)
    return np.asarray(perm, dtype=np.int64)


def _order_metis(gp, gi, n) -> np.ndarray:
    import pymetis

    adjacency = pymetis.CSRAdjacency(adj_starts=gp.astype(np.int32), adjacent=gi.astype(np.int32))
    # METIS returns (perm, iperm); its `perm` is new -> old in our convention, but only use
    # it after checking it is a permutation (a malformed graph would be a bug upstream).
    first, _ = pymetis.nested_dissection(adjacency=adjacency)
    perm = np.asarray(first, dtype=np.int64)
    _check_perm(perm, n, "pymetis")
    return perm


def _order_amd(lc, lr, n) -> np.ndarray:
    """SuiteSparse AMD (as in CHOLMOD, default parameters) on the strict lower pattern
    `(lr, lc)`, through cvxopt's wrapper, which takes a sparse matrix (no dense n x n copy)."""
    # (cvxopt is optional, the `amd` extra; its `amd` is a C extension pyright cannot see.)
    from cvxopt import (  # pyright: ignore[reportMissingImports]
        amd,  # pyright: ignore[reportAttributeAccessIssue]
        matrix,
        spmatrix,
    )

    a = spmatrix(1.0, matrix(lr), matrix(lc), (n, n))
    perm = np.asarray(amd.order(a, "L"), dtype=np.int64).reshape(-1)
    _check_perm(perm, n, "AMD")
    return perm


def _check_perm(perm: np.ndarray, n: int, who: str) -> None:
    seen = np.zeros(n, dtype=bool)
    if perm.shape == (n,) and n > 0 and perm.min() >= 0 and perm.max() < n:
        seen[perm] = True
    if perm.shape != (n,) or not bool(seen.all()):
        raise AssertionError(f"{who} returned an invalid permutation")


# ---------------------------------------------------------------------------------------
# Supernodes
# ---------------------------------------------------------------------------------------


def _fundamental_supernodes(n: int, parent: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Start columns (plus a final n) of the fundamental supernodes.

    Column j+1 continues the supernode of j iff j is its only child and their columns of L
    have the same pattern below j+1 (count[j] == count[j+1] + 1).
    """
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    nkids = np.bincount(parent[parent >= 0], minlength=n)
    j = np.arange(n - 1)
    same = (parent[j] == j + 1) & (counts[j] == counts[j + 1] + 1) & (nkids[j + 1] == 1)
    starts = np.concatenate([[0], np.nonzero(~same)[0] + 1, [n]])
    return starts.astype(np.int64)


# Relaxed amalgamation thresholds (as popularised by CHOLMOD): a merge is accepted while the
# merged supernode has at most `cols` columns and a fraction of explicit zeros below `zeros`.
_RELAX = ((4, 1.0), (16, 0.8), (48, 0.1), (None, 0.05))


def _relaxed_amalgamation(
    sn_start: np.ndarray, parent: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """Merge supernodes into their parent when few explicit zeros are added.

    A supernode c can merge into the supernode p holding the etree parent of its last column
    only if p starts right after c (c is p's last child in postorder); the merged supernode
    is then again a chain of the etree whose below-diagonal rows are those of p. Larger
    supernodes mean fewer, bigger dense kernels, which is what the batched numeric phase
    wants.
    """
    big = np.iinfo(np.int64).max
    cols = np.array([big if c is None else c for c, _ in _RELAX], dtype=np.int64)
    zmax = np.array([z for _, z in _RELAX], dtype=np.float64)
    keep = _kernels().amalgamate(sn_start, parent, counts, cols, zmax)
    return np.concatenate([sn_start[:-1][keep], sn_start[-1:]]).astype(np.int64)


# ---------------------------------------------------------------------------------------
# Compiled kernels. Plain Python functions written in the subset numba compiles; they are
# jitted lazily (numba's import and, on the very first run, its compilation are not paid by
# `import linsolve`) and cached on disk. No kernel calls another, so each can be jitted on
# its own. `no_type_check`: a runtime type checker (jaxtyping's import hook) must leave them
# plain functions, which numba can compile.
# ---------------------------------------------------------------------------------------


@no_type_check
def _k_adjacency(n, lc, lr):
    """Symmetric CSR adjacency (no self loops) from distinct strict-lower entries (lr > lc)."""
    deg = np.zeros(n, dtype=np.int64)
    for q in range(lc.shape[0]):
        deg[lc[q]] += 1
        deg[lr[q]] += 1
    gp = np.zeros(n + 1, dtype=np.int64)
    for j in range(n):
        gp[j + 1] = gp[j] + deg[j]
    pos = gp[:-1].copy()
    gi = np.empty(gp[n], dtype=np.int64)
    for q in range(lc.shape[0]):
        a = lc[q]
        b = lr[q]
        gi[pos[a]] = b
        pos[a] += 1
        gi[pos[b]] = a
        pos[b] += 1
    return gp, gi


@no_type_check
def _k_etree(n, gp, gi, perm, iperm):
    """Elimination tree of the permuted graph (Liu, with path compression).

    For row k (in increasing order) walks from every neighbour j < k up the partially built
    tree (compressed 'ancestor' links) to its current root, which becomes a child of k.
    """
    parent = np.full(n, -1, dtype=np.int64)
    anc = np.full(n, -1, dtype=np.int64)
    for k in range(n):
        u = perm[k]
        for q in range(gp[u], gp[u + 1]):
            i = iperm[gi[q]]
            while i != -1 and i < k:
                nxt = anc[i]
                anc[i] = k
                if nxt == -1:
                    parent[i] = k
                i = nxt
    return parent


@no_type_check
def _k_postorder(parent):
    """Depth-first postorder of the forest: roots and children in increasing label order."""
    n = parent.shape[0]
    head = np.full(n, -1, dtype=np.int64)
    nxt = np.full(n, -1, dtype=np.int64)
    for j in range(n - 1, -1, -1):
        p = parent[j]
        if p >= 0:
            nxt[j] = head[p]
            head[p] = j
    post = np.empty(n, dtype=np.int64)
    stack = np.empty(n, dtype=np.int64)
    k = 0
    for root in range(n):
        if parent[root] >= 0:
            continue
        top = 0
        stack[0] = root
        while top >= 0:
            p = stack[top]
            i = head[p]
            if i == -1:
                top -= 1
                post[k] = p
                k += 1
            else:
                head[p] = nxt[i]
                top += 1
                stack[top] = i
    return post


@no_type_check
def _k_column_counts(n, parent, gp, gi, perm, iperm):
    """Nonzeros (with the diagonal) of each column of L, for a postordered tree.

    Row i of L is the 'row subtree' of the etree spanned by the columns j < i with
    A[i, j] != 0. colcount[j] counts the row subtrees containing j; it is the subtree sum
    of weights that add +1 at each leaf of a row subtree, -1 at the least common ancestor of
    consecutive leaves, and -1 at the parent of each row subtree's root (Gilbert, Ng and
    Peyton). LCAs come from a disjoint-set forest with path compression.
    """
    first = np.arange(n, dtype=np.int64)  # smallest (postorder) label in the subtree of j
    for j in range(n):
        p = parent[j]
        if p >= 0 and first[j] < first[p]:
            first[p] = first[j]
    delta = np.zeros(n, dtype=np.int64)
    for j in range(n):
        if first[j] == j:
            delta[j] = 1
    maxfirst = np.full(n, -1, dtype=np.int64)
    prevleaf = np.full(n, -1, dtype=np.int64)
    anc = np.arange(n, dtype=np.int64)
    for j in range(n):
        p = parent[j]
        if p >= 0:
            delta[p] -= 1
        fj = first[j]
        u = perm[j]
        for q in range(gp[u], gp[u + 1]):
            i = iperm[gi[q]]
            if i <= j:
                continue
            # A[i, j] != 0, so j is in the row subtree of i
            if fj > maxfirst[i]:  # no earlier node of this row subtree is below j: a leaf
                maxfirst[i] = fj
                jprev = prevleaf[i]
                prevleaf[i] = j
                delta[j] += 1
                if jprev != -1:
                    # least common ancestor of the previous leaf and j
                    a = jprev
                    while a != anc[a]:
                        a = anc[a]
                    s = jprev
                    while s != a:
                        nx = anc[s]
                        anc[s] = a
                        s = nx
                    delta[a] -= 1
        if p >= 0:
            anc[j] = p
    for j in range(n):  # children precede parents in postorder
        p = parent[j]
        if p >= 0:
            delta[p] += delta[j]
    return delta


@no_type_check
def _k_amalgamate(sn_start, parent, counts, cols, zmax):
    """Relaxed amalgamation (see `_relaxed_amalgamation`); returns which supernodes start a
    merged group. Goes top-down so that a parent group is complete when its children are
    considered; groups are contiguous runs of supernodes represented by their last one."""
    ns = sn_start.shape[0] - 1
    first = sn_start[:-1]
    ncol = sn_start[1:] - sn_start[:-1]
    csum = np.zeros(counts.shape[0] + 1, dtype=np.int64)
    for j in range(counts.shape[0]):
        csum[j + 1] = csum[j] + counts[j]
    true_nnz = csum[sn_start[1:]] - csum[sn_start[:-1]]
    group_first = first.copy()
    group_ncol = ncol.copy()
    group_fcount = counts[first]  # count of the first column = ncols + rows below
    group_nnz = true_nnz.copy()
    rep = np.arange(ns)
    merged = np.zeros(ns, dtype=np.bool_)
    for s in range(ns - 2, -1, -1):
        par_col = parent[sn_start[s + 1] - 1]
        if par_col < 0:
            continue
        g = rep[s + 1]
        if par_col != group_first[g]:
            continue  # not adjacent to (the bottom of) its parent group
        k = ncol[s] + group_ncol[g]
        fc = ncol[s] + group_fcount[g]
        stored = k * fc - k * (k - 1) // 2
        zeros = stored - (true_nnz[s] + group_nnz[g])
        frac = zeros / stored
        ok = False
        for t in range(cols.shape[0]):
            if k <= cols[t] and (frac < zmax[t] or zmax[t] >= 1.0):
                ok = True
                break
        if ok:
            merged[s] = True
            rep[s] = g
            group_first[g] = first[s]
            group_ncol[g] = k
            group_fcount[g] = fc
            group_nnz[g] = true_nnz[s] + group_nnz[g]
    keep = np.ones(ns, dtype=np.bool_)
    for s in range(ns - 1):
        if merged[s]:
            keep[s + 1] = False
    return keep


@no_type_check
def _k_supernode_rows(sn_start, sn_parent, rowptr, gp, gi, perm, iperm):
    """Below-diagonal rows of every supernode into `rowind` at the offsets `rowptr` (from
    the column counts), sorted.

    Row i of L is the row subtree of i: the union of the etree paths from the columns
    j < i with A[i, j] != 0 up to i. Walking these paths in the supernodal tree, for rows i
    in increasing order, appends i to every supernode it passes below the one holding i,
    so each supernode's rows come out sorted, with no sort. Returns `(rowind, s)` with `s`
    the first supernode whose row count disagrees with `rowptr`, or -1.
    """
    ns = sn_parent.shape[0]
    n = sn_start[ns]
    rowind = np.empty(rowptr[ns], dtype=np.int64)
    col2sn = np.empty(n, dtype=np.int64)
    for s in range(ns):
        for k in range(sn_start[s], sn_start[s + 1]):
            col2sn[k] = s
    mark = np.full(ns, -1, dtype=np.int64)
    pos = rowptr[:-1].copy()
    for i in range(n):
        u = perm[i]
        for q in range(gp[u], gp[u + 1]):
            j = iperm[gi[q]]
            if j >= i:
                continue
            s = col2sn[j]
            while s != -1 and sn_start[s + 1] <= i and mark[s] != i:
                if pos[s] >= rowptr[s + 1]:
                    return rowind, s
                mark[s] = i
                rowind[pos[s]] = i
                pos[s] += 1
                s = sn_parent[s]
    for s in range(ns):
        if pos[s] != rowptr[s + 1]:
            return rowind, s
    return rowind, -1


@no_type_check
def _k_front_rows(sn_start, rowptr, rowind, s, row):
    """Where permuted `row[q]` sits in the front of supernode `s[q]`: `(local, kind)` with
    kind 1 and local = column offset for one of its pivot columns, kind 2 and local =
    index among its (sorted) below rows, kind 0 if it is in neither (binary search)."""
    nq = s.shape[0]
    local = np.zeros(nq, dtype=np.int64)
    kind = np.zeros(nq, dtype=np.int8)
    for q in range(nq):
        t = s[q]
        r = row[q]
        if sn_start[t] <= r < sn_start[t + 1]:
            local[q] = r - sn_start[t]
            kind[q] = 1
            continue
        lo = rowptr[t]
        hi = rowptr[t + 1]
        while lo < hi:
            mid = (lo + hi) // 2
            if rowind[mid] < r:
                lo = mid + 1
            else:
                hi = mid
        if lo < rowptr[t + 1] and rowind[lo] == r:
            local[q] = lo - rowptr[t]
            kind[q] = 2
    return local, kind


class _Kernels:
    def __init__(self, jit):
        self.adjacency = jit(_k_adjacency)
        self.etree = jit(_k_etree)
        self.postorder = jit(_k_postorder)
        self.column_counts = jit(_k_column_counts)
        self.amalgamate = jit(_k_amalgamate)
        self.supernode_rows = jit(_k_supernode_rows)
        self.front_rows = jit(_k_front_rows)


@functools.cache
def _kernels() -> _Kernels:
    import numba

    try:
        return _Kernels(functools.partial(numba.njit, cache=True, nogil=True))
    except RuntimeError:  # numba finds no writable cache directory: compile every process
        return _Kernels(functools.partial(numba.njit, cache=False, nogil=True))
