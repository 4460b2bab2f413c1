"""Krylov recycling across a sequence of solves: `linear_solve(..., recycle=space)` with
`CG(recycle=m)` and `MINRES(recycle=m)`.

A recycle space may change iteration counts, never the solution or the gradient; its
derivative is exactly zero; bad spaces (stale, random, zero, rank-deficient, NaN) still give
a solution that meets the tolerance; misuse fails at trace time with the shapes named.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from helpers import fd_grad

import linsolve as ls


PSD = ls.positive_semidefinite_tag
SYM = ls.symmetric_tag
HERM = ls.hermitian_tag
N, M = 40, 4
RTOL = 1e-10


def _eigvecs(n, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n))
    if np.issubdtype(dtype, np.complexfloating):
        a = a + 1j * rng.standard_normal((n, n))
    return np.linalg.qr(a)[0].astype(dtype)


def _spectrum(n, indefinite):
    """A few isolated small eigenvalues (the modes recycling should find), the rest in a
    cluster; for MINRES some of both signs."""
    eig = np.concatenate([[1e-3, 2e-3, 4e-3], np.linspace(0.5, 2.0, n - 3)])
    if indefinite:
        eig[1] *= -1
        eig[n // 2 :] *= -1
    return eig


def _matrix(n, shift=0.0, indefinite=False, dtype=np.float64, seed=0):
    q = _eigvecs(n, seed, dtype)
    eig = _spectrum(n, indefinite) + shift
    return (q * eig) @ q.conj().T


SOLVERS = {
    "CG": (ls.CG, False, PSD),
    "MINRES": (ls.MINRES, True, SYM),
}


def _operator(name, a):
    tag = SOLVERS[name][2]
    if np.iscomplexobj(a) and tag == SYM:
        tag = HERM
    return ls.MatrixOperator(jnp.asarray(a), tag)


def _relres(a, x, b):
    return float(
        np.linalg.norm(np.asarray(a) @ np.asarray(x) - np.asarray(b), axis=0).max()
        / np.linalg.norm(np.asarray(b), axis=0).max()
    )


def _spaces(n, m, dtype, previous):
    rng = np.random.default_rng(3)
    one = rng.standard_normal((n, 1)).astype(dtype)
    huge = rng.standard_normal((n, m)) * np.logspace(-8, 12, m)
    return {
        "previous operator": previous,
        "zeros": np.zeros((n, m), dtype),
        "random": rng.standard_normal((n, m)).astype(dtype),
        "rank deficient": np.repeat(one, m, axis=1),
        "nearly dependent": np.repeat(one, m, axis=1) + 1e-9 * rng.standard_normal((n, m)),
        "wild scales": huge.astype(dtype),
        "nan": np.full((n, m), np.nan, dtype),
        "inf column": np.concatenate(
            [rng.standard_normal((n, m - 1)), np.full((n, 1), np.inf)], 1
        ).astype(dtype),
    }


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_any_space_gives_the_same_solution(name, dtype):
    """Recycled and non-recycled solves agree to the tolerance, whatever the space."""
    make, indefinite, _ = SOLVERS[name]
    a0 = _matrix(N, 0.0, indefinite, dtype)
    a1 = _matrix(N, 1e-3, indefinite, dtype)
    rng = np.random.default_rng(1)
    b = rng.standard_normal(N).astype(dtype)
    solver = make(rtol=RTOL, recycle=M)
    first = ls.linear_solve(_operator(name, a0), b, solver)
    previous = np.asarray(first.stats["recycle"].basis)
    assert previous.shape == (N, M)
    reference = ls.linear_solve(_operator(name, a1), b, make(rtol=RTOL))
    for label, w in _spaces(N, M, dtype, previous).items():
        sol = ls.linear_solve(
            _operator(name, a1), b, solver, recycle=ls.RecycleSpace(jnp.asarray(w))
        )
        assert int(sol.result) == 0, label
        assert _relres(a1, sol.value, b) <= 2 * RTOL, label
        np.testing.assert_allclose(sol.value, reference.value, rtol=1e-6, atol=1e-6, err_msg=label)
        new = np.asarray(sol.stats["recycle"].basis)
        assert new.shape == (N, M) and np.all(np.isfinite(new)), label


@pytest.mark.parametrize("name", SOLVERS)
def test_carried_space_cuts_iterations_on_a_drifting_operator(name):
    """Five solves with a slowly drifting operator: carrying the space deflates the small
    eigenvalues found by the earlier solves, and the space finds them."""
    make, indefinite, _ = SOLVERS[name]
    n = 80
    b = np.random.default_rng(2).standard_normal(n)
    solver = make(rtol=RTOL, recycle=M)
    space = ls.RecycleSpace.empty(n, M)
    steps, cold = [], []
    for k in range(5):
        a = _matrix(n, 1e-4 * k, indefinite)
        sol = ls.linear_solve(_operator(name, a), b, solver, recycle=space)
        space = sol.stats["recycle"]
        steps.append(int(sol.stats["num_steps"]))
        cold.append(int(ls.linear_solve(_operator(name, a), b, make(rtol=RTOL)).stats["num_steps"]))
        assert _relres(a, sol.value, b) <= 2 * RTOL
    assert steps[0] >= cold[0] - 1  # an empty space: no deflation
    assert max(steps[2:]) < 0.7 * min(cold[2:])
    # The carried space holds the eigenvectors of the smallest-magnitude eigenvalues.
    w = np.asarray(space.basis)
    lam = scipy.linalg.eigh(w.T @ a @ w, w.T @ w, eigvals_only=True)
    wanted = np.sort(np.abs(_spectrum(n, indefinite) + 4e-4))[:3]
    np.testing.assert_allclose(np.sort(np.abs(lam))[:3], wanted, rtol=1e-6)


@pytest.mark.parametrize("name", SOLVERS)
def test_preconditioner_composes(name):
    make, indefinite, _ = SOLVERS[name]
    n = 80
    rng = np.random.default_rng(4)
    d = rng.uniform(1, 100, n)
    scale = np.sqrt(d)  # badly scaled: the Jacobi preconditioner undoes it
    a = [scale[:, None] * _matrix(n, s, indefinite) * scale[None, :] for s in (0.0, 1e-4, 2e-4)]
    b = rng.standard_normal(n)
    pre = ls.DiagonalOperator(jnp.asarray(1 / d))
    solver = make(rtol=RTOL, preconditioner=pre, recycle=M)
    space = None
    steps = []
    for ak in a:
        sol = ls.linear_solve(_operator(name, ak), b, solver, recycle=space)
        space = sol.stats["recycle"]
        steps.append(int(sol.stats["num_steps"]))
        assert int(sol.result) == 0
        np.testing.assert_allclose(sol.value, np.linalg.solve(ak, b), rtol=1e-6)
    cold = int(
        ls.linear_solve(_operator(name, a[-1]), b, make(rtol=RTOL, preconditioner=pre)).stats[
            "num_steps"
        ]
    )
    assert steps[-1] < 0.7 * cold


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("shared", [True, False])
def test_block_right_hand_side(name, shared):
    """An `(n, k)` right-hand side: one space per column, `(k, n, m)`; an `(n, m)` space
    serves every column."""
    make, indefinite, _ = SOLVERS[name]
    a = _matrix(N, 0.0, indefinite)
    b = np.random.default_rng(5).standard_normal((N, 3))
    solver = make(rtol=RTOL, recycle=M)
    first = ls.linear_solve(_operator(name, a), b, solver)
    assert first.stats["recycle"].basis.shape == (3, N, M)
    space = ls.RecycleSpace(first.stats["recycle"].basis[0]) if shared else first.stats["recycle"]
    a1 = _matrix(N, 1e-3, indefinite)
    sol = jax.jit(lambda a, b, s: ls.linear_solve(_operator(name, a), b, solver, recycle=s))(
        a1, b, space
    )
    assert sol.stats["recycle"].basis.shape == (3, N, M)
    np.testing.assert_allclose(sol.value, np.linalg.solve(a1, b), rtol=1e-7)


def _loss(name, solver, space):
    def loss(a, b):
        x = ls.linear_solve(_operator(name, a), b, solver, recycle=space).value
        return jnp.sum(jnp.sin(x)) + 0.5 * jnp.sum(x**2)

    return loss


@pytest.mark.parametrize("name", SOLVERS)
def test_gradients_with_a_space_match_without_and_finite_differences(name):
    """Reverse mode (deflated transposed solve with the refreshed space) and forward mode
    (deflated tangent solve), under jit, against the unrecycled solve, a direct solve and
    central finite differences in every entry (garbage in the unread upper triangle)."""
    make, indefinite, _ = SOLVERS[name]
    n = 12
    rng = np.random.default_rng(6)
    a = _matrix(n, 0.3, indefinite, seed=1)
    a = a + np.triu(rng.standard_normal((n, n)), 1)  # unread triangle: garbage
    b = rng.standard_normal(n)
    solver = make(rtol=1e-13, atol=0.0, recycle=3)
    stale = ls.linear_solve(_operator(name, _matrix(n, 0.0, indefinite, seed=2)), b, solver).stats[
        "recycle"
    ]
    with_space = jax.jit(jax.grad(_loss(name, solver, stale), argnums=(0, 1)))(a, b)
    without = jax.jit(jax.grad(_loss(name, make(rtol=1e-13, atol=0.0), None), argnums=(0, 1)))(a, b)
    for g, h in zip(with_space, without):
        np.testing.assert_allclose(g, h, rtol=1e-8, atol=1e-10)
    f = _loss(name, solver, stale)
    np.testing.assert_allclose(
        with_space[0], fd_grad(lambda a: f(a, jnp.asarray(b)), a), rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(
        with_space[1], fd_grad(lambda b: f(jnp.asarray(a), b), b), rtol=1e-5, atol=1e-7
    )
    assert np.all(np.asarray(with_space[0])[np.triu_indices(n, 1)] == 0)
    # Forward mode: the tangent solve is deflated with the refreshed space.
    ta, tb = rng.standard_normal((n, n)), rng.standard_normal(n)
    jvp = jax.jit(lambda a, b: jax.jvp(f, (a, b), (ta, tb))[1])(a, b)
    expect = np.sum(np.asarray(with_space[0]) * ta) + np.asarray(with_space[1]) @ tb
    np.testing.assert_allclose(jvp, expect, rtol=1e-8)


@pytest.mark.parametrize("name", SOLVERS)
def test_gradients_under_vmap(name):
    make, indefinite, _ = SOLVERS[name]
    n = 10
    rng = np.random.default_rng(7)
    a = _matrix(n, 0.3, indefinite, seed=3)
    bs = rng.standard_normal((3, n))
    solver = make(rtol=1e-13, atol=0.0, recycle=2)
    spaces = ls.RecycleSpace(jnp.asarray(rng.standard_normal((3, n, 2))))  # one per batch entry
    grad = jax.jit(
        jax.vmap(
            jax.grad(lambda a, b, s: _loss(name, solver, s)(a, b), argnums=(0, 1)),
            in_axes=(None, 0, 0),
        )
    )
    ga, gb = grad(a, bs, spaces)
    f = _loss(name, make(rtol=1e-13, atol=0.0), None)
    for i in range(3):
        np.testing.assert_allclose(
            gb[i], fd_grad(lambda b: f(jnp.asarray(a), b), bs[i]), rtol=1e-5, atol=1e-7
        )
        ea, _ = jax.grad(f, argnums=(0, 1))(a, bs[i])
        np.testing.assert_allclose(ga[i], ea, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", SOLVERS)
def test_space_has_zero_derivative(name):
    make, indefinite, _ = SOLVERS[name]
    rng = np.random.default_rng(8)
    a = _matrix(N, 0.0, indefinite)
    b = rng.standard_normal(N)
    w = rng.standard_normal((N, M))
    solver = make(rtol=1e-12, recycle=M)

    def f(w):
        sol = ls.linear_solve(_operator(name, a), b, solver, recycle=ls.RecycleSpace(w))
        # Also through the returned space: it is a preconditioner, not an output to train.
        return jnp.sum(sol.value**2) + jnp.sum(sol.stats["recycle"].basis)

    g = jax.grad(f)(w)
    assert np.all(np.asarray(g) == 0)
    _, t = jax.jvp(f, (w,), (jnp.ones_like(w),))
    assert float(t) == 0.0


@pytest.mark.parametrize("name", SOLVERS)
def test_scan_loop_with_an_empty_start(name):
    """A `lax.scan` over a drifting operator, the space in the carry: one structure from the
    first step on, and every step meets the tolerance."""
    make, indefinite, _ = SOLVERS[name]
    q = jnp.asarray(_eigvecs(N, 0))
    eig = jnp.asarray(_spectrum(N, indefinite))
    b = jnp.asarray(np.random.default_rng(9).standard_normal(N))
    solver = make(rtol=RTOL, recycle=M)

    def step(space, shift):
        a = (q * (eig + shift)) @ q.T
        sol = ls.linear_solve(_operator(name, a), b, solver, recycle=space)
        res = jnp.linalg.norm(a @ sol.value - b) / jnp.linalg.norm(b)
        return sol.stats["recycle"], (res, sol.stats["num_steps"])

    _, (res, steps) = jax.lax.scan(step, ls.RecycleSpace.empty(N, M), jnp.linspace(0, 1e-3, 4))
    assert np.all(np.asarray(res) <= 2 * RTOL)
    assert int(steps[-1]) < int(steps[0])


def test_float32():
    rng = np.random.default_rng(10)
    a = _matrix(N, 0.1).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    for name in SOLVERS:
        make = SOLVERS[name][0]
        a_named = a if name == "CG" else _matrix(N, 0.1, True).astype(np.float32)
        solver = make(rtol=1e-5, recycle=M)
        space = ls.linear_solve(_operator(name, a_named), b, solver).stats["recycle"]
        assert space.basis.dtype == jnp.float32
        sol = ls.linear_solve(_operator(name, a_named), b, solver, recycle=space)
        assert sol.value.dtype == jnp.float32
        assert _relres(a_named.astype(np.float64), sol.value, b) <= 2e-5


def test_adjoint_solve_uses_the_refreshed_space():
    """Counted products of the transposed solve of reverse mode: with a carried space it
    needs fewer than without (and no products for `AW`)."""
    n = 100
    q = _eigvecs(n, 11)
    eig = np.concatenate([[1e-4, 2e-4, 3e-4, 5e-4], np.linspace(0.5, 2.0, n - 4)])
    a = jnp.asarray((q * eig) @ q.T)
    count = [0]

    def tick(_):
        count[0] += 1

    def apply(v):
        jax.debug.callback(tick, v[0])
        return a @ v

    op = ls.FunctionOperator(apply, jnp.zeros(n), PSD)
    b = jnp.asarray(np.random.default_rng(12).standard_normal(n))
    cot = jnp.asarray(np.random.default_rng(13).standard_normal(n))

    @eqx.filter_jit
    def products(solver, space):
        x, pullback = jax.vjp(lambda b: ls.linear_solve(op, b, solver, recycle=space).value, b)
        return x, pullback(cot)[0]

    def run(solver, space):
        count[0] = 0
        _, g = products(solver, space)
        jax.block_until_ready(g)
        jax.effects_barrier()
        return count[0], g

    cold_count, g_cold = run(ls.CG(rtol=1e-10), None)
    space = ls.linear_solve(op, b, ls.CG(rtol=1e-10, recycle=M)).stats["recycle"]
    warm_count, g_warm = run(ls.CG(rtol=1e-10, recycle=M), space)
    np.testing.assert_allclose(g_warm, g_cold, rtol=1e-7)
    assert warm_count < 0.7 * cold_count


def _counted(a, tag):
    """A matrix-free operator for `a` that counts its products (block products per column)."""
    count = [0]

    def tick(_):
        count[0] += 1

    a = jnp.asarray(a)

    def apply(v):
        jax.debug.callback(tick, v[0])
        return a @ v

    return ls.FunctionOperator(apply, jnp.zeros(a.shape[0], a.dtype), tag), count


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_returned_image_is_the_product(name, dtype):
    """The space a solve returns carries its image `A W` (for CG made from the products of
    the iteration, without products of its own): fresh, refreshed, preconditioned."""
    make, indefinite, tag = SOLVERS[name]
    n = 60
    rng = np.random.default_rng(14)
    d = rng.uniform(1, 10, n)
    a = [
        np.sqrt(d)[:, None] * _matrix(n, s, indefinite, dtype) * np.sqrt(d)[None, :]
        for s in (0.0, 1e-4)
    ]
    b = rng.standard_normal(n).astype(dtype)
    pre = ls.DiagonalOperator(jnp.asarray((1 / d).astype(dtype)))
    solver = make(rtol=RTOL, recycle=M, preconditioner=pre)
    space = None
    for k, ak in enumerate(a):
        sol = ls.linear_solve(_operator(name, ak), b, solver, recycle=space)
        space = sol.stats["recycle"]
        w, aw = np.asarray(space.basis), np.asarray(space.image)
        if name == "MINRES" and k == 0:
            assert np.all(aw == 0)  # unknown: the next solve makes it
            continue
        scale = np.linalg.norm(ak, 2) * np.linalg.norm(w)
        assert np.linalg.norm(ak @ w - aw) <= 1e-12 * scale, k
        assert np.linalg.norm(w) > 0


@pytest.mark.parametrize("name", SOLVERS)
def test_stored_image_saves_products_and_a_wrong_one_is_harmless(name):
    """On the operator it was made with, a space's stored image is confirmed by one product
    instead of being made again (m products); a stale image (another operator), a missing
    or a garbage one costs those m products, never the answer."""
    make, indefinite, tag = SOLVERS[name]
    a0, a1 = _matrix(N, 0.0, indefinite), _matrix(N, 1e-3, indefinite)
    rng = np.random.default_rng(15)
    b = rng.standard_normal(N)
    op, count = _counted(a1, tag)
    solver = make(rtol=RTOL, recycle=M)
    space = ls.linear_solve(op, b, solver).stats["recycle"]
    # (A refreshed space: MINRES's first space has no image yet.)
    space = ls.linear_solve(op, b, solver, recycle=space).stats["recycle"]
    w, values = space.basis, space.values
    spaces = {
        "stored": space,
        "unknown": ls.RecycleSpace(w, values),
        "stale": ls.RecycleSpace(w, values, jnp.asarray(a0) @ w),
        "garbage": ls.RecycleSpace(w, values, jnp.asarray(rng.standard_normal((N, M)))),
        "nan": ls.RecycleSpace(w, values, jnp.full((N, M), jnp.nan)),
    }
    solve = eqx.filter_jit(lambda s: ls.linear_solve(op, b, solver, recycle=s))
    overhead = {}
    for label, s in spaces.items():
        solve(s)  # compile (and count) once
        count[0] = 0
        sol = solve(s)
        jax.block_until_ready(sol.value)
        jax.effects_barrier()
        assert int(sol.result) == 0, label
        assert _relres(a1, sol.value, b) <= 2 * RTOL, label
        # Products beyond the iterations (A W, the image check, the true residuals).
        overhead[label] = count[0] - int(sol.stats["num_steps"])
    for label in ("unknown", "stale", "garbage", "nan"):
        assert overhead[label] - overhead["stored"] == M, (label, overhead)
    # An all-zero space (a loop's first step) costs no products for A W nor for the check.
    op0, count0 = _counted(a1, tag)
    plain = eqx.filter_jit(lambda: ls.linear_solve(op0, b, make(rtol=RTOL, recycle=M)))
    empty = eqx.filter_jit(
        lambda: ls.linear_solve(
            op0, b, make(rtol=RTOL, recycle=M), recycle=ls.RecycleSpace.empty(N, M)
        )
    )
    counts = []
    for f in (plain, empty):
        f()
        count0[0] = 0
        sol = f()
        jax.block_until_ready(sol.value)
        jax.effects_barrier()
        counts.append(count0[0] - int(sol.stats["num_steps"]))
    extra = M if name == "MINRES" else 0  # MINRES's refresh makes the new vectors' image
    assert counts[1] == counts[0] + extra, counts


def test_clear_errors():
    a = _matrix(N, 0.0)
    op = ls.MatrixOperator(jnp.asarray(a), PSD)
    b = jnp.ones(N)
    space = ls.RecycleSpace(jnp.zeros((N + 1, M)))
    with pytest.raises(ValueError, match=r"\(41, 4\).*\(40, 40\).*expected \(40, 4\)"):
        jax.eval_shape(lambda: ls.linear_solve(op, b, ls.CG(recycle=M), recycle=space))
    with pytest.raises(ValueError, match=r"\(40, 3\).*m = 4"):
        ls.linear_solve(op, b, ls.CG(recycle=M), recycle=ls.RecycleSpace(jnp.zeros((N, 3))))
    with pytest.raises(ValueError, match=r"\(2, 40, 4\).*expected \(40, 4\) or \(3, 40, 4\)"):
        ls.linear_solve(
            op, jnp.ones((N, 3)), ls.CG(recycle=M), recycle=ls.RecycleSpace(jnp.zeros((2, N, M)))
        )
    for solver in (ls.GMRES(), ls.BiCGStab(), ls.Cholesky(), ls.LU()):
        with pytest.raises(
            TypeError, match=f"{type(solver).__name__} does not take a recycle space"
        ):
            ls.linear_solve(op, b, solver, recycle=ls.RecycleSpace(jnp.zeros((N, M))))
    with pytest.raises(ValueError, match=r"CG\(recycle=0\)"):
        ls.linear_solve(op, b, ls.CG(), recycle=ls.RecycleSpace(jnp.zeros((N, M))))
    with pytest.raises(TypeError, match="RecycleSpace"):
        ls.linear_solve(op, b, ls.CG(recycle=M), recycle=jnp.zeros((N, M)))
    with pytest.raises(TypeError, match="dtype float32"):
        ls.linear_solve(
            op, b, ls.CG(recycle=M), recycle=ls.RecycleSpace(jnp.zeros((N, M), jnp.float32))
        )
    with pytest.raises(ValueError, match=r"shape \(n, m\) or \(k, n, m\)"):
        ls.RecycleSpace(jnp.zeros(N))
    with pytest.raises(ValueError, match=r"`image` must have the shape of `basis`, \(40, 4\)"):
        ls.RecycleSpace(jnp.zeros((N, M)), image=jnp.zeros((N, M + 1)))
    with pytest.raises(TypeError, match="image has dtype float32"):
        ls.linear_solve(
            op,
            b,
            ls.CG(recycle=M),
            recycle=ls.RecycleSpace(jnp.zeros((N, M)), image=jnp.zeros((N, M), jnp.float32)),
        )
    with pytest.raises(ValueError, match="recycle"):
        ls.linear_solve(ls.MatrixOperator(jnp.asarray(a), SYM), b, ls.MINRES(recycle=-1))
