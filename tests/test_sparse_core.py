"""Array-level sparse Cholesky engine (`linsolve._sparse.{symbolic,numeric,selinv}`) against
dense numpy on small matrices.

Compiling the level-batched numeric phase costs seconds per pattern (XLA compiles every
bucket's kernels), so each pattern is checked through ONE jitted function returning every
quantity, and the transform tests use the smallest patterns that still exercise them.
"""

import jax
import jax.extend.core


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

from linsolve._sparse import host, numeric, selinv, symbolic


# Every test runs on both numeric phases: the host kernels (the CPU default) and the traced
# XLA phase (other backends); tests of the traced phase's internals pin it.
@pytest.fixture(autouse=True, params=["host", "traced"])
def kernels(request, monkeypatch):
    monkeypatch.setattr(host, "MODE", request.param)
    return request.param


@pytest.fixture
def traced(monkeypatch):
    monkeypatch.setattr(host, "MODE", "traced")


# ---------------------------------------------------------------------------------------
# Test matrices (dense SPD arrays; their sparsity pattern is what gets stored)
# ---------------------------------------------------------------------------------------


def lap2d(m: int) -> np.ndarray:
    t = 2 * np.eye(m) - np.eye(m, k=1) - np.eye(m, k=-1)
    return np.kron(t, np.eye(m)) + np.kron(np.eye(m), t) + np.eye(m * m)


def random_spd(n: int, density: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    b = sp.random(n, n, density=density, random_state=rng).toarray()
    a = b + b.T
    return a + np.diag(np.abs(a).sum(1) + 1.0)


def arrow(n: int) -> np.ndarray:
    a = np.eye(n) * (n + 1.0)
    a[-1, :] = a[:, -1] = 1.0
    a[-1, -1] = 2.0 * n
    return a


def banded(n: int, bw: int) -> np.ndarray:
    a = np.zeros((n, n))
    for k in range(1, bw + 1):
        a += np.diag(np.full(n - k, -1.0 / k), k) + np.diag(np.full(n - k, -1.0 / k), -k)
    return a + np.diag(np.abs(a).sum(1) + 0.5)


def with_empty_column(n: int) -> np.ndarray:
    # two chains plus isolated unknowns: those have no off-diagonal entry in L at all
    a = banded(n, 1)
    for i in (2, 7):
        a[i, :] = a[:, i] = 0.0
        a[i, i] = 3.0
    return a


PATTERNS = {
    "lap10": (lap2d(10), "auto"),
    "random": (random_spd(40, 0.08, 0), "auto"),
    "arrow": (arrow(25), "natural"),
    "banded": (banded(30, 3), "auto"),
    "empty_col": (with_empty_column(12), "auto"),
}


def lower_csc(a: np.ndarray) -> sp.csc_matrix:
    m = sp.csc_matrix(np.tril(a))
    m.sort_indices()
    return m


def full_csc(a: np.ndarray) -> sp.csc_matrix:
    m = sp.csc_matrix(a)
    m.sort_indices()
    return m


def dense_from_stored(m: sp.csc_matrix, values: np.ndarray) -> np.ndarray:
    """The symmetric matrix the structure convention defines: lower triangle read only."""
    col = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    row = m.indices
    a = np.zeros(m.shape)
    keep = row >= col
    np.add.at(a, (row[keep], col[keep]), values[keep])
    return a + np.tril(a, -1).T


def analyse(m: sp.csc_matrix, ordering: str = "auto") -> symbolic.Symbolic:
    return symbolic.analyse(m.indptr, m.indices, m.shape[0], ordering=ordering)


def everything(sym):
    """One jitted function per pattern: solve with several right-hand sides, logdet, ok,
    selected inverse at the stored entries, diag of the inverse. (A single right-hand side
    of shape (n,) is covered by the vmap test.)"""

    @jax.jit
    def f(values, b3):
        fac = numeric.factor(sym, values)
        z, d = selinv.selected_inverse_and_diag(sym, fac)
        return numeric.solve(sym, fac, b3), numeric.logdet(sym, fac), fac.ok, z, d

    return f


_EVERYTHING = {}


def everything_for(name):
    if name not in _EVERYTHING:
        a, ordering = PATTERNS[name]
        m = lower_csc(a)
        sym = analyse(m, ordering)
        _EVERYTHING[name] = (m, sym, everything(sym))
    return _EVERYTHING[name]


# ---------------------------------------------------------------------------------------
# Symbolic phase
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("ordering", ["auto", "natural", "rcm"])
def test_symbolic_pattern_covers_cholesky(ordering):
    a = random_spd(60, 0.05, 3)
    sym = analyse(lower_csc(a), ordering)
    l = np.linalg.cholesky(a[np.ix_(sym.perm, sym.perm)])
    counts = (np.abs(l) > 0).sum(0)
    assert sym.nnz_L == counts.sum()  # exact column counts (no cancellation here)
    covered = np.zeros_like(l, dtype=bool)
    for s in range(sym.num_supernodes):
        f, e = sym.sn_start[s], sym.sn_start[s + 1]
        rows = np.concatenate(
            [np.arange(f, e), sym.sn_rowind[sym.sn_rowptr[s] : sym.sn_rowptr[s + 1]]]
        )
        for j in range(f, e):
            covered[rows[rows >= j], j] = True
    assert not np.any((np.abs(l) > 0) & ~covered)


def test_symbolic_is_cached_and_accepts_full_pattern():
    a = lap2d(6)
    s1 = analyse(lower_csc(a))
    assert analyse(lower_csc(a)) is s1
    s2 = analyse(full_csc(a))
    assert s2.nnz == full_csc(a).nnz and s2.nnz_L == s1.nnz_L
    # strict upper entries are not read and get zero logdet weight
    upper = s2.entry_row < s2.entry_col
    assert not s2.entry_read[upper].any() and np.all(s2.logdet_weight[upper] == 0)


def test_empty_column_pattern_is_exercised():
    _, sym, _ = everything_for("empty_col")
    m = np.diff(sym.sn_rowptr)
    k = np.diff(sym.sn_start)
    assert np.any((m == 0) & (sym.sn_parent < 0)) and sym.num_supernodes >= 3
    assert k.sum() == 12


# ---------------------------------------------------------------------------------------
# Numeric phase and selected inverse against dense
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PATTERNS))
def test_against_dense(name):
    m, sym, f = everything_for(name)
    a = PATTERNS[name][0]
    n = a.shape[0]
    b3 = np.random.default_rng(1).normal(size=(n, 3))
    x3, ld, ok, z, d = f(jnp.asarray(m.data), b3)
    ainv = np.linalg.inv(a)
    scale = np.abs(ainv).max()
    assert bool(ok)
    np.testing.assert_allclose(x3, np.linalg.solve(a, b3), rtol=0, atol=1e-12 * scale * 10)
    assert abs(float(ld) - np.linalg.slogdet(a)[1]) <= 1e-12 * max(1.0, abs(float(ld)))
    col = np.repeat(np.arange(n), np.diff(m.indptr))
    np.testing.assert_allclose(z, ainv[m.indices, col], rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(d, np.diag(ainv), rtol=0, atol=1e-12 * scale)


def test_not_positive_definite_is_flagged():
    m, sym, f = everything_for("lap10")
    values = np.array(m.data)
    values[sym.entry_row == sym.entry_col] *= -1.0  # negative definite
    _, ld, ok, _, _ = f(jnp.asarray(values), np.ones((100, 3)))
    assert not bool(ok) and not np.isfinite(float(ld))


def test_selected_inverse_on_full_pattern_of_l():
    a = random_spd(30, 0.1, 5)
    m = lower_csc(a)
    sym = analyse(m)
    rows, cols = selinv.l_pattern(sym)
    vals = jax.jit(lambda v: selinv.selected_inverse_on_l(sym, v))(jnp.asarray(m.data))
    ainv = np.linalg.inv(a)
    np.testing.assert_allclose(vals, ainv[rows, cols], rtol=0, atol=1e-12 * np.abs(ainv).max())
    assert np.all(rows >= cols) and rows.shape[0] >= sym.nnz_L


# ---------------------------------------------------------------------------------------
# Transforms: grad / jvp / hvp of logdet, vmap, float32, autodiff through factor+solve
# ---------------------------------------------------------------------------------------


def _dense_logdet(m, values):
    return np.linalg.slogdet(dense_from_stored(m, values))[1]


def _fd_grad(m, values, eps=1e-6):
    g = np.zeros_like(values)
    for e in range(values.shape[0]):
        vp, vm = values.copy(), values.copy()
        vp[e] += eps
        vm[e] -= eps
        g[e] = (_dense_logdet(m, vp) - _dense_logdet(m, vm)) / (2 * eps)
    return g


@pytest.mark.parametrize("storage", ["lower", "full"])
def test_logdet_grad_matches_finite_differences(storage):
    a = lap2d(5) + 0.1 * random_spd(25, 0.0, 0)  # keep it small: FD is per entry
    m = lower_csc(a) if storage == "lower" else full_csc(a)
    sym = analyse(m)
    values = np.array(m.data)
    ld, g = jax.jit(jax.value_and_grad(lambda v: selinv.logdet(sym, v)))(jnp.asarray(values))
    assert abs(float(ld) - _dense_logdet(m, values)) < 1e-12 * abs(float(ld))
    np.testing.assert_allclose(g, _fd_grad(m, values), rtol=0, atol=1e-7)
    if storage == "full":
        upper = sym.entry_row < sym.entry_col
        assert upper.any() and np.all(np.asarray(g)[upper] == 0.0)


def test_logdet_jvp_and_hessian_vector_product():
    a = banded(14, 2)
    m = lower_csc(a)
    sym = analyse(m, "natural")  # few supernodes: cheap to compile
    values = np.array(m.data)
    dv = np.random.default_rng(2).normal(size=values.shape)

    @jax.jit
    def f(v, t):
        (ld, dld) = jax.jvp(lambda u: selinv.logdet(sym, u), (v,), (t,))
        grad, hvp = jax.jvp(jax.grad(lambda u: selinv.logdet(sym, u)), (v,), (t,))
        return ld, dld, grad, hvp

    ld, dld, grad, hvp = f(jnp.asarray(values), jnp.asarray(dv))
    assert abs(float(dld) - float(np.dot(grad, dv))) < 1e-12
    # dense reference: grad_e = w_e Ainv[i, j];  hvp_e = -w_e (Ainv dA Ainv)[i, j]
    ainv = np.linalg.inv(a)
    da = dense_from_stored(m, dv)
    col = np.repeat(np.arange(a.shape[0]), np.diff(m.indptr))
    w = np.where(m.indices == col, 1.0, 2.0)
    np.testing.assert_allclose(grad, w * ainv[m.indices, col], rtol=0, atol=1e-12)
    np.testing.assert_allclose(hvp, -w * (ainv @ da @ ainv)[m.indices, col], rtol=0, atol=1e-11)


def test_vmap_over_values_and_float32():
    a = lap2d(4)
    m = lower_csc(a)
    sym = analyse(m)
    base = np.array(m.data)
    shifts = np.array([0.0, 0.5, 2.0])
    batch = np.stack([base + s * (sym.entry_row == sym.entry_col) for s in shifts])
    b = np.arange(16.0)

    def f(v):
        fac = numeric.factor(sym, v)
        return numeric.solve(sym, fac, b.astype(v.dtype)), fac.logdet, fac.ok

    xs, lds, oks = jax.jit(jax.vmap(f))(jnp.asarray(batch))
    for i, s in enumerate(shifts):
        ai = a + s * np.eye(16)
        np.testing.assert_allclose(xs[i], np.linalg.solve(ai, b), atol=1e-12)
        assert abs(float(lds[i]) - np.linalg.slogdet(ai)[1]) < 1e-12
    assert bool(np.all(oks))

    x32, ld32, ok32 = jax.jit(f)(jnp.asarray(base, jnp.float32))
    assert x32.dtype == jnp.float32 and bool(ok32)
    np.testing.assert_allclose(x32, np.linalg.solve(a, b), rtol=1e-5, atol=1e-5)
    assert abs(float(ld32) - np.linalg.slogdet(a)[1]) < 1e-4


def test_autodiff_through_factor_and_solve():
    a = banded(10, 2)
    m = lower_csc(a)
    sym = analyse(m, "natural")
    values = np.array(m.data)
    b = np.linspace(-1, 1, 10)
    c = np.cos(np.arange(10.0))

    def loss(v, rhs):
        return jnp.dot(c, numeric.solve(sym, numeric.factor(sym, v), rhs))

    gv, gb = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(values), jnp.asarray(b))
    ainv = np.linalg.inv(a)
    x, y = ainv @ b, ainv @ c  # d(c^T A^-1 b) = -y^T dA x
    col = np.repeat(np.arange(10), np.diff(m.indptr))
    r = m.indices
    expect = np.where(r == col, -y[r] * x[col], -(y[r] * x[col] + y[col] * x[r]))
    np.testing.assert_allclose(gv, expect, rtol=0, atol=1e-12)
    np.testing.assert_allclose(gb, y, rtol=0, atol=1e-12)


def _cholesky_input_shapes(jaxpr):
    shapes = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "cholesky":
            shapes.append(eqn.invars[0].aval.shape)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            shapes.extend(_cholesky_input_shapes(sub))
    return shapes


def test_no_batched_lapack_calls(traced):
    # jaxlib 0.10 runs a batched CPU LAPACK call in parallel on its thread pool, and two at
    # once can deadlock (two sparse factorizations in one program hung on 2 cores): the
    # dense kernels use plain XLA ops for small pivot blocks and unbatched LAPACK calls,
    # one block at a time, for large ones.
    rng = np.random.default_rng(3)
    g = rng.normal(size=(12, 12))
    dense_block = g @ g.T + 12 * np.eye(12)  # one 12-column supernode: LAPACK path
    for a in (lap2d(6), dense_block):
        m = lower_csc(a)
        sym = analyse(m)
        values = jnp.asarray(m.data)
        jaxpr = jax.make_jaxpr(lambda v: numeric.factor(sym, v).logdet)(values).jaxpr
        assert all(len(s) == 2 for s in _cholesky_input_shapes(jaxpr))
        two = jax.jit(lambda v: numeric.factor(sym, v).logdet + numeric.factor(sym, 2 * v).logdet)
        expected = 2 * np.linalg.slogdet(a)[1] + a.shape[0] * np.log(2)
        np.testing.assert_allclose(two(values), expected, rtol=1e-12)
    assert _cholesky_input_shapes(jaxpr), "the large-block path was not exercised"


@pytest.mark.parametrize("K", [3, 12])  # the fori_loop path and the LAPACK path
@pytest.mark.parametrize("dtype", [jnp.float64, jnp.complex128])
def test_partial_cholesky_reads_lower_triangle_only(K, dtype):
    # The dense kernel of a bucket reads the lower triangle of the pivot block: garbage in
    # its strict upper triangle changes neither the result nor the derivative.
    from jax.test_util import check_grads

    rng = np.random.default_rng(K)
    b, M = 2, 4

    def rand(*shape):
        x = rng.standard_normal(shape)
        if jnp.issubdtype(dtype, jnp.complexfloating):
            x = x + 1j * rng.standard_normal(shape)
        return x

    g = rand(b, K, K)
    spd = g @ np.conj(np.swapaxes(g, -1, -2)) + K * np.eye(K)
    garbage = np.where(np.triu(np.ones((K, K)), 1) > 0, rand(b, K, K), 0)
    f11 = jnp.asarray(np.tril(spd) + garbage, dtype)
    f21 = jnp.asarray(rand(b, M, K), dtype)
    X = np.asarray(jax.jit(numeric._partial_cholesky)(f11, f21))
    L = np.linalg.cholesky(spd)
    xt = np.linalg.inv(np.conj(np.swapaxes(L, -1, -2)))  # L^-H
    np.testing.assert_allclose(X[:, :K], xt, atol=1e-10)
    np.testing.assert_allclose(X[:, K:], np.asarray(f21) @ xt, atol=1e-10)
    check_grads(numeric._partial_cholesky, (f11, f21), order=1, modes=("fwd", "rev"))


def test_factorization_memory_stays_near_one_level(traced):
    """XLA schedules whatever depends on constants alone (zero-filled level buffers, index
    maps) at the start of a program unless told otherwise (`numeric.after`), and then every
    level's buffers are alive at once: on this 3-D grid the factorization took 8 × the
    padded factor in temporary memory before, 4.2 × after. A bound between the two."""
    m = 16
    t = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], (m, m))
    eye = sp.identity(m)
    a = sp.kron(sp.kron(t, eye), eye) + sp.kron(sp.kron(eye, t), eye)
    a = sp.tril((a + sp.kron(sp.kron(eye, eye), t) + sp.identity(m**3)).tocsc()).tocsc()
    sym = symbolic.analyse(a.indptr, a.indices, a.shape[0])
    compiled = jax.jit(lambda v: numeric.factor(sym, v).g).lower(jnp.asarray(a.data)).compile()
    analysis = compiled.memory_analysis()
    if analysis is None:
        pytest.skip("no memory analysis on this backend")
    factor_bytes = 8 * sym.nnz_L_padded
    assert analysis.temp_size_in_bytes < 6 * factor_bytes, (
        analysis.temp_size_in_bytes / factor_bytes
    )


def test_host_program_does_not_grow_with_the_problem(monkeypatch):
    # The host kernels' point: the compiled program of value_and_grad(logdet) and of a
    # solve is the same few operations (callbacks and small glue) whatever the number of
    # supernodes, buckets and levels, so compile time does not grow with the problem.
    # The traced phase's program grows with the buckets (checked for contrast).
    def sizes(mode):
        monkeypatch.setattr(host, "MODE", mode)
        out = []
        for side in (4, 12):
            m = lower_csc(lap2d(side))
            sym = analyse(m)
            v = jnp.asarray(m.data)
            rhs = jnp.ones(side * side)
            vg = jax.value_and_grad(lambda v: selinv.logdet(sym, v))
            sv = lambda v: numeric.solve(sym, numeric.factor(sym, v), rhs)  # noqa: E731
            out.append(
                (
                    len(jax.make_jaxpr(vg)(v).jaxpr.eqns),
                    len(jax.make_jaxpr(sv)(v).jaxpr.eqns),
                    len(sym.buckets),
                )
            )
        return out

    (small, large) = sizes("host")
    assert large[2] > small[2]  # more buckets ...
    assert large[:2] == small[:2]  # ... and the same programs
    (small, large) = sizes("traced")
    assert large[0] > small[0] and large[1] > small[1]


def _wide_front(dtype) -> np.ndarray:
    """SPD with a supernode of many pivots and more than 256 rows below them (the
    factor's extend-add then makes its products in several row blocks)."""
    rng = np.random.default_rng(3)
    k, m = 24, 300
    a = np.zeros((k + m, k + m), dtype)
    a[k:, :k] = rng.standard_normal((m, k))
    if np.iscomplexobj(a):
        a[k:, :k] += 1j * rng.standard_normal((m, k))
    a = a + np.conj(a.T)
    a[:k, :k] += np.eye(k, k=1) + np.eye(k, k=-1)
    return a + np.diag(np.sum(np.abs(a), axis=1) + 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128])
@pytest.mark.parametrize("problem", ["grid", "wide"])
def test_host_kernels_match_dense(dtype, problem):
    # The host kernels (BLAS/LAPACK called from numba, in place on the padded blocks)
    # against dense linear algebra, every dtype: log-determinant, selected inverse on the
    # pattern of L (out of place and in place of the factor), a solve; a matrix that is
    # not positive definite gives NaN, never a number.
    if problem == "grid":
        a = lap2d(9) + (
            0.3j * (np.eye(81, k=1) - np.eye(81, k=-1)) if np.iscomplexobj(dtype()) else 0
        )
    else:
        a = _wide_front(np.complex128 if np.iscomplexobj(dtype()) else np.float64)
    m = lower_csc(a.astype(dtype))
    if problem == "wide":  # natural order, no amalgamation: the 24 pivots first
        sym = symbolic.analyse(m.indptr, m.indices, m.shape[0], ordering="natural", relax=False)
    else:
        sym = analyse(m)
    P = host.plan(sym)
    assert P.k.max() >= 4 and P.m.max() > (256 if problem == "wide" else 0)
    v = np.where(sym.entry_flip, np.conj(m.data), m.data)
    flat = host.factor_np(sym, v)
    tol = 1e-4 if dtype in (np.float32, np.complex64) else 1e-11
    logdet = -2 * np.sum(np.log(np.real(flat[P.diag])))
    np.testing.assert_allclose(logdet, np.linalg.slogdet(a)[1], rtol=tol)
    read = selinv._lookup(sym, "on_l")
    rows, cols = selinv.l_pattern(sym)
    want = np.linalg.inv(a)[rows, cols]
    scale = np.max(np.abs(want))
    z = host._read_np(host.takahashi_np(sym, flat), read)
    np.testing.assert_allclose(z, want, rtol=0, atol=tol * scale)
    # In place of the factor (what `factor_selected_call` does): the same selected inverse.
    z_in = host._read_np(host.takahashi_np(sym, flat.copy(), in_place=True), read)
    np.testing.assert_array_equal(z_in, z)
    b = np.random.default_rng(0).standard_normal((a.shape[0], 2)).astype(dtype)
    x = host.solve_np(sym, flat, b)
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=0, atol=tol * scale * 10)
    bad = lower_csc(
        (a - 2 * np.max(np.abs(np.linalg.eigvalsh(a))) * np.eye(a.shape[0])).astype(dtype)
    )
    vb = np.where(sym.entry_flip, np.conj(bad.data), bad.data)
    assert np.isnan(host.factor_np(sym, vb)[P.diag]).any()


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_host_fused_call_matches_separate_calls(dtype):
    # logdet + gradient and diag_inverse on the host come from one callback that factors
    # and runs the recurrence in place, in the layout without the buckets' padding; it
    # equals the factor + recurrence callbacks (padded layout).
    a = lap2d(8) + (0.4j * (np.eye(64, k=1) - np.eye(64, k=-1)) if dtype == np.complex128 else 0)
    m = lower_csc(a.astype(dtype))
    sym = analyse(m)
    v = jnp.asarray(m.data)
    assert host.compact_plan(sym).size < host.plan(sym).size
    whats = ("logdet_grad", "diag", "entries")
    logdet, ok, outs = jax.jit(lambda v: selinv._host_fused(sym, whats, v))(v)
    fac = numeric.factor(sym, v)
    assert bool(ok) and np.allclose(logdet, fac.logdet, rtol=1e-13)
    for got, want in zip(outs, selinv._read(sym, whats, fac)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(outs[1], np.real(np.diag(np.linalg.inv(a))), rtol=1e-12)
    # not positive definite: ok is False, never a silent number
    bad = jnp.asarray(lower_csc((a - 9 * np.eye(64)).astype(dtype)).data)
    assert not bool(selinv._host_fused(sym, whats, bad)[1])
