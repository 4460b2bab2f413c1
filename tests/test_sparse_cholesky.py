"""SparseCholesky, sparse logdet, selected_inverse and diag_inverse through the public API."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from helpers import assert_grad_matches_fd
from jax.test_util import check_grads

import linsolve as ls


PSD = ls.positive_semidefinite_tag


def laplacian_2d(k, shift=1.0):
    t = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(k, k))
    return (sp.kron(sp.eye(k), t) + sp.kron(t, sp.eye(k)) + shift * sp.eye(k * k)).tocsc()


A = laplacian_2d(5)
DENSE = A.toarray()


def _op(values, template):
    p = template.pattern
    return ls.SparseOperator(values, p.indices, p.indptr, p.shape, PSD)


def test_solve_logdet_inverse_match_dense():
    for stored in (sp.tril(A), A):  # lower-only and full symmetric storage
        op = ls.SparseOperator.from_scipy(stored, PSD)
        assert isinstance(ls.AutoSolver().select(op), ls.SparseCholesky)
        b = np.arange(25.0).reshape(25, 1) * np.ones((1, 2))
        # (jitted: eager sparse code dispatches one op at a time, seconds per call)
        solve, logdet, diag_inverse, selected_inverse = map(
            eqx.filter_jit, (ls.linear_solve, ls.logdet, ls.diag_inverse, ls.selected_inverse)
        )
        np.testing.assert_allclose(solve(op, b).value, np.linalg.solve(DENSE, b), atol=1e-12)
        np.testing.assert_allclose(logdet(op), np.linalg.slogdet(DENSE)[1], rtol=1e-12)
        inv = np.linalg.inv(DENSE)
        np.testing.assert_allclose(diag_inverse(op), np.diag(inv), atol=1e-12)
        sel = selected_inverse(op)
        r, c = sel.pattern.rows, sel.pattern.cols
        np.testing.assert_allclose(sel.values, inv[r, c], atol=1e-12)
        assert np.all(r >= c)


def test_gradients_wrt_stored_values():
    op = ls.SparseOperator.from_scipy(A, PSD)  # full storage: upper entries are not read
    upper = op.pattern.rows < op.pattern.cols
    b = jnp.linspace(-1, 1, 25)
    losses = {
        "solve": lambda v: jnp.sum(jnp.sin(ls.linear_solve(_op(v, op), b).value)),
        "logdet": lambda v: ls.logdet(_op(v, op)),
        "diag_inverse": lambda v: jnp.sum(ls.diag_inverse(_op(v, op)) ** 2),
    }
    for name, f in losses.items():
        g = assert_grad_matches_fd(jax.jit(f), np.asarray(op.values), rtol=1e-6, atol=1e-8)
        assert np.all(g[upper] == 0), name
    logdet = jax.jit(lambda v: ls.logdet(_op(v, op)))
    check_grads(logdet, (op.values,), order=2, modes=["fwd", "rev"])
    solve = jax.jit(lambda v: ls.linear_solve(_op(v, op), b).value)
    check_grads(solve, (op.values,), order=1, modes=["fwd", "rev"])


def test_vmap_over_values_and_non_pd():
    op = ls.SparseOperator.from_scipy(sp.tril(A), PSD)
    batch = jnp.stack([op.values, 2 * op.values])
    out = jax.jit(jax.vmap(lambda v: ls.logdet(_op(v, op))))(batch)
    np.testing.assert_allclose(out, [np.linalg.slogdet(s * DENSE)[1] for s in (1, 2)], rtol=1e-12)
    xs = eqx.filter_jit(jax.vmap(lambda v: ls.linear_solve(_op(v, op), jnp.ones(25)).value))(batch)
    np.testing.assert_allclose(xs[1], np.linalg.solve(2 * DENSE, np.ones(25)), atol=1e-12)
    bad = ls.SparseOperator.from_scipy(sp.tril(A) - 10 * sp.eye(25), PSD)
    solve = eqx.filter_jit(ls.linear_solve)
    assert solve(bad, jnp.ones(25), throw=False).result == ls.RESULTS.not_positive_definite
    f32 = ls.SparseOperator.from_scipy(sp.tril(A).astype(np.float32), PSD)
    x32 = solve(f32, jnp.ones(25, jnp.float32)).value
    assert x32.dtype == jnp.float32
    np.testing.assert_allclose(x32, np.linalg.solve(DENSE, np.ones(25)), rtol=1e-4)


def test_orderings_agree_and_bad_ordering_is_named():
    op = ls.SparseOperator.from_scipy(sp.tril(A), PSD)
    b = jnp.linspace(-1, 1, 25)
    expect = np.linalg.solve(DENSE, np.asarray(b))
    for ordering in ("auto", "metis", "amd", "rcm", "natural"):
        solver = ls.SparseCholesky(ordering=ordering)
        x = eqx.filter_jit(ls.linear_solve)(op, b, solver).value
        np.testing.assert_allclose(x, expect, rtol=1e-10, atol=1e-12)
        loss = jax.jit(lambda v: jnp.sum(jnp.sin(ls.linear_solve(_op(v, op), b, solver).value)))
        assert_grad_matches_fd(loss, np.asarray(op.values), rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="ordering"):
        ls.SparseCholesky(ordering="colamd")


def _hermitian_case(dtype=np.complex128, seed=0):
    """A complex hermitian positive definite 2-D Laplacian-like matrix stored in full, with
    garbage in the (unread) strict upper triangle and in the imaginary part of the
    diagonal; and the dense matrix it stands for (lower triangle + its conjugate)."""
    rng = np.random.default_rng(seed)
    full = sp.csc_matrix(A, dtype=dtype)
    full.sort_indices()
    col = np.repeat(np.arange(25), np.diff(full.indptr))
    row = full.indices
    data = full.data.copy()
    lower = row > col
    data[lower] += 0.3 * (rng.standard_normal(lower.sum()) + 1j * rng.standard_normal(lower.sum()))
    data[row < col] = rng.standard_normal((row < col).sum()) * (5 + 7j)  # garbage, unread
    data[row == col] += 2 + 3j * rng.standard_normal(25)  # imaginary part unread
    low = np.zeros((25, 25), dtype)
    keep = row >= col
    low[row[keep], col[keep]] = data[keep]
    dense = np.tril(low, -1) + np.tril(low, -1).conj().T + np.diag(low.diagonal().real)
    op = ls.SparseOperator(jnp.asarray(data), row, full.indptr, (25, 25), PSD)
    return op, dense


def test_complex_hermitian_solve_logdet_inverse():
    op, dense = _hermitian_case()
    assert np.all(np.linalg.eigvalsh(dense) > 0)
    assert isinstance(ls.AutoSolver().select(op, direct=True), ls.SparseCholesky)
    b = jnp.asarray(np.linspace(-1, 1, 25) + 0.5j * np.cos(np.arange(25)))
    x = eqx.filter_jit(ls.linear_solve)(op, b).value
    np.testing.assert_allclose(x, np.linalg.solve(dense, np.asarray(b)), rtol=1e-10, atol=1e-12)
    ld = jax.jit(lambda v: ls.logdet(_op(v, op)))(op.values)
    assert not jnp.iscomplexobj(ld)
    np.testing.assert_allclose(ld, np.linalg.slogdet(dense)[1], rtol=1e-12)
    inv = np.linalg.inv(dense)
    d = jax.jit(lambda v: ls.diag_inverse(_op(v, op)))(op.values)
    np.testing.assert_allclose(d, np.diagonal(inv), rtol=1e-10, atol=1e-12)
    zop = eqx.filter_jit(ls.selected_inverse)(op)
    assert ls.hermitian_tag in zop.tags
    z = zop.to_scipy().toarray()
    nz = z != 0
    np.testing.assert_allclose(z[nz], np.tril(inv)[nz], rtol=1e-10, atol=1e-12)
    # complex64 runs too
    op32, dense32 = _hermitian_case(np.complex64)
    x32 = eqx.filter_jit(ls.linear_solve)(op32, b.astype(jnp.complex64)).value
    assert x32.dtype == jnp.complex64
    np.testing.assert_allclose(x32, np.linalg.solve(dense32, np.asarray(b)), rtol=1e-4, atol=1e-4)


def test_complex_hermitian_gradients_match_finite_differences():
    op, _ = _hermitian_case(seed=1)
    upper = op.pattern.rows < op.pattern.cols
    diag = op.pattern.rows == op.pattern.cols
    b = jnp.asarray(np.linspace(-1, 1, 25) + 0.5j * np.sin(np.arange(25)))
    c = jnp.asarray(np.cos(np.arange(25)) - 0.2j)
    losses = {
        "solve": lambda v: jnp.real(jnp.vdot(c, ls.linear_solve(_op(v, op), b).value)),
        "logdet": lambda v: ls.logdet(_op(v, op)),
        "diag_inverse": lambda v: jnp.sum(jnp.real(ls.diag_inverse(_op(v, op))) ** 2),
    }
    for name, f in losses.items():
        check_grads(jax.jit(f), (op.values,), order=1, modes=["fwd", "rev"])
        g = jax.jit(jax.grad(f))(op.values)
        assert np.all(g[upper] == 0), name  # unread: exactly zero
        assert np.all(np.imag(g[diag]) == 0), name  # imaginary part of the diagonal unread
    check_grads(jax.jit(losses["logdet"]), (op.values,), order=2, modes=["fwd", "rev"])


def test_selected_inverse_derivatives_second_order():
    """diag_inverse / selected_inverse at first and second order in both modes (each mode
    of each mode), with garbage in the unread upper triangle, and under vmap."""
    rng = np.random.default_rng(3)
    full = sp.csc_matrix(A + sp.diags(rng.random(25)))
    full.sort_indices()
    col = np.repeat(np.arange(25), np.diff(full.indptr))
    data = full.data.copy()
    upper = full.indices < col
    data[upper] = 10 * rng.standard_normal(upper.sum())  # unread
    op = ls.SparseOperator(jnp.asarray(data), full.indices, full.indptr, (25, 25), PSD)
    c = jnp.asarray(rng.standard_normal(25))
    marg = jax.jit(lambda v: jnp.sum(c * ls.diag_inverse(_op(v, op)) ** 2))
    sel = jax.jit(lambda v: jnp.sum(jnp.sin(ls.selected_inverse(_op(v, op)).values)))
    for f in (marg, sel):
        check_grads(f, (op.values,), order=2, modes=["fwd", "rev"])
        g = jax.grad(f)(op.values)
        assert np.all(np.asarray(g)[upper] == 0)
    # vmap over a batch of values
    batch = jnp.stack([op.values, op.values * 1.5])
    gb = jax.jit(jax.vmap(jax.grad(marg)))(batch)
    np.testing.assert_allclose(gb[1], jax.grad(marg)(batch[1]), rtol=1e-10, atol=1e-12)


def _dense_of(values, op):
    """The matrix `values` stand for under the structure convention: lower triangle read,
    upper mirrored (conjugated for complex), imaginary part of the diagonal dropped."""
    r, c = np.asarray(op.pattern.rows), np.asarray(op.pattern.cols)
    v = np.asarray(values)
    low = np.zeros(op.shape, v.dtype)
    keep = r >= c
    np.add.at(low, (r[keep], c[keep]), v[keep])
    return np.tril(low, -1) + np.tril(low, -1).conj().T + np.diag(low.diagonal().real)


def _garbage_case(complex_: bool):
    """Real SPD with garbage in the unread upper triangle, or the complex hermitian case
    (garbage in the upper triangle and in the imaginary part of the diagonal)."""
    if complex_:
        return _hermitian_case(seed=2)[0]
    rng = np.random.default_rng(4)
    full = sp.csc_matrix(A + sp.diags(rng.random(25)))
    full.sort_indices()
    col = np.repeat(np.arange(25), np.diff(full.indptr))
    data = full.data.copy()
    data[full.indices < col] = 10 * rng.standard_normal((full.indices < col).sum())
    return ls.SparseOperator(jnp.asarray(data), full.indices, full.indptr, (25, 25), PSD)


@pytest.mark.parametrize("complex_", [False, True])
def test_selected_inverse_derivatives_match_dense_rule(complex_):
    """The JVP of selected_inverse / diag_inverse is -P(Z dA Z) (P: pattern of L), from the
    factor by its own rule; the VJP is its transpose. Batched over tangents and
    cotangents with one shared factor (the rule's vmap with an unbatched factor)."""
    op = _garbage_case(complex_)
    rng = np.random.default_rng(5)
    dv = rng.standard_normal(op.values.shape)
    if complex_:
        dv = dv + 1j * rng.standard_normal(op.values.shape)  # garbage where unread
    z = np.linalg.inv(_dense_of(op.values, op))
    dz = -z @ _dense_of(dv, op) @ z

    diag = lambda u: ls.diag_inverse(_op(u, op))  # noqa: E731
    sel = lambda u: ls.selected_inverse(_op(u, op)).values  # noqa: E731

    @jax.jit
    def derivatives(v, t, ts, cts):
        # batched tangents / cotangents with one (unbatched) factor
        jvp_b = jax.vmap(lambda s: jax.jvp(diag, (v,), (s,))[1])(ts)
        vjp_b = jax.vmap(jax.vjp(diag, v)[1])(cts)[0]
        return jax.jvp(sel, (v,), (t,))[1], jax.jvp(diag, (v,), (t,))[1], jvp_b, vjp_b

    ts = rng.standard_normal((3,) + op.values.shape).astype(dv.dtype)
    cts = rng.standard_normal((2, 25)).astype(dv.dtype)
    if complex_:
        ts = ts + 1j * rng.standard_normal(ts.shape)
        cts = cts + 1j * rng.standard_normal(cts.shape)
    dsel, ddiag, jvp_b, vjp_b = derivatives(op.values, jnp.asarray(dv), ts, cts)
    pattern = eqx.filter_jit(ls.selected_inverse)(op).pattern
    r, c = np.asarray(pattern.rows), np.asarray(pattern.cols)
    np.testing.assert_allclose(dsel, dz[r, c], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ddiag, np.diagonal(dz), rtol=1e-10, atol=1e-12)
    for k in range(3):
        ref = np.diagonal(-z @ _dense_of(ts[k], op) @ z)
        np.testing.assert_allclose(jvp_b[k], ref, rtol=1e-10, atol=1e-12)
        # the VJP is the transpose of the JVP: Re <ct, J t> = Re <vjp(ct), t>
        for j in range(2):
            lhs = np.real(np.sum(cts[j] * np.asarray(jvp_b[k])))
            rhs = np.real(np.sum(np.asarray(vjp_b[j]) * ts[k]))
            np.testing.assert_allclose(lhs, rhs, rtol=1e-10, atol=1e-12)


def test_complex_selected_inverse_derivatives_second_order():
    """Complex hermitian input at second order (each mode of each mode), unread parts
    (upper triangle, Im of the diagonal) exactly without gradient."""
    op = _garbage_case(True)
    upper = op.pattern.rows < op.pattern.cols
    diag = op.pattern.rows == op.pattern.cols
    c = jnp.asarray(np.cos(np.arange(25)))
    marg = jax.jit(lambda v: jnp.sum(c * jnp.real(ls.diag_inverse(_op(v, op))) ** 2))
    check_grads(marg, (op.values,), order=2, modes=["fwd", "rev"])
    with jax.numpy_dtype_promotion("strict"):  # the rule promotes nothing implicitly
        g = jax.jit(jax.grad(marg))(op.values)
    assert np.all(np.asarray(g)[upper] == 0) and np.all(np.imag(np.asarray(g)[diag]) == 0)
    sel = jax.jit(lambda v: jnp.sum(jnp.abs(ls.selected_inverse(_op(v, op)).values) ** 2))
    check_grads(sel, (op.values,), order=1, modes=["fwd", "rev"])


def test_diag_inverse_gradients_cost_one_extra_pass(monkeypatch):
    """The reverse pass of a diag_inverse loss is one application of the rule (no tape of
    the recurrences): one `selinv_sandwich` in the gradient's jaxpr, and XLA's memory for
    value + gradient stays within a small multiple of that of diag_inverse itself (both
    traced: the host kernels' memory is not XLA's)."""
    from helpers import count_primitive

    from linsolve._sparse import host

    monkeypatch.setattr(host, "MODE", "traced")

    op = ls.SparseOperator.from_scipy(laplacian_2d(12), PSD)
    c = jnp.linspace(0.5, 1.5, 144)
    diag = lambda v: ls.diag_inverse(_op(v, op))  # noqa: E731
    loss = lambda v: jnp.sum(c.astype(v.dtype) * diag(v))  # noqa: E731
    vg = jax.value_and_grad(loss)
    assert count_primitive(jax.make_jaxpr(vg)(op.values), "selinv_sandwich") == 1

    def mem(f):
        stats = jax.jit(f).lower(op.values).compile().memory_analysis()
        return stats.temp_size_in_bytes + stats.output_size_in_bytes

    assert mem(vg) <= 3 * mem(diag)
    # float32 keeps its dtype through the rule
    v32 = op.values.astype(jnp.float32)
    val, g32 = jax.jit(vg)(v32)
    assert g32.dtype == jnp.float32
    g64 = jax.jit(jax.grad(loss))(op.values)
    np.testing.assert_allclose(g32, g64, rtol=2e-4, atol=1e-6)
