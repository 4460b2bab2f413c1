"""`vmap` over dense operators makes no batched LAPACK call on CPU (jaxlib 0.10).

jaxlib 0.10 runs a batched CPU LAPACK call in chunks on XLA's thread pool and blocks a
pool thread meanwhile; two such calls at once can deadlock (a `vmap`ped Gaussian-process
likelihood, `logdet(K) + yᵀ K⁻¹ y`, hung on 2 cores). `linsolve._lapack` loops over a
batch of matrices instead. These tests check the compiled programs, and run the program
that hung in a subprocess with a timeout (a regression fails rather than hangs the suite).
"""

import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import linsolve as ls
from linsolve import _lapack


PSD = ls.positive_semidefinite_tag

pytestmark = pytest.mark.skipif(
    not _lapack.AFFECTED or jax.default_backend() != "cpu",
    reason="only jaxlib 0.10.x on CPU batches LAPACK calls on its thread pool",
)


def _lapack_batch_dims(fn, *args):
    """`num_batch_dims` of every LAPACK custom call in the optimised CPU program."""
    text = jax.jit(fn).lower(*args).compile().as_text()
    dims = []
    for line in text.splitlines():
        if re.search(r'custom_call_target="lapack_', line):
            found = re.search(r'num_batch_dims="(\d+)"', line)
            dims.append(int(found.group(1)) if found else 0)
    return dims


def _spd_batch(rng, batch, n):
    g = rng.standard_normal((batch, n, n))
    return jnp.asarray(g @ np.swapaxes(g, 1, 2) + n * np.eye(n))


SOLVES = {
    "cholesky": lambda a, b: ls.linear_solve(ls.MatrixOperator(a, PSD), b, ls.Cholesky()).value,
    "lu": lambda a, b: ls.linear_solve(ls.MatrixOperator(a), b, ls.LU()).value,
    "qr": lambda a, b: ls.linear_solve(ls.MatrixOperator(a), b, ls.QR()).value,
    "triangular": lambda a, b: (
        ls.linear_solve(ls.MatrixOperator(a, ls.lower_triangular_tag), b, ls.Triangular()).value
    ),
    "logdet": lambda a, b: ls.logdet(ls.MatrixOperator(a, PSD)) * b,
    "slogdet": lambda a, b: ls.slogdet(ls.MatrixOperator(a))[1] * b,
    "eigh": lambda a, b: ls.eigh(ls.MatrixOperator(a, ls.symmetric_tag)).eigenvalues * b,
}


def _eigh_generalized(n):
    def solve(a, b):
        B = ls.MatrixOperator(a + jnp.eye(n), PSD)
        return ls.eigh(ls.MatrixOperator(a, ls.symmetric_tag), B=B).eigenvalues * b

    return solve


SOLVES["eigh-generalized"] = None


# n = 6: small matrices (`_small_dense`'s kernels where there are some); n = 20: a loop.
@pytest.mark.parametrize("n", [6, 20])
@pytest.mark.parametrize("name", list(SOLVES))
def test_vmap_over_matrices_makes_unbatched_lapack_calls(name, n):
    rng = np.random.default_rng(0)
    a = _spd_batch(rng, 3, n)
    b = jnp.asarray(rng.standard_normal((3, n)))
    solve = SOLVES[name] if name != "eigh-generalized" else _eigh_generalized(n)

    def loss(a, b):
        return jnp.sum(jnp.sin(solve(a, b)))

    batched = jax.vmap(jax.value_and_grad(loss, argnums=(0, 1)))
    dims = _lapack_batch_dims(batched, a, b)
    assert all(d == 0 for d in dims), dims
    if n > _lapack.SMALL_N or name in ("qr", "eigh", "eigh-generalized"):
        assert dims  # the loop: one LAPACK call per matrix
    # Same values as one operator at a time.
    value, (ga, gb) = jax.jit(batched)(a, b)
    for i in range(3):
        v, (gai, gbi) = jax.value_and_grad(loss, argnums=(0, 1))(a[i], b[i])
        np.testing.assert_allclose(value[i], v, rtol=1e-12)
        np.testing.assert_allclose(ga[i], gai, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(gb[i], gbi, rtol=1e-10, atol=1e-12)


def test_vmap_over_right_hand_sides_only_keeps_one_call():
    """One operator, a batch of right-hand sides: JAX's own rule (more columns in one
    triangular solve), not a loop."""
    rng = np.random.default_rng(1)
    a = _spd_batch(rng, 1, 6)[0]
    bs = jnp.asarray(rng.standard_normal((4, 6)))
    solve = jax.vmap(SOLVES["cholesky"], in_axes=(None, 0))
    text = jax.jit(solve).lower(a, bs).compile().as_text()
    assert " while(" not in text
    np.testing.assert_allclose(solve(a, bs), np.linalg.solve(a, bs.T).T, rtol=1e-12)


def test_vmapped_likelihood_with_two_factorizations_does_not_hang():
    """The program that deadlocked: two independent batched Cholesky factorizations (of
    `logdet` and of the solve) and their reverse passes, batched over 16 matrices."""
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np
        jax.config.update("jax_enable_x64", True)
        import linsolve as ls
        g = np.random.default_rng(0).standard_normal((16, 200, 200))
        k = jnp.asarray(g @ np.swapaxes(g, 1, 2) + 200 * np.eye(200))
        y = jnp.ones((16, 200))
        def nll(k, y):
            op = ls.MatrixOperator(k, ls.positive_semidefinite_tag)
            return ls.logdet(op) + y @ ls.linear_solve(op, y).value
        f = jax.jit(jax.vmap(jax.value_and_grad(nll)))
        for i in range(20):
            jax.block_until_ready(f(k + i * 1e-3, y))
        # The differentiable factorization, two independent ones, large and small.
        def two(k):
            return jnp.sum(jnp.log(jnp.diagonal(ls.cholesky(k)))) + jnp.sum(
                ls.lu(k + jnp.eye(k.shape[0]))[2]
            )
        for kk in (k[:, :40, :40], k[:, :8, :8]):
            g = jax.jit(jax.vmap(jax.value_and_grad(two)))
            for i in range(5):
                jax.block_until_ready(g(kk + i * 1e-3))
        print("done")
        """
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the vmapped likelihood hung (batched LAPACK calls deadlocked)")
    assert "done" in out.stdout, out.stderr[-2000:]


def test_nested_vmap_outer_over_matrices_inner_over_right_hand_sides():
    rng = np.random.default_rng(2)
    a = _spd_batch(rng, 3, 20)
    bs = jnp.asarray(rng.standard_normal((3, 4, 20)))
    solve = jax.vmap(jax.vmap(SOLVES["lu"], in_axes=(None, 0)), in_axes=(0, 0))
    dims = _lapack_batch_dims(solve, a, bs)
    assert dims and all(d == 0 for d in dims), dims
    expected = np.stack([np.linalg.solve(a[i], bs[i].T).T for i in range(3)])
    np.testing.assert_allclose(jax.jit(solve)(a, bs), expected, rtol=1e-11)


def test_vmapped_lobpcg_makes_unbatched_lapack_calls():
    """The small Rayleigh–Ritz eigenproblems and SVDs inside the iteration, too."""
    rng = np.random.default_rng(3)
    a = _spd_batch(rng, 2, 12)

    def smallest(a):
        return ls.lobpcg(
            ls.MatrixOperator(a, ls.symmetric_tag), 2, key=jax.random.key(0)
        ).eigenvalues

    batched = jax.vmap(smallest)
    dims = _lapack_batch_dims(batched, a)
    assert dims and all(d == 0 for d in dims), dims
    np.testing.assert_allclose(jax.jit(batched)(a), np.linalg.eigvalsh(a)[:, :2], rtol=1e-8)


@pytest.mark.parametrize("n", [6, 20])
@pytest.mark.parametrize("solver", ["Cholesky", "LU"])
def test_vmapped_factorization_and_rcond_in_one_loop_match_each_matrix(solver, n):
    """The factorization and its condition estimate run as one unit under `vmap` (the
    small kernels for n = 6, one loop for n = 20, in either case no batched LAPACK call):
    the same rcond and result code as each matrix alone, a singular member included, and
    one `while` loop over the matrices for the whole estimate, not one per solve."""
    rng = np.random.default_rng(4)
    a = np.array(_spd_batch(rng, 3, n))
    a[1] = np.outer(a[1, 0], a[1, 0])  # rank one: singular to working precision
    a = jnp.asarray(a)
    b = jnp.asarray(rng.standard_normal((3, n)))
    tags = PSD if solver == "Cholesky" else ()

    def one(a, b):
        sol = ls.linear_solve(ls.MatrixOperator(a, tags), b, getattr(ls, solver)(), throw=False)
        return sol.result, sol.stats["rcond"]

    dims = _lapack_batch_dims(jax.vmap(one), a, b)
    assert all(d == 0 for d in dims), dims
    codes, rconds = jax.jit(jax.vmap(one))(a, b)
    eps = np.finfo(np.float64).eps
    for i in range(3):
        code, rc = one(a[i], b[i])
        assert int(codes[i]) == int(code)
        if i == 1:  # the kernels round differently; both far below eps
            assert rconds[i] < eps and rc < eps
        else:
            np.testing.assert_allclose(rconds[i], rc, rtol=1e-10)
    assert int(codes[1]) == int(ls.RESULTS.singular) and int(codes[0]) == 0
    if n == 20:
        init = jax.jit(jax.vmap(lambda a: getattr(ls, solver)().init(ls.MatrixOperator(a, tags))))
        text = init.lower(a).compile().as_text()
        # Loops in the entry computation; a failure's diagnosis (in a branch) aside.
        assert text[text.index("ENTRY") :].count(" while(") == 1


KRYLOV = {
    "cg-recycle": lambda: ls.CG(rtol=1e-10, recycle=4),
    "minres-recycle": lambda: ls.MINRES(rtol=1e-10, recycle=4),
}


@pytest.mark.parametrize("name", list(KRYLOV))
def test_recycled_krylov_solves_of_several_columns_make_unbatched_lapack_calls(name):
    """Krylov recycling of an `(n, k)` right-hand side runs its small Rayleigh–Ritz
    eigenproblems once per column: they must not become batched LAPACK calls (the PDE
    inverse example, four sources with a carried space, deadlocked on 2 cores)."""
    rng = np.random.default_rng(4)
    n, k = 30, 3
    a = _spd_batch(rng, 1, n)[0]
    b = jnp.asarray(rng.standard_normal((n, k)))
    space = ls.RecycleSpace.empty(n, 4, columns=k)

    def loss(a, b):
        sol = ls.linear_solve(ls.MatrixOperator(a, PSD), b, KRYLOV[name](), recycle=space)
        return jnp.sum(jnp.sin(sol.value)), sol.stats["recycle"]

    fn = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
    dims = _lapack_batch_dims(fn, a, b)
    assert dims and all(d == 0 for d in dims), dims
    (value, new_space), (ga, gb) = jax.jit(fn)(a, b)
    x = np.linalg.solve(a, b)
    np.testing.assert_allclose(value, np.sum(np.sin(x)), rtol=1e-8)
    np.testing.assert_allclose(gb, np.linalg.solve(a, np.cos(x)), rtol=1e-6, atol=1e-9)
    # the refreshed space is used by the next solve: still the same answer
    sol = jax.jit(
        lambda a, b, s: ls.linear_solve(ls.MatrixOperator(a, PSD), b, KRYLOV[name](), recycle=s)
    )(a, b, new_space)
    np.testing.assert_allclose(sol.value, x, rtol=1e-7, atol=1e-9)


def test_vmapped_gmres_makes_unbatched_lapack_calls():
    """GMRES's small least-squares triangular solve, batched over right-hand sides (each
    has its own Hessenberg matrix)."""
    rng = np.random.default_rng(5)
    n = 20
    a = jnp.asarray(rng.standard_normal((n, n)) + 8 * np.eye(n))
    bs = jnp.asarray(rng.standard_normal((3, n)))
    solve = jax.vmap(lambda b: ls.linear_solve(ls.MatrixOperator(a), b, ls.GMRES(rtol=1e-12)).value)
    dims = _lapack_batch_dims(solve, bs)
    assert all(d == 0 for d in dims), dims
    np.testing.assert_allclose(jax.jit(solve)(bs), np.linalg.solve(a, bs.T).T, rtol=1e-9)
