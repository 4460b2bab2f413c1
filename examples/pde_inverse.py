"""A PDE-constrained inverse problem: recover a diffusion coefficient with CG and warm starts.

The forward model is the diffusion equation `−∇·(κ ∇u) = f` on the unit square (zero
Dirichlet boundary), discretised by finite volumes on a `48 × 48` grid and applied
matrix-free. Four sources `f₁ … f₄` are applied one at a time and each resulting field
`u_j` is observed with 1% noise. We recover `m = log κ` from these observations by
L-BFGS on

    J(m) = ½ Σ_j ‖u_j(m) − d_j‖² / σ²  +  ½ β ‖∇m‖²,

where all four solves are one `linear_solve` with a right-hand side of shape `(n, 4)`
(`ls.CG`, Jacobi preconditioner built from the traced κ). `jax.grad` runs the adjoint
(transposed) solve of reverse mode.

The point of the example: an optimiser moves `m` a little per step, so

- the previous forward solution `u` is a good initial guess (`y0=`) for the next forward
  solve, and
- the previous *adjoint* solution `λ` is a good initial guess (`adjoint_y0=`) for the
  next transposed solve. `λ` is the gradient w.r.t. the right-hand side `f`, so asking
  `jax.vjp` for the gradient w.r.t. `f` too hands it over for free.

- the Krylov space the solves explored — the slow, smallest-eigenvalue modes of the
  operator — changes little too: `CG(recycle=8)` returns a `ls.RecycleSpace` in
  `sol.stats["recycle"]`, and the next evaluation passes it back
  (`linear_solve(..., recycle=space)`): its forward solve and the adjoint solve of
  reverse mode are deflated by it, and refresh it.

The guesses and the space have derivative exactly zero inside linsolve, so they are
passed without `stop_gradient`. At every point L-BFGS evaluates, the same evaluation is
run four ways, to count the operator applications of each, forward and adjoint
separately: cold (no guesses), warm (`y0`, `adjoint_y0`), within (warm, and
`CG(recycle=8)`: the adjoint solve starts from and is deflated against 8 Ritz vectors of
the forward solve) and cross (warm, and the recycle space carried from evaluation to
evaluation). The optimisation path itself is the cross one; the four gradients agree up
to the effect of the solver tolerance (printed).

Writes `examples/pde_inverse.png`: true and recovered κ, and the operator applications
per solve at every L-BFGS iteration; and `examples/pde_inverse_recycling.png`: the
applications (forward + adjoint) per evaluation of the four variants. About a minute on 2 CPU cores.

    python examples/pde_inverse.py [--iters 30] [--plot PATH]
"""

import argparse
import os
import time
from pathlib import Path

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _needs import require  # noqa: E402

import linsolve as ls  # noqa: E402


N = 48  # interior grid points per direction
n = N * N
h = 1.0 / (N + 1)
RTOL = 1e-6  # CG tolerance of every solve (forward and adjoint): ample for L-BFGS
RECYCLE = 8  # vectors in the recycle space (per source)
VARIANTS = ("cold", "warm", "within", "cross")

# Operator applications, counted by a host callback (for this demonstration only).
applications = [0]


def _tick(_):
    applications[0] += 1


def take_count() -> int:
    jax.effects_barrier()
    out, applications[0] = applications[0], 0
    return out


def diffusion(kappa):
    """`u ↦ −∇·(κ∇u)` (finite volumes, κ at the nodes, arithmetic means on the faces,
    κ extended to the boundary by its nearest interior value), and its diagonal."""
    k = jnp.pad(kappa.reshape(N, N), 1, mode="edge")
    kx = 0.5 * (k[1:, 1:-1] + k[:-1, 1:-1])  # faces normal to x: (N + 1, N)
    ky = 0.5 * (k[1:-1, 1:] + k[1:-1, :-1])  # faces normal to y: (N, N + 1)

    def apply(u):
        jax.debug.callback(_tick, u[0])  # u[0]: counted once per column of a block
        grid = jnp.pad(u.reshape(N, N), 1)  # zero Dirichlet boundary
        flux_x = kx * (grid[1:, 1:-1] - grid[:-1, 1:-1])
        flux_y = ky * (grid[1:-1, 1:] - grid[1:-1, :-1])
        return ((flux_x[:-1] - flux_x[1:]) + (flux_y[:, :-1] - flux_y[:, 1:])).reshape(-1) / h**2

    diagonal = (kx[:-1] + kx[1:] + ky[:, :-1] + ky[:, 1:]).reshape(-1) / h**2
    return ls.FunctionOperator(apply, jnp.zeros(n), ls.positive_semidefinite_tag), diagonal


# -- synthetic data ---------------------------------------------------------------------

grid_1d = np.linspace(h, 1 - h, N)
xx, yy = np.meshgrid(grid_1d, grid_1d, indexing="ij")


def bump(cx, cy, width):
    return np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * width**2))


# A conductive blob and a resistive inclusion in a unit background.
kappa_true = np.exp(np.log(4.0) * bump(0.32, 0.64, 0.09) + np.log(0.3) * bump(0.68, 0.32, 0.07))
m_true = jnp.asarray(np.log(kappa_true).reshape(-1))
sources = jnp.asarray(
    np.stack(
        [
            100 * bump(cx, cy, 0.08).reshape(-1)
            for cx, cy in ((0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75))
        ],
        axis=1,
    )
)  # (n, 4): four experiments, one block right-hand side
k = sources.shape[1]


def solve_true():
    op, _ = diffusion(jnp.exp(m_true))
    return ls.linear_solve(op, sources, ls.CG(rtol=1e-12)).value


u_true = solve_true()
sigma = 0.01 * float(jnp.max(jnp.abs(u_true)))
data = u_true + sigma * jnp.asarray(np.random.default_rng(0).standard_normal(u_true.shape))
beta = 20.0  # smoothness weight, chosen by eye


# -- the objective, with warm starts ----------------------------------------------------


# --8<-- [start:objective]
def objective(m, f, u_prev, lam_prev, recycle, space):
    kappa = jnp.exp(m)
    op, diagonal = diffusion(kappa)
    # A preconditioner built from the traced κ: fine, it gets no derivative.
    solver = ls.CG(rtol=RTOL, preconditioner=ls.DiagonalOperator(1 / diagonal), recycle=recycle)
    sol = ls.linear_solve(op, f, solver, y0=u_prev, adjoint_y0=lam_prev, recycle=space)
    u = sol.value
    grid = m.reshape(N, N)
    smooth = jnp.sum(jnp.diff(grid, axis=0) ** 2) + jnp.sum(jnp.diff(grid, axis=1) ** 2)
    return 0.5 * jnp.sum((u - data) ** 2) / sigma**2 + 0.5 * beta * smooth, (
        u,
        sol.stats.get("recycle"),
    )


@eqx.filter_jit
def forward(m, u_prev, lam_prev, recycle, space):
    """The forward solve, and the pullback that runs the adjoint solve."""
    f = lambda m, f: objective(m, f, u_prev, lam_prev, recycle, space)  # noqa: E731
    value, pullback, (u, new_space) = jax.vjp(f, m, sources, has_aux=True)
    return value, u, new_space, pullback


@eqx.filter_jit
def backward(pullback):
    """`(∂J/∂m, ∂J/∂f)`; `∂J/∂f` is the adjoint solution λ (J depends on f only through u)."""
    return pullback(jnp.ones(()))


# --8<-- [end:objective]


def evaluate(m, u_prev, lam_prev, recycle=0, space=None):
    """J, ∂J/∂m, u, λ, the operator applications of the forward and the adjoint solve, and
    the refreshed recycle space."""
    take_count()
    value, u, new_space, pullback = forward(m, u_prev, lam_prev, recycle, space)
    value.block_until_ready()
    fwd = take_count()
    grad_m, lam = backward(pullback)
    grad_m.block_until_ready()
    return float(value), grad_m, u, lam, fwd, take_count(), new_space


# -- L-BFGS (two-loop recursion, Armijo backtracking) -----------------------------------


def lbfgs_direction(grad, pairs):
    q = grad
    alphas = []
    for s, y in reversed(pairs):
        a = (s @ q) / (y @ s)
        alphas.append(a)
        q = q - a * y
    if pairs:
        s, y = pairs[-1]
        q = q * (s @ y) / (y @ y)
    for (s, y), a in zip(pairs, reversed(alphas)):
        q = q + s * (a - (y @ q) / (y @ s))
    return -q


def run(iters: int):
    zeros = jnp.zeros((n, k))
    m = jnp.zeros(n)  # start from κ = 1
    # One recycle space per source (column), carried like u and λ; an empty one to start.
    warm = dict(u=zeros, lam=zeros, space=ls.RecycleSpace.empty(n, RECYCLE, columns=k))
    # Per L-BFGS iteration: (forward, adjoint) applications, summed over its line search.
    counts = {key: [] for key in VARIANTS}
    evaluations = []  # evaluations (line-search trials) per iteration
    worst_gap = [0.0]

    def measured(m):
        """The evaluation that drives the optimisation (warm starts and the carried
        recycle space), plus the cold, warm and within-solve recycled ones at the same
        point, for the counts."""
        out = evaluate(m, warm["u"], warm["lam"], recycle=RECYCLE, space=warm["space"])
        cold = evaluate(m, None, None)  # no initial guesses
        plain = evaluate(m, warm["u"], warm["lam"])
        within = evaluate(m, warm["u"], warm["lam"], recycle=RECYCLE)
        for other in (cold, plain, within):  # same gradient, up to the solver tolerance
            gap = float(jnp.linalg.norm(other[1] - out[1]) / jnp.linalg.norm(out[1]))
            worst_gap[0] = max(worst_gap[0], gap)
        warm["u"], warm["lam"], warm["space"] = out[2], out[3], out[6]
        return out, cold, plain, within

    def tally(per_iteration, results):
        for key, ev in zip(("cross", "cold", "warm", "within"), results):
            per_iteration[key][0] += ev[4]
            per_iteration[key][1] += ev[5]

    first = measured(m)
    value, grad = first[0][0], first[0][1]
    pairs = []
    for it in range(iters):
        direction = lbfgs_direction(grad, pairs)
        if not pairs:  # first step: a unit step in m along the steepest descent
            direction = direction / jnp.linalg.norm(direction)
        step = 1.0
        per_iteration = {key: [0, 0] for key in counts}
        trials = 0
        while True:
            trial = measured(m + step * direction)
            tally(per_iteration, trial)
            trials += 1
            if trial[0][0] <= value + 1e-4 * step * float(grad @ direction) or step < 1e-6:
                break
            step *= 0.5
        new_value, new_grad = trial[0][0], trial[0][1]
        s, y = step * direction, new_grad - grad
        if float(s @ y) > 1e-12 * float(y @ y):
            pairs = (pairs + [(s, y)])[-10:]
        m, value, grad = m + s, new_value, new_grad
        for key in counts:
            counts[key].append(tuple(per_iteration[key]))
        evaluations.append(trials)
        error = float(jnp.linalg.norm(m - m_true) / jnp.linalg.norm(m_true))
        print(
            f"iteration {it + 1:3d}  J = {value:.6e}  ‖m − m_true‖/‖m_true‖ = {error:.3f}  "
            "applications (forward + adjoint) cold/warm/within/cross = "
            + "/".join(str(sum(per_iteration[key])) for key in VARIANTS)
        )
    print(f"largest relative difference between the four variants' gradients: {worst_gap[0]:.1e}")
    return m, counts, evaluations


def plot(m, counts, evaluations, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3), gridspec_kw=dict(width_ratios=[1, 1, 1.5]))
    vmin, vmax = float(kappa_true.min()), float(kappa_true.max())
    extent = (0, 1, 0, 1)
    for ax, field, title in (
        (axes[0], kappa_true, "true κ"),
        (axes[1], np.exp(np.asarray(m)).reshape(N, N), "recovered κ"),
    ):
        im = ax.imshow(field.T, origin="lower", extent=extent, vmin=vmin, vmax=vmax, cmap="viridis")
        ax.set_title(title)
        ax.set_xlabel("x")
        ax.set_ylabel("y")
    for cx, cy in ((0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)):
        axes[0].plot(cx, cy, "w+", ms=8)
    fig.colorbar(im, ax=axes[:2].tolist(), shrink=0.85, label="κ")
    ax = axes[2]
    its = np.arange(1, len(counts["cold"]) + 1)
    trials = np.asarray(evaluations)
    styles = {
        "cold": ("tab:red", "cold (no y0, no adjoint_y0)"),
        "warm": ("tab:blue", "warm (previous u, previous λ)"),
        "within": ("tab:green", "warm + CG(recycle=8)"),
    }
    for key in ("cold", "warm"):
        color, label = styles[key]
        ax.plot(
            its,
            np.array([c[0] for c in counts[key]]) / trials,
            color=color,
            ls="--",
            label=f"forward, {label}",
        )
    for key in ("cold", "warm", "within"):
        color, label = styles[key]
        ax.plot(
            its,
            np.array([c[1] for c in counts[key]]) / trials,
            color=color,
            ls="-",
            label=f"adjoint, {label}",
        )
    backtracked = its[trials > 1]
    if backtracked.size:
        ax.plot(
            backtracked,
            np.zeros(backtracked.size) + 8,
            "k^",
            ms=5,
            label="iteration with a line-search backtrack",
        )
    ax.set_xlabel("L-BFGS iteration")
    ax.set_ylabel(f"operator applications per solve (all {k} sources)")
    ax.set_title("CG work per forward / adjoint solve")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"wrote {path}")
    plot_recycling(counts, evaluations, path.replace(".png", "_recycling.png"))


def plot_recycling(counts, evaluations, path):
    """Operator applications (forward + adjoint) per evaluation, the four variants."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.3))
    its = np.arange(1, len(counts["cold"]) + 1)
    trials = np.asarray(evaluations)
    styles = {
        "cold": ("tab:red", "cold (no y0, no adjoint_y0)"),
        "warm": ("tab:orange", "warm (previous u, previous λ)"),
        "within": ("tab:green", f"warm + CG(recycle={RECYCLE}) within an evaluation"),
        "cross": ("tab:blue", f"warm + RecycleSpace carried across evaluations (m = {RECYCLE})"),
    }
    for key in VARIANTS:
        color, label = styles[key]
        ax.plot(
            its, np.array([c[0] + c[1] for c in counts[key]]) / trials, color=color, label=label
        )
    ax.set_xlabel("L-BFGS iteration")
    ax.set_ylabel(f"operator applications, forward + adjoint (all {k} sources)")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    ax.set_title(
        "CG work per evaluation: warm starts and Krylov recycling\n"
        f"(products are deterministic; machine load average 1/5/15 min at the end: {load})",
        fontsize="medium",
    )
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"wrote {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument(
        "--plot",
        default=str(Path(__file__).resolve().parent / "pde_inverse.png"),
        help="where to write the figure ('' for none; default: next to this script)",
    )
    args = parser.parse_args()
    if args.plot:
        require("matplotlib")  # before the work, not after it
    start = time.perf_counter()
    m, counts, evaluations = run(args.iters)
    totals = {key: np.sum(counts[key], axis=0) for key in counts}
    print(
        f"\noperator applications over {args.iters} iterations ({sum(evaluations)} evaluations "
        "in the line searches), forward and adjoint:"
    )
    for key in VARIANTS:
        fwd, adj = totals[key]
        print(
            f"  {key:8s} forward {fwd:7d} ({fwd / totals['cold'][0]:.2f}×)   "
            f"adjoint {adj:7d} ({adj / totals['cold'][1]:.2f}×)   "
            f"total {fwd + adj:7d} ({(fwd + adj) / sum(totals['cold']):.2f}×)"
        )
    last = {key: np.sum(counts[key][-5:], axis=0) for key in counts}
    for key in ("warm", "cross"):
        print(
            f"last 5 iterations, {key} / cold: forward {last[key][0] / last['cold'][0]:.2f}×, "
            f"adjoint {last[key][1] / last['cold'][1]:.2f}×"
        )
    error = float(jnp.linalg.norm(m - m_true) / jnp.linalg.norm(m_true))
    print(f"relative error of log κ: {error:.3f};  {time.perf_counter() - start:.1f} s")
    if args.plot:
        plot(m, counts, evaluations, args.plot)


if __name__ == "__main__":
    main()
