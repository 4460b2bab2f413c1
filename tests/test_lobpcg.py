"""lobpcg and eigh: eigenpairs vs dense references, and their derivatives.

References: `numpy.linalg.eigh` (generalized problems through the Cholesky transform
`L⁻¹ A L⁻ᵀ`) for values and vectors, JAX's own differentiation of a dense `jnp.linalg.eigh`
for gradients and JVPs, and central finite differences on every stored entry (with garbage
in the unread upper triangle, whose gradient must be exactly zero).

Every loss is invariant to the sign of each eigenvector. Compilations dominate the run
time, so each jitted function is built once per module and reused.
"""

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import lineax as lx  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.linalg as sla  # noqa: E402
from helpers import fd_grad  # noqa: E402
from jax.experimental import sparse as jsparse  # noqa: E402

import linsolve as ls  # noqa: E402


SYM, PSD = ls.symmetric_tag, ls.positive_semidefinite_tag
rng = np.random.default_rng(0)
TOL = 1e-13  # tight, so that finite differences of the forward pass are clean


def _sym(n):
    a = rng.standard_normal((n, n))
    return a + a.T


def _spd(n):
    a = rng.standard_normal((n, n))
    return a @ a.T / n + np.eye(n)


def _garbage(a):
    """`a` with its (unread) strict upper triangle overwritten."""
    a = np.array(a, copy=True)
    iu = np.triu_indices(a.shape[0], 1)
    a[iu] = 1e3 * rng.standard_normal(len(iu[0]))
    return a


def _full(stored):
    low = np.tril(stored)
    return low + np.tril(low, -1).T


def _as_sym(a):
    """The matrix a symmetric-tagged stored array defines (its lower triangle)."""
    return ls.MatrixOperator(a, SYM).as_matrix()


def _dense_reference(a, b, k, largest):
    """k extreme eigenpairs of (a, b) through JAX's dense eigh (differentiable)."""
    if b is None:
        w, v = jnp.linalg.eigh(a)
    else:
        chol = jnp.linalg.cholesky(b)
        c = jax.scipy.linalg.solve_triangular(chol, a, lower=True)
        c = jax.scipy.linalg.solve_triangular(chol, c.T, lower=True)
        w, y = jnp.linalg.eigh(c)
        v = jax.scipy.linalg.solve_triangular(chol.T, y, lower=False)
    if largest:
        return w[::-1][:k], v[:, ::-1][:, :k]
    return w[:k], v[:, :k]


def _assert_same_vectors(v, ref, atol=1e-9):
    """Columns equal up to sign."""
    v, ref = np.asarray(v), np.asarray(ref)
    signs = np.sign(np.sum(v * ref, axis=0))
    np.testing.assert_allclose(v * signs, ref, atol=atol)


G = rng.standard_normal(30)


def _loss(values, vectors):
    """Sign-invariant, depends on every eigenvalue and eigenvector."""
    n, k = vectors.shape
    weights = jnp.arange(1.0, k + 1)
    return jnp.sum(weights * values) + jnp.sum(weights * (G[:n] @ vectors) ** 2)


# --- Forward ----------------------------------------------------------------------


def test_standard_vs_dense_lineax_input_and_raise():
    n, k = 30, 4
    a = _sym(n)

    # max_steps is traced: the same compiled function converges, and raises with 2 steps.
    def run(a, steps):
        return ls.lobpcg(lx.MatrixLinearOperator(a, lx.symmetric_tag), k, tol=TOL, max_steps=steps)

    f = jax.jit(run)
    out = f(a, 1000)
    w, v = np.linalg.eigh(a)
    assert out.result == ls.RESULTS.successful
    np.testing.assert_allclose(out.eigenvalues, w[:k], rtol=1e-12, atol=1e-12)
    _assert_same_vectors(out.eigenvectors, v[:, :k])
    np.testing.assert_allclose(out.eigenvectors.T @ out.eigenvectors, np.eye(k), atol=1e-13)
    assert np.all(np.asarray(out.stats["backward_error"]) <= TOL)
    assert out.stats["residual_norm"].shape == (k,)
    assert 0 < int(out.stats["num_steps"]) < 200
    with pytest.raises(Exception, match="did not converge"):
        jax.block_until_ready(f(a, 2))


def test_nonconvergence_gives_result_code():
    run = jax.jit(lambda a: ls.lobpcg(ls.MatrixOperator(a, SYM), 3, max_steps=2, throw=False))
    out = run(_sym(30))
    assert out.result == ls.RESULTS.max_steps_reached
    assert int(out.stats["num_steps"]) == 2
    assert np.all(np.isfinite(out.eigenvalues))


def test_input_errors():
    a = _sym(6)
    with pytest.raises(ValueError, match="symmetric"):
        ls.lobpcg(ls.MatrixOperator(a), 2)
    with pytest.raises(ValueError, match="k <= n"):
        ls.lobpcg(ls.MatrixOperator(a, SYM), 7)
    with pytest.raises(ValueError, match="X0"):
        ls.lobpcg(ls.MatrixOperator(a, SYM), 3, X0=np.ones((6, 2)))
    with pytest.raises(ValueError, match="shape"):
        ls.lobpcg(ls.MatrixOperator(a, SYM), 2, B=ls.MatrixOperator(np.eye(5), PSD))
    with pytest.raises(TypeError, match="Krylov"):
        ls.lobpcg(ls.MatrixOperator(a, SYM), 2, adjoint_solver=ls.Cholesky())


# --- Derivatives ------------------------------------------------------------------


N_FD, K_FD = 8, 2


def _lobpcg_loss(a_stored, b_stored, largest=False, **kwargs):
    out = ls.lobpcg(
        ls.MatrixOperator(a_stored, SYM),
        K_FD,
        B=ls.MatrixOperator(b_stored, PSD),
        largest=largest,
        tol=TOL,
        **kwargs,
    )
    return _loss(out.eigenvalues, out.eigenvectors), (out.eigenvalues, out.eigenvectors)


def _dense_loss(a_stored, b_stored, largest=False):
    a = ls.MatrixOperator(a_stored, SYM).as_matrix()
    b = ls.MatrixOperator(b_stored, PSD).as_matrix()
    return _loss(*_dense_reference(a, b, K_FD, largest))


@pytest.mark.parametrize("largest", [False, True])
def test_generalized_vs_dense_gradients_and_fd(largest):
    """Eigenpairs of (A, B) vs the Cholesky transform; gradients w.r.t. the stored A and
    B (garbage in the unread upper triangles) vs dense eigh and finite differences."""
    a, b = _garbage(_sym(N_FD)), _garbage(_spd(N_FD))
    loss = lambda a, b: _lobpcg_loss(a, b, largest)  # noqa: E731
    vg = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    (value, (w, v)), (ga, gb) = vg(a, b)
    ga, gb = np.asarray(ga), np.asarray(gb)

    af, bf = _full(a), _full(b)
    chol = np.linalg.cholesky(bf)
    c = sla.solve_triangular(chol, sla.solve_triangular(chol, af, lower=True).T, lower=True)
    rw, ry = np.linalg.eigh(c)
    rv = sla.solve_triangular(chol.T, ry, lower=False)
    if largest:
        rw, rv = rw[::-1], rv[:, ::-1]
    np.testing.assert_allclose(w, rw[:K_FD], rtol=1e-12)
    _assert_same_vectors(v, rv[:, :K_FD])
    np.testing.assert_allclose(np.asarray(v).T @ bf @ np.asarray(v), np.eye(K_FD), atol=1e-13)

    ref_value, (ra, rb) = jax.jit(
        jax.value_and_grad(lambda a, b: _dense_loss(a, b, largest), argnums=(0, 1))
    )(a, b)
    np.testing.assert_allclose(value, ref_value, rtol=1e-12)
    np.testing.assert_allclose(ga, ra, atol=1e-9)
    np.testing.assert_allclose(gb, rb, atol=1e-9)
    iu = np.triu_indices(N_FD, 1)
    assert np.all(ga[iu] == 0) and np.all(gb[iu] == 0)
    f = lambda a, b: vg(a, b)[0][0]  # noqa: E731
    np.testing.assert_allclose(ga, fd_grad(lambda a: f(a, b), a, 1e-5), atol=1e-6)
    np.testing.assert_allclose(gb, fd_grad(lambda b: f(a, b), b, 1e-5), atol=1e-6)


def test_jvp_vs_dense():
    a, b = _sym(N_FD), _spd(N_FD)
    da, db = _sym(N_FD), _sym(N_FD)

    def pairs(a, b):
        out = ls.lobpcg(ls.MatrixOperator(a, SYM), K_FD, B=ls.MatrixOperator(b, PSD), tol=TOL)
        return out.eigenvalues, out.eigenvectors

    (w, v), (dw, dv) = jax.jit(lambda *x: jax.jvp(pairs, (a, b), x))(da, db)
    (rw, rv), (rdw, rdv) = jax.jit(
        lambda *x: jax.jvp(lambda a, b: _dense_reference(a, b, K_FD, False), (a, b), x)
    )(da, db)
    signs = np.sign(np.sum(np.asarray(v) * np.asarray(rv), axis=0))
    np.testing.assert_allclose(dw, rdw, atol=1e-10)
    np.testing.assert_allclose(np.asarray(dv) * signs, rdv, atol=1e-9)


def test_hessian_vector_product_vs_dense():
    """Second order (forward over reverse): the derivative rule is itself differentiable."""
    a = _sym(N_FD)
    da = _sym(N_FD)

    def loss(a):
        out = ls.lobpcg(ls.MatrixOperator(a, SYM), K_FD, tol=TOL)
        return _loss(out.eigenvalues, out.eigenvectors)

    def ref(a):
        return _loss(*_dense_reference(_as_sym(a), None, K_FD, False))

    hvp = jax.jit(lambda a, da: jax.jvp(jax.grad(loss), (a,), (da,))[1])(a, da)
    ref_hvp = jax.jit(lambda a, da: jax.jvp(jax.grad(ref), (a,), (da,))[1])(a, da)
    np.testing.assert_allclose(hvp, ref_hvp, atol=1e-8)


def test_reference_case_sum_abs_of_spectral_part():
    """A = randn(10, 10), S = A Aᵀ, k = 3 largest, loss = Σ|V diag(e) Vᵀ|: the gradient
    w.r.t. A matches dense eigh's to 1e-8."""
    a = np.random.default_rng(42).standard_normal((10, 10))

    def loss(a, eig):
        values, vectors = eig(a @ a.T)
        return jnp.sum(jnp.abs(vectors @ jnp.diag(values) @ vectors.T)), values

    def with_lobpcg(s):
        out = ls.lobpcg(ls.MatrixOperator(s, SYM), 3, largest=True, tol=TOL)
        return out.eigenvalues, out.eigenvectors

    g, values = jax.jit(jax.grad(lambda a: loss(a, with_lobpcg), has_aux=True))(a)
    ref = jax.jit(jax.grad(lambda a: loss(a, lambda s: _dense_reference(s, None, 3, True))[0]))(a)
    np.testing.assert_allclose(values, np.linalg.eigvalsh(a @ a.T)[::-1][:3], rtol=1e-12)
    np.testing.assert_allclose(g, ref, atol=1e-8, rtol=0)


def test_preconditioner_and_zero_derivatives_of_x0_and_preconditioner():
    """A (Jacobi) preconditioner speeds up the forward iteration and, projected, the
    backward CG; the gradient is unchanged, and X0 and the preconditioner get exactly
    zero gradient."""
    n, k = 16, 2
    a = _laplacian_1d(n) + np.diag(np.linspace(0, 30, n))
    x0 = rng.standard_normal((n, 3))

    def loss(a, x0, p):
        pre = ls.DiagonalOperator(p)
        out = ls.lobpcg(ls.MatrixOperator(a, SYM), k, X0=x0, tol=TOL, preconditioner=pre)
        return _loss(out.eigenvalues, out.eigenvectors)

    ga, gx, gp = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(a, x0, 1 / np.diag(a))
    ref = jax.jit(jax.grad(lambda a: _loss(*_dense_reference(_as_sym(a), None, k, False))))(a)
    np.testing.assert_allclose(ga, ref, atol=1e-9)
    assert np.all(gx == 0) and np.all(gp == 0)


def test_vmap_value_and_grad_with_minres_adjoint():
    batch = np.stack([_sym(12) for _ in range(3)])

    def loss(a):
        out = ls.lobpcg(ls.MatrixOperator(a, SYM), 3, tol=TOL, adjoint_solver=ls.MINRES())
        return _loss(out.eigenvalues, out.eigenvectors), out.eigenvalues

    (_, values), grads = jax.jit(jax.vmap(jax.value_and_grad(loss, has_aux=True)))(batch)
    np.testing.assert_allclose(values, np.linalg.eigh(batch)[0][:, :3], rtol=1e-12, atol=1e-12)
    ref = jax.jit(
        jax.vmap(jax.grad(lambda a: _loss(*_dense_reference(_as_sym(a), None, 3, False))))
    )(batch)
    np.testing.assert_allclose(grads, ref, atol=1e-9)


def _laplacian_1d(n):
    return 2 * np.eye(n) - np.eye(n, k=1) - np.eye(n, k=-1)


def test_matrix_free_and_sparse_inputs():
    """The same problem as a BCOO matvec in a FunctionOperator and as a SparseOperator
    (lower triangle stored): same eigenpairs, and the same gradient w.r.t. the stored
    values as the dense problem. The BCOO values are those of the lower triangle,
    mirrored, so that every perturbation keeps the operator symmetric."""
    n, k = 24, 3
    dense = _laplacian_1d(n) + np.diag(rng.uniform(0, 1, n))
    rows, cols = np.nonzero(np.tril(dense))
    values = dense[rows, cols]
    off = rows != cols
    both = np.concatenate([np.stack([rows, cols], 1), np.stack([cols[off], rows[off]], 1)])

    def bcoo_loss(vals):
        mat = jsparse.BCOO((jnp.concatenate([vals, vals[off]]), both), shape=(n, n))
        op = ls.FunctionOperator(lambda x: mat @ x, np.zeros(n), SYM)
        out = ls.lobpcg(op, k, tol=TOL)
        return _loss(out.eigenvalues, out.eigenvectors)

    def dense_loss(vals):
        mat = jnp.zeros((n, n)).at[rows, cols].set(vals)
        return _loss(*_dense_reference(ls.MatrixOperator(mat, SYM).as_matrix(), None, k, False))

    value, grad = jax.jit(jax.value_and_grad(bcoo_loss))(values)
    ref_value, ref_grad = jax.jit(jax.value_and_grad(dense_loss))(values)
    np.testing.assert_allclose(value, ref_value, rtol=1e-12)
    np.testing.assert_allclose(grad, ref_grad, atol=1e-9)

    if hasattr(ls, "SparseOperator"):
        import scipy.sparse as sp

        # Lower triangle stored, CSC order; gradient w.r.t. the stored values.
        low = sp.csc_matrix(np.tril(dense))
        low.sort_indices()
        csc_rows = low.indices
        csc_cols = np.repeat(np.arange(n), np.diff(low.indptr))

        def sparse_loss(vals):
            op = ls.SparseOperator(vals, low.indices, low.indptr, (n, n), tags=SYM)
            out = ls.lobpcg(op, k, tol=TOL)
            return _loss(out.eigenvalues, out.eigenvectors), out

        (value, out), grad = jax.jit(jax.value_and_grad(sparse_loss, has_aux=True))(low.data)
        w, v = np.linalg.eigh(dense)
        np.testing.assert_allclose(out.eigenvalues, w[:k], rtol=1e-12)
        _assert_same_vectors(out.eigenvectors, v[:, :k])
        # The same entries of the dense problem, in CSC order.
        ref_by_entry = dict(zip(zip(rows, cols), np.asarray(ref_grad)))
        expected = np.array([ref_by_entry[(r, c)] for r, c in zip(csc_rows, csc_cols)])
        np.testing.assert_allclose(grad, expected, atol=1e-9)


# --- Degenerate spectra -----------------------------------------------------------


def _degenerate(n=10):
    """Eigenvalues 1, 1, 1, 2, 3, 3, ...: a triple inside k = 4 (and a double above)."""
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    w = np.array([1.0, 1.0, 1.0, 2.0, 3.0, 3.0] + list(np.linspace(4, 6, n - 6)))
    return q @ np.diag(w) @ q.T


def _invariant_loss(values, vectors, c):
    """Invariant to the basis of the triple: eigenvalue sum, projectors on all k and on
    the triple."""
    projector = vectors @ vectors.T
    triple = vectors[:, :3] @ vectors[:, :3].T
    return jnp.sum(values) + jnp.sum(jnp.sin(projector @ c)) + jnp.sum(triple * c)


def test_degenerate_invariant_losses():
    """A triple eigenvalue inside k: finite gradients of basis-invariant losses, equal to
    finite differences on the stored lower triangle and to `ls.eigh`'s (whose rule masks
    the degenerate pairs the same way; `jnp.linalg.eigh`'s would divide by zero)."""
    stored = _garbage(_degenerate())
    c = rng.standard_normal((10, 10))
    k = 4

    def loss(a_stored):
        out = ls.lobpcg(ls.MatrixOperator(a_stored, SYM), k, tol=TOL)
        return _invariant_loss(out.eigenvalues, out.eigenvectors, c)

    def loss_eigh(a_stored):
        out = ls.eigh(ls.MatrixOperator(a_stored, SYM))
        return _invariant_loss(out.eigenvalues[:k], out.eigenvectors[:, :k], c)

    vg = jax.jit(jax.value_and_grad(loss))
    g = np.asarray(vg(stored)[1])
    assert np.all(np.isfinite(g))
    assert np.all(g[np.triu_indices(10, 1)] == 0)
    np.testing.assert_allclose(g, fd_grad(lambda a: vg(a)[0], stored, 1e-5), atol=1e-6)
    np.testing.assert_allclose(g, jax.jit(jax.grad(loss_eigh))(stored), atol=1e-8)


def test_degenerate_generalized_projector():
    """With B: the B-orthogonal projector U Uᵀ B onto a degenerate eigenspace."""
    n, k = 8, 3
    b = _spd(n)
    chol = np.linalg.cholesky(b)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    c_mat = q @ np.diag([1.0, 1.0, 1.0, 2.5, 3, 4, 5, 6]) @ q.T
    a = chol @ c_mat @ chol.T  # pencil eigenvalues: those of c_mat
    c = rng.standard_normal((n, n))

    def loss(a, b):
        out = ls.lobpcg(ls.MatrixOperator(a, SYM), k, B=ls.MatrixOperator(b, PSD), tol=TOL)
        u = out.eigenvectors
        b_full = ls.MatrixOperator(b, PSD).as_matrix()
        return jnp.sum(out.eigenvalues**2) + jnp.sum((u @ u.T @ b_full) * c)

    vg = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    ga, gb = vg(a, b)[1]
    assert np.all(np.isfinite(ga)) and np.all(np.isfinite(gb))
    np.testing.assert_allclose(ga, fd_grad(lambda a: vg(a, b)[0], a, 1e-5), atol=1e-6)
    np.testing.assert_allclose(gb, fd_grad(lambda b: vg(a, b)[0], b, 1e-5), atol=1e-6)


def test_float32_smoke():
    """float32 in, float32 out: eigenpairs to float32 accuracy (default tol) and a
    gradient close to the float64 dense one."""
    a64 = _sym(12)
    a = a64.astype(np.float32)

    def loss(a):
        out = ls.lobpcg(ls.MatrixOperator(a, SYM), 2, largest=True)
        return jnp.sum(out.eigenvalues) + jnp.sum(
            (G[:12].astype(a.dtype) @ out.eigenvectors) ** 2
        ), out

    (_, out), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(a)
    assert out.eigenvalues.dtype == out.eigenvectors.dtype == g.dtype == jnp.float32
    assert out.result == ls.RESULTS.successful
    w, v = np.linalg.eigh(a64)
    np.testing.assert_allclose(out.eigenvalues, w[::-1][:2], rtol=1e-5)
    _assert_same_vectors(out.eigenvectors, v[:, ::-1][:, :2], atol=1e-3)
    ref = jax.grad(lambda a: _float32_reference_loss(a))(a64)
    np.testing.assert_allclose(g, ref, atol=1e-4 * np.max(np.abs(ref)))


def _float32_reference_loss(a):
    w, v = _dense_reference(_as_sym(a), None, 2, True)
    return jnp.sum(w) + jnp.sum((G[:12] @ v) ** 2)


# --- Dense eigh -------------------------------------------------------------------


def test_eigh_structure_convention_and_generalized():
    n = 7
    a_stored, b_stored = _garbage(_sym(n)), _garbage(_spd(n))

    def loss(a, b):
        out = ls.eigh(ls.MatrixOperator(a, SYM), B=ls.MatrixOperator(b, PSD))
        return _loss(out.eigenvalues[:3], out.eigenvectors[:, :3]), out

    def ref_loss(a, b):
        a = _as_sym(a)
        b = ls.MatrixOperator(b, PSD).as_matrix()
        return _loss(*_dense_reference(a, b, 3, False))

    vg = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    (_, out), (ga, gb) = vg(a_stored, b_stored)
    a, b = _full(a_stored), _full(b_stored)
    np.testing.assert_allclose(out.eigenvalues, sla.eigh(a, b, eigvals_only=True), rtol=1e-12)
    assert out.result == ls.RESULTS.successful
    vec = np.asarray(out.eigenvectors)
    np.testing.assert_allclose(vec.T @ b @ vec, np.eye(n), atol=1e-12)
    np.testing.assert_allclose(a @ vec, b @ vec * np.asarray(out.eigenvalues), atol=1e-11)
    ra, rb = jax.jit(jax.grad(ref_loss, argnums=(0, 1)))(a_stored, b_stored)
    np.testing.assert_allclose(ga, ra, atol=1e-10)
    np.testing.assert_allclose(gb, rb, atol=1e-10)
    iu = np.triu_indices(n, 1)
    assert np.all(np.asarray(ga)[iu] == 0) and np.all(np.asarray(gb)[iu] == 0)
