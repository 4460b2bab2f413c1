"""Habits of the JAX ecosystem: tags survive transformations, tags by name or lineax's
objects, errors that point the way, short reprs, result codes next to lineax's, the
supported dtypes and the one rule for mixed precisions."""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
import scipy.sparse as sp

import linsolve as ls


PSD, SYM = ls.positive_semidefinite_tag, ls.symmetric_tag

rng = np.random.default_rng(0)
N = 5
M = rng.standard_normal((N, N))
SPD = M @ M.T + N * np.eye(N)
B = rng.standard_normal(N)


def _sparse(values, tags=()):
    csc = sp.csc_matrix(np.tril(SPD))
    return ls.SparseOperator(values, csc.indices, csc.indptr, csc.shape, tags)


SPARSE_VALUES = sp.csc_matrix(np.tril(SPD)).data


def _function(matrix, tags=()):
    return ls.FunctionOperator(lambda x: matrix @ x, jnp.zeros(N), tags)


def _lineax_function(matrix):
    op = lx.FunctionLinearOperator(lambda x: matrix @ x, jax.ShapeDtypeStruct((N,), matrix.dtype))
    return ls.from_lineax(op)


def _gram(a):
    return a.T @ a


# Each kind: (build from one array, that array). The array is what jit/vmap see as a leaf.
KINDS = {
    "matrix": (lambda a: ls.MatrixOperator(a, PSD), SPD),
    "matrix_symmetric": (lambda a: ls.MatrixOperator(a, SYM), M),
    "diagonal": (lambda d: ls.DiagonalOperator(d, PSD), np.arange(1.0, N + 1)),
    "identity": (lambda a: ls.IdentityOperator(N, a.dtype) * 1.0, SPD),
    "function": (lambda a: _function(a, PSD), SPD),
    "sparse": (lambda v: _sparse(v, PSD), SPARSE_VALUES),
    "transposed": (lambda a: ls.MatrixOperator(a, ls.lower_triangular_tag).T, M),
    "add": (lambda a: ls.MatrixOperator(a, PSD) + ls.DiagonalOperator(jnp.ones(N), PSD), SPD),
    "scaled": (lambda a: 2.0 * ls.MatrixOperator(a, PSD), SPD),
    "scaled_traced_scalar": (lambda a: a[0, 0] * ls.MatrixOperator(a, SYM), M),
    "gram_matrix": (lambda a: _gram(ls.MatrixOperator(a)), M),
    "gram_function": (lambda a: _gram(_function(a)), M),
    "gram_sparse": (lambda v: _gram(_sparse(v)), SPARSE_VALUES),
    "gram_outer": (lambda a: (lambda op: op @ op.T)(ls.MatrixOperator(a)), M),
    "lineax_function": (lambda a: _lineax_function(a), M),
    "lineax_tagged": (
        lambda a: ls.from_lineax(
            lx.TaggedLinearOperator(lx.MatrixLinearOperator(a), lx.positive_semidefinite_tag)
        ),
        SPD,
    ),
}


def _selection(op):
    return type(ls.AutoSolver(materialize_below=0).select(op)).__name__


def _facts(op):
    return op.tags, _selection(op), op.shape, jnp.dtype(op.dtype)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_tags_survive_transformations(kind):
    build, array = KINDS[kind]
    array = jnp.asarray(array)
    op = build(array)
    expected = _facts(op)
    if kind.startswith("gram") or kind in ("matrix", "function", "sparse", "add", "scaled"):
        assert PSD in op.tags  # the cases the issue is about keep a real promise

    # flatten / unflatten
    leaves, treedef = jax.tree_util.tree_flatten(op)
    assert _facts(jax.tree_util.tree_unflatten(treedef, leaves)) == expected

    # eqx.partition / combine
    dynamic, static = eqx.partition(op, eqx.is_array)
    assert _facts(eqx.combine(dynamic, static)) == expected

    # jax.jit and eqx.filter_jit: the operator passed in, and one returned
    seen = []

    @eqx.filter_jit
    def inside(o):
        seen.append(_facts(o))
        return o

    returned = inside(op)
    assert seen == [expected]
    assert _facts(returned) == expected
    if all(eqx.is_array(leaf) for leaf in leaves):  # jax.jit takes array leaves only
        seen.clear()
        jax.jit(lambda o: seen.append(_facts(o)) or o)(op)
        assert seen == [expected]

    # vmap over a batch of operators (built outside, mapped over their arrays)
    batched = eqx.filter_vmap(build)(jnp.stack([array, 2 * array]))
    seen.clear()
    eqx.filter_vmap(lambda o: seen.append(_facts(o)) or o.mv(jnp.ones(N)))(batched)
    assert seen == [expected]
    if all(eqx.is_array(leaf) for leaf in leaves):
        seen.clear()
        jax.vmap(lambda o: seen.append(_facts(o)) or o.mv(jnp.ones(N)))(
            jax.vmap(build)(jnp.stack([array, array]))
        )
        assert seen == [expected]


@pytest.mark.parametrize("kind", ["gram_matrix", "gram_function", "gram_sparse"])
def test_gram_solve_under_jit_picks_cholesky_or_cg_and_is_right(kind):
    build, array = KINDS[kind]
    op = build(jnp.asarray(array))
    assert _selection(op) in ("Cholesky", "CG", "SparseCholesky")
    seen = []

    @eqx.filter_jit
    def solve(o, b):
        seen.append(_selection(o))
        return ls.linear_solve(o, b, ls.AutoSolver(materialize_below=0)).value

    x = solve(op, B)
    assert seen == [_selection(op)]
    np.testing.assert_allclose(op.as_matrix() @ x, B, rtol=1e-6, atol=1e-8)


def test_tags_reach_lineax_inside_jit():
    a = ls.MatrixOperator(jnp.asarray(M))
    seen = []

    @eqx.filter_jit
    def inside(o):
        seen.append((lx.is_positive_semidefinite(o), lx.is_symmetric(o)))
        return lx.linear_solve(o, jnp.asarray(B), ls.as_lineax_solver(ls.AutoSolver())).value

    x = inside(ls.to_lineax(a.T @ a))
    assert seen == [(True, True)]
    np.testing.assert_allclose(M.T @ M @ x, B, rtol=1e-8)


# -- tags given by name, lineax's tags ---------------------------------------------------------


@pytest.mark.parametrize(
    "given, expected",
    [
        ("symmetric", {ls.symmetric_tag}),
        ("symmetric_tag", {ls.symmetric_tag}),
        ("positive_semidefinite", {PSD}),
        (("lower_triangular", "unit_diagonal"), {ls.lower_triangular_tag, ls.unit_diagonal_tag}),
        (lx.symmetric_tag, {ls.symmetric_tag}),
        (lx.positive_semidefinite_tag, {PSD}),
        (lx.negative_semidefinite_tag, {ls.negative_semidefinite_tag}),
        (
            {lx.lower_triangular_tag, lx.unit_diagonal_tag},
            {ls.lower_triangular_tag, ls.unit_diagonal_tag},
        ),
        ([lx.diagonal_tag, "symmetric"], {ls.diagonal_tag, ls.symmetric_tag}),
        (lx.upper_triangular_tag, {ls.upper_triangular_tag}),
    ],
)
def test_tags_by_name_and_lineax_tags(given, expected):
    for make in (
        ls.MatrixOperator,
        lambda a, t: ls.FunctionOperator(lambda x: a @ x, jnp.zeros(N), t),
    ):
        op = make(jnp.asarray(SPD), given)
        assert op.tags == frozenset(expected)
    assert ls.MatrixOperator(SPD, given).tags == ls.MatrixOperator(SPD, tuple(expected)).tags


def test_bad_tags_have_clear_messages():
    with pytest.raises(ValueError, match=r"Unknown tag name 'symetric'.*'symmetric'"):
        ls.MatrixOperator(SPD, "symetric")
    with pytest.raises(ValueError, match="tridiagonal_tag has no linsolve counterpart"):
        ls.MatrixOperator(SPD, lx.tridiagonal_tag)
    with pytest.raises(TypeError, match="must be a tag or an iterable of tags"):
        ls.MatrixOperator(SPD, 3)
    with pytest.raises(TypeError, match="Unknown tag"):
        ls.MatrixOperator(SPD, [object()])
    with pytest.raises(ValueError, match="both positive and negative"):
        ls.MatrixOperator(SPD, ("positive_semidefinite", lx.negative_semidefinite_tag))


# -- errors that point the way -------------------------------------------------------------------


@pytest.mark.parametrize(
    "solver", [ls.LU(), ls.Cholesky(), ls.CG(), ls.AutoSolver(), ls.SparseCholesky()]
)
def test_linsolve_solver_handed_to_lineax_names_as_lineax_solver(solver):
    op = lx.MatrixLinearOperator(jnp.asarray(SPD), lx.positive_semidefinite_tag)
    name = type(solver).__name__
    with pytest.raises(TypeError, match=rf"as_lineax_solver\(linsolve\.{name}"):
        lx.linear_solve(op, jnp.asarray(B), solver)
    with pytest.raises(TypeError, match="as_lineax_solver"):
        solver.compute(None, B, {})
    with pytest.raises(TypeError, match="as_lineax_solver"):
        solver.assume_full_rank()
    # The wrapped solver works, and the unwrapped one still works in linsolve.
    if name != "SparseCholesky":
        x = lx.linear_solve(op, jnp.asarray(B), ls.as_lineax_solver(solver)).value
        y = ls.linear_solve(ls.MatrixOperator(SPD, PSD), B, solver).value
        np.testing.assert_allclose(x, np.linalg.solve(SPD, B), rtol=1e-8)
        np.testing.assert_allclose(y, x, rtol=1e-8)


def test_solvers_handed_to_optimistix_name_as_lineax_solver():
    optx = pytest.importorskip("optimistix")
    solver = optx.Newton(rtol=1e-8, atol=1e-8, linear_solver=ls.LU())
    with pytest.raises(TypeError, match="as_lineax_solver"):
        optx.root_find(lambda y, _: y**3 - 2.0, solver, jnp.ones(3))


def test_operator_errors_say_how_to_wrap():
    csc = sp.csc_matrix(SPD)
    with pytest.raises(TypeError, match=r"SparseOperator\.from_scipy"):
        ls.linear_solve(csc, B)
    with pytest.raises(TypeError, match=r"FunctionOperator\(fn, x_example"):
        ls.linear_solve(lambda x: 2 * x, B)
    with pytest.raises(TypeError, match=r"MatrixOperator\(matrix"):
        ls.linear_solve(SPD, B)
    from jax.experimental import sparse as jsparse

    with pytest.raises(TypeError, match=r"from_bcoo"):
        ls.linear_solve(jsparse.BCOO.fromdense(SPD), B)


def test_sparse_operator_from_a_scipy_matrix_directly():
    low = sp.csr_matrix(np.tril(SPD))  # any scipy format
    op = ls.SparseOperator(low, tags=PSD)
    ref = ls.SparseOperator.from_scipy(low, PSD)
    assert op.pattern == ref.pattern and op.tags == ref.tags == frozenset({PSD})
    np.testing.assert_array_equal(op.values, ref.values)
    np.testing.assert_allclose(op.as_matrix(), SPD, rtol=1e-14)
    x = ls.linear_solve(op, B, ls.SparseCholesky()).value
    np.testing.assert_allclose(x, np.linalg.solve(SPD, B), rtol=1e-10)
    with pytest.raises(TypeError, match="from_scipy"):
        ls.SparseOperator(low, PSD)  # tags positionally would be read as `indices`
    with pytest.raises(TypeError, match=r"\(values, indices, indptr, shape\)"):
        ls.SparseOperator(np.ones(3))


# -- result codes and messages ------------------------------------------------------------------


def test_result_codes_next_to_lineax_and_messages_under_jit(capfd):
    op = ls.MatrixOperator(SPD, PSD)
    sol = ls.linear_solve(op, B)
    assert bool(sol.result == ls.RESULTS.successful)
    # lineax's own comparison refuses other types; the documented conversion works.
    with pytest.raises(ValueError, match="enumerations"):
        sol.result == lx.RESULTS.successful  # noqa: B015
    assert bool(sol.lineax_result == lx.RESULTS.successful)
    assert ls.RESULTS.message(sol.result) == "The solve succeeded."

    singular = ls.MatrixOperator(np.zeros((N, N)))

    @jax.jit
    def run(a):
        s = ls.linear_solve(ls.MatrixOperator(a), B, throw=False)
        with pytest.raises(TypeError, match="print_message"):
            ls.RESULTS.message(s.result)
        ls.RESULTS.print_message(s.result, prefix="solve: ")
        return (
            s.result,
            s.lineax_result == lx.RESULTS.singular,
            s.lineax_result == lx.RESULTS.successful,
        )

    code, is_singular, is_ok = run(singular.matrix)
    jax.effects_barrier()
    assert int(code) == ls.RESULTS.singular and bool(is_singular) and not bool(is_ok)
    assert "solve: singular: The operator is singular" in capfd.readouterr().out
    # not_positive_definite has no lineax counterpart: it maps to lineax's `singular`.
    assert bool(ls.RESULTS.to_lineax(ls.RESULTS.not_positive_definite) == lx.RESULTS.singular)
    # A batch of concrete codes (from vmap) gives one message each.
    codes = jnp.array([ls.RESULTS.successful, ls.RESULTS.max_steps_reached])
    msgs = ls.RESULTS.message(codes)
    assert msgs.shape == (2,) and msgs[0] == "The solve succeeded." and "max_steps" in msgs[1]


# -- reprs ---------------------------------------------------------------------------------------


def test_short_reprs():
    a = ls.MatrixOperator(M)
    assert repr(ls.MatrixOperator(SPD, "positive_semidefinite")) == (
        "MatrixOperator(shape=(5, 5), dtype=float64, tags={positive_semidefinite})"
    )
    assert repr(a.T @ a) == (
        "ComposedOperator(shape=(5, 5), dtype=float64, tags={hermitian, positive_semidefinite, symmetric})"
    )
    f = repr(ls.FunctionOperator(lambda x: 2 * x, jnp.zeros(3, jnp.float32)))
    assert f == "FunctionOperator(shape=(3, 3), dtype=float32, tags={})"
    assert "_tags" not in repr(_sparse(SPARSE_VALUES, PSD))
    sol = ls.linear_solve(ls.MatrixOperator(SPD, PSD), B, ls.CG())
    assert repr(sol) == (
        "Solution(value=f64[5], result=successful, stats={'num_steps': i32[], 'residual_norm': f64[]})"
    )
    bad = ls.linear_solve(ls.MatrixOperator(np.zeros((N, N))), B, throw=False)
    assert "result=singular" in repr(bad)
    batch = jax.vmap(lambda s: ls.linear_solve(ls.MatrixOperator(s * SPD), B, throw=False))(
        jnp.array([1.0, 0.0])
    )
    assert "result=[successful, singular]" in repr(batch)
    reprs = []
    jax.jit(lambda b: reprs.append(repr(ls.linear_solve(ls.MatrixOperator(SPD), b))) or b)(B)
    # (LU's stats carry its reciprocal condition estimate.)
    assert reprs == ["Solution(value=f64[5], result=i32[], stats={'rcond': f64[]})"]


# -- dtypes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_precisions_get_a_clear_message(dtype):
    a = jnp.asarray(SPD, dtype)
    message = (
        r"supports the dtypes float32, float64, complex64 and complex128.*has dtype (b)?float16"
    )
    for make in (
        lambda: ls.MatrixOperator(a),
        lambda: ls.DiagonalOperator(jnp.diagonal(a)),
        lambda: ls.IdentityOperator(N, dtype),
        lambda: ls.FunctionOperator(lambda x: a @ x, jnp.zeros(N, dtype)),
        lambda: _sparse(jnp.asarray(SPARSE_VALUES, dtype)),
        lambda: ls.from_lineax(lx.MatrixLinearOperator(a)),
        lambda: ls.from_lineax(
            lx.FunctionLinearOperator(lambda x: a @ x, jax.ShapeDtypeStruct((N,), dtype))
        ),
    ):
        with pytest.raises(TypeError, match=message):
            make()
    with pytest.raises(TypeError, match=r"dtype (b)?float16 but the operator has dtype float32"):
        ls.linear_solve(ls.MatrixOperator(jnp.asarray(SPD, jnp.float32)), jnp.ones(N, dtype))


def _f32(x):
    return jnp.asarray(x, jnp.float32)


@pytest.mark.parametrize(
    "solver", [ls.CG, ls.GMRES, ls.MINRES, ls.BiCGStab], ids=lambda s: s.__name__
)
def test_mixed_precision_preconditioner_is_rejected_at_trace_time(solver):
    op = ls.MatrixOperator(_f32(SPD), PSD)
    pre = ls.DiagonalOperator(1 / jnp.diagonal(jnp.asarray(SPD)), PSD)  # float64
    with pytest.raises(TypeError, match="preconditioner.*float64.*operator.*float32"):
        jax.jit(lambda b: ls.linear_solve(op, b, solver(preconditioner=pre)).value)(_f32(B))
    # The same preconditioner cast to the solve's dtype works.
    pre32 = ls.DiagonalOperator(_f32(1 / np.diagonal(SPD)), PSD)
    x = ls.linear_solve(op, _f32(B), solver(preconditioner=pre32, rtol=1e-6)).value
    assert x.dtype == jnp.float32
    np.testing.assert_allclose(x, np.linalg.solve(SPD, B), rtol=1e-3)


def test_mixed_precision_lobpcg_is_rejected_at_trace_time():
    a64 = ls.MatrixOperator(SPD, PSD)
    a32 = ls.MatrixOperator(_f32(SPD), PSD)
    b32 = ls.DiagonalOperator(_f32(np.ones(N)), PSD)
    pre64 = ls.DiagonalOperator(1 / np.diagonal(SPD), PSD)
    with pytest.raises(TypeError, match="`B` has dtype float32 but the operator has dtype float64"):
        ls.lobpcg(a64, 2, B=b32)
    with pytest.raises(
        TypeError, match="preconditioner has dtype float64 but the operator has dtype float32"
    ):
        ls.lobpcg(a32, 2, preconditioner=pre64)
    with pytest.raises(TypeError, match="X0 has dtype float32 but the operator has dtype float64"):
        ls.lobpcg(a64, 2, X0=_f32(rng.standard_normal((N, 2))))
    with pytest.raises(
        TypeError, match="eigh: `B` has dtype float32 but the operator has dtype float64"
    ):
        ls.eigh(a64, b32)
    # Same dtypes: fine, in float32 too.
    pairs = ls.lobpcg(
        a32, 2, B=b32, preconditioner=ls.DiagonalOperator(_f32(1 / np.diagonal(SPD)), PSD)
    )
    assert pairs.eigenvalues.dtype == jnp.float32
    np.testing.assert_allclose(pairs.eigenvalues, np.linalg.eigvalsh(SPD)[:2], rtol=1e-3)


# -- sparse analysis summary ---------------------------------------------------------------------


def test_sparse_cholesky_verbose_prints_the_analysis_summary(capsys):
    # A pattern no other test uses, so the first analysis is not cached.
    n = 9
    off = np.diag(np.full(n - 1, -1.0), -1) + np.diag(np.full(n - 3, -1.0), -3)
    a = np.diag(np.full(n, 4.0)) + off + off.T
    low = sp.csc_matrix(np.tril(a))
    op = ls.SparseOperator(low, tags=PSD)
    solver = ls.SparseCholesky(ordering="rcm", verbose=True)
    x = ls.linear_solve(op, np.ones(n), solver).value
    np.testing.assert_allclose(a @ x, np.ones(n), rtol=1e-12)
    first = capsys.readouterr().out.strip().splitlines()
    assert len(first) == 1
    line = first[0]
    assert (
        line.startswith("sparse analysis: ordering=rcm, n=9, nnz(A lower)=")
        and "cached" not in line
    )
    assert f"nnz(A lower)={low.nnz}," in line
    nnz_l = int(line.split("nnz(L)=")[1].split(",")[0])
    assert n <= nnz_l <= n * (n + 1) // 2
    assert "supernodes=" in line and line.endswith(" s")
    ls.linear_solve(op, np.ones(n), solver)
    assert capsys.readouterr().out.strip().endswith("(cached)")
    assert solver.analysis_summary(op) == line
    # Quiet by default.
    ls.linear_solve(op, np.ones(n), ls.SparseCholesky(ordering="rcm"))
    assert capsys.readouterr().out == ""
