"""Tests for `linsolve._factor`: `cholesky` and `lu` and their derivatives."""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
import pytest
import scipy.linalg
from jax.test_util import check_grads

from linsolve._factor import cholesky, lu


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #


def _rand(rng, shape, dtype):
    x = rng.standard_normal(shape)
    if np.issubdtype(dtype, np.complexfloating):
        x = x + 1j * rng.standard_normal(shape)
    return x.astype(dtype)


def _spd(rng, n, dtype):
    X = _rand(rng, (n, n), dtype)
    return X @ X.conj().T + n * np.eye(n, dtype=dtype)


def _effective(A):
    """The matrix `cholesky` factors: lower triangle, completed hermitian."""
    low = np.tril(A, -1)
    return low + low.conj().T + np.diag(np.real(np.diag(A))).astype(A.dtype)


def _garbage_upper(rng, A, nan=False):
    """Overwrite what `cholesky` must not read: strict upper, imag of diag."""
    A = np.array(A)
    n = A.shape[-1]
    iu = np.triu_indices(n, 1)
    A[iu] = np.nan if nan else 100.0 * rng.standard_normal(len(iu[0]))
    if np.iscomplexobj(A):
        # Set only the imaginary part (`x + 1j * nan` would also poison the
        # real part, since 1j * nan = nan + nanj).
        d = np.diag_indices(n)
        A[d] = np.real(A[d]) + 1j * np.zeros(n)
        A.imag[d] = np.nan if nan else 7.0
    return A


def _fd_grad(f, A, h=1e-6):
    """Entrywise central finite differences of a real scalar `f`.

    Returned in JAX's convention for complex inputs: `df/dRe - i df/dIm`.
    """
    f = jax.jit(f)
    A = np.asarray(A)
    G = np.zeros(A.shape, dtype=A.dtype)
    dirs = [1.0] + ([1j] if np.iscomplexobj(A) else [])
    for idx in np.ndindex(*A.shape):
        for d in dirs:
            E = np.zeros_like(A)
            E[idx] = d * h
            deriv = (float(f(A + E)) - float(f(A - E))) / (2 * h)
            G[idx] += deriv if d == 1.0 else -1j * deriv
    return G


def _wsum_sin(x, key):
    """A generic real loss of a (possibly complex) array."""
    w = jax.random.normal(jax.random.PRNGKey(key), x.shape)
    return jnp.sum(w * jnp.sin(jnp.real(x))) + jnp.sum(jnp.cos(w * jnp.imag(x)))


def _lu_loss(lu_fn):
    def loss(A):
        _, L, U = lu_fn(A)
        return _wsum_sin(L, 0) + _wsum_sin(U, 1)

    return loss


DTYPES = [np.float64, np.complex128]
LU_SHAPES = [(4, 4), (5, 3), (3, 5), (1, 1)]


# --------------------------------------------------------------------------- #
# cholesky
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("dtype", DTYPES)
def test_cholesky_forward(dtype):
    rng = np.random.default_rng(0)
    A = np.stack([_spd(rng, 5, dtype) for _ in range(3)])
    A = np.stack([_garbage_upper(rng, a) for a in A])
    L = np.asarray(cholesky(A))
    assert L.shape == A.shape and L.dtype == A.dtype
    for a, l in zip(A, L):
        expected = np.linalg.cholesky(_effective(a))
        np.testing.assert_allclose(l, expected, rtol=1e-12, atol=1e-12)
        assert np.all(np.triu(l, 1) == 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cholesky_ignores_unread_entries(dtype):
    rng = np.random.default_rng(1)
    A = _spd(rng, 4, dtype)
    A_nan = _garbage_upper(rng, A, nan=True)
    # Clean reference: only the read entries.
    A_ref = np.tril(A, -1) + np.diag(np.real(np.diag(A))).astype(dtype)

    chol = jax.jit(cholesky)
    np.testing.assert_array_equal(chol(A_nan), chol(A_ref))

    grad = jax.jit(jax.grad(lambda a: _wsum_sin(cholesky(a), 2)))
    g = np.asarray(grad(A_nan))
    assert np.all(np.isfinite(g))
    assert np.all(np.triu(g, 1) == 0)  # exactly zero, not merely small
    assert np.all(np.imag(np.diag(g)) == 0)
    np.testing.assert_array_equal(g, grad(A_ref))


@pytest.mark.parametrize("dtype", DTYPES)
def test_cholesky_grad_matches_fd(dtype):
    rng = np.random.default_rng(2)
    A = _garbage_upper(rng, _spd(rng, 4, dtype))
    loss = lambda a: _wsum_sin(cholesky(a), 3)
    g = jax.jit(jax.grad(loss))(A)
    np.testing.assert_allclose(g, _fd_grad(loss, A), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cholesky_check_grads(dtype):
    rng = np.random.default_rng(3)
    A = _garbage_upper(rng, _spd(rng, 3, dtype))
    check_grads(jax.jit(cholesky), (A,), order=2, modes=["fwd", "rev"])


def test_cholesky_not_pd_gives_nan():
    A = np.array([[1.0, 0.0], [2.0, 1.0]])  # effective [[1, 2], [2, 1]]
    L = np.asarray(cholesky(A))
    assert np.all(np.isnan(L[np.tril_indices(2)]))
    assert L[0, 1] == 0  # still exactly lower triangular


def test_cholesky_shape_errors():
    with pytest.raises(ValueError, match=r"\(3,\)"):
        cholesky(jnp.ones(3))
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        cholesky(jnp.ones((2, 3)))


# --------------------------------------------------------------------------- #
# lu
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("shape", LU_SHAPES + [(1, 3), (3, 1)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_lu_forward(shape, dtype):
    rng = np.random.default_rng(4)
    A = _rand(rng, shape, dtype)
    m, n = shape
    k = min(m, n)
    P, L, U = map(np.asarray, lu(A))
    assert P.shape == (m, m) and L.shape == (m, k) and U.shape == (k, n)
    assert P.dtype == L.dtype == U.dtype == A.dtype
    np.testing.assert_allclose(P @ L @ U, A, rtol=1e-12, atol=1e-12)
    # Structure: permutation, unit lower trapezoidal, upper trapezoidal.
    np.testing.assert_array_equal(P @ P.T, np.eye(m))
    assert set(np.unique(P)) <= {0, 1}
    np.testing.assert_array_equal(np.diag(L), np.ones(k))
    assert np.all(np.triu(L, 1) == 0) and np.all(np.tril(U, -1) == 0)
    # Same partial-pivoting factorization as LAPACK via scipy.
    Ps, Ls, Us = scipy.linalg.lu(A)
    np.testing.assert_array_equal(P, Ps)
    np.testing.assert_allclose(L, Ls, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(U, Us, rtol=1e-12, atol=1e-12)


# Second-order check_grads compiles ~10 programs per case, so cover each
# shape and each dtype without taking the full product (first order is
# covered for the full product by the finite-difference test below).
@pytest.mark.parametrize(
    "shape, dtype",
    [
        ((4, 4), np.complex128),
        ((5, 3), np.float64),
        ((3, 5), np.complex128),
        # square float64: see test_lu_rank_deficient_second_order
    ],
)
def test_lu_check_grads(shape, dtype):
    rng = np.random.default_rng(5)
    A = _rand(rng, shape, dtype)
    f = jax.jit(lambda a: lu(a)[1:])
    check_grads(f, (A,), order=2, modes=["fwd", "rev"])


@pytest.mark.parametrize("shape", [(4, 4), (5, 3), (3, 5), (1, 1), (3, 1), (1, 3)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_lu_grad_matches_fd(shape, dtype):
    rng = np.random.default_rng(6)
    A = _rand(rng, shape, dtype)
    loss = _lu_loss(lu)
    np.testing.assert_allclose(
        jax.jit(jax.grad(loss))(A), _fd_grad(loss, A), rtol=1e-6, atol=1e-7
    )


def test_lu_permutation_has_zero_derivative():
    A = _rand(np.random.default_rng(7), (4, 4), np.float64)
    dP = jax.jacfwd(lambda a: lu(a)[0])(A)
    assert np.all(np.asarray(dP) == 0)
    dP = jax.jacrev(lambda a: lu(a)[0])(A)
    assert np.all(np.asarray(dP) == 0)


def _exactly_singular_5x5():
    """P L U with a last pivot that is exactly zero in floating point.

    Dyadic multipliers of modulus < 1 make partial pivoting reproduce this
    very factorization exactly, so the computed U[4, 4] is exactly 0.
    """
    rng = np.random.default_rng(8)
    n = 5
    L = np.tril(rng.choice([-0.5, -0.25, 0.25, 0.5], (n, n)), -1) + np.eye(n)
    U = np.triu(rng.integers(-4, 5, (n, n)).astype(float))
    U[np.diag_indices(n)] = [3.0, -2.0, 2.0, -3.0, 0.0]
    return np.eye(n)[rng.permutation(n)] @ L @ U


def _sum_of_columns_5x5():
    rng = np.random.default_rng(9)
    A = rng.standard_normal((5, 5))
    A[:, -1] = A[:, :-1].sum(axis=1)
    return A


@pytest.mark.parametrize(
    "A, jax_scipy_is_nan",
    [
        (np.array([[1.0, 2.0], [2.0, 4.0]]), True),
        (_exactly_singular_5x5(), True),
        (_sum_of_columns_5x5(), False),  # last pivot is round-off, not 0
        (np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 7.0]]), False),  # wide
        (np.array([[1.0, 2.0], [2.0, 4.0]]) * (1 + 1j), True),  # complex
    ],
)
def test_lu_rank_deficient_finite_and_fd_correct(A, jax_scipy_is_nan):
    m, n = A.shape
    loss = _lu_loss(lu)
    if m == n:
        # Check the premise: the last pivot vanishes (up to round-off).
        U = np.asarray(lu(A)[2])
        assert abs(U[-1, -1]) < 1e-12 * np.abs(U).max()
    g = np.asarray(jax.jit(jax.grad(loss))(A))
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, _fd_grad(loss, A), rtol=1e-6, atol=1e-7)
    if jax_scipy_is_nan:
        # Why this rule exists: jax.scipy's LU derivative divides by U[-1, -1].
        g_jsl = jax.jit(jax.grad(_lu_loss(jsl.lu)))(A)
        assert np.all(np.isnan(np.asarray(g_jsl)))


def test_lu_rank_deficient_second_order():
    A = np.array([[1.0, 2.0], [2.0, 4.0]])
    check_grads(jax.jit(_lu_loss(lu)), (A,), order=2, modes=["fwd", "rev"])
    check_grads(jax.jit(lambda a: lu(a)[1:]), (A,), order=2, modes=["fwd", "rev"])


def test_lu_shape_errors():
    with pytest.raises(ValueError, match=r"\(3,\)"):
        lu(jnp.ones(3))


# --------------------------------------------------------------------------- #
# batching and dtypes
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("dtype", DTYPES)
def test_vmap_and_batch_dims(dtype):
    rng = np.random.default_rng(10)
    A = np.stack([_rand(rng, (4, 3), dtype) for _ in range(3)])
    S = np.stack([_spd(rng, 3, dtype) for _ in range(3)])
    lu_loss = _lu_loss(lu)
    chol_loss = lambda a: _wsum_sin(cholesky(a), 4)

    for fn, loss, X in [(lu, lu_loss, A), (cholesky, chol_loss, S)]:
        single = jax.jit(lambda x: (fn(x), jax.grad(loss)(x)))
        mapped = jax.jit(jax.vmap(lambda x: (fn(x), jax.grad(loss)(x))))
        out_v = jax.tree.leaves(mapped(X))
        out_b = jax.tree.leaves(jax.jit(fn)(X))  # native leading batch dim
        for i in range(len(X)):
            out_i = jax.tree.leaves(single(X[i]))
            for a, b in zip(out_v, out_i):
                np.testing.assert_allclose(a[i], b, rtol=1e-10, atol=1e-12)
            for a, b in zip(out_b, out_i):
                np.testing.assert_allclose(a[i], b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.complex64])
def test_single_precision_smoke(dtype):
    rng = np.random.default_rng(11)
    A = _rand(rng, (4, 4), dtype)
    S = _spd(rng, 4, dtype)

    @jax.jit
    def run(A, S):
        lu_loss = _lu_loss(lu)
        chol_loss = lambda s: _wsum_sin(cholesky(s), 5)
        return lu(A), cholesky(S), jax.grad(lu_loss)(A), jax.grad(chol_loss)(S)

    (P, L, U), C, gA, gS = run(A, S)
    assert P.dtype == L.dtype == U.dtype == C.dtype == gA.dtype == gS.dtype == dtype
    np.testing.assert_allclose(P @ L @ U, A, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(C @ C.conj().T, S, rtol=1e-5, atol=1e-5)
    assert np.all(np.isfinite(np.asarray(gA))) and np.all(np.isfinite(np.asarray(gS)))
