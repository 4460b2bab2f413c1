"""logdet / slogdet of dense operators: values and derivatives (structure convention)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_grad_matches_fd, count_primitive
from jax.test_util import check_grads

import linsolve as ls


PSD, NSD = ls.positive_semidefinite_tag, ls.negative_semidefinite_tag
rng = np.random.default_rng(0)


def _spd(n, dtype):
    a = rng.standard_normal((n, n)) + (
        1j * rng.standard_normal((n, n)) if np.issubdtype(dtype, np.complexfloating) else 0
    )
    return (a @ a.conj().T + n * np.eye(n)).astype(dtype)


def _with_garbage(a):
    a = a.copy()
    a[np.triu_indices(a.shape[0], 1)] = 1e3
    return a


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_logdet_psd_cholesky(dtype):
    a = _spd(4, dtype)
    stored = _with_garbage(a)
    if np.iscomplexobj(stored):
        stored[np.diag_indices(4)] += 5j  # unread imaginary diagonal
    f = jax.jit(lambda s: ls.logdet(ls.MatrixOperator(s, PSD)))
    np.testing.assert_allclose(f(stored), np.linalg.slogdet(a)[1], rtol=1e-12)
    g = assert_grad_matches_fd(f, stored)
    assert np.all(g[np.triu_indices(4, 1)] == 0)
    check_grads(f, (jnp.asarray(stored),), order=2, modes=["fwd", "rev"])
    # One factorization in the gradient's jaxpr.
    assert count_primitive(jax.make_jaxpr(jax.grad(f))(stored), "cholesky") == 1


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_slogdet_lu(dtype):
    a = rng.standard_normal((5, 5)).astype(dtype)
    if np.iscomplexobj(a):
        a = a + 1j * rng.standard_normal((5, 5))
    sign, logabs = jax.jit(lambda a: ls.slogdet(ls.MatrixOperator(a)))(a)
    ref = np.linalg.slogdet(a)
    np.testing.assert_allclose(sign, ref[0], rtol=1e-12)
    np.testing.assert_allclose(logabs, ref[1], rtol=1e-12)
    assert_grad_matches_fd(lambda a: ls.slogdet(ls.MatrixOperator(a))[1], a)
    check_grads(
        jax.jit(lambda a: ls.slogdet(ls.MatrixOperator(a))),
        (jnp.asarray(a),),
        order=2,
        modes=["fwd", "rev"],
    )


def test_slogdet_symmetric_tag_reads_lower_triangle():
    a = rng.standard_normal((4, 4))
    sym = np.tril(a) + np.tril(a, -1).T
    f = lambda s: ls.slogdet(ls.MatrixOperator(s, ls.symmetric_tag))[1]  # noqa: E731
    np.testing.assert_allclose(f(_with_garbage(a)), np.linalg.slogdet(sym)[1], rtol=1e-12)
    g = assert_grad_matches_fd(f, _with_garbage(a))
    assert np.all(g[np.triu_indices(4, 1)] == 0)


def test_logdet_other_kinds():
    d = rng.uniform(1, 2, 4)
    np.testing.assert_allclose(ls.logdet(ls.DiagonalOperator(d)), np.log(d).sum(), rtol=1e-12)
    assert_grad_matches_fd(lambda d: ls.logdet(ls.DiagonalOperator(d)), d)
    low = np.tril(rng.standard_normal((4, 4))) + 4 * np.eye(4)
    np.testing.assert_allclose(
        ls.slogdet(ls.MatrixOperator(_with_garbage(low.T).T, ls.lower_triangular_tag))[1],
        np.linalg.slogdet(low)[1],
        rtol=1e-12,
    )
    assert ls.logdet(ls.MatrixOperator(low, (ls.lower_triangular_tag, ls.unit_diagonal_tag))) == 0
    a = _spd(4, np.float64)
    np.testing.assert_allclose(
        ls.slogdet(ls.MatrixOperator(-a, NSD))[1], np.linalg.slogdet(a)[1], rtol=1e-12
    )
    assert ls.slogdet(ls.MatrixOperator(-a, NSD))[0] == 1
    fn = ls.FunctionOperator(lambda v: jnp.asarray(a) @ v, jnp.zeros(4), PSD)
    np.testing.assert_allclose(ls.logdet(fn), np.linalg.slogdet(a)[1], rtol=1e-12)
    # A matrix-free operator big enough for AutoSolver to pick a Krylov solver for solves:
    # logdet still gets a factorization.
    big = _spd(70, np.float64)
    fn = ls.FunctionOperator(lambda v: jnp.asarray(big) @ v, jnp.zeros(70), PSD)
    np.testing.assert_allclose(ls.logdet(fn), np.linalg.slogdet(big)[1], rtol=1e-12)
    np.testing.assert_allclose(
        ls.logdet(ls.MatrixOperator(-a)), np.linalg.slogdet(a)[1], rtol=1e-12
    )  # n even
    negative = ls.MatrixOperator(np.diag([1.0, -1.0, 1.0, 1.0]))
    assert np.isnan(ls.logdet(negative, throw=False))  # a negative determinant: NaN, named
    value, result = ls.logdet(negative, throw=False, return_result=True)
    assert np.isnan(value) and int(result) == ls.RESULTS.not_positive_definite
    with pytest.raises(Exception, match="determinant is negative"):
        jax.block_until_ready(ls.logdet(negative))
    singular = np.ones((3, 3))
    assert ls.slogdet(ls.MatrixOperator(singular))[0] == 0


def test_logdet_vmap_and_errors():
    batch = np.stack([_spd(3, np.float64) for _ in range(3)])
    out = jax.vmap(lambda a: ls.logdet(ls.MatrixOperator(a, PSD)))(batch)
    np.testing.assert_allclose(out, [np.linalg.slogdet(a)[1] for a in batch], rtol=1e-12)
    grads = jax.vmap(jax.grad(lambda a: ls.logdet(ls.MatrixOperator(a, PSD))))(batch)
    np.testing.assert_allclose(
        grads[0],
        np.tril(2 * np.linalg.inv(batch[0]) - np.diag(np.diag(np.linalg.inv(batch[0])))),
        rtol=1e-10,
    )
    with pytest.raises(ValueError, match="square"):
        ls.slogdet(ls.MatrixOperator(np.ones((3, 2))))
    with pytest.raises(ValueError, match="QR"):
        ls.slogdet(ls.MatrixOperator(np.eye(3)), ls.QR())
