"""SparseCholesky, sparse logdet, selected_inverse and diag_inverse through the public API."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from jax.test_util import check_grads

import linsolve as ls
from helpers import assert_grad_matches_fd

PSD = ls.positive_semidefinite_tag


def laplacian_2d(k, shift=1.0):
    t = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(k, k))
    return (sp.kron(sp.eye(k), t) + sp.kron(t, sp.eye(k)) + shift * sp.eye(k * k)).tocsc()


A = laplacian_2d(5)
DENSE = A.toarray()


def _op(values, template):
    p = template.pattern
    return ls.SparseOperator(values, p.indices, p.indptr, p.shape, PSD)


def test_solve_logdet_inverse_match_dense():
    for stored in (sp.tril(A), A):  # lower-only and full symmetric storage
        op = ls.SparseOperator.from_scipy(stored, PSD)
        assert isinstance(ls.AutoSolver().select(op), ls.SparseCholesky)
        b = np.arange(25.0).reshape(25, 1) * np.ones((1, 2))
        # (jitted: eager sparse code dispatches one op at a time, seconds per call)
        solve, logdet, diag_inverse, selected_inverse = map(
            eqx.filter_jit, (ls.linear_solve, ls.logdet, ls.diag_inverse, ls.selected_inverse)
        )
        np.testing.assert_allclose(solve(op, b).value, np.linalg.solve(DENSE, b), atol=1e-12)
        np.testing.assert_allclose(logdet(op), np.linalg.slogdet(DENSE)[1], rtol=1e-12)
        inv = np.linalg.inv(DENSE)
        np.testing.assert_allclose(diag_inverse(op), np.diag(inv), atol=1e-12)
        sel = selected_inverse(op)
        r, c = sel.pattern.rows, sel.pattern.cols
        np.testing.assert_allclose(sel.values, inv[r, c], atol=1e-12)
        assert np.all(r >= c)


def test_gradients_wrt_stored_values():
    op = ls.SparseOperator.from_scipy(A, PSD)  # full storage: upper entries are not read
    upper = op.pattern.rows < op.pattern.cols
    b = jnp.linspace(-1, 1, 25)
    losses = {
        "solve": lambda v: jnp.sum(jnp.sin(ls.linear_solve(_op(v, op), b).value)),
        "logdet": lambda v: ls.logdet(_op(v, op)),
        "diag_inverse": lambda v: jnp.sum(ls.diag_inverse(_op(v, op)) ** 2),
    }
    for name, f in losses.items():
        g = assert_grad_matches_fd(jax.jit(f), np.asarray(op.values), rtol=1e-6, atol=1e-8)
        assert np.all(g[upper] == 0), name
    logdet = jax.jit(lambda v: ls.logdet(_op(v, op)))
    check_grads(logdet, (op.values,), order=2, modes=["fwd", "rev"])
    solve = jax.jit(lambda v: ls.linear_solve(_op(v, op), b).value)
    check_grads(solve, (op.values,), order=1, modes=["fwd", "rev"])


def test_vmap_over_values_and_non_pd():
    op = ls.SparseOperator.from_scipy(sp.tril(A), PSD)
    batch = jnp.stack([op.values, 2 * op.values])
    out = jax.jit(jax.vmap(lambda v: ls.logdet(_op(v, op))))(batch)
    np.testing.assert_allclose(out, [np.linalg.slogdet(s * DENSE)[1] for s in (1, 2)], rtol=1e-12)
    xs = eqx.filter_jit(jax.vmap(lambda v: ls.linear_solve(_op(v, op), jnp.ones(25)).value))(batch)
    np.testing.assert_allclose(xs[1], np.linalg.solve(2 * DENSE, np.ones(25)), atol=1e-12)
    bad = ls.SparseOperator.from_scipy(sp.tril(A) - 10 * sp.eye(25), PSD)
    solve = eqx.filter_jit(ls.linear_solve)
    assert solve(bad, jnp.ones(25), throw=False).result == ls.RESULTS.not_positive_definite
    f32 = ls.SparseOperator.from_scipy(sp.tril(A).astype(np.float32), PSD)
    x32 = solve(f32, jnp.ones(25, jnp.float32)).value
    assert x32.dtype == jnp.float32
    np.testing.assert_allclose(x32, np.linalg.solve(DENSE, np.ones(25)), rtol=1e-4)


def test_orderings_agree_and_bad_ordering_is_named():
    op = ls.SparseOperator.from_scipy(sp.tril(A), PSD)
    b = jnp.linspace(-1, 1, 25)
    expect = np.linalg.solve(DENSE, np.asarray(b))
    for ordering in ("auto", "metis", "amd", "rcm", "natural"):
        solver = ls.SparseCholesky(ordering=ordering)
        x = eqx.filter_jit(ls.linear_solve)(op, b, solver).value
        np.testing.assert_allclose(x, expect, rtol=1e-10, atol=1e-12)
        loss = jax.jit(lambda v: jnp.sum(jnp.sin(ls.linear_solve(_op(v, op), b, solver).value)))
        assert_grad_matches_fd(loss, np.asarray(op.values), rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="ordering"):
        ls.SparseCholesky(ordering="colamd")
