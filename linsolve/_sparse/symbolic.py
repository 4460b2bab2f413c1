"""Symbolic analysis of a sparse symmetric matrix, on the host, once per sparsity pattern.

Everything here is numpy/scipy and depends only on the *pattern* of the matrix, never on
its values, so the result is cached and shared by every numeric factorization (and every
element of a `vmap` batch) that uses the same pattern.

Pipeline:

1. Read the lower triangle of the user's CSC pattern (a full symmetric pattern is accepted:
   its strict upper entries are simply never read, so they end up with zero gradient).
2. Fill-reducing ordering: METIS nested dissection (`pymetis`), falling back to AMD
   (SuiteSparse's, through the optional `cvxopt`, on the sparse pattern) and finally to
   scipy's reverse Cuthill-McKee.
3. Elimination tree (Liu's algorithm with path compression), postorder, and the column counts
   of the Cholesky factor L (Gilbert-Ng-Peyton row-subtree counting), all without ever
   forming the pattern of L column by column. Steps 2-4 live in `elimination.py`
   (compiled graph kernels).
4. Fundamental supernodes, then relaxed amalgamation (merging a child into its parent when
   the explicit zeros this adds are few), and the row structure of every supernode.
5. A schedule for the numeric phase: supernodes are grouped by their height in the supernodal
   elimination tree (all supernodes of one level are independent), and inside a level bucketed
   by padded size, so the numeric phase does one batched dense kernel per bucket.
6. The static integer maps the numeric phase needs (assembly of the stored values into the
   frontal matrices, each child's rows' positions in its parent front for the extend-add,
   the solve gathers/scatters), as compact numpy arrays: O(nnz(A) + sum of supernode row
   counts), never O(sum of front sizes^2) — XLA embeds them in the compiled program as
   constants, and the numeric phase computes the per-entry destinations from them.

The numeric phase lives in `numeric.py`; the selected inverse in `selinv.py`.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import numpy as np

from .elimination import _kernels, supernodal_structure


# ---------------------------------------------------------------------------------------
# Data structures
# ---------------------------------------------------------------------------------------


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
    # Where this bucket's pivot columns and update matrices sit in its level's flat P and
    # U buffers (see `Level`).
    p_offset: int
    u_offset: int
    sel_pos: (
        np.ndarray
    )  # (r,) int32 flat block index (see block_pos) of the stored entries read back here
    # The selected inverse keeps a bucket's fronts as three flat blocks, Z[J, J] (b, K, K),
    # Z[I, J] (b, M, K) and Z[I, I] (b, M, M), one after the other at z_offset of its
    # level's pool.
    z_offset: int
    # Each supernode's position in its parent's front (selected inverse gathers Z[I, I]
    # from there): the parent's three blocks start at up_b11/up_b21/up_b22[t] of the parent
    # level's pool, the parent bucket has up_K/up_M pivots/rows; below row i of the child
    # sits at row/column up_rel[t, i] of the parent's front (-1 for padding).
    up_b11: np.ndarray  # (b,) int32
    up_b21: np.ndarray  # (b,) int32
    up_b22: np.ndarray  # (b,) int32
    up_K: np.ndarray  # (b,) int32
    up_M: np.ndarray  # (b,) int32
    up_rel: np.ndarray  # (b, M) int32
    # Where each supernode's update matrix goes (extend-add, `numeric.extend_add_index`):
    # the parent's pivot columns start at up_pbase[t] and its update matrix at up_ubase[t]
    # of the parent level's flat [P | U] buffer (see `Level`).
    up_pbase: np.ndarray  # (b,) int32
    up_ubase: np.ndarray  # (b,) int32

    @property
    def N(self) -> int:
        return self.K + self.M

    @property
    def z_size(self) -> int:
        return self.size * (self.K * self.K + self.M * self.K + self.M * self.M)

    def block_pos(self, t: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Flat index in this bucket's selected-inverse blocks of front entry (t, r, c),
        r >= c (lower triangle)."""
        K, M, b = self.K, self.M, self.size
        return np.where(
            c < K,
            np.where(r < K, (t * K + r) * K + c, b * K * K + (t * M + r - K) * K + c),
            b * (K * K + M * K) + (t * M + r - K) * M + c - K,
        )

    @property
    def size(self) -> int:
        return int(self.supernodes.shape[0])


@dataclasses.dataclass(frozen=True, eq=False)
class Level:
    """Assembly maps of one level of the supernodal tree (all its buckets at once).

    The front of a supernode is kept as two arrays: its pivot columns `P = [F11; F21]`
    `(b, N, K)` and its update matrix `U` `(b, M, M)`, which receives the children's
    contributions and then `-L21 L21^H`. A level's P's and U's sit in one flat buffer
    `[P | U]` (bucket offsets in `Bucket.p_offset / u_offset`, the U part starting at
    `p_size`), assembled by scatter-adds: the stored values of A (and the constant 1 on
    padding pivots, index nnz of `[values, 1.0]`) through the static map
    `P[v_dst] += [values, 1][v_src]`, and the update matrices of each bucket of the level
    below at destinations computed in the program from O(rows) arrays (`Bucket.up_rel`,
    `up_pbase`, `up_ubase`): the O(sum of squared update sizes) extend-add maps are never
    built on the host nor embedded in the program. Only lower triangles are assembled and
    read.
    """

    buckets: tuple[int, ...]
    p_size: int
    u_size: int
    v_src: np.ndarray  # int32
    v_dst: np.ndarray  # int32, sorted


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
    # (nnz,) bool: the entry is read from / into the upper triangle of the permuted matrix
    # (its lower mirror there is the conjugate, for complex hermitian matrices)
    entry_flip: np.ndarray
    logdet_weight: np.ndarray  # (nnz,) d logdet / d value_e = weight_e * Ainv[row_e, col_e]
    # supernodes (in postorder of the supernodal elimination tree)
    sn_start: np.ndarray  # (ns + 1,) first permuted column of each supernode
    sn_parent: np.ndarray  # (ns,) parent supernode, -1 for roots
    # below-diagonal permuted row indices of supernode s: sn_rowind[sn_rowptr[s]:sn_rowptr[s+1]]
    sn_rowptr: np.ndarray  # (ns + 1,)
    sn_rowind: np.ndarray
    sn_bucket: np.ndarray  # (ns,) bucket id
    sn_slot: np.ndarray  # (ns,) batch index inside the bucket
    buckets: tuple[Bucket, ...]
    levels: tuple[tuple[int, ...], ...]  # bucket ids per level, deepest level first
    level_maps: tuple[Level, ...]  # assembly maps, same order
    z_pool: tuple[int, ...]  # per level: entries of its selected-inverse front pool
    sel_order: np.ndarray  # (nnz,) entry e is element sel_order[e] of concat(sel per bucket)
    # statistics
    nnz_L: int  # nonzeros of L including the diagonal (without amalgamation zeros)
    nnz_L_stored: int  # entries of L kept by the supernodal storage (unpadded)
    nnz_L_padded: int  # entries of L kept by the padded buckets
    flops: float  # approximate factorization flop count (unpadded)
    seconds: float = float("nan")  # wall time of the analysis (set by the cache)

    @property
    def num_supernodes(self) -> int:
        return int(self.sn_parent.shape[0])

    def summary(self) -> str:
        """One line: ordering, size, nonzeros of A (lower triangle read) and of L, supernodes,
        flops, analysis time."""
        return (
            f"sparse analysis: ordering={self.ordering}, n={self.n}, "
            f"nnz(A lower)={int(np.count_nonzero(self.entry_read))}, nnz(L)={self.nnz_L}, "
            f"supernodes={self.num_supernodes}, flops={self.flops:.3g}, "
            f"time={self.seconds:.3g} s"
        )

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

    `ordering`: "auto" (METIS if pymetis is installed, else AMD if cvxopt is, else RCM),
    "metis", "amd",
    "rcm" or "natural".
    """
    indptr = np.ascontiguousarray(np.asarray(indptr), dtype=np.int64)
    indices = np.ascontiguousarray(np.asarray(indices), dtype=np.int64)
    n = int(n)
    if n < 1:
        raise ValueError("the matrix must have at least one row")
    if indptr.shape != (n + 1,):
        raise ValueError(f"indptr must have length n + 1 = {n + 1}, got {indptr.shape}")
    if indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != indices.shape[0]:
        raise ValueError("indptr is not a valid CSC column pointer array")
    if indices.size and (indices.min() < 0 or indices.max() >= n):
        raise ValueError("row indices out of range")
    return _analyse_cached(indptr.tobytes(), indices.tobytes(), n, ordering, relax)


def cache_hits() -> int:
    """How many `analyse` calls so far were answered from the cache (to tell a user
    whether an analysis was reused)."""
    return _analyse_cached.cache_info().hits


@functools.lru_cache(maxsize=32)
def _analyse_cached(indptr_b: bytes, indices_b: bytes, n: int, ordering: str, relax: bool):
    indptr = np.frombuffer(indptr_b, dtype=np.int64)
    indices = np.frombuffer(indices_b, dtype=np.int64)
    start = time.perf_counter()
    sym = _analyse(indptr, indices, n, ordering, relax)
    return dataclasses.replace(sym, seconds=time.perf_counter() - start)


def _analyse(indptr, indices, n, ordering, relax) -> Symbolic:
    st = supernodal_structure(indptr, indices, n, ordering, relax)
    k = np.diff(st.sn_start)
    m = np.diff(st.sn_rowptr)
    return _schedule(
        n=n,
        nnz=int(indices.shape[0]),
        ordering=st.ordering,
        perm=st.perm,
        iperm=st.iperm,
        entry_row=st.entry_row,
        entry_col=st.entry_col,
        entry_read=st.entry_read,
        sn_start=st.sn_start,
        sn_parent=st.sn_parent,
        sn_rowptr=st.sn_rowptr,
        sn_rowind=st.sn_rowind,
        nnz_L=st.nnz_L,
        nnz_L_stored=int(np.sum(k * (k + 1) // 2 + k * m)),
        flops=float(np.sum(k**3 / 3 + k**2 * m + k * m**2)),
    )


# ---------------------------------------------------------------------------------------
# Numeric schedule: levels, buckets, index maps
# ---------------------------------------------------------------------------------------

# Cost model used to split a level into buckets (rough seconds on one CPU core; only the
# ratios matter). Every extra bucket costs a handful of kernels: launch overhead at run time
# and, mostly, compile time (XLA compiles each kernel separately), so buckets are only split
# when padding everything to the largest supernode would waste more.
_COST_FLOP = 1e-10
_COST_ELEM = 4e-9  # per front entry: zeroing, scatter, copies
_COST_FRONT = 2e-7
_COST_BUCKET = 3e-3


def _front_cost(K, M):
    return _COST_FLOP * (K**3 / 3 + K * K * M + K * M * M) + _COST_ELEM * (K + M) ** 2 + _COST_FRONT


def _size_class(x: np.ndarray) -> np.ndarray:
    """Round block dimensions up to 0, 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (ratio <= 1.5)."""
    x = np.asarray(x, dtype=np.int64)
    # largest power of two < x (x - 1 = f 2^e with 1/2 <= f < 1, exact for integers)
    p = np.left_shift(1, np.frexp(np.maximum(x - 1, 1))[1] - 1)
    return np.where(x <= 4, x, np.where(x <= p + p // 2, p + p // 2, 2 * p))


def _split_level(k: np.ndarray, m: np.ndarray) -> list[np.ndarray]:
    """Partition the supernodes of one level (sizes k, m) into buckets.

    Supernodes are first grouped into size classes, classes sorted by front size, and an
    optimal split into contiguous runs of classes is found by dynamic programming on the
    cost model above.
    """
    kc = _size_class(k)
    mc = _size_class(m)
    # classes in the order of (front size, K, M), as one integer key
    base = int(max(kc.max(), mc.max())) + 1
    keys, inv = np.unique(((kc + mc) * base + kc) * base + mc, return_inverse=True)
    inv = inv.reshape(-1)
    C = keys.shape[0]
    cnt = np.bincount(inv, minlength=C)
    kmax = np.zeros(C, np.int64)
    mmax = np.zeros(C, np.int64)
    np.maximum.at(kmax, inv, k)
    np.maximum.at(mmax, inv, m)
    best = np.full(C + 1, np.inf)
    best[0] = 0.0
    arg = np.zeros(C + 1, np.int64)
    for j in range(1, C + 1):
        K = M = 0
        total = 0
        for i in range(j - 1, -1, -1):  # group = classes i..j-1
            K = max(K, kmax[i])
            M = max(M, mmax[i])
            total += cnt[i]
            c = best[i] + total * _front_cost(K, M) + _COST_BUCKET
            if c < best[j]:
                best[j], arg[j] = c, i
    groups = []
    j = C
    while j > 0:
        i = arg[j]
        groups.append(np.nonzero((inv >= i) & (inv < j))[0])
        j = i
    return groups[::-1]


def _depths(parent: np.ndarray) -> np.ndarray:
    """Depth of every node of a forest given by parent pointers (-1 for roots), by pointer
    jumping: O(n log depth) vectorised work, no loop over nodes."""
    depth = (parent >= 0).astype(np.int64)  # distance to `anc`
    anc = parent.copy()
    while True:
        live = np.nonzero(anc >= 0)[0]
        if not live.size:
            return depth
        a = anc[live]
        depth[live] += depth[a]
        anc[live] = anc[a]


def _schedule(
    *,
    n,
    nnz,
    ordering,
    perm,
    iperm,
    entry_row,
    entry_col,
    entry_read,
    sn_start,
    sn_parent,
    sn_rowptr,
    sn_rowind,
    nnz_L,
    nnz_L_stored,
    flops,
) -> Symbolic:
    ns = sn_parent.shape[0]
    k = np.diff(sn_start)
    m = np.diff(sn_rowptr).astype(np.int64)

    # Levels by depth: a supernode is processed on the level just below its parent, so every
    # child of a level-d supernode is on level d + 1 and update matrices only ever flow
    # between consecutive levels (they can be freed right after).
    depth = _depths(sn_parent)
    num_levels = int(depth.max()) + 1
    by_depth = np.argsort(depth, kind="stable")
    depth_bounds = np.searchsorted(depth[by_depth], np.arange(num_levels + 1))

    bucket_of = np.zeros(ns, dtype=np.int64)
    sn_slot = np.zeros(ns, dtype=np.int64)
    bucket_members: list[np.ndarray] = []
    bucket_level: list[int] = []
    levels: list[list[int]] = []
    for lev in range(num_levels - 1, -1, -1):
        members = by_depth[depth_bounds[lev] : depth_bounds[lev + 1]]
        ids = []
        for grp in _split_level(k[members], m[members]):
            sns = members[grp]
            b = len(bucket_members)
            bucket_members.append(sns)
            bucket_level.append(lev)
            bucket_of[sns] = b
            sn_slot[sns] = np.arange(sns.shape[0])
            ids.append(b)
        levels.append(ids)
    nb = len(bucket_members)
    bK = np.array([int(k[s].max()) for s in bucket_members], dtype=np.int64)
    bM = np.array([int(m[s].max()) for s in bucket_members], dtype=np.int64)
    bN = bK + bM

    # Position of permuted row `row` in the front of supernode `s`: its own columns come first,
    # then its below rows after the (padded) pivot block (a compiled binary search).
    rowptr = np.asarray(sn_rowptr, dtype=np.int64)
    all_rows = np.asarray(sn_rowind, dtype=np.int64)
    col2sn = np.repeat(np.arange(ns), k)

    def front_pos(s: np.ndarray, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position, found) of permuted rows in the fronts of supernodes s."""
        s = np.ascontiguousarray(s, dtype=np.int64)
        row = np.ascontiguousarray(row, dtype=np.int64)
        local, kind = _kernels().front_rows(sn_start, rowptr, all_rows, s, row)
        return np.where(kind == 2, bK[bucket_of[s]] + local, local), kind > 0

    # Stored entries -> flat position of their lower-triangle mirror in the fronts.
    pr, pc = iperm[entry_row], iperm[entry_col]
    lo, hi = np.minimum(pr, pc), np.maximum(pr, pc)
    e_sn = col2sn[lo]
    e_row, e_found = front_pos(e_sn, hi)
    if not np.all(e_found[entry_read]):
        raise AssertionError("internal error: an entry of A is outside the pattern of L")
    e_col = lo - sn_start[e_sn]
    e_bucket = bucket_of[e_sn]
    e_N = bN[e_bucket]
    bsize = np.array([s.shape[0] for s in bucket_members], dtype=np.int64)
    e_K = bK[e_bucket]
    e_M = e_N - e_K
    e_t = sn_slot[e_sn]
    e_pos = np.where(
        e_row < e_K,
        (e_t * e_K + e_row) * e_K + e_col,
        bsize[e_bucket] * e_K * e_K + (e_t * e_M + e_row - e_K) * e_K + e_col,
    )
    # An unread (upper) entry whose mirror is not in the pattern of L reads back as zero:
    # point it one past the end of its bucket's blocks.
    e_pos = np.where(e_found, e_pos, bsize[e_bucket] * (e_N * e_N - e_M * e_K))

    weight = np.where(entry_read, np.where(entry_row == entry_col, 1.0, 2.0), 0.0)

    # Pool layout of every level (buckets of a level in order).
    z_offset = np.zeros(nb, dtype=np.int64)
    z_pool = []
    for ids in levels:
        zo = 0
        for b in ids:
            z_offset[b] = zo
            zo += int(bsize[b] * (bK[b] * bK[b] + bM[b] * bK[b] + bM[b] * bM[b]))
        z_pool.append(zo)

    # Position of every child's below rows in its parent's front.
    child = np.nonzero(sn_parent >= 0)[0]
    par = sn_parent[child]
    cat_rows = all_rows[np.repeat(sn_parent >= 0, m)]  # rows of the children, in order
    rel_all, rel_found = front_pos(np.repeat(par, m[child]), cat_rows)
    if not np.all(rel_found):
        raise AssertionError("internal error: a child row is outside its parent's front")
    rel_off = np.zeros(ns + 1, dtype=np.int64)  # indexed by supernode (roots have m == 0)
    np.cumsum(np.where(sn_parent >= 0, m, 0), out=rel_off[1:])

    def rel_rows(sns: np.ndarray, width: int, pad: np.ndarray) -> np.ndarray:
        ar = np.arange(width)
        valid = ar[None, :] < m[sns][:, None]
        idx = np.minimum(rel_off[sns][:, None] + ar[None, :], max(rel_all.size - 1, 0))
        vals = rel_all[idx] if rel_all.size else np.zeros(idx.shape, np.int64)
        return np.where(valid, vals, pad[:, None])

    # Flat level buffers [P | U].
    p_offset = np.zeros(nb, dtype=np.int64)
    u_offset = np.zeros(nb, dtype=np.int64)
    p_size, u_size = [], []
    for ids in levels:
        po = uo = 0
        for b in ids:
            p_offset[b], u_offset[b] = po, uo
            po += int(bsize[b] * bN[b] * bK[b])
            uo += int(bsize[b] * bM[b] * bM[b])
        p_size.append(po)
        u_size.append(uo)

    def value_maps(b, sel, pad_t, pad_j):
        """(src, dst) of the stored values (and padding pivots' 1) of bucket b: index into
        `[values, 1.0]`, flat index in its level's P buffer."""
        K, N = int(bK[b]), int(bN[b])
        a_slot = sn_slot[e_sn[sel]]
        src = np.concatenate([sel, np.full(pad_t.shape[0], nnz, np.int64)])
        dst = np.concatenate(
            [(a_slot * N + e_row[sel]) * K + e_col[sel], (pad_t * N + pad_j) * K + pad_j]
        )
        return src, dst + p_offset[b]

    level_index = np.zeros(nb, dtype=np.int64)
    for i, ids in enumerate(levels):
        level_index[list(ids)] = i
    raw_maps: list = [None] * nb
    buckets = []
    # stored entries grouped by bucket (in their order), all of them and the read ones
    by_bucket = np.argsort(e_bucket, kind="stable")
    e_bounds = np.searchsorted(e_bucket[by_bucket], np.arange(nb + 1))
    sel_chunks = []
    for b in range(nb):
        sns = bucket_members[b]
        K, M = int(bK[b]), int(bM[b])
        bs = sns.shape[0]
        arK, arM = np.arange(K), np.arange(M)
        col_valid = arK[None, :] < k[sns][:, None]
        col_idx = np.where(col_valid, sn_start[sns][:, None] + arK[None, :], n)
        row_valid = arM[None, :] < m[sns][:, None]
        ridx = np.minimum(rowptr[sns][:, None] + arM[None, :], max(all_rows.size - 1, 0))
        row_idx = np.where(row_valid, all_rows[ridx] if all_rows.size else n, n)

        mine = by_bucket[e_bounds[b] : e_bounds[b + 1]]
        sel = mine[entry_read[mine]]
        pad_t, pad_j = np.nonzero(~col_valid)
        raw_maps[b] = value_maps(b, sel, pad_t, pad_j)
        sel_chunks.append(mine)

        has_parent = sn_parent[sns] >= 0
        pb = np.where(has_parent, bucket_of[np.maximum(sn_parent[sns], 0)], 0)
        ps = sn_slot[np.maximum(sn_parent[sns], 0)]
        pK, pM, pz = bK[pb], bM[pb], z_offset[pb]
        pn = bsize[pb]
        up_K = np.where(has_parent, pK, 0)
        up_M = np.where(has_parent, pM, 0)
        up_b11 = np.where(has_parent, pz + ps * pK * pK, 0)
        up_b21 = np.where(has_parent, pz + pn * pK * pK + ps * pM * pK, 0)
        up_b22 = np.where(has_parent, pz + pn * (pK * pK + pM * pK) + ps * pM * pM, 0)
        up_rel = rel_rows(sns, M, np.full(bs, -1)) if M else np.zeros((bs, 0), np.int64)
        p_lev = level_index[pb]
        up_pbase = np.where(has_parent, p_offset[pb] + ps * bN[pb] * pK, 0)
        up_ubase = np.where(has_parent, np.take(p_size, p_lev) + u_offset[pb] + ps * pM * pM, 0)
        buckets.append(
            Bucket(
                level=bucket_level[b],
                K=K,
                M=M,
                supernodes=sns,
                ncols=k[sns],
                nrows=m[sns],
                col_idx=col_idx.astype(np.int32),
                row_idx=row_idx.astype(np.int32),
                p_offset=int(p_offset[b]),
                u_offset=int(u_offset[b]),
                sel_pos=e_pos[mine].astype(np.int32),
                z_offset=int(z_offset[b]),
                up_b11=up_b11.astype(np.int32),
                up_b21=up_b21.astype(np.int32),
                up_b22=up_b22.astype(np.int32),
                up_K=up_K.astype(np.int32),
                up_M=up_M.astype(np.int32),
                up_rel=up_rel.astype(np.int32),
                up_pbase=up_pbase.astype(np.int32),
                up_ubase=up_ubase.astype(np.int32),
            )
        )
    level_maps = []
    for i, ids in enumerate(levels):
        src = np.concatenate([raw_maps[b][0] for b in ids])
        dst = np.concatenate([raw_maps[b][1] for b in ids])
        o = np.argsort(dst, kind="stable")
        level_maps.append(
            Level(
                buckets=tuple(ids),
                p_size=p_size[i],
                u_size=u_size[i],
                v_src=src[o].astype(np.int32),
                v_dst=dst[o].astype(np.int32),
            )
        )
    order = np.concatenate(sel_chunks) if sel_chunks else np.zeros(0, np.int64)
    sel_order = np.empty(nnz, dtype=np.int64)
    sel_order[order] = np.arange(order.shape[0])

    nnz_L_padded = int(np.sum(bsize * (bK * (bK + 1) // 2 + bK * bM)))
    if max(max(z_pool), max(np.add(u_size, p_size)), nnz + 1, n + 1) >= 2**31:
        raise ValueError("sparse factor too large for 32-bit index maps")

    return Symbolic(
        n=n,
        nnz=nnz,
        ordering=ordering,
        perm=perm,
        iperm=iperm,
        entry_row=entry_row,
        entry_col=entry_col,
        entry_read=entry_read,
        entry_flip=pr < pc,
        logdet_weight=weight,
        sn_start=sn_start,
        sn_parent=sn_parent,
        sn_rowptr=sn_rowptr,
        sn_rowind=sn_rowind,
        sn_bucket=bucket_of,
        sn_slot=sn_slot,
        buckets=tuple(buckets),
        levels=tuple(tuple(x) for x in levels),
        level_maps=tuple(level_maps),
        z_pool=tuple(z_pool),
        sel_order=sel_order,
        nnz_L=nnz_L,
        nnz_L_stored=nnz_L_stored,
        nnz_L_padded=nnz_L_padded,
        flops=flops,
    )
