"""Krylov solvers (CG, MINRES, GMRES, BiCGStab): accuracy, result codes, the zero-derivative
initial guesses, warm-started and recycled adjoints, and throw in the derivative's solves.

The central table (cases.py) runs a few Krylov rows through every transform; this file tests
what is particular to iterative solves. Sizes are small: most of the time is compilation.
"""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
import scipy.linalg

import linsolve as ls


PSD = ls.positive_semidefinite_tag
NSD = ls.negative_semidefinite_tag
SYM = ls.symmetric_tag
TIGHT = dict(rtol=1e-12, atol=1e-12)


def _spd(rng, n, dtype=np.float64):
    a = rng.standard_normal((n, n))
    if np.issubdtype(dtype, np.complexfloating):
        a = a + 1j * rng.standard_normal((n, n))
    return (a @ a.conj().T / n + np.eye(n)).astype(dtype)


def _poisson_1d(n):
    """The 1-D Dirichlet Laplacian, matrix-free: condition number ~ n², slow for CG."""

    def apply(u):
        padded = jnp.pad(u, 1)
        return 2 * u - padded[:-2] - padded[2:]

    return apply


class Counter:
    """A FunctionOperator whose every application (each column of a block) is counted by a
    host callback, so matrix-vector products are counted in the forward solve and inside
    the transposed solve of reverse mode alike."""

    def __init__(self, fn, n, tags):
        self.count = 0

        def counted(v):
            # An argument that is batched under vmap, so that a block product (e.g. the
            # m products of A·W) counts once per column.
            jax.debug.callback(self._tick, v[0])
            return fn(v)

        self.operator = ls.FunctionOperator(counted, jnp.zeros(n), tags)

    def _tick(self, _):
        self.count += 1

    def take(self):
        jax.effects_barrier()
        out, self.count = self.count, 0
        return out


# -- forward -----------------------------------------------------------------------------


def _forward_cases(rng):
    n = 12
    spd = _spd(rng, n)
    sym = spd - 1.5 * np.eye(n)  # indefinite
    gen = rng.standard_normal((n, n)) + 4 * np.eye(n)
    jacobi = ls.DiagonalOperator(1 / np.diagonal(spd))
    return [
        ("cg", ls.MatrixOperator(spd, PSD), ls.CG(**TIGHT), spd),
        (
            "cg-nsd-jacobi",
            ls.MatrixOperator(-spd, NSD),
            ls.CG(**TIGHT, preconditioner=-jacobi),
            -spd,
        ),
        ("minres-indefinite", ls.MatrixOperator(sym, SYM), ls.MINRES(**TIGHT), sym),
        (
            "minres-jacobi",
            ls.MatrixOperator(sym, SYM),
            ls.MINRES(**TIGHT, preconditioner=jacobi),
            sym,
        ),
        ("gmres-restart-4", ls.MatrixOperator(gen), ls.GMRES(**TIGHT, restart=4), gen),
        (
            "bicgstab-jacobi",
            ls.MatrixOperator(gen),
            ls.BiCGStab(**TIGHT, preconditioner=jacobi),
            gen,
        ),
    ]


@pytest.mark.parametrize("index", range(6))
def test_forward_block_and_stats(index):
    rng = np.random.default_rng(0)
    name, op, solver, dense = _forward_cases(rng)[index]
    b = rng.standard_normal((12, 3))
    sol = eqx.filter_jit(lambda op, b: ls.linear_solve(op, b, solver))(op, b)
    np.testing.assert_allclose(
        sol.value, np.linalg.solve(dense, b), rtol=1e-9, atol=1e-10, err_msg=name
    )
    assert sol.stats["num_steps"].shape == (3,) and sol.stats["residual_norm"].shape == (3,)
    assert np.all(sol.stats["residual_norm"] <= 1e-12 + 1e-12 * np.linalg.norm(b, axis=0))
    assert np.all(sol.stats["num_steps"] > 0)
    if name.startswith("gmres"):  # restart=4 on n=12: several cycles, each <= 4 steps
        restarts = np.asarray(sol.stats["num_restarts"])
        assert np.all(restarts >= 1) and np.all(sol.stats["num_steps"] <= 4 * (restarts + 1))


def test_complex_hermitian_cg_and_minres():
    rng = np.random.default_rng(1)
    a = _spd(rng, 8, np.complex128)
    b = jnp.asarray(rng.standard_normal(8) + 1j * rng.standard_normal(8))
    for solver, tags in ((ls.CG(**TIGHT), PSD), (ls.MINRES(**TIGHT), ls.hermitian_tag)):
        sol = ls.linear_solve(ls.MatrixOperator(a, tags), b, solver)
        np.testing.assert_allclose(sol.value, np.linalg.solve(a, b), rtol=1e-10, atol=1e-11)


def test_zero_rhs_and_y0_ignored():
    a = _spd(np.random.default_rng(2), 6)
    sol = ls.linear_solve(ls.MatrixOperator(a, PSD), jnp.zeros(6), ls.CG(**TIGHT), y0=jnp.ones(6))
    assert int(sol.result) == 0 and np.all(sol.value == 0)


# -- result codes and errors -------------------------------------------------------------


def test_max_steps_reached_and_error():
    op = ls.FunctionOperator(_poisson_1d(50), jnp.zeros(50), PSD)
    b = jnp.ones(50)
    for solver in (
        ls.CG(max_steps=3),
        ls.MINRES(max_steps=3),
        ls.GMRES(max_steps=3),
        ls.BiCGStab(max_steps=3),
    ):
        sol = ls.linear_solve(op, b, solver, throw=False)
        assert int(sol.result) == ls.RESULTS.max_steps_reached, solver
        assert int(sol.stats["num_steps"]) == 3
    with pytest.raises(Exception, match="did not converge within `max_steps`"):
        eqx.filter_jit(lambda op: ls.linear_solve(op, b, ls.CG(max_steps=3)).value)(
            op
        ).block_until_ready()
    # rtol = atol = 0 asks for exactly max_steps iterations: a truncated solve that succeeds,
    # with a finite gradient (from a transposed solve truncated likewise) under throw=True.
    fixed = ls.CG(rtol=0.0, atol=0.0, max_steps=3)
    sol = ls.linear_solve(op, b, fixed)
    assert int(sol.result) == 0 and int(sol.stats["num_steps"]) == 3
    g = jax.grad(lambda b: ls.linear_solve(op, b, fixed).value.sum())(b)
    assert np.all(np.isfinite(g))


def test_breakdown_and_bad_input():
    # Tagged positive definite but indefinite: CG meets a non-positive curvature.
    indefinite = ls.MatrixOperator(np.diag([1.0, -1.0, 2.0]), PSD)
    assert (
        int(ls.linear_solve(indefinite, jnp.ones(3), ls.CG(), throw=False).result)
        == ls.RESULTS.breakdown
    )
    bad = jnp.array([1.0, jnp.nan, 0.0])
    op = ls.MatrixOperator(np.eye(3) * 2, PSD)
    for solver in (ls.CG(), ls.MINRES(), ls.GMRES(), ls.BiCGStab()):
        assert (
            int(ls.linear_solve(op, bad, solver, throw=False).result) == ls.RESULTS.nonfinite_input
        )
    with pytest.raises(ValueError, match="positive_semidefinite_tag"):
        ls.linear_solve(ls.MatrixOperator(np.eye(3)), jnp.ones(3), ls.CG())
    with pytest.raises(ValueError, match="self-adjoint"):  # complex-symmetric is not hermitian
        ls.linear_solve(
            ls.MatrixOperator(np.eye(3, dtype=complex), SYM), jnp.ones(3, complex), ls.MINRES()
        )
    with pytest.raises(ValueError, match="preconditioner"):
        ls.linear_solve(op, jnp.ones(3), ls.CG(preconditioner=ls.IdentityOperator(4)))


def test_bicgstab_restarts_after_breakdown():
    """The shadow residual becomes orthogonal to the residual at step 2 (found by search
    over small integer systems; BiCGStab without restarts reports a breakdown here): a
    restart from the true residual converges. BiCGStab cannot solve the swap matrix from
    e₁ (r̂ᴴAr̂ = 0 in the first step after every restart): a breakdown, not a spin."""
    a = np.array([[-1.0, 0, -1, 0], [-1, 1, 2, -2], [-2, -1, -1, 1], [1, 0, 2, 2]])
    b = jnp.array([2.0, 0, 0, 0])
    sol = ls.linear_solve(ls.MatrixOperator(a), b, ls.BiCGStab(**TIGHT))
    np.testing.assert_allclose(sol.value, np.linalg.solve(a, b), rtol=1e-10, atol=1e-11)
    assert int(sol.stats["num_restarts"]) >= 1
    assert float(sol.stats["residual_norm"]) <= 1e-12 + 1e-12 * 2  # the true residual
    swap = ls.MatrixOperator(np.array([[0.0, 1.0], [1.0, 0.0]]))
    sol = ls.linear_solve(swap, jnp.array([1.0, 0.0]), ls.BiCGStab(), throw=False)
    assert int(sol.result) == ls.RESULTS.breakdown and int(sol.stats["num_steps"]) == 1


def test_bicgstab_checks_the_true_residual():
    """float32 convection-diffusion (12 × 12 grid, Péclet 20): the recursively updated
    residual drifts from the true one. BiCGStab reporting convergence from the recursive
    residual alone returned `successful` with a true relative residual of 2e-3 (tolerance
    1e-5); checking `b − A x` before stopping, and continuing from it, meets the
    tolerance."""
    side, n = 12, 144

    def apply(u):
        g = jnp.pad(u.reshape(side, side), 1)
        lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
        return (lap + 20.0 * (g[1:-1, 1:-1] - g[:-2, 1:-1])).reshape(-1)

    op = ls.FunctionOperator(apply, jnp.zeros(n, jnp.float32))
    b = jnp.ones(n, jnp.float32)
    sol = ls.linear_solve(op, b, ls.BiCGStab(rtol=1e-5))
    true_residual = np.linalg.norm(np.asarray(apply(sol.value), np.float64) - 1)
    assert true_residual <= 1e-5 * np.sqrt(n)
    np.testing.assert_allclose(float(sol.stats["residual_norm"]), true_residual, rtol=0.05)


def test_verbose_prints_residuals(capfd):
    op = ls.MatrixOperator(np.diag([1.0, 2.0, 3.0]), PSD)
    jax.jit(lambda b: ls.linear_solve(op, b, ls.CG(verbose=True)).value)(
        jnp.ones(3)
    ).block_until_ready()
    jax.effects_barrier()
    out = capfd.readouterr().out
    assert re.search(r"CG: step 0, residual norm 1\.73\de\+00", out)
    assert "CG: step 3" in out


# -- the zero-derivative initial guesses (lineax #104, #127) -----------------------------


def test_lineax_104_reference_case():
    op = ls.MatrixOperator(jnp.eye(2), PSD)
    b = jnp.array([1.0, 2.0])

    def f(x0):
        return ls.linear_solve(op, b, ls.CG(atol=1e-12, rtol=1e-12), y0=x0).value.sum()

    np.testing.assert_array_equal(jax.grad(f)(jnp.zeros(2)), [0.0, 0.0])
    np.testing.assert_array_equal(jax.jacfwd(f)(jnp.zeros(2)), [0.0, 0.0])


def test_y0_from_b_and_traced_preconditioner():
    """y0 = 0.5 b (traced) and a Jacobi preconditioner built from the traced matrix: the
    gradients are those of the exact solve."""
    rng = np.random.default_rng(3)
    a = jnp.asarray(_spd(rng, 8))
    b = jnp.asarray(rng.standard_normal(8))

    def loss(a, b, solver):
        op = ls.MatrixOperator(a, PSD)
        if solver is None:
            return jnp.sum(jnp.sin(ls.linear_solve(op, b, ls.Cholesky()).value))
        solver = solver(ls.DiagonalOperator(1 / jnp.diagonal(a)))
        x = ls.linear_solve(op, b, solver, y0=0.5 * b, adjoint_y0=jnp.cos(b)).value
        return jnp.sum(jnp.sin(x))

    expected = jax.grad(loss, argnums=(0, 1))(a, b, None)
    for make in (
        lambda m: ls.CG(**TIGHT, preconditioner=m),
        lambda m: ls.MINRES(**TIGHT, preconditioner=m),
    ):
        got = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)(a, b, make)
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-10)


# -- forward mode: tangent solves start from zero ----------------------------------------


@pytest.mark.parametrize(
    "make", [ls.CG, ls.MINRES, ls.GMRES, ls.BiCGStab], ids=lambda c: c.__name__
)
def test_jvp_linear_in_tangent_of_truncated_solve(make):
    """max_steps=4 on a 1-D Poisson problem of size 30 is far from converged, yet
    jvp(2t) == 2 jvp(t): the tangent solve starts from zero, never from the primal y0."""
    n = 30
    base = jnp.asarray(np.random.default_rng(4).uniform(1, 2, n))
    b = jnp.ones(n)
    y0 = jnp.linspace(-1, 1, n)
    solver = make(max_steps=4, rtol=1e-12, atol=0.0)

    def f(scale):
        op = ls.FunctionOperator(lambda u: scale * u + _poisson_1d(n)(u), jnp.zeros(n), PSD)
        return ls.linear_solve(op, b, solver, y0=y0, throw=False).value

    t = jnp.asarray(np.random.default_rng(5).standard_normal(n))
    jvp = jax.jit(lambda t: jax.jvp(f, (base,), (t,))[1])
    once, twice = jvp(t), jvp(2 * t)
    np.testing.assert_allclose(twice, 2 * once, rtol=1e-12, atol=1e-14)


# -- reverse mode: warm start, recycling, matvec counts ----------------------------------


def test_exact_adjoint_y0_needs_at_most_two_steps_and_recycling_saves():
    """Counted matrix-vector products (FunctionOperator with a host callback) of the
    transposed solve of reverse mode, for an n = 256 2-D Poisson problem."""
    side = 16
    n = side * side

    def poisson_2d(u):
        u = u.reshape(side, side)
        p = jnp.pad(u, 1)
        return (4 * u - p[:-2, 1:-1] - p[2:, 1:-1] - p[1:-1, :-2] - p[1:-1, 2:]).reshape(-1)

    counter = Counter(poisson_2d, n, PSD)
    op = counter.operator
    grid = np.linspace(0, 1, side)
    xx, yy = np.meshgrid(grid, grid)
    b = jnp.asarray(np.exp(-((xx - 0.3) ** 2 + (yy - 0.6) ** 2) / 0.02).reshape(-1))
    random = jnp.asarray(np.random.default_rng(6).standard_normal(n)) * 0.1
    zero = jnp.zeros(n)

    # One compilation per solver: the shift and the adjoint guess are traced. (A zero
    # adjoint_y0 costs one product, b − A·0, over no guess at all.)
    @eqx.filter_jit
    def value_and_grad(op, b, solver, adjoint_y0, shift):
        def loss(b):
            x = ls.linear_solve(op, b, solver, adjoint_y0=adjoint_y0).value
            # shift 0: cotangent x, in the forward Krylov space; random shift: outside.
            return 0.5 * jnp.sum((x - shift) ** 2)

        return jax.value_and_grad(loss)(b)

    @eqx.filter_jit
    def forward(op, b, solver):
        return ls.linear_solve(op, b, solver).value

    def backward_count(solver, adjoint_y0=zero, shift=zero):
        counter.take()
        forward(op, b, solver).block_until_ready()
        forward_count = counter.take()
        _, g = value_and_grad(op, b, solver, adjoint_y0, shift)
        g.block_until_ready()
        return counter.take() - forward_count, g

    cold = ls.CG(rtol=1e-10, atol=0.0)
    cold_in, g_in = backward_count(cold)
    cold_out, g_out = backward_count(cold, shift=random)
    assert cold_in > 20 and cold_out > 20
    # The gradient w.r.t. b is the adjoint solution: feeding it back is an exact start.
    warm_in, g_warm = backward_count(cold, adjoint_y0=g_in)
    assert warm_in <= 2
    np.testing.assert_allclose(g_warm, g_in, rtol=1e-8, atol=1e-12)
    recycle = ls.CG(rtol=1e-10, atol=0.0, recycle=8)
    rec_in, g_rec_in = backward_count(recycle)
    rec_out, g_rec_out = backward_count(recycle, shift=random)
    assert rec_in < 0.75 * cold_in
    assert rec_out < cold_out
    np.testing.assert_allclose(g_rec_in, g_in, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(g_rec_out, g_out, rtol=1e-7, atol=1e-10)
    # Recycling and an exact warm start together: A·W (m = 8 products, made when
    # differentiating) plus, again, at most two.
    both, _ = backward_count(recycle, adjoint_y0=g_in)
    assert both <= 8 + 2


def test_recycled_basis_holds_the_smallest_eigenvectors():
    """A spectrum with three isolated small eigenvalues: the recycled Ritz vectors (from
    the Lanczos coefficients of CG, through window restarts) find them."""
    rng = np.random.default_rng(7)
    n, m = 60, 4
    eigs = np.concatenate([[1e-3, 2e-3, 5e-3], np.linspace(1, 2, n - 3)])
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    a = (q * eigs) @ q.T
    sol = ls.linear_solve(
        ls.MatrixOperator(a, PSD), jnp.asarray(rng.standard_normal(n)), ls.CG(**TIGHT, recycle=m)
    )
    assert int(sol.stats["num_steps"]) > 4 * m  # the window was restarted
    w = np.asarray(sol.stats["recycle_basis"])
    assert w.shape == (n, m)
    ritz = scipy.linalg.eigh(w.T @ a @ w, w.T @ w, eigvals_only=True)
    np.testing.assert_allclose(ritz[:3], eigs[:3], rtol=1e-6)


def test_recycle_gradients_block_rhs_complex():
    rng = np.random.default_rng(8)
    a = jnp.asarray(_spd(rng, 10, np.complex128))
    b = jnp.asarray(rng.standard_normal((10, 2)) + 1j * rng.standard_normal((10, 2)))

    def loss(a, b, solver):
        x = ls.linear_solve(ls.MatrixOperator(a, PSD), b, solver).value
        return jnp.sum(jnp.abs(x) ** 2 + jnp.real(x))

    # Reverse mode (deflated transposed solves) and forward mode (deflated tangent solves).
    grad = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
    ta, tb = jnp.asarray(_spd(rng, 10, np.complex128)), jnp.ones_like(b)
    jvp = jax.jit(
        lambda a, b, s: jax.jvp(lambda a, b: loss(a, b, s), (a, b), (ta, tb))[1], static_argnums=2
    )
    recycle = ls.CG(**TIGHT, recycle=3)
    for g, e in zip(grad(a, b, recycle), grad(a, b, ls.Cholesky())):
        np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(jvp(a, b, recycle), jvp(a, b, ls.Cholesky()), rtol=1e-9)


# -- throw in the derivative's solves (lineax #117, #243) --------------------------------


def test_throw_in_backward_and_tangent_solves():
    """The forward solve converges in one step (b is an eigenvector); the derivative's
    solves, with a generic right-hand side, cannot within max_steps=3."""
    n = 10
    d = jnp.arange(1.0, n + 1)
    op = ls.FunctionOperator(lambda v: d * v, jnp.zeros(n), PSD)
    b = jnp.zeros(n).at[0].set(1.0)
    weights = jnp.linspace(1, 2, n)

    def loss(b, throw):
        sol = ls.linear_solve(op, b, ls.CG(max_steps=3, **TIGHT), throw=throw)
        return jnp.sum(weights * sol.value)

    assert float(loss(b, True)) == 1.0  # the forward solve alone is fine
    with pytest.raises(Exception, match="transposed solve of reverse mode"):
        jax.jit(jax.grad(loss), static_argnums=1)(b, True).block_until_ready()
    with pytest.raises(Exception, match="tangent solve of forward mode"):
        jax.jit(lambda t: jax.jvp(lambda b: loss(b, True), (b,), (t,))[1])(
            weights
        ).block_until_ready()
    # throw=False: no error; the failed transposed solve shows as NaN in the gradient
    # (never a silently wrong one). The tangent solve, like the primal, returns what it
    # reached: finite, and linear in the tangent.
    g = jax.jit(jax.grad(loss), static_argnums=1)(b, False)
    assert np.all(np.isnan(g))
    jvp = jax.jit(lambda t: jax.jvp(lambda b: loss(b, False), (b,), (t,))[1])
    assert np.isfinite(jvp(weights)) and float(jvp(2 * weights)) == 2 * float(jvp(weights))


def test_zero_cotangent_with_adjoint_y0_does_not_fail():
    a = _spd(np.random.default_rng(9), 5)
    op = ls.MatrixOperator(a, PSD)

    def f(b):
        x = ls.linear_solve(op, b, ls.CG(**TIGHT, max_steps=50), adjoint_y0=jnp.ones(5)).value
        return 0.0 * x[0]

    np.testing.assert_array_equal(jax.grad(f)(jnp.ones(5)), np.zeros(5))


# -- AutoSolver --------------------------------------------------------------------------


def test_auto_solver_picks_krylov_for_matrix_free():
    n = 64
    fn = _poisson_1d(n)
    x = jnp.zeros(n)
    select = ls.AutoSolver().select
    assert isinstance(select(ls.FunctionOperator(fn, x, PSD)), ls.CG)
    assert isinstance(select(ls.FunctionOperator(fn, x, NSD)), ls.CG)
    assert isinstance(select(ls.FunctionOperator(fn, x, SYM)), ls.MINRES)
    assert isinstance(select(ls.FunctionOperator(fn, x)), ls.GMRES)
    assert isinstance(select(2.0 * ls.FunctionOperator(fn, x, SYM)), ls.MINRES)
    lineax_fn = ls._operator.as_operator(
        lx.FunctionLinearOperator(fn, jax.ShapeDtypeStruct((n,), x.dtype))
    )
    assert isinstance(select(lineax_fn), ls.GMRES)
    # Dense operators and small matrix-free ones keep the direct solvers.
    assert isinstance(select(ls.MatrixOperator(np.eye(n), PSD)), ls.Cholesky)
    small = ls.FunctionOperator(_poisson_1d(8), jnp.zeros(8), PSD)
    assert isinstance(select(small), ls.Cholesky)
    assert isinstance(ls.AutoSolver(materialize_below=0).select(small), ls.CG)
    sol = ls.linear_solve(ls.FunctionOperator(fn, x, PSD), jnp.ones(n))
    dense = 2 * np.eye(n) - np.eye(n, k=1) - np.eye(n, k=-1)
    np.testing.assert_allclose(sol.value, np.linalg.solve(dense, np.ones(n)), rtol=1e-7)
