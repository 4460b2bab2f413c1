"""The SPEC §3 example: one-triangle input gets the derivative of what was computed."""

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
import pytest

import linsolve as ls


RHO = 0.88
EXACT = -(1 + RHO**2) / (1 - RHO**2) ** 2  # -34.8637


def _loss(matrix_of_rho, solver=ls.AutoSolver()):
    def loss(rho):
        op = ls.MatrixOperator(matrix_of_rho(rho), ls.positive_semidefinite_tag)
        return ls.linear_solve(op, jnp.array([1.0, 0.0]), solver).value[1]

    return loss


@pytest.mark.parametrize("solver", [ls.AutoSolver(), ls.Cholesky(), ls.LU(), ls.QR()])
def test_one_triangle_matches_full_symmetric(solver):
    lower = _loss(lambda r: jnp.array([[1.0, 0.0], [r, 1.0]]), solver)
    full = _loss(lambda r: jnp.array([[1.0, r], [r, 1.0]]), solver)
    garbage = _loss(lambda r: jnp.array([[1.0, 123.0], [r, 1.0]]), solver)
    for f in (lower, full, garbage):
        np.testing.assert_allclose(jax.grad(f)(RHO), EXACT, rtol=1e-12)
        np.testing.assert_allclose(jax.jit(jax.grad(f))(RHO), EXACT, rtol=1e-12)
        np.testing.assert_allclose(jax.jvp(f, (RHO,), (1.0,))[1], EXACT, rtol=1e-12)
    assert EXACT == pytest.approx(-34.8637, abs=1e-4)


def test_what_jax_scipy_returns_for_the_same_input():
    # Documented contrast (README / docs): jax.scipy's assume_a="pos" reads one triangle
    # in the forward pass but differentiates as if the whole array were read.
    f = lambda r: jsl.solve(
        jnp.array([[1.0, 0.0], [r, 1.0]]), jnp.array([1.0, 0.0]), assume_a="pos"
    )[1]  # noqa: E731
    assert abs(jax.grad(f)(RHO) - EXACT) > 1.0


def test_hermitian_fold_is_conjugate():
    a = np.array([[2.0, 0.0], [0.3 + 0.4j, 3.0]])

    def loss(a):
        x = ls.linear_solve(
            ls.MatrixOperator(a, ls.hermitian_tag), jnp.array([1.0 + 0j, 1.0j]), ls.LU()
        ).value
        return jnp.real(jnp.vdot(x, x))

    g = jax.grad(loss)(jnp.asarray(a))
    assert g[0, 1] == 0 and jnp.imag(g[0, 0]) == 0 and jnp.imag(g[1, 1]) == 0
    # Central FD on the real and imaginary parts of the one stored off-diagonal entry.
    eps = 1e-6
    for d, part in ((1.0, jnp.real), (1j, lambda z: -jnp.imag(z))):
        e = np.zeros((2, 2), complex)
        e[1, 0] = d * eps
        fd = (loss(jnp.asarray(a + e)) - loss(jnp.asarray(a - e))) / (2 * eps)
        np.testing.assert_allclose(part(g[1, 0]), fd, rtol=1e-6)


def test_float32_gradients_work():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 4)).astype(np.float32)
    a = a @ a.T + 4 * np.eye(4, dtype=np.float32)
    b = jnp.ones(4, jnp.float32)
    for tags, solver in [
        ((ls.positive_semidefinite_tag,), ls.Cholesky()),
        ((), ls.LU()),
        ((), ls.QR()),
    ]:
        g = jax.jit(
            jax.grad(lambda a: ls.linear_solve(ls.MatrixOperator(a, tags), b, solver).value.sum())
        )(a)
        b64 = b.astype(jnp.float64)
        ref = jax.grad(lambda a: jnp.linalg.solve(a, b64).sum())(jnp.asarray(a, jnp.float64))
        if tags:
            ref = jnp.tril(ref + ref.T - jnp.diag(jnp.diag(ref)))
        assert g.dtype == jnp.float32
        np.testing.assert_allclose(g, ref, rtol=2e-3, atol=2e-4)
