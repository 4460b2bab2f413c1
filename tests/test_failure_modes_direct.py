"""The adversarial pass over direct solves, factorizations, log-determinants and inverse
entries, kept as tests: every bad input gets a clear error or a result code, never a
silently wrong number (see docs/failure-modes.md). Classes covered: numerically singular
systems (rcond), broken symmetry promises of matrix-free operators, rank-deficient `lu`
derivatives, failures of logdet / slogdet / selected_inverse / diag_inverse, n = 0, an
overflowing solution, malformed sparse input; across solvers, jit / vmap, throw, and
float32 / float64. Batches of seeds run under one `vmap` so that one compilation covers
them."""

import functools
import re

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from helpers import fd_grad
from hypothesis import given, settings
from jax.test_util import check_grads

import linsolve as ls


PSD = ls.positive_semidefinite_tag
R = ls.RESULTS
SOLVERS = {"Cholesky": ls.Cholesky, "LU": ls.LU, "QR": ls.QR}
TOL = {np.float32: 2e-3, np.float64: 1e-9}


def _codes(matrices, solver, tags=(), b=None):
    """Result codes and rcond of `linear_solve` for a batch of matrices, under jit + vmap."""
    n = matrices.shape[-1]
    b = jnp.ones(n, matrices.dtype) if b is None else b

    def one(a):
        sol = ls.linear_solve(ls.MatrixOperator(a, tags), b, solver, throw=False)
        return sol.result, sol.stats["rcond"]

    codes, rconds = jax.jit(jax.vmap(one))(jnp.asarray(matrices))
    return np.asarray(codes), np.asarray(rconds)


def _orthogonal(rng, n):
    return np.linalg.qr(rng.standard_normal((n, n)))[0]


def _batch(kind, n, dtype, seeds=40):
    out = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        r = int(rng.integers(1, n))  # rank 1 .. n-1
        if kind == "psd_rank_deficient":
            x = rng.standard_normal((n, r))
            a = x @ x.T
        elif kind == "rank_deficient":
            a = rng.standard_normal((n, r)) @ rng.standard_normal((r, n))
        elif kind == "cond_1e17":
            a = (_orthogonal(rng, n) * np.logspace(0, -17, n)) @ _orthogonal(rng, n).T
        elif kind == "psd_cond_1e17":
            q = _orthogonal(rng, n)
            a = (q * np.logspace(0, -17, n)) @ q.T
        out.append(a)
    return np.stack(out).astype(dtype)


def _neumann_laplacian_2d(m):
    """The 2-D grid Laplacian without a shift: positive semidefinite, constants in its
    null space."""
    d = np.diag(2.0 * np.ones(m)) - np.diag(np.ones(m - 1), 1) - np.diag(np.ones(m - 1), -1)
    d[0, 0] = d[-1, -1] = 1
    return np.kron(d, np.eye(m)) + np.kron(np.eye(m), d)


# --- 1. numerically singular systems: rcond --------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    "solver,kind",
    [
        ("Cholesky", "psd_rank_deficient"),
        ("Cholesky", "psd_cond_1e17"),
        ("LU", "rank_deficient"),
        ("LU", "cond_1e17"),
        ("QR", "rank_deficient"),
        ("QR", "cond_1e17"),
    ],
)
def test_numerically_singular_is_reported(solver, kind, dtype):
    """Every seed of a rank-deficient or cond ≈ 1e17 matrix is `singular` (before, about
    one in ten passed the pivot test with ‖b − A x‖/‖b‖ ≈ 1)."""
    tags = PSD if solver == "Cholesky" else ()
    for n in (4, 7):
        codes, rconds = _codes(_batch(kind, n, dtype), SOLVERS[solver](), tags)
        assert np.all(codes == R.singular), (n, codes)
        assert np.all(rconds < np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_singular_laplacian(dtype):
    a = _neumann_laplacian_2d(5).astype(dtype)
    for solver, tags in ((ls.Cholesky(), PSD), (ls.LU(), ()), (ls.QR(), ())):
        codes, _ = _codes(a[None], solver, tags)
        assert codes[0] == R.singular, type(solver).__name__
        with pytest.raises(Exception, match="singular"):
            jax.jit(
                lambda a: (
                    ls.linear_solve(ls.MatrixOperator(a, tags), jnp.ones(25, dtype), solver).value
                )
            )(a).block_until_ready()
    # The shifted Laplacian is fine, with an rcond of the right size.
    shifted = a + 1e-2 * np.eye(25, dtype=dtype)
    codes, rconds = _codes(shifted[None], ls.Cholesky(), PSD)
    true = 1 / np.linalg.cond(shifted.astype(np.float64), 1)
    assert codes[0] == R.successful and true <= rconds[0] * (1 + 1e-4) <= 10 * true


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("solver", list(SOLVERS))
def test_rcond_estimate_brackets_truth(solver, dtype):
    """A lower bound on ‖A⁻¹‖₁ makes `rcond` an upper bound on the true 1-norm value (QR:
    that of R); in practice within a factor of a few. Well-conditioned matrices pass."""
    rng = np.random.default_rng(1)
    n = 6
    mats = []
    for _ in range(30):
        a = rng.standard_normal((n, n)) * np.exp(rng.uniform(-3, 3))
        mats.append(a @ a.T + 0.1 * np.eye(n) if solver == "Cholesky" else a)
    mats = np.stack(mats).astype(dtype)
    codes, rconds = _codes(mats, SOLVERS[solver](), PSD if solver == "Cholesky" else ())
    assert np.all(codes == R.successful)
    for a, rc in zip(mats.astype(np.float64), rconds):
        ref = np.linalg.qr(a)[1] if solver == "QR" else a
        true = 1 / np.linalg.cond(ref, 1)
        # Rounding in the solves: relative error up to about cond · eps.
        slack = 10 * n * np.finfo(dtype).eps / true
        assert true * (1 - slack) <= rc <= 10 * true


def test_rcond_nonsquare_qr_and_switch():
    rng = np.random.default_rng(2)
    tall = rng.standard_normal((6, 3))
    rank_def = tall @ np.array([[1.0, 0, 1], [0, 1, 1], [0, 0, 0]])  # third column = sum
    for a, code in ((tall, R.successful), (rank_def, R.singular), (rank_def.T, R.singular)):
        sol = ls.linear_solve(ls.MatrixOperator(a), jnp.ones(a.shape[0]), ls.QR(), throw=False)
        assert int(sol.result) == code and "rcond" in sol.stats
    # check_condition=False skips the estimate: no rcond, only the pivot tests.
    x = rng.standard_normal((5, 2))
    for solver, tags in (
        (ls.Cholesky(check_condition=False), PSD),
        (ls.LU(check_condition=False), ()),
        (ls.QR(check_condition=False), ()),
    ):
        sol = ls.linear_solve(ls.MatrixOperator(x @ x.T + np.eye(5), tags), jnp.ones(5), solver)
        assert "rcond" not in sol.stats and int(sol.result) == R.successful
    # AutoSolver reports the estimate of the solver it picks.
    sol = ls.linear_solve(ls.MatrixOperator(x @ x.T, PSD), jnp.ones(5), throw=False)
    assert int(sol.result) == R.singular and float(sol.stats["rcond"]) < np.finfo(np.float64).eps


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_rcond_keeps_gradients(solver):
    """The estimate is not differentiated: gradients still match finite differences,
    under jit and vmap, and the rcond in the stats has a zero derivative."""
    rng = np.random.default_rng(3)
    n = 4
    a = rng.standard_normal((n, n))
    a = a @ a.T + n * np.eye(n)
    stored = a.copy()
    tags = ()
    if solver == "Cholesky":
        tags = PSD
        stored[np.triu_indices(n, 1)] = 7.0  # garbage in the unread triangle
    b = rng.standard_normal(n)

    def f(m, b):
        sol = ls.linear_solve(ls.MatrixOperator(m, tags), b, SOLVERS[solver]())
        return jnp.sum(jnp.sin(sol.value)) + 0 * sol.stats["rcond"]

    check_grads(jax.jit(f), (stored, b), order=1, modes=["fwd", "rev"])
    g = jax.grad(
        lambda m: ls.linear_solve(ls.MatrixOperator(m, tags), b, SOLVERS[solver]()).stats["rcond"]
    )(stored)
    assert np.all(g == 0)
    batched = jax.jit(jax.vmap(jax.grad(f), in_axes=(0, None)))(np.stack([stored, 2 * stored]), b)
    np.testing.assert_allclose(batched[1], jax.grad(f)(2 * stored, b), rtol=1e-10)


def test_vmap_one_bad_member():
    """One singular member of a vmapped batch is flagged alone; throw=True raises."""
    good = np.eye(3) * 2
    bad = np.ones((3, 3))
    mats = np.stack([good, bad, good])
    for solver, tags in ((ls.Cholesky(), PSD), (ls.LU(), ()), (ls.QR(), ())):
        codes, _ = _codes(mats, solver, tags)
        assert list(codes) == [R.successful, R.singular, R.successful]
        with pytest.raises(Exception, match="singular"):
            jax.jit(
                jax.vmap(
                    lambda a: ls.linear_solve(ls.MatrixOperator(a, tags), jnp.ones(3), solver).value
                )
            )(mats).block_until_ready()


def test_cholesky_failure_named():
    """A failed Cholesky factorization: semidefinite up to rounding is `singular`,
    indefinite `not_positive_definite`, NaN `nonfinite_input`; also with the estimate off."""
    psd = np.outer([1.0, 2, 3], [1.0, 2, 3]) - 1e-17 * np.eye(3)
    indefinite = np.diag([1.0, -1, 2])
    nan = np.eye(3)
    nan[1, 0] = np.nan
    for solver in (ls.Cholesky(), ls.Cholesky(check_condition=False)):
        for a, code in (
            (psd, R.singular),
            (indefinite, R.not_positive_definite),
            (nan, R.nonfinite_input),
        ):
            sol = ls.linear_solve(ls.MatrixOperator(a, PSD), jnp.ones(3), solver, throw=False)
            assert int(sol.result) == code


# --- 2. a matrix-free operator that breaks its symmetry promise --------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.complex128])
def test_broken_symmetry_promise(dtype):
    rng = np.random.default_rng(4)
    n = 5
    x = rng.standard_normal((n, n)) + (
        1j * rng.standard_normal((n, n)) if np.iscomplexobj(dtype(0)) else 0
    )
    spd = (x @ x.conj().T + n * np.eye(n)).astype(dtype)
    skew = spd + 0.3 * np.triu(np.ones((n, n)), 1).astype(dtype)
    b = jnp.ones(n, dtype)
    for tag in (PSD, ls.symmetric_tag if np.isrealobj(dtype(0)) else ls.hermitian_tag):
        good = ls.FunctionOperator(
            lambda v: (
                jnp.asarray(x.conj().T.astype(dtype)) @ (jnp.asarray(x.astype(dtype)) @ v) + n * v
            ),
            jnp.zeros(n, dtype),
            tag,
        )
        bad = ls.FunctionOperator(lambda v: jnp.asarray(skew) @ v, jnp.zeros(n, dtype), tag)
        solvers = [ls.LU(), ls.QR(), ls.AutoSolver()] + ([ls.Cholesky()] if tag is PSD else [])
        for solver in solvers:
            assert int(ls.linear_solve(good, b, solver, throw=False).result) == R.successful
            assert int(ls.linear_solve(bad, b, solver, throw=False).result) == R.not_symmetric
            with pytest.raises(Exception, match="not symmetric"):
                jax.jit(lambda v: ls.linear_solve(bad, v, solver).value)(b).block_until_ready()
        if tag is PSD:
            assert int(ls.logdet(bad, throw=False, return_result=True)[1]) == R.not_symmetric
            assert int(ls.logdet(good, throw=False, return_result=True)[1]) == R.successful


# --- 3. lu derivatives at every rank -----------------------------------------------------


def _lu_loss(a):
    _, l, u = ls.lu(a)
    return jnp.sum(jnp.sin(l)) + jnp.sum(
        jnp.cos(u) * jnp.arange(u.size, dtype=u.dtype).reshape(u.shape)
    )


@pytest.mark.parametrize(
    "a",
    [
        np.ones((3, 3)),  # rank 1
        np.outer([1.0, 2, 3, 4], [1, 2, 3, 4]) + np.outer([1.0, 0, 1, 0], [0, 1, 1, 2]),  # rank 2
        np.zeros((4, 4)),
        np.diag([1.0, 0, 0, 2]),
        np.ones((5, 3)),  # tall, rank 1
        np.ones((3, 5)),  # wide, rank 1
        np.zeros((5, 3)),
    ],
)
def test_lu_derivatives_finite_every_rank(a):
    a = jnp.asarray(a)
    g = jax.jit(jax.grad(_lu_loss))(a)
    h = jax.hessian(_lu_loss)(a)
    t = jax.jvp(ls.lu, (a,), (jnp.ones_like(a),))[1]
    assert np.all(np.isfinite(g)) and np.all(np.isfinite(h))
    assert all(np.all(np.isfinite(x)) for x in t)
    gb = jax.vmap(jax.grad(_lu_loss))(jnp.stack([a, a + 0.0]))
    np.testing.assert_array_equal(gb[0], g)


@pytest.mark.parametrize("shape", [(4, 4), (5, 3), (3, 5)])
def test_lu_derivative_exact_along_admissible_directions(shape):
    """With zero pivots, A = L U built from dyadic entries is factored exactly, and
    moving U but not the zero pivots (dA = L dU) keeps the column below each zero pivot
    zero: along that direction the factors are differentiable (dL = 0, dU as given), and
    the JVP and the gradient must match central finite differences."""
    m, n = shape
    k = min(m, n)
    l = np.eye(m, k)
    l[np.tril_indices(m, -1, k)] = [
        0.5,
        -0.25,
        0.125,
        -0.5,
        0.25,
        0.375,
        -0.125,
        0.5,
        0.25,
        -0.375,
    ][: len(np.tril_indices(m, -1, k)[0])]
    u = np.triu(np.arange(1.0, k * n + 1).reshape(k, n) / 4)
    zero = [0, 2] if k > 2 else [0]
    for j in zero:
        u[j, j:] = 0  # a zero pivot and nothing right of it: that column stays zero below
        l[j + 1 :, j] = 0  # ... and LAPACK leaves L's column below a zero pivot at zero
    a = l @ u
    p, l0, u0 = ls.lu(a)
    np.testing.assert_array_equal(np.asarray(p), np.eye(m))
    np.testing.assert_array_equal(np.asarray(l0), l)
    du = np.triu(np.random.default_rng(5).standard_normal((k, n)))
    for j in zero:
        du[j, j] = 0
    da = l @ du
    _, (_, dl, dU) = jax.jvp(ls.lu, (jnp.asarray(a),), (jnp.asarray(da),))
    np.testing.assert_allclose(dl, 0, atol=1e-12)
    np.testing.assert_allclose(dU, du, atol=1e-12)

    def along(t):
        return _lu_loss(jnp.asarray(a) + t * jnp.asarray(da))

    fd = (along(1e-6) - along(-1e-6)) / 2e-6
    np.testing.assert_allclose(
        jnp.sum(jax.grad(_lu_loss)(jnp.asarray(a)) * da), fd, rtol=1e-6, atol=1e-8
    )


def test_lu_derivative_still_matches_fd_full_rank():
    a = np.random.default_rng(6).standard_normal((4, 4))
    g = jax.grad(_lu_loss)(jnp.asarray(a))
    np.testing.assert_allclose(g, fd_grad(_lu_loss, a), rtol=1e-6, atol=1e-7)


# --- 4. logdet / slogdet / selected_inverse / diag_inverse: throw and result -------------


def _sparse(a, tags=PSD):
    return ls.SparseOperator.from_scipy(sp.csc_matrix(np.tril(a)), tags)


INDEFINITE = np.array([[2.0, 1, 0], [1, -3, 1], [0, 1, 2]])
NAN = np.array([[2.0, 1, 0], [1, np.nan, 1], [0, 1, 2]])
SPD = np.array([[4.0, 1, 0], [1, 3, 1], [0, 1, 2]])


@pytest.mark.parametrize(
    "fn,make",
    [
        (ls.logdet, _sparse),
        (ls.slogdet, _sparse),
        (ls.selected_inverse, _sparse),
        (ls.diag_inverse, _sparse),
        (ls.logdet, lambda a: ls.MatrixOperator(a, PSD)),
        (ls.slogdet, lambda a: ls.MatrixOperator(a, PSD)),
    ],
)
def test_determinant_and_inverse_failures(fn, make):
    name = fn.__name__
    for a, code in (
        (SPD, R.successful),
        (INDEFINITE, R.not_positive_definite),
        (NAN, R.nonfinite_input),
    ):
        value, result = fn(make(a), throw=False, return_result=True)
        assert int(result) == code, (name, a)
        if code != R.successful:
            with pytest.raises(Exception, match=rf"linsolve\.{name}"):
                jax.block_until_ready(jax.jit(lambda o: fn(o))(make(a)))
        else:
            jax.block_until_ready(jax.jit(lambda o: fn(o))(make(a)))  # no raise
    # With throw=False alone the value is returned as computed (NaN where it failed).
    out = fn(make(INDEFINITE), throw=False)
    leaves = [
        x
        for x in jax.tree_util.tree_leaves(out)
        if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)
    ]
    assert any(np.any(np.isnan(x)) for x in leaves)


def test_logdet_codes_dense_general():
    """LU log-determinants: a singular matrix is an answer (−inf), a negative determinant
    is `not_positive_definite` for `logdet` (its real log is undefined) but not for
    `slogdet`; NaN input is named."""
    neg = np.diag([1.0, -2, 3])
    (sign, lad), r = ls.slogdet(ls.MatrixOperator(neg), return_result=True)
    assert int(r) == R.successful and float(sign) == -1
    value, r = ls.logdet(ls.MatrixOperator(neg), throw=False, return_result=True)
    assert int(r) == R.not_positive_definite and np.isnan(value)
    with pytest.raises(Exception, match="determinant is negative"):
        jax.block_until_ready(jax.jit(lambda a: ls.logdet(ls.MatrixOperator(a)))(neg))
    zero = np.zeros((3, 3))
    value, r = ls.logdet(ls.MatrixOperator(zero), return_result=True)
    assert int(r) == R.successful and value == -np.inf
    for op in (
        ls.MatrixOperator(NAN),
        ls.DiagonalOperator(jnp.array([1.0, np.nan])),
        ls.MatrixOperator(np.tril(NAN), ls.lower_triangular_tag),
    ):
        assert int(ls.slogdet(op, throw=False, return_result=True)[1]) == R.nonfinite_input


def test_logdet_throw_vmap_and_grad():
    """One bad member of a vmapped batch gets its own code; gradients of good input are
    unchanged by the check."""
    mats = np.stack([SPD, INDEFINITE, SPD])

    def f(a):
        return ls.logdet(ls.MatrixOperator(a, PSD), throw=False, return_result=True)

    _, codes = jax.jit(jax.vmap(f))(mats)
    assert list(np.asarray(codes)) == [R.successful, R.not_positive_definite, R.successful]
    with pytest.raises(Exception, match="not positive definite"):
        jax.block_until_ready(
            jax.jit(jax.vmap(lambda a: ls.logdet(ls.MatrixOperator(a, PSD))))(mats)
        )
    check_grads(
        lambda a: ls.logdet(ls.MatrixOperator(a, PSD)), (SPD,), order=2, modes=["fwd", "rev"]
    )
    vals = jnp.asarray(_sparse(SPD).values)
    op = _sparse(SPD)
    check_grads(
        lambda v: ls.diag_inverse(eqx_replace(op, v)), (vals,), order=1, modes=["fwd", "rev"]
    )


def eqx_replace(op, values):
    import equinox as eqx

    return eqx.tree_at(lambda o: o.values, op, values)


def test_diag_inverse_dense_path_codes():
    d, r = ls.diag_inverse(ls.MatrixOperator(np.ones((3, 3))), throw=False, return_result=True)
    assert int(r) == R.singular
    d, r = ls.diag_inverse(ls.MatrixOperator(SPD), return_result=True)
    assert int(r) == R.successful
    np.testing.assert_allclose(d, np.diag(np.linalg.inv(SPD)), rtol=1e-12)


# --- 5. n = 0 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "solver,tags",
    [
        (ls.LU(), ()),
        (ls.QR(), ()),
        (ls.AutoSolver(), ()),
        (ls.Cholesky(), PSD),
        (ls.AutoSolver(), PSD),
        (ls.Diagonal(), ls.diagonal_tag),
        (ls.Triangular(), ls.lower_triangular_tag),
    ],
)
def test_empty_system(solver, tags):
    op = ls.MatrixOperator(jnp.zeros((0, 0)), tags)
    for b in (jnp.zeros(0), jnp.zeros((0, 2))):
        sol = jax.jit(lambda b: ls.linear_solve(op, b, solver))(b)
        assert sol.value.shape == b.shape and int(sol.result) == R.successful
    g = jax.grad(
        lambda a: jnp.sum(ls.linear_solve(ls.MatrixOperator(a, tags), jnp.zeros(0), solver).value)
    )(jnp.zeros((0, 0)))
    assert g.shape == (0, 0)
    if "rcond" in sol.stats:
        assert float(sol.stats["rcond"]) == 1


# --- 6. an overflowing solution of finite input ------------------------------------------


@pytest.mark.parametrize(
    "op,solver",
    [
        (ls.DiagonalOperator(jnp.array([1e-300, 1.0])), ls.AutoSolver()),
        (
            ls.MatrixOperator(np.array([[1e-300, 0], [1.0, 1]]), ls.lower_triangular_tag),
            ls.Triangular(),
        ),
        # Well conditioned (LU's pivot test passes), tiny in scale: the solution overflows.
        (ls.MatrixOperator(np.array([[1e-300, 0], [0, 1e-300]])), ls.LU(check_condition=False)),
    ],
)
def test_overflow_is_named(op, solver):
    b = jnp.array([1e10, 1e10])
    sol = ls.linear_solve(op, b, solver, throw=False)
    assert int(sol.result) == R.nonfinite_output
    with pytest.raises(Exception, match="overflowed"):
        jax.jit(lambda b: ls.linear_solve(op, b, solver).value)(b).block_until_ready()
    # NaN in the operator is still NaN input, and so is NaN in b.
    nan_op = jax.tree_util.tree_map(lambda x: x.at[0].set(jnp.nan) if eqx_inexact(x) else x, op)
    assert int(ls.linear_solve(nan_op, b, solver, throw=False).result) == R.nonfinite_input
    assert (
        int(ls.linear_solve(op, jnp.array([jnp.nan, 1.0]), solver, throw=False).result)
        == R.nonfinite_input
    )


def eqx_inexact(x):
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.inexact)


def test_overflow_float32_and_lu_rcond():
    # float32: a finite system whose solution exceeds float32's range.
    op = ls.DiagonalOperator(jnp.array([1e-30, 1.0], jnp.float32))
    sol = ls.linear_solve(op, jnp.array([1e10, 1.0], jnp.float32), throw=False)
    assert int(sol.result) == R.nonfinite_output
    # With the estimate, LU calls the same matrix singular before the overflow happens.
    sol = ls.linear_solve(
        ls.MatrixOperator(np.diag([1e-300, 1.0])), jnp.array([1e10, 1e10]), ls.LU(), throw=False
    )
    assert int(sol.result) == R.singular


# --- 7. malformed sparse input ------------------------------------------------------------


@pytest.mark.parametrize(
    "indptr,message",
    [
        ([0, 2, 1, 3], "non-decreasing"),
        ([1, 2, 3, 3], re.escape("indptr[0] must be 0")),
        ([0, 1, 2, 4], "length indptr[-1]".replace("[", r"\[").replace("]", r"\]")),
    ],
)
def test_sparse_construction_names_the_defect(indptr, message):
    with pytest.raises(ValueError, match=message):
        ls.SparseOperator(np.ones(3), [0, 1, 2], indptr, (3, 3))


# --- 8. inputs × direct solvers × jit/vmap × throw (hypothesis) ----------------------------


@st.composite
def bad_square(draw, n=4):
    """A matrix from one failure class, and the codes that class may get."""
    kind = draw(st.sampled_from(["nan", "inf", "duplicate_rows", "low_rank", "good"]))
    a = draw(hnp.arrays(np.float64, (n, n), elements=st.floats(-4, 4)))
    if kind == "nan":
        a[draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))] = np.nan
    elif kind == "inf":
        a[draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))] = np.inf
    elif kind == "duplicate_rows":
        a[1] = a[0]
    elif kind == "low_rank":
        a = np.outer(a[0], a[1]) + np.outer(a[2], a[3])
    else:
        a = a / 2 + 10 * np.eye(n)  # spectral radius of a / 2 ≤ 8: |eigenvalues| ≥ 2
    return kind, a


@functools.cache
def _adversarial_fns(solver, tags):
    """The jitted batched (throw=False) and single (throw=True) solves, compiled once per
    solver for all of hypothesis' examples."""

    def solve(m, throw):
        return ls.linear_solve(
            ls.MatrixOperator(m, tags), jnp.ones(4), SOLVERS[solver](), throw=throw
        )

    return (
        jax.jit(jax.vmap(lambda m: solve(m, False))),
        jax.jit(lambda m: solve(m, True).value),
    )


@given(bad_square(), st.sampled_from(["LU", "QR", "Cholesky"]), st.booleans())
@settings(max_examples=40, deadline=None)
def test_adversarial_direct(case, solver, throw):
    kind, a = case
    tags = ()
    if solver == "Cholesky":
        tags = PSD
        # Positive definite for the good class; semidefinite-or-worse otherwise.
        a = a @ a.T if kind in ("duplicate_rows", "low_rank") else a
        if kind == "good":
            a = a @ a.T + 10 * np.eye(4)
    sol = _adversarial_fns(solver, tags)[0](np.stack([a, np.eye(4) * 3]))
    code, other = (int(c) for c in sol.result)
    assert other == R.successful  # a good batch member is not affected
    if kind in ("nan", "inf"):
        # NaN/Inf in the read part is named; in Cholesky's unread upper triangle it is ignored.
        read = np.tril(a) if solver == "Cholesky" else a
        assert code == (R.nonfinite_input if not np.all(np.isfinite(read)) else code)
    elif kind in ("duplicate_rows", "low_rank"):
        allowed = {R.singular} | ({R.not_positive_definite} if solver == "Cholesky" else set())
        assert code in allowed
    else:
        assert code == R.successful
    if code == R.successful:
        x = np.asarray(sol.value[0])
        eff = np.tril(a) + np.tril(a, -1).T if solver == "Cholesky" else a
        assert np.linalg.norm(eff @ x - 1) <= 1e-8 * np.linalg.norm(eff) * np.linalg.norm(x) + 1e-8
    if throw and code != R.successful:
        with pytest.raises(Exception, match="linsolve.linear_solve"):
            _adversarial_fns(solver, tags)[1](a).block_until_ready()
