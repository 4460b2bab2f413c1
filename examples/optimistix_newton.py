"""An optimistix Newton solve with linsolve solvers, differentiated through the solution.

The nonlinear PDE (a steady reaction–diffusion equation on the unit square, zero
Dirichlet boundary, 5-point finite differences on a `side × side` grid)

    F(u; θ) = −Δu + c·u³ − a·g(x) = 0,        θ = (c, a),

with `g` a Gaussian source, is solved by `optimistix.Newton`. Each Newton step solves
`J δ = F` with the Jacobian `J = −Δ + 3c·diag(u²)` — symmetric positive definite, so the
root find is tagged `positive_semidefinite_tag` and linsolve's CG (matrix-free: optimistix
hands over `jax.linearize`'s Jacobian-vector product) or Cholesky (which materialises
`J`) can be used, through `ls.as_lineax_solver`.

The quantity of interest `Q(θ) = mean(u(θ))` is differentiated w.r.t. `θ` by
`optimistix.ImplicitAdjoint` — one transposed linear solve with the Jacobian at the
solution, again with a linsolve solver — and compared with central finite differences of
the whole Newton solve. Forward mode (`jax.jacfwd`) gives the sensitivity fields `∂u/∂c`
and `∂u/∂a`.

Prints a table (first call with compilation, then the median of 3 calls of
`value_and_grad`; Newton steps; dQ/dθ vs finite differences) and writes
`examples/optimistix_newton.png` (u, ∂u/∂c, ∂u/∂a). About half a minute on 2 CPU cores.

    python examples/optimistix_newton.py [--side 24] [--plot PATH]
"""

import argparse
import os
import time
from pathlib import Path

from _needs import require


require("optimistix")  # before the work, not after it


# One thread (XLA and the LAPACK behind jax's CPU factorizations), for stable timings: on
# a small shared machine multithreaded kernels spin-wait for cores that other processes
# hold (the dense row ran ~50× slower). Remove these lines to use every core.
for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import jax  # noqa: E402


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import lineax as lx  # noqa: E402
import numpy as np  # noqa: E402
import optimistix as optx  # noqa: E402

import linsolve as ls  # noqa: E402


def make_residual(side: int):
    h = 1.0 / (side + 1)
    xs = jnp.linspace(h, 1 - h, side)
    x, y = jnp.meshgrid(xs, xs, indexing="ij")
    source = jnp.exp(-((x - 0.35) ** 2 + (y - 0.6) ** 2) / 0.02)

    def residual(u, theta):
        c, a = theta
        p = jnp.pad(u, 1)  # zero Dirichlet boundary
        lap = (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4 * u) / h**2
        return -lap + c * u**3 - a * source

    return residual


# --8<-- [start:solve]
def make_solve(residual, side: int, solver, tol: float = 1e-11):
    """`θ ↦ u(θ)` by Newton, with `solver` (a lineax solver) for the Newton steps and
    for the implicit adjoint."""
    # J = −Δ + 3c·diag(u²) is symmetric positive definite for c ≥ 0.
    tags = frozenset({lx.positive_semidefinite_tag})
    newton = optx.Newton(rtol=tol, atol=tol, linear_solver=solver)
    adjoint = optx.ImplicitAdjoint(linear_solver=solver)

    def solve(theta):
        sol = optx.root_find(
            residual,
            newton,
            jnp.zeros((side, side)),
            theta,
            adjoint=adjoint,
            tags=tags,
            max_steps=50,
        )
        return sol.value, sol.stats["num_steps"]

    return solve


# --8<-- [end:solve]


def main(side: int, plot: str | None):
    residual = make_residual(side)
    theta = jnp.array([300.0, 40.0])  # (c, a): a visibly nonlinear regime
    n = side * side
    # --8<-- [start:solvers]
    solvers = {
        # Matrix-free: CG applies the Jacobian by jax.linearize's JVP, never forms it.
        "ls.CG (matrix-free)": ls.as_lineax_solver(ls.CG(rtol=1e-12)),
        # Dense: Cholesky materialises the n × n Jacobian (n JVPs) and factorizes it.
        "ls.Cholesky (dense)": ls.as_lineax_solver(ls.Cholesky()),
        # AutoSolver sees a matrix-free PSD operator of size >= 64 and picks CG.
        "ls.AutoSolver()": ls.as_lineax_solver(ls.AutoSolver()),
        "lx.CG (lineax's own)": lx.CG(rtol=1e-12, atol=1e-12),
    }
    # --8<-- [end:solvers]
    print(f"Newton on a {side}×{side} grid (n = {n}), θ = (c, a) = {tuple(map(float, theta))}")
    print("Q(θ) = mean(u(θ)); dQ/dθ by optimistix.ImplicitAdjoint vs central differences\n")
    header = (
        f"{'linear solver':24s} {'compile+run s':>13s} {'run s':>7s} {'steps':>5s}  {'‖F(u)‖∞':>8s}  "
        f"{'dQ/dc':>11s} {'dQ/da':>11s}  {'rel. err vs FD':>14s}"
    )
    print(header)
    print("-" * len(header))
    reference_u = None
    for name, solver in solvers.items():
        solve = make_solve(residual, side, solver)
        q = jax.jit(lambda t, solve=solve: jnp.mean(solve(t)[0]))
        value_and_grad = jax.jit(jax.value_and_grad(q))
        t0 = time.perf_counter()
        (u, steps) = jax.block_until_ready(jax.jit(solve)(theta))
        _, grad = jax.block_until_ready(value_and_grad(theta))
        first = time.perf_counter() - t0
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            jax.block_until_ready(value_and_grad(theta))
            runs.append(time.perf_counter() - t0)
        run = float(np.median(runs))
        # Central differences of the whole Newton solve, relative step 1e-5.
        steps_fd = 1e-5 * theta
        fd = np.array(
            [(q(theta + e) - q(theta - e)) / (2 * e[i]) for i, e in enumerate(jnp.diag(steps_fd))]
        )
        err = np.max(np.abs(np.asarray(grad) - fd) / np.abs(fd))
        res = float(jnp.max(jnp.abs(residual(u, theta))))
        print(
            f"{name:24s} {first:13.2f} {run:7.3f} {int(steps):5d}  {res:8.1e}  "
            f"{float(grad[0]):11.4e} {float(grad[1]):11.4e}  {err:14.1e}"
        )
        if reference_u is None:
            reference_u = u
        else:
            assert np.allclose(u, reference_u, rtol=1e-8, atol=1e-12), name
        assert err < 1e-5, (name, err)

    # Forward mode: the sensitivity fields ∂u/∂c and ∂u/∂a (two JVPs through the
    # implicit function, one tangent solve each), against central differences.
    solve = make_solve(residual, side, solvers["ls.CG (matrix-free)"])
    u, sens = jax.jit(lambda t: (solve(t)[0], jax.jacfwd(lambda t: solve(t)[0])(t)))(theta)
    field_err = 0.0
    for i, e in enumerate(jnp.diag(1e-5 * theta)):
        fd_field = (solve(theta + e)[0] - solve(theta - e)[0]) / (2 * e[i])
        deviation = jnp.max(jnp.abs(sens[..., i] - fd_field)) / jnp.max(jnp.abs(fd_field))
        field_err = max(field_err, float(deviation))
    print(
        f"\n∂u/∂θ by jax.jacfwd (forward mode): max relative deviation from central differences "
        f"{field_err:.1e}"
    )
    assert field_err < 1e-6

    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), constrained_layout=True)
        panels = (
            (u, "u(θ)", "viridis"),
            (sens[..., 0], "∂u/∂c", "magma"),
            (sens[..., 1], "∂u/∂a", "viridis"),
        )
        for ax, (field, title, cmap) in zip(axes, panels):
            im = ax.imshow(np.asarray(field).T, origin="lower", extent=(0, 1, 0, 1), cmap=cmap)
            ax.set_title(title)
            fig.colorbar(im, ax=ax, shrink=0.85)
        c, a = map(float, theta)
        fig.suptitle(f"−Δu + c·u³ = a·g   (c = {c:g}, a = {a:g}); sensitivities by forward mode")
        fig.savefig(plot, dpi=100)
        print(f"wrote {plot}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=24)
    parser.add_argument(
        "--plot",
        default=str(Path(__file__).resolve().parent / "optimistix_newton.png"),
        help="where to write the figure ('' for none; default: next to this script)",
    )
    args = parser.parse_args()
    if args.plot:
        require("matplotlib")
    main(args.side, args.plot)
