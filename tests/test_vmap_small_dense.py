"""Batches of small dense systems under `vmap`: `_small_dense`'s plain-XLA kernels against
LAPACK, and every transformation of the solves, factorizations and log-determinants that
use them against a Python loop over the batch; none makes a batched LAPACK call."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import fd_grad

import linsolve as ls
from linsolve import _small_dense as sd


PSD = ls.positive_semidefinite_tag


def _batch_last(x):
    return jnp.moveaxis(jnp.asarray(x), 0, -1)


def _spd(rng, batch, n, dtype=np.float64):
    g = rng.standard_normal((batch, n, n))
    return (g @ np.swapaxes(g, 1, 2) / n + np.eye(n)).astype(dtype)


def _batched_lapack_calls(fn, *args):
    text = jax.jit(fn).lower(*args).compile().as_text()
    return [
        line
        for line in text.splitlines()
        if 'custom_call_target="lapack_' in line
        and int((re.search(r'num_batch_dims="(\d+)"', line) or [0, "0"])[1]) > 0
    ]


# --- the kernels against LAPACK -----------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5, 9])
def test_kernels_match_lapack(n):
    rng = np.random.default_rng(n)
    a = _spd(rng, 4, n)
    g = rng.standard_normal((4, n, n))
    b = rng.standard_normal((4, n, 3))
    # NaN in the unread upper triangle changes nothing.
    garbage = a + np.triu(np.full((n, n), np.nan), 1)
    factor = jax.jit(sd.cholesky)(_batch_last(garbage))
    lu_, piv, perm = jax.jit(sd.lu)(_batch_last(g))
    for i in range(4):
        np.testing.assert_allclose(factor[..., i], np.linalg.cholesky(a[i]), rtol=1e-12)
        ref = jax.lax.linalg.lu(jnp.asarray(g[i]))
        np.testing.assert_allclose(lu_[..., i], ref[0], rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(piv[:, i], ref[1])
        np.testing.assert_array_equal(perm[:, i], ref[2])
    x = sd.cho_solve(factor, _batch_last(b))
    for trans in (0, 1):
        y = sd.lu_solve(lu_, piv, _batch_last(b), trans)
        for i in range(4):
            np.testing.assert_allclose(x[..., i], np.linalg.solve(a[i], b[i]), rtol=1e-10)
            m = g[i] if trans == 0 else g[i].T
            np.testing.assert_allclose(y[..., i], np.linalg.solve(m, b[i]), rtol=1e-9, atol=1e-12)
    for lower in (True, False):
        for trans in (0, 1):
            for unit in (True, False):
                t = sd.solve_triangular(
                    _batch_last(g), _batch_last(b[:, :, 0]), trans=trans, lower=lower, unit=unit
                )
                for i in range(4):
                    ref = jax.scipy.linalg.solve_triangular(
                        g[i], b[i, :, 0], trans=trans, lower=lower, unit_diagonal=unit
                    )
                    np.testing.assert_allclose(t[:, i], ref, rtol=1e-9, atol=1e-12)


def test_kernels_fail_as_lapack_does():
    """Not definite: NaN factor (as `jax.lax.linalg.cholesky`); zero pivots: the column of
    L left unscaled, the same pivots as LAPACK."""
    indefinite = np.diag([1.0, 2.0, -1.0])
    semidefinite = np.diag([1.0, 0.0, 3.0])
    for m in (indefinite, semidefinite):
        ours = sd.cholesky(_batch_last(m[None]))[..., 0]
        ref = jax.lax.linalg.cholesky(jnp.asarray(m))
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    for m in (np.array([[1.0, 2.0], [2.0, 4.0]]), np.zeros((3, 3)), np.diag([0.0, 1.0, 0.0])):
        lu_, piv, perm = sd.lu(_batch_last(m[None]))
        ref = jax.lax.linalg.lu(jnp.asarray(m))
        np.testing.assert_array_equal(lu_[..., 0], ref[0])
        np.testing.assert_array_equal(piv[:, 0], ref[1])
        np.testing.assert_array_equal(perm[:, 0], ref[2])


# --- vmapped solves against a loop ----------------------------------------------------

SOLVES = {
    "cholesky": lambda a, b: ls.linear_solve(ls.MatrixOperator(a, PSD), b, ls.Cholesky()).value,
    "lu": lambda a, b: ls.linear_solve(ls.MatrixOperator(a), b, ls.LU()).value,
    "logdet": lambda a, b: ls.logdet(ls.MatrixOperator(a, PSD)) * b,
    "ls.cholesky": lambda a, b: ls.cholesky(a) @ b,
    "ls.lu": lambda a, b: (lambda p, l, u: p @ (l @ (u @ b)) + jnp.diagonal(u))(*ls.lu(a)),
}


def _loss(name):
    def loss(a, b):
        return jnp.sum(jnp.sin(SOLVES[name](a, b)))

    return loss


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", list(SOLVES))
def test_vmap_value_and_grad_matches_loop(name, dtype):
    rng = np.random.default_rng(1)
    a = jnp.asarray(_spd(rng, 5, 4, dtype))
    b = jnp.asarray(rng.standard_normal((5, 4)).astype(dtype))
    vg = jax.value_and_grad(_loss(name), argnums=(0, 1))
    batched = jax.vmap(vg)
    assert not _batched_lapack_calls(batched, a, b)
    value, (ga, gb) = jax.jit(batched)(a, b)
    assert value.dtype == dtype and ga.dtype == dtype
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-5)
    for i in range(5):
        v, (gai, gbi) = vg(a[i], b[i])
        np.testing.assert_allclose(value[i], v, **tol)
        np.testing.assert_allclose(ga[i], gai, **tol)
        np.testing.assert_allclose(gb[i], gbi, **tol)


@pytest.mark.parametrize("name", ["cholesky", "lu", "logdet", "ls.cholesky", "ls.lu"])
def test_nested_vmap_and_vmap_of_grad_match_loop(name):
    rng = np.random.default_rng(2)
    a = jnp.asarray(_spd(rng, 6, 3).reshape(2, 3, 3, 3))
    b = jnp.asarray(rng.standard_normal((2, 3, 3)))
    grad = jax.grad(_loss(name))
    nested = jax.vmap(jax.vmap(grad))
    assert not _batched_lapack_calls(nested, a, b)
    out = jax.jit(nested)(a, b)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(out[i, j], grad(a[i, j], b[i, j]), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["cholesky", "lu", "logdet", "ls.cholesky", "ls.lu"])
def test_hessian_of_vmapped_loss_matches_loop(name):
    rng = np.random.default_rng(3)
    a = jnp.asarray(_spd(rng, 3, 3))
    b = jnp.asarray(rng.standard_normal((3, 3)))
    loss = _loss(name)

    def total(a):
        return jnp.sum(jax.vmap(loss)(a, b))

    hess = jax.jit(jax.hessian(total))(a)
    for i in range(3):
        ref = jax.hessian(loss)(a[i], b[i])
        np.testing.assert_allclose(hess[i, :, :, i], ref, rtol=1e-9, atol=1e-11)
        others = np.delete(np.asarray(hess[i]), i, axis=2)
        np.testing.assert_array_equal(others, 0)  # members do not interact


@pytest.mark.parametrize("name", ["cholesky", "lu", "logdet", "ls.cholesky", "ls.lu"])
def test_vmapped_gradient_matches_finite_differences(name):
    """Unconstrained perturbations of every entry, with garbage in the unread upper
    triangle of the positive-definite inputs (its derivative is zero)."""
    rng = np.random.default_rng(4)
    a = _spd(rng, 2, 3)
    if name in ("cholesky", "logdet", "ls.cholesky"):
        a = a + np.triu(rng.standard_normal((3, 3)), 1)
    b = jnp.asarray(rng.standard_normal((2, 3)))
    loss = _loss(name)

    def total(a):
        return jnp.sum(jax.vmap(loss)(a, b))

    g = jax.jit(jax.grad(total))(jnp.asarray(a))
    np.testing.assert_allclose(g, fd_grad(total, a), rtol=1e-6, atol=1e-8)


def test_vmapped_result_codes_match_loop():
    """A batch mixing good, indefinite, singular and NaN matrices: the same codes (and
    rcond) as one matrix at a time."""
    rng = np.random.default_rng(5)
    good = _spd(rng, 1, 3)[0]
    mats = np.stack([good, np.diag([1.0, -1.0, 2.0]), np.diag([1.0, 0.0, 2.0]), good * np.nan])
    b = jnp.ones(3)
    for solver, tags in ((ls.Cholesky(), PSD), (ls.LU(), frozenset())):

        def solve(a, solver=solver, tags=tags):
            sol = ls.linear_solve(ls.MatrixOperator(a, tags), b, solver, throw=False)
            return sol.result, sol.stats["rcond"]

        codes, rcond = jax.jit(jax.vmap(solve))(jnp.asarray(mats))
        for i in range(4):
            code, rc = solve(jnp.asarray(mats[i]))
            assert codes[i] == code, (solver, i)
            np.testing.assert_allclose(rcond[i], rc, rtol=1e-12)
        assert codes[0] == ls.RESULTS.successful
        assert len(set(np.asarray(codes).tolist())) >= 3
