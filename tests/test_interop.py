"""lineax / optimistix interop: lineax operators into every linsolve entry point
(`from_lineax`), linsolve operators out to lineax (`to_lineax`), and linsolve solvers inside
`lineax.linear_solve` and optimistix (`as_lineax_solver`), with their gradients.

References: numpy for values, `linsolve.linear_solve` for what the lineax path must
reproduce, and central finite differences on every stored entry (garbage in unread
triangles, whose gradient must be exactly zero). Sizes are tiny: the time is compilation.
"""

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optimistix as optx
import pytest
import scipy.sparse as sp
from helpers import assert_grad_matches_fd, fd_grad, real_loss

import linsolve as ls
from linsolve._lineax import LineaxOperator, LinsolveLinearOperator, from_lineax, to_lineax
from linsolve._lineax_solver import LineaxSolver, as_lineax_solver


PSD, SYM, LOWER = ls.positive_semidefinite_tag, ls.symmetric_tag, ls.lower_triangular_tag
rng = np.random.default_rng(0)
N = 4


def _spd(n=N, dtype=np.float64):
    a = rng.standard_normal((n, n))
    if np.issubdtype(dtype, np.complexfloating):
        a = a + 1j * rng.standard_normal((n, n))
    return (a @ a.conj().T / n + np.eye(n)).astype(dtype)


def _with_garbage(m):
    """`m` with its strict upper triangle overwritten: read-by-lower must not see it."""
    return np.tril(m) + np.triu(rng.standard_normal(m.shape) * 7, 1)


GEN = rng.standard_normal((N, N)) + N * np.eye(N)
SPD = _spd()
B = rng.standard_normal(N)


def test_public_names():
    assert ls.to_lineax is to_lineax
    assert ls.from_lineax is from_lineax
    assert ls.as_lineax_solver is as_lineax_solver


# -- lineax in: from_lineax ---------------------------------------------------------------

_d = rng.standard_normal(N) + 3
_lo, _up = rng.standard_normal(N - 1), rng.standard_normal(N - 1)
_fn_struct = jax.ShapeDtypeStruct((N,), jnp.float64)
_M1, _M2 = lx.MatrixLinearOperator(jnp.asarray(GEN)), lx.MatrixLinearOperator(jnp.asarray(SPD))
_LX_PSD, _LX_SYM = lx.positive_semidefinite_tag, lx.symmetric_tag
_unit_lower = jnp.asarray(np.tril(GEN, -1) + np.eye(N))


def _tri(upper):
    return lx.TridiagonalLinearOperator(jnp.asarray(_d), jnp.asarray(_lo), jnp.asarray(upper))


# name -> (lineax operator, linsolve kind it becomes, linsolve tags it must carry)
CONVERSIONS = {
    "matrix": (_M1, ls.MatrixOperator, set()),
    "matrix-psd": (
        lx.MatrixLinearOperator(jnp.asarray(SPD), _LX_PSD),
        ls.MatrixOperator,
        {PSD, SYM},
    ),
    "matrix-lower-unit": (
        lx.MatrixLinearOperator(_unit_lower, (lx.lower_triangular_tag, lx.unit_diagonal_tag)),
        ls.MatrixOperator,
        {LOWER, ls.unit_diagonal_tag},
    ),
    "pytree": (lx.PyTreeLinearOperator(jnp.asarray(GEN), _fn_struct), ls.MatrixOperator, set()),
    "diagonal": (
        lx.DiagonalLinearOperator(jnp.asarray(_d)),
        ls.DiagonalOperator,
        {ls.diagonal_tag, SYM},
    ),
    "identity": (
        lx.IdentityLinearOperator(_fn_struct),
        ls.IdentityOperator,
        {PSD, ls.unit_diagonal_tag},
    ),
    "tridiagonal": (_tri(_up), ls.SparseOperator, set()),
    "tagged-tridiagonal-symmetric": (
        lx.TaggedLinearOperator(_tri(_lo), _LX_SYM),
        ls.SparseOperator,
        {SYM},
    ),
    "tagged-diagonal-psd": (
        lx.TaggedLinearOperator(lx.DiagonalLinearOperator(jnp.asarray(_d)), _LX_PSD),
        ls.DiagonalOperator,
        {PSD, ls.diagonal_tag},
    ),
    "tagged-sum-symmetric": (lx.TaggedLinearOperator(_M2 + _M2, _LX_SYM), ls.MatrixOperator, {SYM}),
    "sum": (_M1 + _M2, ls.AddOperator, set()),
    "scaled": (_M1 * 2.5, ls.ScaledOperator, set()),
    "divided": (_M1 / 2.0, ls.ScaledOperator, set()),
    "negated": (-_M1, ls.ScaledOperator, set()),
    "composed": (_M1 @ _M2, ls.ComposedOperator, set()),
    "function-psd": (
        lx.FunctionLinearOperator(lambda v: jnp.asarray(SPD) @ v, _fn_struct, _LX_PSD),
        LineaxOperator,
        {PSD, SYM},
    ),
    "jacobian": (
        lx.JacobianLinearOperator(lambda x, _: jnp.asarray(GEN) @ jnp.sin(x), jnp.zeros(N)),
        LineaxOperator,
        set(),
    ),
}


@pytest.mark.parametrize("name", list(CONVERSIONS))
def test_from_lineax_kinds_and_linear_solve(name):
    lx_op, kind, tags = CONVERSIONS[name]
    op = from_lineax(lx_op)
    assert type(op) is kind
    assert tags <= op.tags, (tags, op.tags)
    dense = np.asarray(lx_op.as_matrix())
    np.testing.assert_allclose(op.as_matrix(), dense, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(op.mv(jnp.asarray(B)), dense @ B, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(op.T.as_matrix(), dense.T, rtol=1e-13, atol=1e-13)
    # linear_solve (and so every entry point, through as_operator) takes it as it is.
    x = ls.linear_solve(lx_op, jnp.asarray(B)).value
    np.testing.assert_allclose(x, np.linalg.solve(dense, B), rtol=1e-9, atol=1e-10)


def test_from_lineax_pytree_operator_is_flattened():
    # A map between dicts: linsolve sees the flattened vectors (lineax's as_matrix order).
    struct = {
        "a": jax.ShapeDtypeStruct((2,), jnp.float64),
        "b": jax.ShapeDtypeStruct((1, 2), jnp.float64),
    }
    m = jnp.asarray(GEN)

    def fn(tree):
        v = jnp.concatenate([tree["a"], tree["b"].reshape(-1)])
        w = m @ v
        return {"a": w[:2], "b": w[2:].reshape(1, 2)}

    lx_op = lx.FunctionLinearOperator(fn, struct)
    op = from_lineax(lx_op)
    assert isinstance(op, LineaxOperator) and op.shape == (N, N)
    np.testing.assert_allclose(op.as_matrix(), GEN, rtol=1e-14)
    np.testing.assert_allclose(
        ls.linear_solve(lx_op, jnp.asarray(B)).value, np.linalg.solve(GEN, B), rtol=1e-10
    )
    # Through lineax the solution comes back in the operator's input structure.
    tree_b = fn({"a": jnp.asarray(B[:2]), "b": jnp.asarray(B[2:]).reshape(1, 2)})
    sol = lx.linear_solve(lx_op, tree_b, as_lineax_solver(ls.LU()))
    np.testing.assert_allclose(sol.value["a"], B[:2], rtol=1e-10)
    np.testing.assert_allclose(sol.value["b"], B[2:].reshape(1, 2), rtol=1e-10)


def test_from_lineax_errors():
    mixed = {
        "a": jax.ShapeDtypeStruct((2,), jnp.float64),
        "b": jax.ShapeDtypeStruct((2,), jnp.float32),
    }
    op = lx.FunctionLinearOperator(lambda t: t, mixed)
    with pytest.raises(ValueError, match="one dtype"):
        ls.linear_solve(op, jnp.ones(4))
    with pytest.raises(TypeError, match="lineax operator"):
        from_lineax(np.eye(2))
    with pytest.raises(TypeError, match="SparseOperator"):
        ls.selected_inverse(lx.MatrixLinearOperator(jnp.asarray(SPD), lx.positive_semidefinite_tag))


def test_entry_points_take_lineax_operators():
    a = jnp.asarray(SPD)
    spd = lx.MatrixLinearOperator(a, lx.positive_semidefinite_tag)
    np.testing.assert_allclose(ls.logdet(spd), np.linalg.slogdet(SPD)[1], rtol=1e-12)
    fn_op = lx.FunctionLinearOperator(lambda v: jnp.asarray(GEN) @ v, _fn_struct)
    sign, logabs = ls.slogdet(fn_op, ls.LU())
    np.testing.assert_allclose((sign, logabs), np.linalg.slogdet(GEN), rtol=1e-12)
    np.testing.assert_allclose(ls.diag_inverse(spd), np.diag(np.linalg.inv(SPD)), rtol=1e-12)
    # lobpcg's lineax input (operator, B, preconditioner) goes through the same
    # `as_operator` as eigh's; tests/test_lobpcg.py runs it on a lineax matrix.
    eig = ls.eigh(spd, B=lx.IdentityLinearOperator(_fn_struct))
    np.testing.assert_allclose(eig.eigenvalues, np.linalg.eigvalsh(SPD), rtol=1e-12)
    cg = ls.CG(preconditioner=lx.DiagonalLinearOperator(1 / jnp.diag(a)))
    np.testing.assert_allclose(
        ls.linear_solve(spd, jnp.asarray(B), cg).value, np.linalg.solve(SPD, B), rtol=1e-9
    )
    # A sparse operator handed to lineax comes back as it was: selected_inverse takes it.
    np.testing.assert_allclose(
        ls.selected_inverse(to_lineax(_sparse_psd)).as_matrix(), np.linalg.inv(SPD), rtol=1e-10
    )


def test_gradients_through_lineax_operators_match_fd():
    # Structure convention on a tagged lineax matrix: the upper triangle is not read.
    garbage = _with_garbage(SPD)

    def logdet(m):
        return ls.logdet(lx.MatrixLinearOperator(m, lx.positive_semidefinite_tag))

    g = assert_grad_matches_fd(jax.jit(logdet), garbage)
    assert np.all(np.triu(g, 1) == 0)

    # Matrix-free: the gradient reaches the arrays a lineax function closes over.
    def solve_fn(m):
        op = lx.FunctionLinearOperator(lambda v: m @ v, _fn_struct)
        return real_loss(ls.linear_solve(op, jnp.asarray(B), ls.LU()).value)

    assert_grad_matches_fd(jax.jit(solve_fn), GEN)

    # Tridiagonal: the gradient reaches the three diagonals through the sparse values.
    def solve_tri(d):
        op = lx.TridiagonalLinearOperator(d, jnp.asarray(_lo), jnp.asarray(_up))
        return real_loss(ls.linear_solve(op, jnp.asarray(B)).value)

    assert_grad_matches_fd(jax.jit(solve_tri), _d)


# -- lineax out: to_lineax ----------------------------------------------------------------

_sparse_psd = ls.SparseOperator.from_scipy(sp.csc_matrix(np.tril(SPD)), PSD)
_herm = _spd(dtype=np.complex128)

# name -> (linsolve operator, lineax predicates that must hold, ones that must not)
OUTGOING = {
    "dense-psd-garbage": (
        ls.MatrixOperator(_with_garbage(SPD), PSD),
        {"symmetric", "psd"},
        {"diagonal", "lower"},
    ),
    "dense": (ls.MatrixOperator(GEN), set(), {"symmetric", "psd"}),
    "lower-unit": (
        ls.MatrixOperator(GEN, (LOWER, ls.unit_diagonal_tag)),
        {"lower", "unit"},
        {"upper", "symmetric"},
    ),
    "diagonal": (
        ls.DiagonalOperator(_d),
        {"diagonal", "symmetric", "lower", "upper", "tridiagonal"},
        {"psd"},
    ),
    "identity": (ls.IdentityOperator(N), {"diagonal", "psd", "unit"}, {"nsd"}),
    "sparse-psd": (_sparse_psd, {"symmetric", "psd"}, {"diagonal"}),
    "function-nsd": (
        ls.FunctionOperator(
            lambda v: -jnp.asarray(SPD) @ v, jnp.zeros(N), ls.negative_semidefinite_tag
        ),
        {"nsd", "symmetric"},
        {"psd"},
    ),
    "gram": ((lambda o: o.T @ o)(ls.MatrixOperator(GEN)), {"psd", "symmetric"}, set()),
    "complex-hermitian": (ls.MatrixOperator(_herm, ls.hermitian_tag), set(), {"symmetric", "psd"}),
    "complex-hpd": (ls.MatrixOperator(_herm, PSD), {"psd"}, {"symmetric"}),
    "complex-function": (
        ls.FunctionOperator(lambda v: jnp.asarray(_herm) @ v, jnp.zeros(N, complex)),
        set(),
        {"symmetric"},
    ),
}
_CHECKS = {
    "symmetric": lx.is_symmetric,
    "psd": lx.is_positive_semidefinite,
    "nsd": lx.is_negative_semidefinite,
    "lower": lx.is_lower_triangular,
    "upper": lx.is_upper_triangular,
    "diagonal": lx.is_diagonal,
    "tridiagonal": lx.is_tridiagonal,
    "unit": lx.has_unit_diagonal,
}


@pytest.mark.parametrize("name", list(OUTGOING))
def test_to_lineax_tags_mv_and_round_trip(name):
    op, yes, no = OUTGOING[name]
    lop = to_lineax(op)
    assert isinstance(lop, LinsolveLinearOperator)
    for check in yes:
        assert _CHECKS[check](lop), check
    for check in no:
        assert not _CHECKS[check](lop), check
    dense = np.asarray(op.as_matrix())
    v = jnp.asarray(B, dtype=op.dtype)
    np.testing.assert_allclose(lop.mv(v), dense @ v, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lop.as_matrix(), dense, rtol=1e-14)
    np.testing.assert_allclose(lop.T.as_matrix(), dense.T, rtol=1e-14)
    np.testing.assert_allclose(lx.materialise(lop).as_matrix(), dense, rtol=1e-14)
    np.testing.assert_allclose(lx.diagonal(lop), np.diag(dense), rtol=1e-14)
    for got, offset in zip(lx.tridiagonal(lop), (0, -1, 1)):
        np.testing.assert_allclose(got, np.diag(dense, offset), rtol=1e-14)
    np.testing.assert_allclose(lx.conj(lop).as_matrix(), dense.conj(), rtol=1e-14)
    np.testing.assert_allclose(lx.linearise(lop).mv(v), dense @ v, rtol=1e-12, atol=1e-12)
    assert from_lineax(lop) is op


def test_round_trips():
    fn = lx.FunctionLinearOperator(lambda v: jnp.asarray(GEN) @ v, _fn_struct)
    assert to_lineax(from_lineax(fn)) is fn
    assert to_lineax(fn) is fn
    with pytest.raises(TypeError, match="linsolve operator"):
        to_lineax(np.eye(2))


def test_lineax_solvers_on_linsolve_operators():
    # lineax's own solvers see linsolve's structure: Cholesky chosen from the tags, the
    # matrix read by its lower triangle, a sparse operator applied by its sparse product.
    garbage = to_lineax(ls.MatrixOperator(_with_garbage(SPD), PSD))
    assert isinstance(lx.AutoLinearSolver(well_posed=True).select_solver(garbage), lx.Cholesky)
    expected = np.linalg.solve(SPD, B)
    np.testing.assert_allclose(lx.linear_solve(garbage, jnp.asarray(B)).value, expected, rtol=1e-10)
    cg = lx.CG(rtol=1e-12, atol=1e-12)
    sparse_x = lx.linear_solve(to_lineax(_sparse_psd), jnp.asarray(B), cg).value
    np.testing.assert_allclose(sparse_x, expected, rtol=1e-9)
    diag = to_lineax(ls.DiagonalOperator(_d))
    np.testing.assert_allclose(
        lx.linear_solve(diag, jnp.asarray(B), lx.Diagonal()).value, B / _d, rtol=1e-14
    )


# -- linsolve solvers in lineax: as_lineax_solver -------------------------------------------

_tall = rng.standard_normal((N + 2, N))
_sparse_pattern = sp.csc_matrix(np.tril(SPD))


def _sparse(values):
    p = _sparse_pattern
    return ls.SparseOperator(values, p.indices, p.indptr, p.shape, PSD)


# name -> (stored array, how to build the operator from it, solver). Every solver goes
# through the same wrapper; CG stands for the Krylov ones (their transposed solves are
# tested in test_iterative.py).
SOLVES = {
    "cholesky": (_with_garbage(SPD), lambda m: ls.MatrixOperator(m, PSD), ls.Cholesky()),
    "lu": (GEN, ls.MatrixOperator, ls.LU()),
    "qr-tall": (_tall, ls.MatrixOperator, ls.QR()),
    "qr-wide": (_tall.T, ls.MatrixOperator, ls.QR()),
    "cg": (_with_garbage(SPD), lambda m: ls.MatrixOperator(m, PSD), ls.CG(rtol=1e-13, atol=0.0)),
    "sparse-cholesky": (_sparse_pattern.data, _sparse, ls.SparseCholesky()),
    "auto-function": (
        GEN,
        lambda m: ls.FunctionOperator(lambda v: m @ v, jnp.zeros(N)),
        ls.AutoSolver(),
    ),
}


@pytest.mark.parametrize("name", list(SOLVES))
def test_lineax_linear_solve_values_and_gradients(name):
    leaf, make, solver = SOLVES[name]
    leaf = jnp.asarray(leaf)
    op = make(leaf)
    b = jnp.asarray(rng.standard_normal(op.shape[0]))
    dense = np.asarray(op.as_matrix())

    def via_lineax(leaf, b):
        return lx.linear_solve(to_lineax(make(leaf)), b, as_lineax_solver(solver)).value

    loss = jax.jit(lambda leaf: real_loss(via_lineax(leaf, b)))
    t = jnp.asarray(rng.standard_normal(leaf.shape))

    @jax.jit
    def everything(leaf, b, t):
        x = via_lineax(leaf, b)
        g = jax.grad(loss)(leaf)
        jvp = jax.jvp(loss, (leaf,), (t,))[1]
        gb = jax.grad(lambda b: real_loss(via_lineax(leaf, b)))(b)
        return x, g, jvp, gb

    x, g, jvp, gb = everything(leaf, b, t)
    np.testing.assert_allclose(x, np.linalg.lstsq(dense, b, rcond=None)[0], rtol=1e-9, atol=1e-11)
    # Reverse mode w.r.t. the stored array, against finite differences of every entry.
    np.testing.assert_allclose(g, fd_grad(loss, leaf), rtol=1e-5, atol=1e-7)
    if op.tags & {PSD, LOWER} and leaf.ndim == 2:
        assert np.all(np.triu(g, 1) == 0)  # unread entries: exactly zero
    # Forward mode agrees with it; the gradient w.r.t. b is the transposed solve.
    np.testing.assert_allclose(jvp, np.sum(g * t), rtol=1e-8)
    np.testing.assert_allclose(gb, np.linalg.pinv(dense).T @ np.cos(x), rtol=1e-8, atol=1e-10)


def test_second_order_vmap_and_complex_nonsquare():
    solver = as_lineax_solver(ls.Cholesky())

    def solve(m, b):
        return lx.linear_solve(to_lineax(ls.MatrixOperator(m, PSD)), b, solver).value

    def loss(m, b):
        return real_loss(solve(m, b))

    m, b = jnp.asarray(_with_garbage(SPD)), jnp.asarray(B)
    grad = jax.jit(jax.grad(loss))
    # Second order, forward-over-reverse and reverse-over-reverse, against central
    # differences of the gradient along an unconstrained direction (upper garbage too).
    t = jnp.asarray(rng.standard_normal((N, N)))
    hvp_fwd = jax.jit(lambda m: jax.jvp(lambda m: jax.grad(loss)(m, b), (m,), (t,))[1])(m)
    hvp_rev = jax.jit(jax.grad(lambda m: jnp.sum(jax.grad(loss)(m, b) * t)))(m)
    eps = 1e-5
    fd = (grad(m + eps * t, b) - grad(m - eps * t, b)) / (2 * eps)
    np.testing.assert_allclose(hvp_fwd, fd, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(hvp_rev, hvp_fwd, rtol=1e-10, atol=1e-12)
    # vmap over the operator and the right-hand side.
    bs = jnp.asarray(rng.standard_normal((3, N)))
    ms = jnp.stack([m, 2 * m, 3 * m])
    xs = jax.jit(jax.vmap(solve))(ms, bs)
    expected = np.stack([np.linalg.solve(k * SPD, v) for k, v in zip((1, 2, 3), bs)])
    np.testing.assert_allclose(xs, expected, rtol=1e-10)

    # Complex least squares: lineax's non-square rule uses the conjugated, transposed state.
    tall = (_tall + 1j * rng.standard_normal(_tall.shape)).astype(np.complex128)
    bc = jnp.asarray(rng.standard_normal(N + 2) + 1j * rng.standard_normal(N + 2))

    def lsq(a):
        return lx.linear_solve(to_lineax(ls.MatrixOperator(a)), bc, as_lineax_solver(ls.QR())).value

    np.testing.assert_allclose(
        jax.jit(lsq)(tall), np.linalg.lstsq(tall, bc, rcond=None)[0], rtol=1e-10
    )
    assert_grad_matches_fd(jax.jit(lambda a: real_loss(lsq(a))), tall, rtol=1e-6, atol=1e-8)


def test_raw_lineax_operator_gets_lineax_gradients():
    # A raw lineax matrix: the derivative w.r.t. it is lineax's (full-matrix tangent), the
    # same as lineax's own Cholesky gives; untagged, that is also the FD gradient.
    def loss(m, solver, tags=()):
        return real_loss(
            lx.linear_solve(lx.MatrixLinearOperator(m, tags), jnp.asarray(B), solver).value
        )

    m = jnp.asarray(SPD)
    psd = lx.positive_semidefinite_tag
    ours = jax.jit(jax.grad(lambda m: loss(m, as_lineax_solver(ls.Cholesky()), psd)))(m)
    theirs = jax.jit(jax.grad(lambda m: loss(m, lx.Cholesky(), psd)))(m)
    np.testing.assert_allclose(ours, theirs, rtol=1e-10)
    assert_grad_matches_fd(jax.jit(lambda m: loss(m, as_lineax_solver(ls.LU()))), GEN)


def test_float32():
    m = jnp.asarray(_with_garbage(SPD), jnp.float32)
    b = jnp.asarray(B, jnp.float32)

    def loss(m):
        x = lx.linear_solve(
            to_lineax(ls.MatrixOperator(m, PSD)), b, as_lineax_solver(ls.Cholesky())
        ).value
        return real_loss(x)

    g = jax.jit(jax.grad(loss))(m)
    assert g.dtype == jnp.float32

    def reference(m):
        return real_loss(ls.linear_solve(ls.MatrixOperator(m, PSD), b, ls.Cholesky()).value)

    ref = jax.jit(jax.grad(reference))(m)
    np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-6)


def test_results_map_to_lineax():
    def result(op, b, solver):
        return lx.linear_solve(
            to_lineax(op), jnp.asarray(b), as_lineax_solver(solver), throw=False
        ).result

    singular = np.ones((N, N))
    assert result(ls.MatrixOperator(singular), B, ls.LU()) == lx.RESULTS.singular
    not_pd = ls.MatrixOperator(-SPD, PSD)
    assert result(not_pd, B, ls.Cholesky()) == lx.RESULTS.singular  # lineax's code for it
    cg = ls.CG(rtol=1e-14, atol=0.0, max_steps=1)
    assert result(ls.MatrixOperator(SPD, PSD), B, cg) == lx.RESULTS.max_steps_reached
    assert result(ls.MatrixOperator(GEN), np.full(N, np.nan), ls.LU()) == lx.RESULTS.nonfinite_input
    assert result(ls.MatrixOperator(GEN), B, ls.LU()) == lx.RESULTS.successful
    with pytest.raises(Exception, match="non-finite|singular"):
        lx.linear_solve(
            to_lineax(ls.MatrixOperator(singular)), jnp.asarray(B), as_lineax_solver(ls.LU())
        )


def test_initial_guesses_through_options():
    # Zero iterations return the initial guess: the forward solve starts from y0, the
    # transposed solve of reverse mode (whose answer is the gradient w.r.t. b) from
    # adjoint_y0.
    truncated = as_lineax_solver(ls.CG(rtol=0.0, atol=0.0, max_steps=0))
    op = to_lineax(ls.MatrixOperator(SPD, PSD))
    y0, a0 = jnp.asarray(rng.standard_normal(N)), jnp.asarray(rng.standard_normal(N))
    w = jnp.asarray(rng.standard_normal(N))

    def f(b):
        options = {"y0": y0, "adjoint_y0": a0}
        return lx.linear_solve(op, b, truncated, options=options).value @ w

    np.testing.assert_allclose(jax.grad(f)(jnp.asarray(B)), a0, rtol=1e-15)
    np.testing.assert_allclose(f(jnp.asarray(B)), y0 @ w, rtol=1e-14)
    exact = {"y0": jnp.asarray(np.linalg.solve(SPD, B))}
    sol = lx.linear_solve(op, jnp.asarray(B), as_lineax_solver(ls.CG()), options=exact)
    assert int(sol.stats["num_steps"]) == 0
    with pytest.raises(ValueError, match="preconditioner"):
        lx.linear_solve(
            op, jnp.asarray(B), as_lineax_solver(ls.CG()), options={"preconditioner": op}
        )


def test_as_lineax_solver_input_checks():
    assert isinstance(as_lineax_solver(ls.LU()), lx.AbstractLinearSolver)
    assert as_lineax_solver(ls.LU()).assume_full_rank()
    assert isinstance(as_lineax_solver(as_lineax_solver(ls.LU())), LineaxSolver)
    with pytest.raises(TypeError, match="linsolve solver"):
        as_lineax_solver(lx.LU())
    with pytest.raises(ValueError, match="square"):
        lx.linear_solve(
            to_lineax(ls.MatrixOperator(_tall)), jnp.ones(N + 2), as_lineax_solver(ls.LU())
        )


# -- optimistix ------------------------------------------------------------------------------


def _bratu(u, lam):
    """1-D Bratu-like residual: -u'' + c·sinh(u) - s·(1 + x) = 0 on a grid of 6 points."""
    c, s = lam[0], lam[1]
    padded = jnp.pad(u, 1)
    x = jnp.linspace(0.0, 1.0, u.shape[0])
    return (2 * u - padded[:-2] - padded[2:]) * 49.0 + c * jnp.sinh(u) - s * (1 + x)


LAM = jnp.asarray([1.5, 3.0])


def _root_finder(solver, kind=optx.Newton):
    linear_solver = as_lineax_solver(solver)
    # The Jacobian −d² + c·cosh(u) is symmetric positive definite: telling optimistix so
    # lets the CG row see a PSD operator.
    tags = frozenset({lx.positive_semidefinite_tag})

    @jax.jit
    def root(lam):
        newton = kind(rtol=1e-12, atol=1e-12, linear_solver=linear_solver)
        adjoint = optx.ImplicitAdjoint(linear_solver=linear_solver)
        sol = optx.root_find(
            _bratu, newton, jnp.zeros(6), lam, adjoint=adjoint, tags=tags, max_steps=64
        )
        return sol.value

    return root


def test_optimistix_newton_and_implicit_gradient():
    root = _root_finder(ls.LU())
    u = root(LAM)
    assert np.max(np.abs(_bratu(u, LAM))) < 1e-9
    jac = jax.jacrev(root)(LAM)
    fd = np.stack([(root(LAM + e) - root(LAM - e)) / 2e-6 for e in 1e-6 * np.eye(2)], axis=1)
    np.testing.assert_allclose(jac, fd, rtol=1e-6, atol=1e-8)


def test_optimistix_chord_reuses_the_state():
    # Chord calls `linear_solver.init` once (one factorization of the Jacobian at the
    # initial guess) and hands that state to every step. (A Krylov state holds the
    # matrix-free Jacobian, whose function leaf optimistix 0.1.0 cannot stop_gradient —
    # the same with lineax's own CG / GMRES.)
    root = _root_finder(ls.AutoSolver(), optx.Chord)
    assert np.max(np.abs(_bratu(root(LAM), LAM))) < 1e-9


def test_optimistix_least_squares_with_qr():
    # Gauss–Newton steps are tall least-squares solves: linsolve's QR through lineax.
    t = jnp.linspace(0.0, 1.0, 9)
    data = 2.0 * jnp.exp(-1.3 * t) + 0.01 * jnp.asarray(rng.standard_normal(9))

    def residual(p, data):
        return p[0] * jnp.exp(-p[1] * t) - data

    @jax.jit
    def fit(data):
        solver = optx.GaussNewton(rtol=1e-12, atol=1e-12, linear_solver=as_lineax_solver(ls.QR()))
        adjoint = optx.ImplicitAdjoint(linear_solver=as_lineax_solver(ls.LU()))
        return optx.least_squares(
            residual, solver, jnp.asarray([1.0, 1.0]), data, adjoint=adjoint
        ).value

    p = fit(data)
    np.testing.assert_allclose(p, [2.0, 1.3], rtol=0.05)
    # The normal equations hold at the fit: Jᵀ r = 0.
    normal = jax.grad(lambda p: 0.5 * jnp.sum(residual(p, data) ** 2))(p)
    assert np.max(np.abs(normal)) < 1e-10
    loss = jax.jit(lambda d: jnp.sum(fit(d) ** 2))
    assert_grad_matches_fd(loss, np.asarray(data), rtol=1e-5, atol=1e-7)
