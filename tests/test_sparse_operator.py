"""SparseOperator: construction, structure convention, transforms."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from helpers import assert_grad_matches_fd
from jax.experimental import sparse as jsparse

import linsolve as ls


PSD = ls.positive_semidefinite_tag


def laplacian_2d(k, shift=1.0):
    t = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(k, k))
    return (sp.kron(sp.eye(k), t) + sp.kron(t, sp.eye(k)) + shift * sp.eye(k * k)).tocsc()


def test_from_scipy_matches_dense():
    a = sp.random(7, 5, density=0.4, random_state=0, format="coo")
    op = ls.SparseOperator.from_scipy(a)
    x = np.random.default_rng(0).standard_normal(5)
    np.testing.assert_allclose(op.as_matrix(), a.toarray())
    np.testing.assert_allclose(op.mv(x), a @ x)
    np.testing.assert_allclose(op.T.mv(np.ones(7)), a.T @ np.ones(7))
    np.testing.assert_allclose(op.mv(np.stack([x, x], 1)), a @ np.stack([x, x], 1))
    assert op.shape == (7, 5)
    np.testing.assert_allclose(op.to_scipy().toarray(), a.toarray())


def test_lower_only_storage_equals_full_storage():
    a = laplacian_2d(4)
    full = ls.SparseOperator.from_scipy(a, PSD)
    lower = ls.SparseOperator.from_scipy(sp.tril(a), PSD)
    garbage = a.copy().tolil()
    garbage[0, 5] = 99.0  # an upper entry that is not read
    garbage = ls.SparseOperator.from_scipy(garbage, PSD)
    x = np.arange(16.0)
    for op in (full, lower, garbage):
        np.testing.assert_allclose(op.mv(x), a @ x)
        np.testing.assert_allclose(op.as_matrix(), a.toarray())
        np.testing.assert_allclose(
            ls.linear_solve(op, x).value, np.linalg.solve(a.toarray(), x), rtol=1e-10
        )


def test_gradient_wrt_values_follows_convention():
    a = laplacian_2d(3)
    op = ls.SparseOperator.from_scipy(a, PSD)
    p = op.pattern
    b = jnp.arange(9.0)

    def loss(values):
        sol = ls.linear_solve(ls.SparseOperator(values, p.indices, p.indptr, p.shape, PSD), b)
        return jnp.sum(jnp.sin(sol.value))

    g = assert_grad_matches_fd(loss, np.asarray(op.values))
    upper = p.rows < p.cols
    assert np.all(g[upper] == 0) and np.any(g[~upper] != 0)


def test_hermitian_sparse():
    rng = np.random.default_rng(1)
    d = rng.standard_normal((4, 4)) + 1j * rng.standard_normal((4, 4))
    h = d @ d.conj().T + 4 * np.eye(4)
    op = ls.SparseOperator.from_scipy(sp.csc_matrix(np.tril(h)), PSD)
    np.testing.assert_allclose(op.as_matrix(), h, atol=1e-12)
    x = rng.standard_normal(4) + 0j
    np.testing.assert_allclose(op.mv(x), h @ x, atol=1e-12)
    np.testing.assert_allclose(op.T.mv(x), h.T @ x, atol=1e-12)


def test_from_bcoo_sums_duplicates_and_traces_data():
    dense = np.array([[2.0, 0, 1], [0, 3, 0], [1, 0, 4]])
    m = jsparse.BCOO.fromdense(jnp.asarray(dense))
    op = ls.SparseOperator.from_bcoo(m)
    np.testing.assert_allclose(op.as_matrix(), dense)
    dup = jsparse.BCOO(
        (jnp.array([1.0, 2.0, 3.0]), jnp.array([[0, 0], [0, 0], [1, 1]])), shape=(2, 2)
    )
    np.testing.assert_allclose(ls.SparseOperator.from_bcoo(dup).as_matrix(), [[3.0, 0], [0, 3.0]])
    csr = jsparse.BCSR.fromdense(jnp.asarray(dense))
    np.testing.assert_allclose(ls.SparseOperator.from_bcoo(csr).as_matrix(), dense)

    def loss(data):
        op = ls.SparseOperator.from_bcoo(jsparse.BCOO((data, m.indices), shape=m.shape), PSD)
        return ls.linear_solve(op, jnp.ones(3)).value.sum()

    expected = jax.grad(lambda a: jnp.linalg.solve(a, jnp.ones(3)).sum())(jnp.asarray(dense))
    g = jax.jit(jax.grad(loss))(m.data)
    idx = np.asarray(m.indices)
    fold = np.where(idx[:, 0] > idx[:, 1], 2.0, np.where(idx[:, 0] == idx[:, 1], 1.0, 0.0))
    np.testing.assert_allclose(g, fold * np.asarray(expected)[idx[:, 0], idx[:, 1]], rtol=1e-10)


def test_vmap_over_values_and_jit():
    a = laplacian_2d(3)
    op = ls.SparseOperator.from_scipy(a, PSD)
    p = op.pattern
    batch = jnp.stack([op.values, 2 * op.values, 3 * op.values])

    @eqx.filter_jit
    def solve(values):
        return ls.linear_solve(
            ls.SparseOperator(values, p.indices, p.indptr, p.shape, PSD), jnp.ones(9)
        ).value

    out = jax.vmap(solve)(batch)
    for i, s in enumerate([1, 2, 3]):
        np.testing.assert_allclose(out[i], np.linalg.solve(s * a.toarray(), np.ones(9)), rtol=1e-10)


def test_errors():
    with pytest.raises(ValueError, match="values must have shape"):
        ls.SparseOperator(jnp.ones(3), [0, 1], [0, 1, 2], (2, 2))
    with pytest.raises(ValueError, match="indptr"):
        ls.SparseOperator(jnp.ones(2), [0, 1], [0, 2], (2, 2))
    with pytest.raises(TypeError, match="concrete"):
        jax.jit(lambda i: ls.SparseOperator(jnp.ones(2), i, np.array([0, 1, 2]), (2, 2)).values)(
            jnp.array([0, 1])
        )
    with pytest.raises(ValueError, match="square"):
        ls.SparseOperator.from_scipy(sp.random(3, 2, density=0.5), PSD)


@pytest.mark.parametrize(
    "tags,part",
    [
        ((ls.lower_triangular_tag,), lambda a: np.tril(a)),
        (
            (ls.lower_triangular_tag, ls.unit_diagonal_tag),
            lambda a: np.tril(a, -1) + np.eye(len(a)),
        ),
        ((ls.upper_triangular_tag,), lambda a: np.triu(a)),
    ],
)
def test_sparse_triangular_solve(tags, part):
    """Level-scheduled substitution; garbage in the other triangle is never read."""
    from jax.test_util import check_grads

    n = 12
    rng = np.random.default_rng(0)
    a = sp.random(n, n, density=0.3, random_state=1).toarray() + np.diag(rng.uniform(1, 2, n))
    op = ls.SparseOperator.from_scipy(sp.csc_matrix(a), tags)
    assert isinstance(ls.AutoSolver().select(op), ls.Triangular)
    b = rng.standard_normal((n, 2))
    linear_solve = eqx.filter_jit(ls.linear_solve)  # eager sparse code: one op at a time
    np.testing.assert_allclose(linear_solve(op, b).value, np.linalg.solve(part(a), b), atol=1e-12)
    p = op.pattern

    def solve(v, b):
        return ls.linear_solve(ls.SparseOperator(v, p.indices, p.indptr, p.shape, tags), b).value

    check_grads(jax.jit(solve), (op.values, jnp.asarray(b[:, 0])), order=2, modes=["fwd", "rev"])
    g = assert_grad_matches_fd(
        lambda v: jnp.sum(jnp.sin(solve(v, jnp.asarray(b[:, 0])))), np.asarray(op.values)
    )
    read = np.zeros(p.nnz, bool)
    off, diag = p.read(frozenset(tags))
    read[off] = True
    read[diag] = True
    assert np.all(g[~read] == 0)
    # A missing diagonal entry is a structural zero pivot.
    holed = sp.csc_matrix(part(a))
    holed.setdiag(0)
    holed.eliminate_zeros()
    code = linear_solve(ls.SparseOperator.from_scipy(holed, tags), b, throw=False).result
    assert code == (ls.RESULTS.successful if ls.unit_diagonal_tag in tags else ls.RESULTS.singular)


# -- malformed CSC input ------------------------------------------------------------------


@pytest.mark.parametrize(
    "indices,indptr,shape,match",
    [
        ([0, 1], [1, 2, 3], (2, 2), r"indptr\[0\] must be 0; got indptr\[0\] = 1"),
        (
            [0, 1],
            [0, 2, 1, 2],
            (2, 3),
            r"non-decreasing; indptr\[2\] = 1 < indptr\[1\] = 2 \(column 1",
        ),
        ([0, 1], [0, 2], (2, 2), r"indptr must have length n_cols \+ 1 = 3 .* got length 2"),
        ([0, 1], [0, 1, 2, 2], (2, 2), r"indptr must have length n_cols \+ 1 = 3"),
        (
            [0, 1, 1],
            [0, 1, 2],
            (2, 2),
            r"indices must have length indptr\[-1\] = 2 .* got length 3",
        ),
        ([0], [0, 1, 2], (2, 2), r"indices must have length indptr\[-1\] = 2 .* got length 1"),
        ([0, 2], [0, 1, 2], (2, 2), r"row index out of range .* indices\[1\] = 2 \(column 1\)"),
        ([-1, 1], [0, 1, 2], (2, 2), r"row index out of range .* indices\[0\] = -1 \(column 0\)"),
        ([0.0, 1.0], [0, 1, 2], (2, 2), r"indices must have an integer dtype; got float64"),
        ([True, False], [0, 1, 2], (2, 2), r"indices must have an integer dtype; got bool"),
        ([0, 1], [0.0, 1.0, 2.0], (2, 2), r"indptr must have an integer dtype; got float64"),
        ([[0, 1]], [0, 1, 2], (2, 2), r"indices must be a 1-D array"),
        ([0, 1], [[0, 1, 2]], (2, 2), r"indptr must be a 1-D array"),
        (
            [0, 1],
            [0, 1, 2],
            (float("nan"), 2),
            r"shape must be a pair .* non-negative integers.*n_rows = nan",
        ),
        ([0, 1], [0, 1, 2], (2, 2.0), r"shape must be a pair .*n_cols = 2.0"),
        ([0, 1], [0, 1, 2], (-1, 2), r"shape must be a pair .*n_rows = -1"),
        ([0, 1], [0, 1, 2], (2,), r"shape must be a pair"),
        ([0, 1], [0, 1, 2], 2, r"shape must be a pair"),
    ],
)
def test_malformed_csc_is_rejected(indices, indptr, shape, match):
    n_values = len(indices) if np.ndim(indices) == 1 else 2
    with pytest.raises(ValueError, match=match):
        ls.SparseOperator(jnp.ones(n_values), indices, indptr, shape)


def test_malformed_values_shape_is_rejected():
    with pytest.raises(ValueError, match=r"values must have shape \(2,\)"):
        ls.SparseOperator(jnp.ones(3), [0, 1], [0, 1, 2], (2, 2))
    with pytest.raises(ValueError, match=r"values must have shape \(2,\)"):
        ls.SparseOperator(jnp.ones((2, 1)), [0, 1], [0, 1, 2], (2, 2))
    # values are matched against the *given* entries (before duplicates are summed)
    with pytest.raises(ValueError, match=r"values must have shape \(3,\)"):
        ls.SparseOperator(jnp.ones(2), [0, 0, 1], [0, 2, 3], (2, 2))


def test_pattern_itself_must_be_canonical():
    from linsolve._sparse.operator import Pattern

    with pytest.raises(
        ValueError, match=r"unsorted row indices in column 1: indices\[1\] = 2, indices\[2\] = 0"
    ):
        Pattern([1, 2, 0], [0, 1, 3], (3, 2))
    with pytest.raises(ValueError, match=r"duplicate row indices in column 0"):
        Pattern([1, 1], [0, 2, 2], (3, 2))
    with pytest.raises(ValueError, match=r"indptr\[0\] must be 0"):
        Pattern([0], [1, 1], (3, 1))


def test_edge_cases_that_are_valid():
    # empty matrix / empty columns (`[]` is float64 to numpy; an empty array is fine)
    op = ls.SparseOperator([], [], [0, 0, 0], (3, 2))
    np.testing.assert_array_equal(op.as_matrix(), np.zeros((3, 2)))
    assert op.pattern.nnz == 0 and op.pattern.indices.dtype == np.int64
    # any integer dtype, numpy integer shape, jax (concrete) index arrays, explicit zeros kept
    op = ls.SparseOperator(
        [0.0, 2.0],
        np.array([0, 1], np.uint8),
        jnp.array([0, 1, 2], jnp.int32),
        (np.int64(2), np.int32(2)),
    )
    assert op.shape == (2, 2) and op.pattern.nnz == 2
    np.testing.assert_array_equal(op.as_matrix(), [[0.0, 0.0], [0.0, 2.0]])


# Column 0 holds rows (2, 0, 2): unsorted with a duplicate; column 1 holds rows (1, 1); column
# 2 is empty; column 3 holds rows (3, 0, 1): unsorted.
MESSY_INDICES = np.array([2, 0, 2, 1, 1, 3, 0, 1])
MESSY_INDPTR = np.array([0, 3, 5, 5, 8])
MESSY_VALUES = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])


def _messy_dense(values):
    cols = np.repeat(np.arange(4), np.diff(MESSY_INDPTR))
    out = np.zeros((4, 4), np.result_type(values))
    np.add.at(out, (MESSY_INDICES, cols), values)
    return out


def test_unsorted_and_duplicate_entries_are_normalised():
    op = ls.SparseOperator(MESSY_VALUES, MESSY_INDICES, MESSY_INDPTR, (4, 4))
    np.testing.assert_array_equal(op.pattern.indptr, [0, 2, 3, 3, 6])
    np.testing.assert_array_equal(op.pattern.indices, [0, 2, 1, 0, 1, 3])
    np.testing.assert_array_equal(op.values, [2.0, 4.0, 9.0, 7.0, 8.0, 6.0])
    dense = _messy_dense(MESSY_VALUES)
    np.testing.assert_array_equal(op.as_matrix(), dense)
    x = np.arange(1.0, 5.0)
    np.testing.assert_allclose(op.mv(x), dense @ x)
    np.testing.assert_allclose(op.T.mv(x), dense.T @ x)
    # the same operator (same static pattern) as the canonical input: one cache entry downstream
    canon = ls.SparseOperator(op.values, op.pattern.indices, op.pattern.indptr, (4, 4))
    assert canon.pattern == op.pattern and hash(canon.pattern) == hash(op.pattern)
    # scipy agrees
    ref = sp.csc_matrix((MESSY_VALUES, MESSY_INDICES, MESSY_INDPTR), shape=(4, 4))
    np.testing.assert_array_equal(ref.toarray(), dense)
    # complex values: duplicates summed in both parts
    zv = MESSY_VALUES + 1j * MESSY_VALUES[::-1]
    zop = ls.SparseOperator(zv, MESSY_INDICES, MESSY_INDPTR, (4, 4))
    np.testing.assert_array_equal(zop.as_matrix(), _messy_dense(zv))


def test_canonical_input_is_stored_as_given():
    a = laplacian_2d(3)
    v = jnp.asarray(a.data)
    op = ls.SparseOperator(v, a.indices, a.indptr, a.shape, PSD)
    assert op.values is v
    jaxpr = jax.make_jaxpr(lambda v: ls.SparseOperator(v, a.indices, a.indptr, a.shape).values)(v)
    assert not jaxpr.jaxpr.eqns  # no gather / segment-sum on the fast path


def test_normalised_duplicates_gradient_jit_vmap():
    """The map from the given values to the canonical ones is static, so grad (vs. central
    differences), jit and vmap all see through it."""
    rng = np.random.default_rng(0)
    n = 4
    b = jnp.asarray(rng.standard_normal(n))
    # A well-conditioned nonsymmetric matrix written with unsorted rows and duplicates: the
    # messy pattern plus a diagonal added as separate (duplicate-free) entries at the end of
    # each column, also out of order.
    cols = np.repeat(np.arange(n), np.diff(MESSY_INDPTR))
    rows_all = np.concatenate([MESSY_INDICES, np.arange(n)])
    cols_all = np.concatenate([cols, np.arange(n)])
    order = np.argsort(cols_all, kind="stable")
    indices = rows_all[order]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(cols_all, minlength=n))])
    values0 = np.concatenate([0.1 * MESSY_VALUES, 3.0 + np.arange(n)])[order]

    def dense_of(v):
        return (
            jnp.zeros((n, n), v.dtype).at[indices, np.repeat(np.arange(n), np.diff(indptr))].add(v)
        )

    def loss(v):
        op = ls.SparseOperator(v, indices, indptr, (n, n))
        return jnp.sum(jnp.sin(ls.linear_solve(op, b, solver=ls.LU()).value)) + jnp.sum(
            op.mv(b) ** 2
        )

    def dense_loss(v):
        a = dense_of(v)
        return jnp.sum(jnp.sin(jnp.linalg.solve(a, b))) + jnp.sum((a @ b) ** 2)

    np.testing.assert_allclose(
        loss(jnp.asarray(values0)), dense_loss(jnp.asarray(values0)), rtol=1e-12
    )
    g = assert_grad_matches_fd(loss, values0)
    np.testing.assert_allclose(
        g, jax.grad(dense_loss)(jnp.asarray(values0)), rtol=1e-10, atol=1e-12
    )
    # every copy of a duplicated (row, col) gets the gradient of their sum
    key = np.repeat(np.arange(n), np.diff(indptr)) * n + indices
    dup_keys = [k for k in np.unique(key) if np.sum(key == k) > 1]
    assert len(dup_keys) >= 3  # (0, 0), (2, 0) and (1, 1) are stored more than once
    for k in dup_keys:
        np.testing.assert_array_equal(g[key == k], g[key == k][0])
    # vmap over a batch of (un-normalised) value arrays, under jit; and forward mode
    batch = jnp.stack([jnp.asarray(values0), 2 * jnp.asarray(values0)])
    np.testing.assert_allclose(
        jax.jit(jax.vmap(loss))(batch), jax.vmap(dense_loss)(batch), rtol=1e-12
    )
    t = jnp.asarray(rng.standard_normal(values0.shape))
    _, jvp = jax.jvp(loss, (jnp.asarray(values0),), (t,))
    np.testing.assert_allclose(jvp, g @ np.asarray(t), rtol=1e-10)


def test_scipy_noncanonical_input_goes_through_the_same_path():
    m = sp.csc_matrix((MESSY_VALUES, MESSY_INDICES, MESSY_INDPTR), shape=(4, 4))
    assert not m.has_sorted_indices and not m.has_canonical_format
    direct = ls.SparseOperator(MESSY_VALUES, MESSY_INDICES, MESSY_INDPTR, (4, 4))
    for mat in (m, sp.csc_array(m), m.tocsr(), m.tocoo()):
        op = ls.SparseOperator.from_scipy(mat)
        assert op.pattern == direct.pattern
        np.testing.assert_array_equal(op.values, direct.values)
    assert not m.has_canonical_format  # the user's matrix is not modified
    # a scipy matrix whose index arrays are out of range is rejected with the same message
    bad = sp.csc_matrix((np.ones(2), np.array([0, 1]), np.array([0, 1, 2])), shape=(2, 2))
    bad.indices[1] = 5
    with pytest.raises(
        ValueError, match=r"row index out of range .* indices\[1\] = 5 \(column 1\)"
    ):
        ls.SparseOperator.from_scipy(bad)


def test_from_bcoo_unsorted_padding_and_negative_indices():
    idx = jnp.array([[2, 0], [0, 0], [2, 0], [1, 1], [9, 9], [1, 1]])  # (9, 9) is padding
    data = jnp.array([1.0, 2.0, 3.0, 4.0, 100.0, 5.0])
    op = ls.SparseOperator.from_bcoo(jsparse.BCOO((data, idx), shape=(3, 2)))
    np.testing.assert_array_equal(op.pattern.indices, [0, 2, 1])
    np.testing.assert_array_equal(op.values, [2.0, 4.0, 9.0])
    g = jax.grad(
        lambda d: (
            ls.SparseOperator.from_bcoo(jsparse.BCOO((d, idx), shape=(3, 2))).values
            @ jnp.arange(1.0, 4.0)
        )
    )(data)
    np.testing.assert_array_equal(g, [2.0, 1.0, 2.0, 3.0, 0.0, 3.0])
    with pytest.raises(ValueError, match="negative index at entry 1"):
        ls.SparseOperator.from_bcoo(
            jsparse.BCOO((data[:2], jnp.array([[0, 0], [-1, 0]])), shape=(3, 2))
        )
