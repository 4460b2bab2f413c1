"""linsolve quickstart: solves, gradients, initial guesses, log-determinants.

Run with `python examples/quickstart.py`; mostly XLA compilation (minutes on a loaded 2-core machine).

1. Solve with a positive definite dense operator and check the gradient w.r.t. the
   matrix and the right-hand side against central finite differences.
2. The one-triangle example (the structure convention): a PSD-tagged matrix whose
   upper triangle is not stored. linsolve's gradient is the derivative of what it
   computed; lineax and jax.scipy return other numbers.
3. `y0` / `adjoint_y0` with CG: traced initial guesses have derivative exactly zero, and
   warm starts (previous solution, previous gradient as the next adjoint guess) save
   operator applications in a gradient-descent loop, printed cold vs warm.
4. The gradient of a log-determinant.
"""

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jax.scipy.linalg as jsl  # noqa: E402
import lineax as lx  # noqa: E402
import numpy as np  # noqa: E402

import linsolve as ls  # noqa: E402


def central_fd(f, x, eps=1e-6):
    """Central finite differences of a scalar function of an array, entry by entry."""
    f = jax.jit(f)
    x = np.asarray(x, dtype=np.float64)
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = eps
        grad[idx] = (float(f(x + e)) - float(f(x - e))) / (2 * eps)
    return grad


def section(title):
    print(f"\n== {title} " + "=" * max(0, 70 - len(title)))


# --- 1. A PSD solve and its gradients -------------------------------------------------
section("1. Solve a positive definite system, differentiate it")

rng = np.random.default_rng(0)
n = 5
M = rng.standard_normal((n, n))
A = jnp.asarray(M @ M.T + n * np.eye(n))  # symmetric positive definite
b = jnp.asarray(rng.standard_normal(n))


def loss(A, b):
    # Tagged PSD: Cholesky is used and only the lower triangle of A is read.
    op = ls.MatrixOperator(A, ls.positive_semidefinite_tag)
    x = ls.linear_solve(op, b).value
    return jnp.sum(x**2)


@jax.jit
def residual(A, b):
    x = ls.linear_solve(ls.MatrixOperator(A, ls.positive_semidefinite_tag), b).value
    return jnp.linalg.norm(A @ x - b)


print(f"residual |A x - b| = {float(residual(A, b)):.2e}")

value, (gA, gb) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(A, b)
fdA = central_fd(lambda a: loss(a, b), A)
fdb = central_fd(lambda v: loss(A, v), b)
print(f"loss = {float(value):.6f}")
# FD perturbs every stored entry, the upper triangle included: moving an entry that is
# never read changes nothing, and its gradient is exactly zero.
print(
    f"max |dloss/dA - FD| = {np.max(np.abs(gA - fdA)):.1e}   (upper triangle of dloss/dA: "
    f"{float(jnp.max(jnp.abs(jnp.triu(gA, 1)))):.1f}, it is never read)"
)
print(f"max |dloss/db - FD| = {np.max(np.abs(gb - fdb)):.1e}")


# --- 2. The one-triangle example -------------------------------------------------------
section("2. One-triangle input: A = [[1, 0], [rho, 1]] tagged PSD, loss = x[1]")

rho = 0.88
e1 = jnp.array([1.0, 0.0])
exact = -(1 + rho**2) / (1 - rho**2) ** 2  # d/drho of x[1] for A = [[1, rho], [rho, 1]]


def lower(r):  # the lower triangle holds rho; the upper one is not stored (zero)
    return jnp.array([[1.0, 0.0], [r, 1.0]])


def upper(r):  # the same matrix stored by its upper triangle
    return jnp.array([[1.0, r], [0.0, 1.0]])


methods = {
    "linsolve (lower storage)": lambda r: ls.linear_solve(
        ls.MatrixOperator(lower(r), ls.positive_semidefinite_tag), e1
    ).value[1],
    "linsolve (full symmetric)": lambda r: ls.linear_solve(
        ls.MatrixOperator(jnp.array([[1.0, r], [r, 1.0]]), ls.positive_semidefinite_tag), e1
    ).value[1],
    "lineax Cholesky (lower storage)": lambda r: lx.linear_solve(
        lx.MatrixLinearOperator(lower(r), lx.positive_semidefinite_tag), e1, lx.Cholesky()
    ).value[1],
    "jax.scipy solve pos (lower storage)": lambda r: jsl.solve(lower(r), e1, assume_a="pos")[1],
    "jax.scipy cho_factor(lower) + cho_solve": lambda r: jsl.cho_solve(
        jsl.cho_factor(lower(r), lower=True), e1
    )[1],
    "jax.scipy solve pos (upper storage)": lambda r: jsl.solve(upper(r), e1, assume_a="pos")[1],
}

print(f"exact: x[1] = {-rho / (1 - rho**2):.4f}, d x[1]/d rho = {exact:.4f}")
print("'FD' = central differences of that method's own forward function.")
header = f"{'method':42s} {'x[1]':>8s} {'grad':>9s} {'FD':>9s} {'grad-FD':>9s}"
print(header)
print("-" * len(header))
for name, f in methods.items():
    val, grad = map(float, jax.jit(jax.value_and_grad(f))(rho))
    f = jax.jit(f)
    fd = (float(f(rho + 1e-6)) - float(f(rho - 1e-6))) / 2e-6
    print(f"{name:42s} {val:8.4f} {grad:9.4f} {fd:9.4f} {grad - fd:9.2e}")
print(
    "linsolve reads the lower triangle and differentiates exactly what it read.\n"
    "lineax and jax.scipy's solve(assume_a='pos') factorize the upper triangle (here\n"
    "the identity, so x[1] = 0) but differentiate the matrix as stored. The last two\n"
    "compute the right value, but their gradient is the derivative through only one of\n"
    f"the two mirrored entries: {-1 / (1 - rho**2) ** 2:.4f} through A[1, 0], "
    f"{-(rho**2) / (1 - rho**2) ** 2:.4f} through A[0, 1]\n"
    f"(they add up to {exact:.4f}). Details: docs/structure.md."
)


# --- 3. Initial guesses: y0 and adjoint_y0 ----------------------------------------------
section("3. y0 and adjoint_y0 with CG: derivative exactly zero, and what they save")

# A matrix-free 5-point Laplacian on a 32 x 32 grid, solved by CG (direct solvers such
# as Cholesky ignore initial guesses). A host callback counts its applications.
side, products = 32, [0]


def laplacian(u):
    jax.debug.callback(lambda _: products.__setitem__(0, products[0] + 1), u[0, 0])
    p = jnp.pad(u, 1)  # zero boundary
    return 4 * u - p[:-2, 1:-1] - p[2:, 1:-1] - p[1:-1, :-2] - p[1:-1, 2:]


lap = ls.FunctionOperator(laplacian, jnp.zeros((side, side)), ls.positive_semidefinite_tag)
grid = jnp.linspace(0.0, 1.0, side)
target = jnp.outer(jnp.sin(jnp.pi * grid), jnp.sin(2 * jnp.pi * grid)).reshape(-1)


# --8<-- [start:guesses]
def fit(f, y0, adjoint_y0):
    """Loss of the field u = A⁻¹ f against a target; y0 / adjoint_y0 start the forward
    and the transposed (reverse-mode) CG solves."""
    u = ls.linear_solve(lap, f, ls.CG(rtol=1e-8), y0=y0, adjoint_y0=adjoint_y0).value
    return 0.5 * jnp.sum((u - target) ** 2), u


f0 = jnp.ones(side * side)
# Guesses computed from traced values are fine: their derivative is exactly zero.
g_y0, g_adj = jax.jit(jax.grad(lambda y, a: fit(f0, y, a)[0], argnums=(0, 1)))(f0 / 4, f0)
print(
    f"d loss/d y0: max |.| = {float(jnp.max(jnp.abs(g_y0)))}, "
    f"d loss/d adjoint_y0: max |.| = {float(jnp.max(jnp.abs(g_adj)))}"
)
# --8<-- [end:guesses]

# Gradient descent on f. The gradient w.r.t. the right-hand side f *is* the adjoint
# solution, so each step can start its transposed solve from the previous gradient, and
# its forward solve from the previous u. Operator applications, cold vs warm:
forward = jax.jit(fit)
value_and_grad = jax.jit(jax.value_and_grad(fit, has_aux=True))


def count(fn, *args):
    products[0] = 0
    out = fn(*args)
    jax.effects_barrier()  # every callback has run
    return out, products[0]


totals = {}
# --8<-- [start:warm]
print(f"{'step':>4s} {'loss':>9s}   forward cold/warm   adjoint cold/warm")
for warm in (False, True):
    f, u, lam, rows = jnp.zeros(side * side), None, None, []
    for _ in range(8):
        guesses = (u, lam) if warm else (None, None)
        _, fwd = count(forward, f, *guesses)
        ((loss_value, u), lam), both = count(value_and_grad, f, *guesses)
        rows.append((float(loss_value), fwd, both - fwd))
        f = f - 6e-4 * lam
    totals[warm] = rows
# --8<-- [end:warm]
for step, (cold, warm) in enumerate(zip(totals[False], totals[True])):
    print(f"{step:4d} {warm[0]:9.3f}   {cold[1]:8d} {warm[1]:5d}    {cold[2]:10d} {warm[2]:5d}")
fwd_ratio, adj_ratio = (
    sum(r[i] for r in totals[True]) / sum(r[i] for r in totals[False]) for i in (1, 2)
)
gap = max(abs(c[0] - w[0]) / c[0] for c, w in zip(totals[False], totals[True]))
print(
    f"warm / cold over 8 steps: forward {fwd_ratio:.2f}x, adjoint {adj_ratio:.2f}x; "
    f"losses cold vs warm agree to {gap:.0e} (CG's tolerance).\n"
    "Each step moves f by a sizeable part of itself, so the forward guess saves little;\n"
    "the adjoint right-hand side u - target changes less, and its guess saves more."
)


# --- 4. Log-determinant -----------------------------------------------------------------
section("4. logdet of a PSD operator and its gradient")


def logdet_loss(A):
    return ls.logdet(ls.MatrixOperator(A, ls.positive_semidefinite_tag))


ld, g_ld = jax.jit(jax.value_and_grad(logdet_loss))(A)
fd_ld = central_fd(logdet_loss, A)
expected = 2 * jnp.tril(jnp.linalg.inv(A), -1) + jnp.diag(jnp.diag(jnp.linalg.inv(A)))
print(f"logdet = {float(ld):.6f} (numpy: {float(np.linalg.slogdet(np.asarray(A))[1]):.6f})")
print(f"max |dlogdet/dA - FD| = {np.max(np.abs(g_ld - fd_ld)):.1e}")
print(
    f"max |dlogdet/dA - (A^-1 folded into the lower triangle)| = "
    f"{float(jnp.max(jnp.abs(g_ld - expected))):.1e}"
)
