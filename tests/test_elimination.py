"""Host structural analysis (`linsolve._sparse.elimination`) against brute force: the
elimination tree, postorder, column counts and supernode row structures are checked
against the pattern of L obtained by boolean Gaussian elimination of small patterns."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from linsolve._sparse import elimination as el


ORDERINGS = ["natural", "rcm", "amd", "metis", "auto"]


# ---------------------------------------------------------------------------------------
# Brute force
# ---------------------------------------------------------------------------------------


def lower_bool(indptr, indices, n):
    """Dense boolean lower triangle (diagonal included) of the read part of a CSC pattern."""
    a = np.zeros((n, n), dtype=bool)
    col = np.repeat(np.arange(n), np.diff(indptr))
    row = np.asarray(indices)
    keep = row >= col
    a[row[keep], col[keep]] = True
    a[np.arange(n), np.arange(n)] = True
    return a


def cholesky_pattern(low: np.ndarray) -> np.ndarray:
    """Pattern of L (lower, with diagonal) by symbolic elimination of a dense bool matrix."""
    n = low.shape[0]
    sym = low | low.T
    lpat = np.zeros((n, n), dtype=bool)
    for k in range(n):
        rows = np.nonzero(sym[k:, k])[0] + k
        lpat[rows, k] = True
        below = rows[rows > k]
        sym[np.ix_(below, below)] = True
    return lpat


def etree_of(lpat: np.ndarray) -> np.ndarray:
    n = lpat.shape[0]
    parent = np.full(n, -1)
    for j in range(n):
        below = np.nonzero(lpat[j + 1 :, j])[0]
        if below.size:
            parent[j] = j + 1 + below[0]
    return parent


def permuted(low: np.ndarray, perm: np.ndarray) -> np.ndarray:
    sym = low | low.T
    b = sym[np.ix_(perm, perm)]
    return np.tril(b)


# ---------------------------------------------------------------------------------------
# Patterns
# ---------------------------------------------------------------------------------------


def random_lower(n, density, seed, diag=True):
    rng = np.random.default_rng(seed)
    a = sp.random(n, n, density=density, random_state=rng, format="csr")
    a = a + a.T
    if diag:
        a = a + sp.eye(n)
    low = sp.tril(a).tocsc()
    low.sort_indices()
    return low


def grid_lower(m):
    t = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(m, m))
    i = sp.eye(m)
    low = sp.tril(sp.kron(t, i) + sp.kron(i, t)).tocsc()
    low.sort_indices()
    return low


def disconnected_lower(seed):
    blocks = [random_lower(k, 0.3, seed + k) for k in (7, 1, 12, 3)]
    low = sp.block_diag(blocks).tocsc()
    low.sort_indices()
    return low


CASES = {
    "random-a": lambda: random_lower(40, 0.06, 0),
    "random-b": lambda: random_lower(55, 0.04, 1),
    "random-c": lambda: random_lower(30, 0.15, 2),
    "random-nodiag": lambda: random_lower(35, 0.08, 3, diag=False),
    "grid": lambda: grid_lower(6),
    "disconnected": lambda: disconnected_lower(4),
    "n1": lambda: sp.csc_matrix(np.ones((1, 1))),
    "n1-empty": lambda: sp.csc_matrix((1, 1)),
    "diagonal": lambda: sp.eye(9, format="csc"),
    "arrow": lambda: sp.tril(
        sp.eye(12) + sp.csr_matrix((np.ones(11), (np.full(11, 11), np.arange(11))), (12, 12))
    ).tocsc(),
}


def check_structure(st: el.Structure, low: np.ndarray, relax: bool) -> None:
    n = low.shape[0]
    perm, iperm = st.perm, st.iperm
    assert np.array_equal(np.sort(perm), np.arange(n))
    assert np.array_equal(iperm[perm], np.arange(n))
    lpat = cholesky_pattern(permuted(low, perm))
    assert st.nnz_L == int(lpat.sum())
    parent = etree_of(lpat)
    # Postordered: parents have larger labels and every subtree is a contiguous range.
    assert np.all((parent == -1) | (parent > np.arange(n)))
    size = np.ones(n, dtype=int)
    for j in range(n):
        if parent[j] >= 0:
            size[parent[j]] += size[j]
    first = np.arange(n) - size + 1
    for j in range(n):
        if parent[j] >= 0:
            assert first[parent[j]] <= first[j]

    sn_start, sn_parent = st.sn_start, st.sn_parent
    ns = sn_parent.shape[0]
    assert sn_start[0] == 0 and sn_start[-1] == n and np.all(np.diff(sn_start) > 0)
    assert st.sn_rowptr.shape == (ns + 1,) and st.sn_rowptr[0] == 0
    col2sn = np.repeat(np.arange(ns), np.diff(sn_start))
    counts = lpat.sum(axis=0)
    nkids = np.bincount(parent[parent >= 0], minlength=n)
    for s in range(ns):
        f, e = sn_start[s], sn_start[s + 1]
        last = e - 1
        # a chain of the etree
        for j in range(f, last):
            assert parent[j] == j + 1
        p = parent[last]
        assert sn_parent[s] == (col2sn[p] if p >= 0 else -1)
        assert sn_parent[s] == -1 or sn_parent[s] > s
        rows = st.sn_rowind[st.sn_rowptr[s] : st.sn_rowptr[s + 1]]
        assert np.array_equal(rows, np.nonzero(lpat[e:, last])[0] + e)
        # every column's below-supernode rows are within the supernode's rows
        for j in range(f, e):
            below = np.nonzero(lpat[e:, j])[0] + e
            assert np.all(np.isin(below, rows))
            if not relax:  # fundamental: identical structure
                assert np.array_equal(below, rows)
                assert np.all(lpat[j:e, j])
    if not relax:  # fundamental supernodes are maximal
        for s in range(ns - 1):
            j = sn_start[s + 1] - 1
            assert not (parent[j] == j + 1 and counts[j] == counts[j + 1] + 1 and nkids[j + 1] == 1)


# ---------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("ordering", ORDERINGS)
@pytest.mark.parametrize("relax", [False, True])
def test_structure_against_brute_force(name, ordering, relax):
    m = CASES[name]()
    n = m.shape[0]
    st = el.supernodal_structure(m.indptr, m.indices, n, ordering, relax)
    check_structure(st, lower_bool(m.indptr, m.indices, n), relax)
    assert np.array_equal(st.entry_row, m.indices)
    assert np.array_equal(st.entry_col, np.repeat(np.arange(n), np.diff(m.indptr)))
    assert np.array_equal(st.entry_read, st.entry_row >= st.entry_col)


@pytest.mark.parametrize("seed", range(4))
def test_kernels_against_brute_force(seed):
    """etree, postorder and column counts on a random (unpermuted) pattern."""
    m = random_lower(45, 0.05, 10 + seed)
    n = m.shape[0]
    low = lower_bool(m.indptr, m.indices, n)
    kern = el._kernels()
    lc, lr = np.nonzero(np.tril(low, -1).T)  # sorted by column, then row
    gp, gi = kern.adjacency(n, lc.astype(np.int64), lr.astype(np.int64))
    ident = np.arange(n, dtype=np.int64)
    parent = kern.etree(n, gp, gi, ident, ident)
    assert np.array_equal(parent, etree_of(cholesky_pattern(low)))

    post = kern.postorder(parent)
    assert np.array_equal(np.sort(post), ident)
    pos = np.empty(n, dtype=int)
    pos[post] = ident
    assert np.all((parent == -1) | (pos[np.maximum(parent, 0)] > pos))

    perm, parent_p, counts = el._analyse_perm(kern, gp, gi, ident)
    lpat = cholesky_pattern(permuted(low, perm))
    assert np.array_equal(parent_p, etree_of(lpat))
    assert np.array_equal(counts, lpat.sum(axis=0))


def test_full_symmetric_input_reads_lower_only():
    low = random_lower(40, 0.08, 7)
    full = (low + sp.tril(low, -1).T).tocsc()
    full.sort_indices()
    # Junk in the upper triangle must be ignored as well.
    junk = (full + sp.triu(random_lower(40, 0.1, 8).T, 1)).tocsc()
    junk.sort_indices()
    for ordering in ORDERINGS:
        a = el.supernodal_structure(low.indptr, low.indices, 40, ordering, True)
        for m in (full, junk):
            b = el.supernodal_structure(m.indptr, m.indices, 40, ordering, True)
            for f in ("perm", "sn_start", "sn_parent", "sn_rowptr", "sn_rowind"):
                assert np.array_equal(getattr(a, f), getattr(b, f)), (ordering, f)
            assert a.nnz_L == b.nnz_L
            assert np.array_equal(b.entry_read, b.entry_row >= b.entry_col)


def test_unsorted_and_duplicate_indices():
    low = random_lower(30, 0.1, 5)
    ref = el.supernodal_structure(low.indptr, low.indices, 30, "amd", True)
    rng = np.random.default_rng(0)
    indptr, indices = [0], []
    for j in range(30):
        col = list(low.indices[low.indptr[j] : low.indptr[j + 1]])
        col = col + col[:1]  # a duplicate
        rng.shuffle(col)
        indices += col
        indptr.append(len(indices))
    st = el.supernodal_structure(np.array(indptr), np.array(indices), 30, "amd", True)
    for f in ("perm", "sn_start", "sn_parent", "sn_rowptr", "sn_rowind"):
        assert np.array_equal(getattr(ref, f), getattr(st, f))
    check_structure(st, lower_bool(low.indptr, low.indices, 30), True)


def test_auto_prefers_nested_dissection_then_amd(monkeypatch):
    m = grid_lower(9)
    n = m.shape[0]
    metis = el.supernodal_structure(m.indptr, m.indices, n, "metis", True)
    auto = el.supernodal_structure(m.indptr, m.indices, n, "auto", True)
    assert auto.ordering == "metis" and np.array_equal(auto.perm, metis.perm)

    def missing(*args):
        raise ImportError("pymetis")

    monkeypatch.setattr(el, "_order_metis", missing)
    amd = el.supernodal_structure(m.indptr, m.indices, n, "amd", True)
    auto = el.supernodal_structure(m.indptr, m.indices, n, "auto", True)
    assert auto.ordering == "amd" and np.array_equal(auto.perm, amd.perm)


def test_relaxed_amalgamation_makes_fewer_supernodes():
    m = grid_lower(12)
    n = m.shape[0]
    a = el.supernodal_structure(m.indptr, m.indices, n, "amd", False)
    b = el.supernodal_structure(m.indptr, m.indices, n, "amd", True)
    assert b.sn_start.shape[0] < a.sn_start.shape[0]
    assert a.nnz_L == b.nnz_L


def test_invalid_input():
    with pytest.raises(ValueError):
        el.supernodal_structure(np.array([0, 1, 2]), np.array([0, 5]), 2, "auto", True)
    with pytest.raises(ValueError):
        el.supernodal_structure(np.array([0, 2]), np.array([0]), 2, "auto", True)
    with pytest.raises(ValueError):
        el.supernodal_structure(np.array([0, 1]), np.array([0]), 1, "bogus", True)
