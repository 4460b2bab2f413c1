"""The annotations hold at run time: a slice of the public API (every solver kind, the
log-determinants, the factorizations, the eigensolvers, the inverse entries, the operators'
products, gradients) runs in a fresh interpreter with jaxtyping's import hook, which checks
every annotated function of `linsolve` with beartype. A wrong annotation (a shape, a dtype
kind, a type that is too narrow for what the function accepts) fails here.
"""

import subprocess
import sys
import textwrap

import pytest


pytest.importorskip("beartype")

_PRELUDE = """
import jaxtyping

with jaxtyping.install_import_hook("linsolve", "beartype.beartype"):
    import linsolve

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

jax.config.update("jax_enable_x64", True)

rng = np.random.default_rng(0)
n = 6
m = rng.standard_normal((n, n))
spd = m @ m.T + n * np.eye(n)
b = rng.standard_normal(n)
B = rng.standard_normal((n, 2))

# Operators: `mv` takes jax and numpy arrays, vectors and blocks.
dense = linsolve.MatrixOperator(jnp.asarray(m))
psd = linsolve.MatrixOperator(jnp.asarray(spd), linsolve.positive_semidefinite_tag)
lower = linsolve.MatrixOperator(jnp.tril(jnp.asarray(m)) + n * jnp.eye(n), linsolve.lower_triangular_tag)
diag = linsolve.DiagonalOperator(jnp.arange(1.0, n + 1))
fun = linsolve.FunctionOperator(lambda v: jnp.asarray(spd) @ v, jax.ShapeDtypeStruct((n,), jnp.float64), linsolve.positive_semidefinite_tag)
spd_csc = sp.csc_matrix(np.where(np.abs(spd) > 1.0, spd, 0) + n * np.eye(n))
sparse = linsolve.SparseOperator.from_scipy(spd_csc, linsolve.positive_semidefinite_tag)


def check_mv(op):
    np.testing.assert_allclose(op.mv(b), op.as_matrix() @ b, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(op.mv(B), op.as_matrix() @ B, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(op @ b, op.as_matrix() @ b, rtol=1e-10, atol=1e-10)
"""

_API_SLICE = """
for op in (dense, psd, lower, diag, fun, dense + diag, 2.0 * dense, dense @ psd, dense.T):
    check_mv(op)

# linear_solve with every solver kind, vectors and blocks, numpy and jax right-hand sides.
cases = [
    (dense, linsolve.AutoSolver()),
    (dense, linsolve.LU()),
    (dense, linsolve.QR()),
    (psd, linsolve.Cholesky()),
    (lower, linsolve.Triangular()),
    (diag, linsolve.Diagonal()),
    (psd, linsolve.CG(rtol=1e-12, atol=1e-12)),
    (psd, linsolve.MINRES(rtol=1e-12, atol=1e-12)),
    (fun, linsolve.CG(rtol=1e-12, atol=1e-12)),
    (dense, linsolve.GMRES(rtol=1e-12, atol=1e-12)),
    (dense, linsolve.BiCGStab(rtol=1e-12, atol=1e-12)),
]
for op, solver in cases:
    for rhs in (b, jnp.asarray(B)):
        sol = linsolve.linear_solve(op, rhs, solver)
        assert int(sol.result) == linsolve.RESULTS.successful, (type(solver).__name__, sol.result)
        np.testing.assert_allclose(op.as_matrix() @ sol.value, rhs, rtol=1e-8, atol=1e-8)

# A warm start, and a gradient through the solve (the derivative rule runs checked too).
sol = linsolve.linear_solve(psd, b, linsolve.CG(rtol=1e-12, atol=1e-12), y0=np.zeros(n))
grad = jax.grad(lambda a: jnp.sum(linsolve.linear_solve(linsolve.MatrixOperator(a), b).value))(jnp.asarray(m))
assert grad.shape == (n, n)

# Log-determinants: plain, with `return_result`, and their gradients.
_, expected = np.linalg.slogdet(spd)
for op in (psd, dense, lower, diag):
    sign, logabsdet = linsolve.slogdet(op)
    (sign, logabsdet), result = linsolve.slogdet(op, return_result=True)
    np.testing.assert_allclose(logabsdet, np.linalg.slogdet(op.as_matrix())[1], rtol=1e-10)
for op in (psd, diag):
    value = linsolve.logdet(op)
    value, result = linsolve.logdet(op, return_result=True)
np.testing.assert_allclose(linsolve.logdet(psd), expected, rtol=1e-10)
g = jax.grad(lambda a: linsolve.logdet(linsolve.MatrixOperator(a, linsolve.positive_semidefinite_tag)))(jnp.asarray(spd))
np.testing.assert_allclose(g, np.tril(2 * np.linalg.inv(spd) - np.diag(np.diag(np.linalg.inv(spd)))), rtol=1e-8, atol=1e-12)

# Factorizations (numpy input, batched input).
l = linsolve.cholesky(spd)
np.testing.assert_allclose(l @ l.T, spd, rtol=1e-10)
p, l, u = linsolve.lu(m)
np.testing.assert_allclose(p @ l @ u, m, rtol=1e-10, atol=1e-12)
p, l, u = linsolve.lu(np.stack([m[:, :4], m[:, :4]]))
l = linsolve.cholesky(jnp.stack([jnp.asarray(spd)] * 2))

# Eigenpairs.
eig = linsolve.eigh(psd)
np.testing.assert_allclose(eig.eigenvalues, np.linalg.eigvalsh(spd), rtol=1e-10)
eig = linsolve.eigh(psd, linsolve.DiagonalOperator(jnp.ones(n)))
eig = linsolve.lobpcg(psd, 2, key=jax.random.key(0), tol=1e-10)
np.testing.assert_allclose(eig.eigenvalues, np.linalg.eigvalsh(spd)[:2], rtol=1e-6)
eig = linsolve.lobpcg(psd, 1, largest=True, X0=jnp.asarray(rng.standard_normal((n, 2))))

# Entries of the inverse, dense.
d, result = linsolve.diag_inverse(psd, return_result=True)
np.testing.assert_allclose(d, np.diag(np.linalg.inv(spd)), rtol=1e-10)

# float32 throughout.
op32 = linsolve.MatrixOperator(jnp.asarray(spd, jnp.float32), linsolve.positive_semidefinite_tag)
for solver in (linsolve.Cholesky(), linsolve.CG()):
    sol = linsolve.linear_solve(op32, b.astype(np.float32), solver)
    assert sol.value.dtype == jnp.float32
value = linsolve.logdet(op32)

# lineax round trip.
back = linsolve.from_lineax(linsolve.to_lineax(psd))
np.testing.assert_allclose(back.mv(b), spd @ b, rtol=1e-12)
print("runtime-checked slice: ok")
"""

# The sparse Cholesky path: the operator, the solve, the log-determinant, the entries of
# the inverse.
_SPARSE_SLICE = """
check_mv(sparse)
sol = linsolve.linear_solve(sparse, b, linsolve.SparseCholesky())
np.testing.assert_allclose(spd_csc @ sol.value, b, rtol=1e-10)
sol = linsolve.linear_solve(sparse, B)
(sign, logabsdet), result = linsolve.slogdet(sparse, return_result=True)
np.testing.assert_allclose(linsolve.logdet(sparse), np.linalg.slogdet(spd_csc.toarray())[1], rtol=1e-10)
inv = np.linalg.inv(spd_csc.toarray())
np.testing.assert_allclose(linsolve.diag_inverse(sparse), np.diag(inv), rtol=1e-10)
s, result = linsolve.selected_inverse(sparse, return_result=True)
lower_s = np.tril(s.as_matrix())
np.testing.assert_allclose(lower_s, np.tril(inv) * (lower_s != 0), rtol=1e-10)
g = jax.grad(lambda v: linsolve.logdet(linsolve.SparseOperator(v, sparse.pattern.indices, sparse.pattern.indptr, (n, n), linsolve.positive_semidefinite_tag)))(sparse.values)
print("runtime-checked sparse slice: ok")
"""

# The hook must be on: a call against an annotation raises jaxtyping's error, not the
# function's own (a vector of the wrong rank into `mv`, which would otherwise be a ValueError).
_HOOK_IS_ON = """
try:
    linsolve.MatrixOperator(jnp.eye(3)).mv(np.ones((3, 2, 1)))
except jaxtyping.TypeCheckError:
    print("hook on")
"""


def _run(body: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent(_PRELUDE) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)


def test_hook_is_on():
    out = _run(_HOOK_IS_ON)
    assert out.returncode == 0, out.stderr[-5000:]
    assert "hook on" in out.stdout, (out.stdout, out.stderr[-5000:])


# (About a minute: every call of the slice is checked, and it compiles all solvers.)
@pytest.mark.slow
def test_public_api_under_runtime_type_checks():
    out = _run(_API_SLICE)
    assert out.returncode == 0, out.stderr[-8000:]
    assert "runtime-checked slice: ok" in out.stdout


@pytest.mark.slow
def test_sparse_api_under_runtime_type_checks():
    out = _run(_SPARSE_SLICE)
    assert out.returncode == 0, out.stderr[-8000:]
    assert "runtime-checked sparse slice: ok" in out.stdout
