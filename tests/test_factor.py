"""Tests for `linsolve._factor`: `cholesky` and `lu` and their derivatives.

XLA compilation dominates the run time here, so the jitted losses and
gradients are module-level and shapes are reused across tests, letting the
jit cache share compiled programs.
"""

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
        A.imag[np.diag_indices(n)] = np.nan if nan else 7.0
    return A


def _fd_grad(f, A, h=1e-6):
    """Entrywise central finite differences of a real scalar `f`.

    Every stored entry is perturbed (real and imaginary parts separately).
    Returned in JAX's convention for complex inputs: `df/dRe - i df/dIm`.
    """
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
    w = jax.random.normal(jax.random.PRNGKey(key), x.shape, jnp.real(x).dtype)
    return jnp.sum(w * jnp.sin(jnp.real(x))) + jnp.sum(jnp.cos(w * jnp.imag(x)))


def _lu_loss(lu_fn):
    def loss(A):
        _, L, U = lu_fn(A)
        return _wsum_sin(L, 0) + _wsum_sin(U, 1)

    return loss


def _chol_loss(A):
    return _wsum_sin(cholesky(A), 2)


_LU = jax.jit(lu)
_LU_LOSS = jax.jit(_lu_loss(lu))
_LU_GRAD = jax.jit(jax.grad(_lu_loss(lu)))
_JSL_LU_GRAD = jax.jit(jax.grad(_lu_loss(jsl.lu)))
_LU_FACTORS = jax.jit(lambda a: lu(a)[1:])
_CHOL = jax.jit(cholesky)
_CHOL_LOSS = jax.jit(_chol_loss)
_CHOL_GRAD = jax.jit(jax.grad(_chol_loss))

DTYPES = [np.float64, np.complex128]


# --------------------------------------------------------------------------- #
# cholesky
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("dtype", DTYPES)
def test_cholesky_forward(dtype):
    rng = np.random.default_rng(0)
    A = np.stack([_garbage_upper(rng, _spd(rng, 4, dtype)) for _ in range(3)])
    L = np.asarray(_CHOL(A))  # leading batch dimension
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

    np.testing.assert_array_equal(_CHOL(A_nan), _CHOL(A_ref))
    g = np.asarray(_CHOL_GRAD(A_nan))
    assert np.all(np.isfinite(g))
    assert np.all(np.triu(g, 1) == 0)  # exactly zero, not merely small
    assert np.all(np.imag(np.diag(g)) == 0)
    np.testing.assert_array_equal(g, _CHOL_GRAD(A_ref))


@pytest.mark.parametrize("dtype", DTYPES)
def test_cholesky_grad_matches_fd(dtype):
    rng = np.random.default_rng(2)
    # Finite garbage in the unread entries: FD must see no change there.
    A = _garbage_upper(rng, _spd(rng, 4, dtype))
    np.testing.assert_allclose(_CHOL_GRAD(A), _fd_grad(_CHOL_LOSS, A), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cholesky_check_grads(dtype):
    rng = np.random.default_rng(3)
    A = _garbage_upper(rng, _spd(rng, 4, dtype))
    check_grads(_CHOL, (A,), order=2, modes=["fwd", "rev"])


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


@pytest.mark.parametrize("dtype", DTYPES)
def test_lu_forward(dtype):
    rng = np.random.default_rng(4)
    for shape in [(4, 4), (5, 3), (3, 5), (1, 1), (1, 3), (3, 1)]:
        A = _rand(rng, shape, dtype)
        m, n = shape
        k = min(m, n)
        P, L, U = map(np.asarray, _LU(A))
        assert P.shape == (m, m) and L.shape == (m, k) and U.shape == (k, n)
        assert P.dtype == L.dtype == U.dtype == A.dtype
        np.testing.assert_allclose(P @ L @ U, A, rtol=1e-12, atol=1e-12)
        # Structure: permutation, unit lower / upper trapezoidal.
        np.testing.assert_array_equal(P @ P.T, np.eye(m))
        assert set(np.unique(P)) <= {0, 1}
        np.testing.assert_array_equal(np.diag(L), np.ones(k))
        assert np.all(np.triu(L, 1) == 0) and np.all(np.tril(U, -1) == 0)
        # Same partial-pivoting factorization as LAPACK via scipy.
        Ps, Ls, Us = scipy.linalg.lu(A)
        np.testing.assert_array_equal(P, Ps)
        np.testing.assert_allclose(L, Ls, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(U, Us, rtol=1e-12, atol=1e-12)


# Second-order check_grads compiles ~10 programs per case, so every shape and
# every dtype is covered without taking the full product.
@pytest.mark.parametrize(
    "shape, dtype",
    [
        ((4, 4), np.complex128),
        ((5, 3), np.float64),
        ((3, 5), np.complex128),
        # Square float64: test_lu_rank_deficient_second_order.
    ],
)
def test_lu_check_grads(shape, dtype):
    A = _rand(np.random.default_rng(5), shape, dtype)
    check_grads(_LU_FACTORS, (A,), order=2, modes=["fwd", "rev"])


# Entrywise FD of generic full-rank inputs (the rank-deficient test below
# adds square float64/complex128 and wide float64).
@pytest.mark.parametrize(
    "shape, dtype",
    [
        ((4, 4), np.complex128),
        ((5, 3), np.float64),
        ((3, 5), np.complex128),
        ((3, 1), np.complex128),  # k = 1: no leading block to invert
    ],
)
def test_lu_grad_matches_fd(shape, dtype):
    A = _rand(np.random.default_rng(6), shape, dtype)
    np.testing.assert_allclose(_LU_GRAD(A), _fd_grad(_LU_LOSS, A), rtol=1e-6, atol=1e-7)


def test_lu_permutation_has_zero_derivative():
    A = _rand(np.random.default_rng(7), (4, 4), np.float64)
    V = _rand(np.random.default_rng(8), (4, 4), np.float64)
    _, dP = jax.jvp(lambda a: _LU(a)[0], (A,), (V,))
    assert np.all(np.asarray(dP) == 0)
    _, vjp = jax.vjp(lambda a: _LU(a)[0], A)
    assert np.all(np.asarray(vjp(V)[0]) == 0)


def _exactly_singular(m, n, dtype, seed):
    """`P L U` whose pivot `U[k-1, k-1]` is exactly zero in floating point.

    Multipliers are dyadic with |Re| + |Im| <= 1/2 (LAPACK pivots on
    |Re| + |Im|), pivots are powers of two and U is integer, so partial
    pivoting reproduces this very factorization without any rounding.
    """
    rng = np.random.default_rng(seed)
    k = min(m, n)
    vals = [-0.5, -0.25, 0.25, 0.5]
    if np.issubdtype(dtype, np.complexfloating):
        vals += [0.25j, -0.25j, 0.25 + 0.25j, -0.25 + 0.25j]
    L = np.tril(rng.choice(vals, (m, k)), -1) + np.eye(m, k)
    U = np.triu(rng.integers(-4, 5, (k, n)).astype(dtype))
    if np.issubdtype(dtype, np.complexfloating):
        U += 1j * np.triu(rng.integers(-4, 5, (k, n)))
    U[np.diag_indices(k)] = [2.0, -4.0, 1.0, 2.0][: k - 1] + [0.0]
    return (np.eye(m)[rng.permutation(m)] @ L @ U).astype(dtype)


def _sum_of_columns(n):
    rng = np.random.default_rng(9)
    A = rng.standard_normal((n, n))
    A[:, -1] = A[:, :-1].sum(axis=1)
    return A


# Shapes/dtypes match the full-rank FD test where possible, to share compiles.
@pytest.mark.parametrize(
    "A, jax_scipy_is_nan",
    [
        (np.array([[1.0, 2.0], [2.0, 4.0]]), True),
        (_exactly_singular(4, 4, np.float64, 0), True),
        (_sum_of_columns(4), False),  # last pivot is round-off, not exactly 0
        (_exactly_singular(4, 4, np.complex128, 1), True),
        (_exactly_singular(3, 5, np.complex128, 2), True),  # wide
    ],
)
def test_lu_rank_deficient_finite_and_fd_correct(A, jax_scipy_is_nan):
    U = np.asarray(_LU(A)[2])
    # The premise: the last pivot U[k-1, k-1] vanishes (up to round-off).
    k = min(A.shape)
    assert abs(U[k - 1, k - 1]) < 1e-12 * np.abs(U).max()
    if jax_scipy_is_nan:
        assert U[k - 1, k - 1] == 0
    g = np.asarray(_LU_GRAD(A))
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, _fd_grad(_LU_LOSS, A), rtol=1e-6, atol=1e-7)
    if jax_scipy_is_nan:
        # Why the custom rule exists: jax.scipy's divides by U[k-1, k-1] = 0.
        assert np.any(np.isnan(np.asarray(_JSL_LU_GRAD(A))))


def test_lu_rank_deficient_second_order():
    A = np.array([[1.0, 2.0], [2.0, 4.0]])
    check_grads(_LU_FACTORS, (A,), order=2, modes=["fwd", "rev"])


def test_lu_shape_errors():
    with pytest.raises(ValueError, match=r"\(3,\)"):
        lu(jnp.ones(3))


# --------------------------------------------------------------------------- #
# batching and dtypes
# --------------------------------------------------------------------------- #


def test_vmap_and_batch_dims():
    rng = np.random.default_rng(10)
    dtype = np.complex128
    cases = [
        (_LU, _LU_GRAD, np.stack([_rand(rng, (5, 3), dtype) for _ in range(3)])),
        (_CHOL, _CHOL_GRAD, np.stack([_spd(rng, 4, dtype) for _ in range(3)])),
    ]
    for fn, grad, X in cases:
        out_v = jax.tree.leaves(jax.jit(jax.vmap(lambda x: (fn(x), grad(x))))(X))
        out_b = jax.tree.leaves(fn(X))  # native leading batch dimension
        for i in range(len(X)):
            out_i = jax.tree.leaves((fn(X[i]), grad(X[i])))
            for a, b in zip(out_v, out_i):
                np.testing.assert_allclose(a[i], b, rtol=1e-10, atol=1e-12)
            for a, b in zip(out_b, out_i):
                np.testing.assert_allclose(a[i], b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.complex64])
def test_single_precision_smoke(dtype):
    rng = np.random.default_rng(11)
    A = _rand(rng, (4, 4), dtype)
    S = _spd(rng, 4, dtype)
    (P, L, U), C = _LU(A), _CHOL(S)
    assert P.dtype == L.dtype == U.dtype == C.dtype == dtype
    np.testing.assert_allclose(P @ L @ U, A, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(C @ C.conj().T, S, rtol=1e-5, atol=1e-5)
    if dtype == np.float32:  # gradients keep the dtype (one dtype suffices)
        gA, gS = _LU_GRAD(A), _CHOL_GRAD(S)
        assert gA.dtype == gS.dtype == dtype
        assert np.all(np.isfinite(np.asarray(gA)))
        assert np.all(np.isfinite(np.asarray(gS)))
