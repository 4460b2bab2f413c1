"""Every solver and function under `jax_numpy_dtype_promotion="strict"` (what lineax and
equinox test under, and what some users enable): forward values, gradients, real and
complex, float64 and float32, all traced inside `jax.numpy_dtype_promotion("strict")`."""

import dataclasses

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
import scipy.sparse as sp

import linsolve as ls


PSD, SYM, HERM = ls.positive_semidefinite_tag, ls.symmetric_tag, ls.hermitian_tag
N = 6

rng = np.random.default_rng(0)


def _matrix(dtype, kind):
    g = rng.standard_normal((N, N))
    if np.issubdtype(dtype, np.complexfloating):
        g = g + 1j * rng.standard_normal((N, N))
    if kind == "spd":
        return (g @ g.conj().T + N * np.eye(N)).astype(dtype)
    if kind == "indefinite_hermitian":
        h = g + g.conj().T
        return (h + np.diag(np.where(np.arange(N) % 2, 3.0, -3.0))).astype(dtype)
    return (g + N * np.eye(N)).astype(dtype)


def _vector(dtype, n=N):
    v = rng.standard_normal(n)
    if np.issubdtype(dtype, np.complexfloating):
        v = v + 1j * rng.standard_normal(n)
    return v.astype(dtype)


def _loss(x):
    return jnp.sum(jnp.abs(x) ** 2)


def _rtol(dtype):
    return 1e-4 if dtype in (np.float32, np.complex64) else 1e-8


DTYPES = [np.float64, np.complex128, np.float32, np.complex64]

# (solver, matrix kind, tags for a real dtype, tags for a complex dtype)
SOLVERS = {
    "LU": (ls.LU(), "general", (), ()),
    "QR": (ls.QR(), "general", (), ()),
    "Cholesky": (ls.Cholesky(), "spd", PSD, PSD),
    "Triangular": (ls.Triangular(), "general", ls.lower_triangular_tag, ls.lower_triangular_tag),
    "Diagonal": (ls.Diagonal(), "general", ls.diagonal_tag, ls.diagonal_tag),
    "CG": (ls.CG(rtol=1e-10), "spd", PSD, PSD),
    "MINRES": (ls.MINRES(rtol=1e-10), "indefinite_hermitian", SYM, HERM),
    "GMRES": (ls.GMRES(rtol=1e-10), "general", (), ()),
    "GMRES_restart": (ls.GMRES(rtol=1e-10, restart=3, max_steps=200), "general", (), ()),
    "BiCGStab": (ls.BiCGStab(rtol=1e-10), "general", (), ()),
    "Auto": (ls.AutoSolver(), "spd", PSD, PSD),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_dense_and_krylov_solvers(name, dtype):
    solver, kind, real_tags, complex_tags = SOLVERS[name]
    if dtype in (np.float32, np.complex64) and hasattr(solver, "rtol"):
        solver = dataclasses.replace(solver, rtol=1e-5)
    tags = complex_tags if np.issubdtype(dtype, np.complexfloating) else real_tags
    a, b = _matrix(dtype, kind), _vector(dtype)
    dense = np.asarray(ls.MatrixOperator(a, tags).as_matrix())

    def run(a, b):
        return ls.linear_solve(ls.MatrixOperator(a, tags), b, solver).value

    with jax.numpy_dtype_promotion("strict"):
        x = jax.jit(run)(a, b)
        ga, gb = jax.jit(jax.grad(lambda a, b: _loss(run(a, b)), argnums=(0, 1)))(a, b)
        # The block (k right-hand sides) path and forward mode.
        bb = np.stack([b, 2 * b], axis=1)
        xb = jax.jit(run)(a, bb)
        _, tx = jax.jit(lambda a, b: jax.jvp(lambda v: run(a, v), (b,), (b,)))(a, b)
    rtol = _rtol(dtype)
    np.testing.assert_allclose(x, np.linalg.solve(dense, b), rtol=100 * rtol, atol=100 * rtol)
    np.testing.assert_allclose(xb[:, 1], 2 * np.asarray(x), rtol=100 * rtol, atol=100 * rtol)
    np.testing.assert_allclose(tx, x, rtol=100 * rtol, atol=100 * rtol)  # linear in b
    assert ga.dtype == a.dtype and gb.dtype == b.dtype
    assert np.all(np.isfinite(ga)) and np.all(np.isfinite(gb))
    with jax.numpy_dtype_promotion("standard"):
        ga_ref = jax.grad(lambda a: _loss(run(a, b)))(a)
    np.testing.assert_allclose(ga, ga_ref, rtol=1e-3 if rtol > 1e-6 else 1e-6, atol=1e-5)


@pytest.mark.parametrize(
    "dtype", [np.float64, np.complex128, np.float32], ids=lambda d: np.dtype(d).name
)
def test_nonsquare_qr(dtype):
    a = _matrix(dtype, "general")[:, :4]
    b = _vector(dtype)

    def run(a, b):
        return ls.linear_solve(ls.MatrixOperator(a), b, ls.QR()).value

    with jax.numpy_dtype_promotion("strict"):
        x = jax.jit(run)(a, b)
        g = jax.jit(jax.grad(lambda a: _loss(run(a, b))))(a)
        xw = jax.jit(run)(a.T, b[:4])
        gw = jax.jit(jax.grad(lambda a: _loss(run(a.T, b[:4]))))(a)
    np.testing.assert_allclose(x, np.linalg.lstsq(a, b, rcond=None)[0], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(xw, np.linalg.lstsq(a.T, b[:4], rcond=None)[0], rtol=1e-3, atol=1e-4)
    assert np.all(np.isfinite(g)) and np.all(np.isfinite(gw))


@pytest.mark.parametrize(
    "dtype", [np.float64, np.complex128, np.float32], ids=lambda d: np.dtype(d).name
)
def test_sparse_cholesky_selected_inverse_and_logdet(dtype):
    a = _matrix(dtype, "spd")
    a = np.where(np.abs(np.subtract.outer(np.arange(N), np.arange(N))) <= 1, a, 0)
    a = a + N * np.eye(N, dtype=dtype)
    csc = sp.csc_matrix(np.tril(a))
    b = _vector(dtype)

    def op(v):
        return ls.SparseOperator(v, csc.indices, csc.indptr, csc.shape, PSD)

    def run(v, b):
        return ls.linear_solve(op(v), b, ls.SparseCholesky()).value

    with jax.numpy_dtype_promotion("strict"):
        x = jax.jit(run)(csc.data, b)
        g = jax.jit(jax.grad(lambda v: _loss(run(v, b))))(csc.data)
        ld, gld = jax.jit(jax.value_and_grad(lambda v: ls.logdet(op(v))))(csc.data)
        d = jax.jit(lambda v: ls.diag_inverse(op(v)))(csc.data)
        s = jax.jit(lambda v: ls.selected_inverse(op(v)).values)(csc.data)
    rtol = _rtol(dtype)
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=100 * rtol, atol=100 * rtol)
    np.testing.assert_allclose(ld, np.linalg.slogdet(a)[1], rtol=100 * rtol)
    np.testing.assert_allclose(d, np.diagonal(np.linalg.inv(a)), rtol=100 * rtol)
    assert s.dtype == dtype and g.dtype == dtype and gld.dtype == dtype
    assert np.all(np.isfinite(g)) and np.all(np.isfinite(gld))


@pytest.mark.parametrize(
    "dtype", [np.float64, np.complex128, np.float32], ids=lambda d: np.dtype(d).name
)
def test_logdet_slogdet_factorizations(dtype):
    spd, gen = _matrix(dtype, "spd"), _matrix(dtype, "general")
    with jax.numpy_dtype_promotion("strict"):
        ld, g1 = jax.jit(jax.value_and_grad(lambda a: ls.logdet(ls.MatrixOperator(a, PSD))))(spd)
        sign, lad = jax.jit(lambda a: ls.slogdet(ls.MatrixOperator(a)))(gen)
        g2 = jax.jit(jax.grad(lambda a: ls.slogdet(ls.MatrixOperator(a))[1]))(gen)
        c, gc = jax.jit(jax.value_and_grad(lambda a: _loss(ls.cholesky(a)), holomorphic=False))(spd)
        (p, low, up), gl = jax.jit(lambda a: (ls.lu(a), jax.grad(lambda a: _loss(ls.lu(a)[2]))(a)))(
            gen
        )
    rtol = _rtol(dtype)
    np.testing.assert_allclose(ld, np.linalg.slogdet(spd)[1], rtol=100 * rtol)
    np.testing.assert_allclose(lad, np.linalg.slogdet(gen)[1], rtol=100 * rtol)
    assert np.all(np.isfinite(g1)) and np.all(np.isfinite(g2))
    np.testing.assert_allclose(p @ low @ up, gen, rtol=100 * rtol, atol=100 * rtol)
    np.testing.assert_allclose(c, np.sum(np.abs(np.linalg.cholesky(spd)) ** 2), rtol=100 * rtol)
    assert np.all(np.isfinite(gc)) and np.all(np.isfinite(gl))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=lambda d: np.dtype(d).name)
def test_eigh(dtype):  # real only, as eigh and lobpcg are
    a = _matrix(dtype, "spd")
    tags = SYM
    with jax.numpy_dtype_promotion("strict"):
        w = jax.jit(lambda a: ls.eigh(ls.MatrixOperator(a, tags)).eigenvalues)(a)
        g = jax.jit(
            jax.grad(lambda a: jnp.sum(ls.eigh(ls.MatrixOperator(a, tags)).eigenvalues[:2]))
        )(a)
        wb = jax.jit(
            lambda a: ls.eigh(ls.MatrixOperator(a, tags), ls.MatrixOperator(a, PSD)).eigenvalues
        )(a)
    np.testing.assert_allclose(w, np.linalg.eigvalsh(a), rtol=100 * _rtol(dtype))
    np.testing.assert_allclose(wb, np.ones(N), rtol=100 * _rtol(dtype))
    assert np.all(np.isfinite(g))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=lambda d: np.dtype(d).name)
def test_lobpcg(dtype):
    a = _matrix(dtype, "spd")
    bdiag = (1.0 + np.arange(N) / N).astype(dtype)
    pre = (1 / np.diagonal(a)).astype(dtype)

    def run(a):
        out = ls.lobpcg(
            ls.MatrixOperator(a, SYM),
            2,
            B=ls.DiagonalOperator(bdiag, PSD),
            preconditioner=ls.DiagonalOperator(pre, PSD),
            max_steps=200,
        )
        return out.eigenvalues

    with jax.numpy_dtype_promotion("strict"):
        w = jax.jit(run)(a)
        g = jax.jit(jax.grad(lambda a: jnp.sum(run(a))))(a)
    d = np.diag(1 / np.sqrt(bdiag))
    np.testing.assert_allclose(w, np.linalg.eigvalsh(d @ a @ d)[:2], rtol=100 * _rtol(dtype))
    assert np.all(np.isfinite(g))


@pytest.mark.parametrize("dtype", [np.float64, np.complex128], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", ["LU", "Cholesky", "CG", "GMRES", "MINRES", "BiCGStab"])
def test_through_lineax(name, dtype):
    solver, kind, real_tags, complex_tags = SOLVERS[name]
    tags = complex_tags if np.issubdtype(dtype, np.complexfloating) else real_tags
    a, b = _matrix(dtype, kind), _vector(dtype)

    def run(a, b):
        op = ls.to_lineax(ls.MatrixOperator(a, tags))
        return lx.linear_solve(op, b, ls.as_lineax_solver(solver)).value

    with jax.numpy_dtype_promotion("strict"):
        x = jax.jit(run)(a, b)
        g = jax.jit(jax.grad(lambda a: _loss(run(a, b))))(a)
    dense = np.asarray(ls.MatrixOperator(a, tags).as_matrix())
    np.testing.assert_allclose(x, np.linalg.solve(dense, b), rtol=1e-6, atol=1e-8)
    assert np.all(np.isfinite(g))


@pytest.mark.parametrize("dtype", [np.float64, np.complex128], ids=lambda d: np.dtype(d).name)
def test_operator_algebra(dtype):
    a, b = _matrix(dtype, "general"), _vector(dtype)
    with jax.numpy_dtype_promotion("strict"):
        op = ls.MatrixOperator(a)
        combos = [
            2.0 * op,
            op / 3.0,
            -op,
            op + op,
            op - ls.IdentityOperator(N, dtype),
            op.T @ op,
            ls.DiagonalOperator(b) @ op,
            ls.FunctionOperator(lambda x: a @ x, b).T,
        ]
        for c in combos:
            y = c.mv(b)
            assert y.dtype == dtype
            np.testing.assert_allclose(c.as_matrix() @ b, y, rtol=1e-10)
            np.testing.assert_allclose(c.rmv(b), c.as_matrix().T @ b, rtol=1e-10)
