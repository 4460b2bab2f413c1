"""SparseOperator: construction, structure convention, transforms."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from jax.experimental import sparse as jsparse

import linsolve as ls
from helpers import assert_grad_matches_fd

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
        np.testing.assert_allclose(ls.linear_solve(op, x).value, np.linalg.solve(a.toarray(), x), rtol=1e-10)


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
    dup = jsparse.BCOO((jnp.array([1.0, 2.0, 3.0]), jnp.array([[0, 0], [0, 0], [1, 1]])), shape=(2, 2))
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
        return ls.linear_solve(ls.SparseOperator(values, p.indices, p.indptr, p.shape, PSD), jnp.ones(9)).value

    out = jax.vmap(solve)(batch)
    for i, s in enumerate([1, 2, 3]):
        np.testing.assert_allclose(out[i], np.linalg.solve(s * a.toarray(), np.ones(9)), rtol=1e-10)


def test_errors():
    with pytest.raises(ValueError, match="values must have shape"):
        ls.SparseOperator(jnp.ones(3), [0, 1], [0, 1, 2], (2, 2))
    with pytest.raises(ValueError, match="indptr"):
        ls.SparseOperator(jnp.ones(2), [0, 1], [0, 2], (2, 2))
    with pytest.raises(TypeError, match="concrete"):
        jax.jit(lambda i: ls.SparseOperator(jnp.ones(2), i, np.array([0, 1, 2]), (2, 2)).values)(jnp.array([0, 1]))
    with pytest.raises(ValueError, match="square"):
        ls.SparseOperator.from_scipy(sp.random(3, 2, density=0.5), PSD)


@pytest.mark.parametrize(
    "tags,part",
    [
        ((ls.lower_triangular_tag,), lambda a: np.tril(a)),
        ((ls.lower_triangular_tag, ls.unit_diagonal_tag), lambda a: np.tril(a, -1) + np.eye(len(a))),
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
    g = assert_grad_matches_fd(lambda v: jnp.sum(jnp.sin(solve(v, jnp.asarray(b[:, 0])))), np.asarray(op.values))
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
