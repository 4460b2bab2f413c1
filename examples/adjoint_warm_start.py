"""Warm-starting the adjoint solve in an optimisation loop.

The gradient of a loss w.r.t. the right-hand side `b` of `A x = b` *is* the solution `λ`
of the transposed system `Aᵀ λ = ∂loss/∂x` — the adjoint solve that reverse mode runs. In a
loop where `b` (or `A`) changes a little per step, the previous step's `λ` is an excellent
initial guess for this step's adjoint solve, just as the previous `x` is for the forward
solve. `linsolve.linear_solve` takes both (`y0=`, `adjoint_y0=`), with derivative exactly
zero, so they can be fed back without `stop_gradient`. `CG(recycle=m)` additionally starts
the adjoint solve from, and deflates it against, `m` Ritz vectors of the forward solve.

Here: recover a source `f` from a noisy observation of the Poisson field `u = A⁻¹ f`
(2-D, matrix-free) by gradient descent on `½‖u − u_obs‖² + ½α‖f‖²`, cold and warm, and
count the operator applications of each.

    python examples/adjoint_warm_start.py
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import linsolve as ls


jax.config.update("jax_enable_x64", True)

side = 48
n = side * side
inv_h2 = (side + 1) ** 2


def laplacian(u):
    grid = u.reshape(side, side)
    p = jnp.pad(grid, 1)
    return inv_h2 * (4 * grid - p[:-2, 1:-1] - p[2:, 1:-1] - p[1:-1, :-2] - p[1:-1, 2:]).reshape(-1)


# Count operator applications with a host callback (for this demonstration only).
applications = [0]


def counted_laplacian(u):
    jax.debug.callback(lambda _: applications.__setitem__(0, applications[0] + 1), u[0])
    return laplacian(u)


op = ls.FunctionOperator(counted_laplacian, jnp.zeros(n), ls.positive_semidefinite_tag)

# Synthetic data: two Gaussian sources, observed with 1% noise.
grid = np.linspace(0, 1, side + 2)[1:-1]
xx, yy = np.meshgrid(grid, grid)
f_true = 1e3 * (np.exp(-((xx - 0.3) ** 2 + (yy - 0.6) ** 2) / 0.005)
                - 0.7 * np.exp(-((xx - 0.7) ** 2 + (yy - 0.3) ** 2) / 0.005)).reshape(-1)
u_true = ls.linear_solve(op, jnp.asarray(f_true), ls.CG(rtol=1e-12)).value
u_obs = u_true + 0.01 * jnp.max(jnp.abs(u_true)) * jnp.asarray(np.random.default_rng(0).standard_normal(n))
alpha = 1e-6
lr = 1.0 / ((2 * np.pi**2) ** -2 + alpha)  # 1/L: the largest Hessian eigenvalue is 1/λ_min(A)²


def make_step(solver, warm):
    @eqx.filter_jit
    def step(op, f, u_prev, lam_prev):
        def loss(f):
            sol = ls.linear_solve(
                op, f, solver,
                y0=u_prev if warm else None,          # previous forward solution
                adjoint_y0=lam_prev if warm else None,  # previous adjoint solution
            )
            u = sol.value
            return 0.5 * jnp.sum((u - u_obs) ** 2) + 0.5 * alpha * jnp.sum(f**2), u

        (value, u), g = jax.value_and_grad(loss, has_aux=True)(f)
        # ∂loss/∂f = λ + αf, where λ = A⁻ᵀ(u − u_obs) is the adjoint solution: the part
        # of the gradient that came through the right-hand side of the solve.
        lam = g - alpha * f
        return f - lr * g, u, lam, value

    return step


for name, solver, warm in [
    ("cold start", ls.CG(rtol=1e-8), False),
    ("y0 + adjoint_y0", ls.CG(rtol=1e-8), True),
    ("y0 + adjoint_y0 + recycle=8", ls.CG(rtol=1e-8, recycle=8), True),
]:
    step = make_step(solver, warm)
    f, u, lam = jnp.zeros(n), jnp.zeros(n), jnp.zeros(n)
    applications[0] = 0
    for _ in range(30):
        f, u, lam, value = step(op, f, u, lam)
    jax.effects_barrier()
    print(f"{name:30s} final loss {float(value):.6e}   operator applications {applications[0]}")
