"""Every row of the central table under every transform: forward accuracy, check_grads
(fwd + rev, order 2, under jit), vmap, entrywise finite differences with garbage in the
unread entries, and zero derivative for y0 / adjoint_y0."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import ALL_DTYPES, CASES, GRAD_DTYPES, reference_solution, rhs, skip_reason
from helpers import assert_grad_matches_fd, count_primitive, real_loss
from jax.test_util import check_grads

import linsolve as ls


def _params(dtypes):
    return [
        pytest.param(case, dtype, id=f"{case}-{np.dtype(dtype).name}")
        for case in CASES
        for dtype in dtypes
        if skip_reason(case, dtype) is None
    ]


# Transforms whose complex code path is the real one plus conjugations already exercised by
# the FD and check_grads tests run in float64 only, to keep the suite fast.
REAL_GRAD_DTYPES = (np.float64,)
SECOND_ORDER_COMPLEX = {"cholesky-psd", "lu-hermitian", "qr-wide", "qr-tall"}


@pytest.mark.parametrize("case,dtype", _params(ALL_DTYPES))
@pytest.mark.parametrize("k", [None, 3])
def test_forward(case, dtype, k):
    if k is not None and dtype not in (np.float64, np.complex64):
        pytest.skip("several right-hand sides: checked in float64 and complex64")
    rng = np.random.default_rng(0)
    stored = case.stored(rng, dtype)
    b = rhs(rng, case, dtype, k)
    sol = jax.jit(lambda a, b: case.solve(a, b))(jnp.asarray(stored), jnp.asarray(b))
    assert sol.value.dtype == np.dtype(dtype)
    assert int(sol.result) == 0
    expected = reference_solution(case, stored, b, dtype)
    tol = 1e-4 if np.dtype(dtype) in (np.float32, np.complex64) else 1e-10
    np.testing.assert_allclose(sol.value, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("case,dtype", _params(GRAD_DTYPES))
def test_check_grads_jit(case, dtype):
    rng = np.random.default_rng(1)
    stored = jnp.asarray(case.stored(rng, dtype))
    b = jnp.asarray(rhs(rng, case, dtype))

    @jax.jit
    def f(a, b):
        return case.solve(a, b).value

    # Second order in float64 for every row; complex rows at first order (the entrywise FD
    # test covers them too) except a few that exercise every complex code path at order 2.
    order = 2 if dtype == np.float64 or case.name in SECOND_ORDER_COMPLEX else 1
    check_grads(f, (stored, b), order=order, modes=["fwd", "rev"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case,dtype", _params(GRAD_DTYPES))
def test_entrywise_fd_with_garbage(case, dtype):
    """Unconstrained perturbation of every stored entry, garbage in the unread ones: the
    gradient equals central FD, and is exactly zero where nothing is read."""
    rng = np.random.default_rng(2)
    stored = case.stored(rng, dtype)
    b = jnp.asarray(rhs(rng, case, dtype))
    loss = jax.jit(lambda a: real_loss(case.solve(a, b).value))
    g = assert_grad_matches_fd(loss, stored)
    if case.kind != "diagonal":
        unread = case._garbage_mask()
        assert np.all(g[unread] == 0)
        if case._hermitian(dtype):
            assert np.all(np.imag(np.diagonal(g)) == 0)


@pytest.mark.parametrize("case,dtype", _params(REAL_GRAD_DTYPES))
def test_nan_in_unread_entries(case, dtype):
    if case.kind == "diagonal" or not case._garbage_mask().any():
        pytest.skip("every entry is read")
    rng = np.random.default_rng(3)
    clean = case.stored(rng, dtype, garbage=np.zeros((), dtype))
    dirty = np.where(case._garbage_mask(), np.nan, clean).astype(dtype)
    b = jnp.asarray(rhs(rng, case, dtype))
    x_clean = case.solve(jnp.asarray(clean), b).value
    x_dirty = case.solve(jnp.asarray(dirty), b).value
    np.testing.assert_allclose(x_dirty, x_clean, rtol=1e-12, atol=1e-12)
    g = jax.grad(lambda a: real_loss(case.solve(a, b).value))(jnp.asarray(dirty))
    assert np.all(np.isfinite(g))


@pytest.mark.parametrize("case,dtype", _params(REAL_GRAD_DTYPES))
def test_vmap(case, dtype):
    rng = np.random.default_rng(4)
    stored = jnp.stack([jnp.asarray(case.stored(rng, dtype)) for _ in range(3)])
    bs = jnp.stack([jnp.asarray(rhs(rng, case, dtype)) for _ in range(3)])
    solve = lambda a, b: case.solve(a, b).value  # noqa: E731
    batched = jax.jit(jax.vmap(solve))(stored, bs)
    looped = jnp.stack([solve(a, b) for a, b in zip(stored, bs)])
    np.testing.assert_allclose(batched, looped, rtol=1e-12, atol=1e-12)
    # One operator, many right-hand sides; and gradients under vmap.
    batched_b = jax.vmap(solve, in_axes=(None, 0))(stored[0], bs)
    np.testing.assert_allclose(batched_b, jnp.stack([solve(stored[0], b) for b in bs]), atol=1e-12)
    loss = lambda a, b: real_loss(solve(a, b))  # noqa: E731
    g = jax.vmap(jax.grad(loss))(stored, bs)
    g_loop = jnp.stack([jax.grad(loss)(a, b) for a, b in zip(stored, bs)])
    np.testing.assert_allclose(g, g_loop, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case,dtype", _params(REAL_GRAD_DTYPES))
def test_y0_and_adjoint_y0_have_zero_derivative(case, dtype):
    rng = np.random.default_rng(5)
    stored = jnp.asarray(case.stored(rng, dtype))
    b = jnp.asarray(rhs(rng, case, dtype))
    m, n = case.shape

    def f(y0, adj):
        return real_loss(case.solve(stored, b, y0=y0, adjoint_y0=adj).value)

    y0, adj = jnp.full(n, 0.3, dtype), jnp.ones(m, dtype)
    gy0, gadj = jax.grad(f, argnums=(0, 1))(y0, adj)
    assert np.all(gy0 == 0) and np.all(gadj == 0)
    assert jax.jvp(f, (y0, adj), (jnp.ones_like(y0), jnp.ones_like(adj)))[1] == 0

    # A y0 computed from b (traced): the gradient w.r.t. b is unchanged.
    def y0_from(b):
        return 0.5 * b[:n] if m >= n else jnp.concatenate([0.5 * b, jnp.zeros(n - m, dtype)])

    g_plain = jax.grad(lambda b: real_loss(case.solve(stored, b).value))(b)
    g_traced = jax.jit(
        jax.grad(
            lambda b: real_loss(case.solve(stored, b, y0=y0_from(b), adjoint_y0=0.5 * b).value)
        )
    )(b)
    np.testing.assert_allclose(g_traced, g_plain, rtol=1e-12, atol=1e-12)


def _determinant_params():
    """Rows whose solver computes a log-determinant (square, direct; AutoSolver picks a
    direct solver for logdet)."""
    out = []
    for case, dtype in ((c, d) for c in CASES for d in GRAD_DTYPES):
        solver = case.make_solver(dtype)
        square = case.shape[0] == case.shape[1]
        direct = isinstance(solver, (ls.AbstractDeterminantSolver, ls.AutoSolver))
        if square and direct and skip_reason(case, dtype) is None:
            out.append(pytest.param(case, dtype, id=f"{case}-{np.dtype(dtype).name}"))
    return out


@pytest.mark.parametrize("case,dtype", _determinant_params())
def test_slogdet_transforms(case, dtype):
    """log|det| of every row with a determinant: check_grads (fwd + rev, order 2 in
    float64), exactly zero gradient on unread entries (garbage there), vmap = loop."""
    rng = np.random.default_rng(7)
    stored = jnp.asarray(case.stored(rng, dtype))

    def logabsdet(a):
        return ls.slogdet(case.operator(a), case.make_solver(dtype))[1]

    f = jax.jit(logabsdet)
    order = 2 if dtype == np.float64 else 1
    check_grads(f, (stored,), order=order, modes=["fwd", "rev"], atol=1e-5, rtol=1e-5)
    expected = np.linalg.slogdet(case.effective(np.asarray(stored), dtype))[1]
    np.testing.assert_allclose(f(stored), expected, rtol=1e-10, atol=1e-12)
    g = jax.grad(logabsdet)(stored)
    if case.kind != "diagonal":
        assert np.all(np.asarray(g)[case._garbage_mask()] == 0)
    if dtype == np.float64:
        batch = jnp.stack([stored, jnp.asarray(case.stored(rng, dtype))])
        np.testing.assert_allclose(
            jax.vmap(jax.grad(logabsdet))(batch),
            jnp.stack([jax.grad(logabsdet)(a) for a in batch]),
            rtol=1e-10,
            atol=1e-12,
        )


@pytest.mark.parametrize(
    "tags,solver,primitive",
    [
        ((), "LU", "lu"),
        ((__import__("linsolve").positive_semidefinite_tag,), "Cholesky", "cholesky"),
    ],
)
def test_reverse_mode_does_not_factorize_again(tags, solver, primitive):
    import linsolve as ls

    rng = np.random.default_rng(6)
    a = rng.standard_normal((5, 5))
    a = a @ a.T + 5 * np.eye(5)
    b = jnp.asarray(rng.standard_normal(5))

    def f(a, b):
        return ls.linear_solve(ls.MatrixOperator(a, tags), b, getattr(ls, solver)()).value.sum()

    jaxpr = jax.make_jaxpr(jax.grad(f, argnums=(0, 1)))(jnp.asarray(a), b)
    assert count_primitive(jaxpr, primitive) == 1
    jaxpr_fwd = jax.make_jaxpr(lambda a, b, ta: jax.jvp(lambda a: f(a, b), (a,), (ta,)))(
        jnp.asarray(a), b, jnp.asarray(a)
    )
    assert count_primitive(jaxpr_fwd, primitive) == 1
