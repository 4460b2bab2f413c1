"""Symbolic analysis of a sparse symmetric matrix, on the host, once per sparsity pattern.

Everything here is numpy/scipy and depends only on the *pattern* of the matrix, never on
its values, so the result is cached and shared by every numeric factorization (and every
element of a `vmap` batch) that uses the same pattern.

Pipeline:

1. Read the lower triangle of the user's CSC pattern (a full symmetric pattern is accepted:
   its strict upper entries are simply never read, so they end up with zero gradient).
2. Fill-reducing ordering: METIS nested dissection (`pymetis`), falling back to AMD
   (`suitesparse-amd`, small matrices only because that wrapper takes a dense matrix) and
   finally to scipy's reverse Cuthill-McKee.
3. Elimination tree (Liu's algorithm with path compression), postorder, and the column counts
   of the Cholesky factor L (Gilbert-Ng-Peyton row-subtree counting), all without ever
   forming the pattern of L column by column.
4. Fundamental supernodes, then relaxed amalgamation (merging a child into its parent when
   the explicit zeros this adds are few), and the row structure of every supernode.
5. A schedule for the numeric phase: supernodes are grouped by their height in the supernodal
   elimination tree (all supernodes of one level are independent), and inside a level bucketed
   by padded size, so the numeric phase does one batched dense kernel per bucket.
6. The static integer maps the numeric phase needs (assembly of the stored values into the
   frontal matrices, extend-add from child to parent fronts, the solve gathers/scatters), as
   compact numpy arrays: O(nnz(A) + sum of supernode row counts), never O(sum of front sizes^2),
   because XLA embeds them in the compiled program as constants.

The numeric phase lives in `numeric.py`; the selected inverse in `selinv.py`.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import numpy as np
import scipy.sparse as sp
import scipy.sparse.csgraph as csgraph


# ---------------------------------------------------------------------------------------
# Data structures
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Link:
    """Supernodes of one bucket whose parents lie in one bucket of the next level up.

    For pair `t`, supernode `child_slots[t]` of `child_bucket` has its parent at batch index
    `parent_slots[t]` of `parent_bucket`; row `i` of the child's update matrix (its `i`-th
    below-diagonal row) is row `rel[t, i]` of the parent's front (`rel == N_parent` for
    padding). The factorization extend-adds the child's update matrix through this map; the
    selected inverse gathers the child's `Z[I, I]` block back out of the parent's front.
    """

    child_bucket: int
    parent_bucket: int
    child_slots: np.ndarray  # (npairs,) int32
    parent_slots: np.ndarray  # (npairs,) int32
    rel: np.ndarray  # (npairs, M_child) int32


@dataclasses.dataclass(frozen=True, eq=False)
class Bucket:
    """A batch of independent supernodes of one level, padded to a common size.

    The front of supernode `t` is an `(N, N)` matrix, `N = K + M`: positions `0..K-1` are its
    pivot columns (the first `ncols[t]` real, the rest padding with an identity pivot),
    positions `K..N-1` its below-diagonal rows (the first `nrows[t]` real, the rest zero).
    """

    level: int  # depth in the supernodal elimination tree (roots: 0)
    K: int
    M: int
    supernodes: np.ndarray  # (b,) supernode ids
    ncols: np.ndarray  # (b,) real pivot columns
    nrows: np.ndarray  # (b,) real below rows
    col_idx: np.ndarray  # (b, K) int32 permuted column of each pivot, n for padding
    row_idx: np.ndarray  # (b, M) int32 permuted row of each below row, n for padding
    a_src: np.ndarray  # (q,) int32 index into [values, 1.0] (nnz means "the constant 1")
    a_dst: np.ndarray  # (q,) int32 flat index into the (b, N, N) fronts, lower triangle
    sel_pos: np.ndarray  # (r,) int32 flat front index of the stored entries read back here
    in_links: tuple[int, ...]  # links whose parent bucket is this one
    out_links: tuple[int, ...]  # links whose child bucket is this one

    @property
    def N(self) -> int:
        return self.K + self.M

    @property
    def size(self) -> int:
        return int(self.supernodes.shape[0])


@dataclasses.dataclass(frozen=True, eq=False)
class Symbolic:
    """Everything the numeric phase needs about one sparsity pattern.

    Hashable by identity, so it can be a static argument (`nondiff_argnums`, closures).
    """

    n: int
    nnz: int  # length of the user's values array
    ordering: str  # which ordering was actually used
    perm: np.ndarray  # (n,) new -> old: row/col k of the permuted matrix is perm[k]
    iperm: np.ndarray  # (n,) old -> new
    # stored entries, in the user's order
    entry_row: np.ndarray  # (nnz,) original row index
    entry_col: np.ndarray  # (nnz,) original column index
    entry_read: np.ndarray  # (nnz,) bool: entry is in the lower triangle (row >= col)
    logdet_weight: np.ndarray  # (nnz,) d logdet / d value_e = weight_e * Ainv[row_e, col_e]
    # supernodes (in postorder of the supernodal elimination tree)
    sn_start: np.ndarray  # (ns + 1,) first permuted column of each supernode
    sn_parent: np.ndarray  # (ns,) parent supernode, -1 for roots
    sn_rows: tuple[np.ndarray, ...]  # below-diagonal permuted row indices of each supernode
    sn_bucket: np.ndarray  # (ns,) bucket id
    sn_slot: np.ndarray  # (ns,) batch index inside the bucket
    buckets: tuple[Bucket, ...]
    links: tuple[Link, ...]
    levels: tuple[tuple[int, ...], ...]  # bucket ids per level, deepest level first
    sel_order: np.ndarray  # (nnz,) entry e is element sel_order[e] of concat(sel per bucket)
    # statistics
    nnz_L: int  # nonzeros of L including the diagonal (without amalgamation zeros)
    nnz_L_stored: int  # entries of L kept by the supernodal storage (unpadded)
    nnz_L_padded: int  # entries of L kept by the padded buckets
    flops: float  # approximate factorization flop count (unpadded)

    @property
    def num_supernodes(self) -> int:
        return int(self.sn_parent.shape[0])

    def __repr__(self) -> str:  # keep reprs short: the arrays are large
        return (
            f"Symbolic(n={self.n}, nnz={self.nnz}, ordering={self.ordering!r}, "
            f"supernodes={self.num_supernodes}, buckets={len(self.buckets)}, "
            f"levels={len(self.levels)}, nnz_L={self.nnz_L})"
        )


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------


def analyse(
    indptr,
    indices,
    n: int,
    *,
    ordering: str = "auto",
    relax: bool = True,
) -> Symbolic:
    """Symbolic analysis of the CSC pattern `(indptr, indices)` of an `n x n` symmetric matrix.

    The pattern may hold the lower triangle only or the full symmetric matrix; in either
    case only the entries with `row >= col` are read. Cached on the pattern's bytes.

    `ordering`: "auto" (METIS if available, else AMD for small n, else RCM), "metis", "amd",
    "rcm" or "natural".
    """
    indptr = np.ascontiguousarray(np.asarray(indptr), dtype=np.int64)
    indices = np.ascontiguousarray(np.asarray(indices), dtype=np.int64)
    n = int(n)
    if indptr.shape != (n + 1,):
        raise ValueError(f"indptr must have length n + 1 = {n + 1}, got {indptr.shape}")
    if indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != indices.shape[0]:
        raise ValueError("indptr is not a valid CSC column pointer array")
    if indices.size and (indices.min() < 0 or indices.max() >= n):
        raise ValueError("row indices out of range")
    return _analyse_cached(indptr.tobytes(), indices.tobytes(), n, ordering, relax)


@functools.lru_cache(maxsize=32)
def _analyse_cached(indptr_b: bytes, indices_b: bytes, n: int, ordering: str, relax: bool):
    indptr = np.frombuffer(indptr_b, dtype=np.int64)
    indices = np.frombuffer(indices_b, dtype=np.int64)
    return _analyse(indptr, indices, n, ordering, relax)


def _analyse(indptr, indices, n, ordering, relax) -> Symbolic:
    nnz = int(indices.shape[0])
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

    sn_rows = _supernode_rows(sn_start, sn_parent, lp, li)
    # Self-check: a supernode's below rows are those of its last column.
    m = np.array([x.shape[0] for x in sn_rows], dtype=np.int64)
    if not np.array_equal(m, counts[sn_last] - 1):
        raise AssertionError("internal error: supernode structure disagrees with column counts")

    k = np.diff(sn_start)
    nnz_L_stored = int(np.sum(k * (k + 1) // 2 + k * m))
    flops = float(np.sum(k**3 / 3 + k**2 * m + k * m**2))

    return _schedule(
        n=n,
        nnz=nnz,
        ordering=used,
        perm=perm,
        iperm=iperm,
        entry_row=entry_row,
        entry_col=entry_col,
        entry_read=read,
        sn_start=sn_start,
        sn_parent=sn_parent,
        sn_rows=sn_rows,
        nnz_L=nnz_L,
        nnz_L_stored=nnz_L_stored,
        flops=flops,
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


def _lower_pattern(r: np.ndarray, c: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, duplicate-free CSC pattern of the strict lower triangle of the permuted matrix.

    `r, c` are permuted coordinates of the read entries (either triangle after permuting).
    """
    lo, hi = np.minimum(r, c), np.maximum(r, c)
    keep = hi != lo
    key = np.unique(lo[keep] * n + hi[keep])
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


def _supernode_rows(sn_start, sn_parent, lp, li) -> tuple[np.ndarray, ...]:
    """Below-diagonal row pattern of each supernode.

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
        key = np.unique(s * n + i)
        s, i = key // n, key % n
        found.append(key)
        p = sn_parent[s]
        up = p >= 0
        s, i, p = s[up], i[up], p[up]
        beyond = i >= sn_end[p]
        s, i = p[beyond], i[beyond]
    key = np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)
    owner, rows = key // n, key % n
    bounds = np.searchsorted(owner, np.arange(ns + 1))
    return tuple(rows[bounds[t] : bounds[t + 1]] for t in range(ns))


