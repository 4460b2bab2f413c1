"""Structural analysis of a sparse symmetric pattern, on the host: fill-reducing ordering,
elimination tree, postorder, column counts and supernodes (with relaxed amalgamation).

This is the part of the symbolic phase that depends only on the graph; `symbolic.py` turns
its result into the schedule and index maps of the numeric phase.
"""

from __future__ import annotations

import dataclasses
import warnings

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


def supernodal_structure(indptr, indices, n: int, ordering: str, relax: bool) -> Structure:
    """Ordering, elimination tree and supernodes of the CSC pattern `(indptr, indices)`."""
    entry_col = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    entry_row = indices.astype(np.int64)
    read = entry_row >= entry_col

    # Adjacency graph (no self loops) of the lower-triangle pattern, symmetrised.
    r, c = entry_row[read], entry_col[read]
    off = r != c
    graph = sp.coo_matrix(
        (np.ones(int(off.sum()), dtype=np.int8), (r[off], c[off])), shape=(n, n)
    ).tocsr()
    graph = (graph + graph.T).tocsr()
    graph.sum_duplicates()
    graph.sort_indices()

    perm0, used = _order(graph, n, ordering)

    # Permuted lower pattern (diagonal always included: L has it, even if A stores no entry).
    ip0 = np.empty(n, dtype=np.int64)
    ip0[perm0] = np.arange(n)
    lp, li = _lower_pattern(ip0[r], ip0[c], n)

    parent0 = _etree(n, lp, li)
    post = _postorder(parent0)
    # Compose: new label k <- old permuted label post[k].
    perm = perm0[post]
    iperm = np.empty(n, dtype=np.int64)
    iperm[perm] = np.arange(n)
    ipost = np.empty(n, dtype=np.int64)
    ipost[post] = np.arange(n)
    parent = np.where(parent0[post] >= 0, ipost[np.maximum(parent0[post], 0)], -1)
    lp, li = _lower_pattern(iperm[r], iperm[c], n)

    counts = _column_counts(n, parent, lp, li)
    nnz_L = int(counts.sum())

    sn_start = _fundamental_supernodes(n, parent, counts)
    if relax:
        sn_start = _relaxed_amalgamation(sn_start, parent, counts)
    ns = sn_start.shape[0] - 1
    col2sn = np.repeat(np.arange(ns), np.diff(sn_start))
    sn_last = sn_start[1:] - 1
    sn_parent = np.where(parent[sn_last] >= 0, col2sn[np.maximum(parent[sn_last], 0)], -1)

    sn_rowptr, sn_rowind = _supernode_rows(sn_start, sn_parent, lp, li)
    # Self-check: a supernode's below rows are those of its last column.
    m = np.diff(sn_rowptr)
    if not np.array_equal(m, counts[sn_last] - 1):
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


# ---------------------------------------------------------------------------------------
# Ordering
# ---------------------------------------------------------------------------------------

# The suitesparse-amd wrapper only accepts a dense matrix, so it is only usable when n^2
# bytes are cheap.
_AMD_MAX_N = 4096


def _order(graph: sp.csr_matrix, n: int, ordering: str) -> tuple[np.ndarray, str]:
    """A fill-reducing permutation `perm` (new -> old) and the name of the method used."""
    if ordering not in ("auto", "metis", "amd", "rcm", "natural"):
        raise ValueError(f"unknown ordering {ordering!r}")
    if ordering == "natural" or graph.nnz == 0 or n <= 2:
        return np.arange(n, dtype=np.int64), "natural"
    if ordering in ("auto", "metis"):
        try:
            return _order_metis(graph, n), "metis"
        except ImportError:
            if ordering == "metis":
                raise
    if ordering in ("auto", "amd") and (n <= _AMD_MAX_N or ordering == "amd"):
        try:
            return _order_amd(graph, n), "amd"
        except ImportError:
            if ordering == "amd":
                raise
    if ordering == "auto":
        warnings.warn(
            "neither pymetis nor suitesparse-amd is installed: falling back to reverse "
            "Cuthill-McKee ordering, which fills in much more",
            stacklevel=4,
        )
    perm = csgraph.reverse_cuthill_mckee(graph, symmetric_mode=True)
    return np.asarray(perm, dtype=np.int64), "rcm"


def _order_metis(graph: sp.csr_matrix, n: int) -> np.ndarray:
    import pymetis

    adjacency = pymetis.CSRAdjacency(
        adj_starts=graph.indptr.astype(np.int32), adjacent=graph.indices.astype(np.int32)
    )
    # METIS returns (perm, iperm); its `perm` is new -> old in our convention, but only use
    # it after checking it is a permutation (a malformed graph would be a bug upstream).
    first, _ = pymetis.nested_dissection(adjacency=adjacency)
    perm = np.asarray(first, dtype=np.int64)
    if perm.shape != (n,) or not np.array_equal(np.sort(perm), np.arange(n)):
        raise AssertionError("pymetis returned an invalid permutation")
    return perm


def _order_amd(graph: sp.csr_matrix, n: int) -> np.ndarray:
    from suitesparse_amd import amd

    dense = graph.toarray().astype(np.int8)
    dense[np.arange(n), np.arange(n)] = 1
    perm, _ = amd.amd(dense, dense_permutation=False)
    return np.asarray(perm, dtype=np.int64)


# ---------------------------------------------------------------------------------------
# Elimination tree, postorder, column counts
# ---------------------------------------------------------------------------------------


def _unique(x: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an integer array (`np.unique` is hash-based since NumPy 2.3
    and much slower than a plain sort on the millions of keys handled here)."""
    x = np.sort(x)
    keep = np.empty(x.shape[0], dtype=bool)
    keep[:1] = True
    np.not_equal(x[1:], x[:-1], out=keep[1:])
    return x[keep]


def _lower_pattern(r: np.ndarray, c: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, duplicate-free CSC pattern of the strict lower triangle of the permuted matrix.

    `r, c` are permuted coordinates of the read entries (either triangle after permuting).
    """
    lo, hi = np.minimum(r, c), np.maximum(r, c)
    keep = hi != lo
    key = _unique(lo[keep] * n + hi[keep])
    col, row = key // n, key % n
    lp = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(col, minlength=n), out=lp[1:])
    return lp, row


def _etree(n: int, lp: np.ndarray, li: np.ndarray) -> np.ndarray:
    """Elimination tree from the strict lower CSC pattern (Liu, with path compression).

    Processes rows in increasing order; for row k, walks from every column j < k with
    A[k, j] != 0 up the partially built tree (with compressed 'ancestor' links) to its
    current root, which becomes a child of k.
    """
    # Row-wise access to the strict lower triangle: for each row k, the columns j < k.
    order = np.argsort(li, kind="stable")
    cols_of_entry = np.repeat(np.arange(n), np.diff(lp))
    row_cols = cols_of_entry[order].tolist()
    rp = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(li, minlength=n), out=rp[1:])
    rp = rp.tolist()

    parent = [-1] * n
    anc = [-1] * n
    for k in range(n):
        for p in range(rp[k], rp[k + 1]):
            i = row_cols[p]
            while i != -1 and i < k:
                nxt = anc[i]
                anc[i] = k
                if nxt == -1:
                    parent[i] = k
                i = nxt
    return np.asarray(parent, dtype=np.int64)


def _postorder(parent: np.ndarray) -> np.ndarray:
    """A depth-first postorder of the forest `parent` (children visited in label order)."""
    n = parent.shape[0]
    # children lists via a stable sort by parent
    kids_order = np.argsort(parent, kind="stable")
    counts = np.bincount(parent[parent >= 0], minlength=n)
    kp = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=kp[1:])
    num_roots = int(np.sum(parent < 0))
    kids = kids_order[num_roots:].tolist()  # roots sort first (parent == -1)
    roots = kids_order[:num_roots].tolist()
    kp = kp.tolist()

    post = []
    stack = []
    for root in reversed(roots):
        stack.append((root, False))
    # Iterative DFS: push a node as 'expanded' after its children so it is emitted last.
    while stack:
        node, expanded = stack.pop()
        if expanded:
            post.append(node)
            continue
        stack.append((node, True))
        for child in reversed(kids[kp[node] : kp[node + 1]]):
            stack.append((child, False))
    # Roots in increasing label order, children in increasing label order.
    return np.asarray(post, dtype=np.int64)


def _column_counts(n: int, parent: np.ndarray, lp: np.ndarray, li: np.ndarray) -> np.ndarray:
    """Number of nonzeros (with the diagonal) in each column of L, for a postordered tree.

    Row i of L is the 'row subtree' of the etree spanned by the columns j < i with
    A[i, j] != 0.  colcount[j] counts the row subtrees containing j; it is the subtree sum
    of weights that add +1 at each leaf of a row subtree, -1 at the least common ancestor of
    consecutive leaves, and -1 at the parent of each row subtree's root (Gilbert, Ng and
    Peyton). LCAs come from a disjoint-set forest with path compression.
    """
    parent_l = parent.tolist()
    # first[j]: smallest (postorder) label in the subtree of j.
    first = list(range(n))
    for j in range(n):
        p = parent_l[j]
        if p >= 0 and first[j] < first[p]:
            first[p] = first[j]
    delta = [1 if first[j] == j else 0 for j in range(n)]
    maxfirst = [-1] * n
    prevleaf = [-1] * n
    anc = list(range(n))
    lpl = lp.tolist()
    lil = li.tolist()
    for j in range(n):
        p = parent_l[j]
        if p >= 0:
            delta[p] -= 1
        fj = first[j]
        for q in range(lpl[j], lpl[j + 1]):
            i = lil[q]  # i > j: A[i, j] != 0, so j is in the row subtree of i
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
                        nxt = anc[s]
                        anc[s] = a
                        s = nxt
                    delta[a] -= 1
        if p >= 0:
            anc[j] = p
    counts = np.asarray(delta, dtype=np.int64)
    for j in range(n):  # children precede parents in postorder
        p = parent_l[j]
        if p >= 0:
            counts[p] += counts[j]
    return counts


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
    ns = sn_start.shape[0] - 1
    first = sn_start[:-1].tolist()
    ncol = np.diff(sn_start).tolist()
    last = (sn_start[1:] - 1).tolist()
    # count of the first column = ncols + rows below
    fcount = counts[sn_start[:-1]].tolist()
    csum = np.concatenate([[0], np.cumsum(counts)])
    true_nnz = (csum[sn_start[1:]] - csum[sn_start[:-1]]).tolist()
    parent_l = parent.tolist()

    # group representative of each supernode: groups are contiguous runs of supernodes,
    # represented by their topmost (last) supernode.
    group_first = first[:]  # valid for representatives
    group_ncol = ncol[:]
    group_fcount = fcount[:]
    group_nnz = true_nnz[:]
    merged_into_next = [False] * ns
    # Go top-down so that a parent group is complete when its children are considered.
    rep = list(range(ns))
    for s in range(ns - 2, -1, -1):
        par_col = parent_l[last[s]]
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
        for cols, zmax in _RELAX:
            if (cols is None or k <= cols) and (frac < zmax or (zmax >= 1.0)):
                ok = True
                break
        if ok:
            merged_into_next[s] = True
            rep[s] = g
            group_first[g] = first[s]
            group_ncol[g] = k
            group_fcount[g] = fc
            group_nnz[g] = true_nnz[s] + group_nnz[g]
    keep = [0] + [first[s + 1] for s in range(ns - 1) if not merged_into_next[s]]
    return np.asarray(keep + [int(sn_start[-1])], dtype=np.int64)


def _supernode_rows(sn_start, sn_parent, lp, li) -> tuple[np.ndarray, np.ndarray]:
    """Below-diagonal row pattern of each supernode, as CSR-like `(rowptr, rowind)`
    (sorted rows of supernode `s` in `rowind[rowptr[s]:rowptr[s + 1]]`).

    Row i > last(s) is in the pattern of supernode s iff A[i, k] != 0 for some column k in
    the subtree of s (columns are postordered). So every entry A[i, k] is pushed up the
    supernodal tree from the supernode holding k for as long as i lies beyond the current
    supernode; the walk is vectorised over all entries, one tree level per step.
    """
    ns = sn_parent.shape[0]
    n = int(sn_start[-1])
    col2sn = np.repeat(np.arange(ns), np.diff(sn_start))
    sn_end = sn_start[1:]  # one past the last column
    k = np.repeat(np.arange(n), np.diff(lp))
    s = col2sn[k]
    i = li
    keep = i >= sn_end[s]
    s, i = s[keep], i[keep]
    found = []
    while s.size:
        key = _unique(s * n + i)
        s, i = key // n, key % n
        found.append(key)
        p = sn_parent[s]
        up = p >= 0
        s, i, p = s[up], i[up], p[up]
        beyond = i >= sn_end[p]
        s, i = p[beyond], i[beyond]
    key = _unique(np.concatenate(found)) if found else np.zeros(0, np.int64)
    owner, rows = key // n, key % n
    bounds = np.searchsorted(owner, np.arange(ns + 1))
    return bounds.astype(np.int64), rows.astype(np.int64)
