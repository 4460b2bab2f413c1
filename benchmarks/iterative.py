"""Krylov solves: warm-started and recycled adjoints, and per-solve time against lineax and
jax.scipy.

1. **A 2-D Poisson inverse problem.** Recover a source `f` from a noisy observation of
   `u = A⁻¹ f` (`A` the 5-point Dirichlet Laplacian on a `side × side` grid, matrix-free)
   by `steps` steps of gradient descent on `½‖u − u_obs‖² + ½α‖f‖²`. Every step is one
   `jax.value_and_grad` through `linear_solve(A, f, CG(rtol))`: a forward solve and a
   transposed (adjoint) solve. Four variants:

   - `cold`: both solves start from zero;
   - `warm`: `y0` = the previous step's `u`, `adjoint_y0` = the previous step's adjoint
     solution, which is the gradient w.r.t. `f` minus `αf` (the recipe of the docs);
   - `recycle`: `CG(recycle=m)`, the adjoint solve starts from and deflates against the
     Ritz vectors of the forward solve;
   - `both`: warm starts and recycling.

   Matrix-vector products are counted with a host callback inside the operator (a
   separate run), wall time is measured without it. Target: backward products of the
   best variant <= 1/2 of `cold`.
2. **Per-solve time** of linsolve CG, lineax CG and `jax.scipy.sparse.linalg.cg` on the
   same matrix-free operator `A + diag(c)`, forward and `value_and_grad` w.r.t. `(c, b)`,
   side by side in one run. All three run exactly `iters` iterations (tolerances 0), so
   the comparison is per-iteration cost, not stopping rules (lineax additionally
   recomputes the residual every 10 steps, as it does by default). Target: linsolve <=
   1.0 x the faster anchor.
3. **A plot** (`--plot`): residual norm against iteration for the forward and adjoint
   solves of one gradient-descent step, cold against warm + recycled.
4. **Recycling across steps** (`--cross`): total operator products (forward + backward,
   counted with a host callback) and wall time of a `--cross-steps` step gradient-descent
   loop, four variants — `cold`; `warm` (`y0`, `adjoint_y0`); `within` (warm and
   `CG(recycle=m)`: the adjoint solve recycles the forward one's Ritz vectors); `cross`
   (warm and the `RecycleSpace` of each step's solve carried into the next
   `linear_solve(..., recycle=space)`) — on two problems: the Poisson inverse problem of
   part 1 (a fixed operator, the source moves) and a slowly drifting operator
   `A_k = −∇·(κ_k ∇) + c_k I` (a conductivity field that translates by `side/200` cells per
   step, a shift growing by 1% of the smallest eigenvalue per step; the source is
   optimised as in part 1, so the adjoint right-hand side moves too). Targets: `cross`
   total products <= 0.4 x cold, wall time <= 0.6 x cold. `--cross-plot PATH` draws the
   products per step of the four variants.

Usage:

    python benchmarks/iterative.py                       # side 100 (n = 10⁴), 50 steps
    python benchmarks/iterative.py --side 64 --steps 20  # quicker
    python benchmarks/iterative.py --markdown --plot docs/iterative_residuals.png
    python benchmarks/iterative.py --cross --side 64 --cross-steps 40 --skip-descent --skip-per-solve

Timing conventions are those of `benchmarks/_timing.py` (medians, interleaved samples,
one thread by default).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import statistics
import sys
import time


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _timing import limit_threads, threads_from_argv  # noqa: E402


if __name__ == "__main__":
    limit_threads(threads_from_argv(sys.argv[1:]))

import jax  # noqa: E402


jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import lineax as lx  # noqa: E402
import numpy as np  # noqa: E402
from _timing import compile_fn, environment, format_seconds, format_table, time_interleaved  # noqa: E402

import linsolve as ls  # noqa: E402


PSD = ls.positive_semidefinite_tag


def laplacian(side: int):
    """`u ↦ A u`, the 5-point Dirichlet Laplacian scaled by 1/h² (h = 1/(side+1))."""
    inv_h2 = float((side + 1) ** 2)

    def apply(u):
        grid = u.reshape(side, side)
        p = jnp.pad(grid, 1)
        out = 4 * grid - p[:-2, 1:-1] - p[2:, 1:-1] - p[1:-1, :-2] - p[1:-1, 2:]
        return inv_h2 * out.reshape(-1)

    return apply


def smallest_eigenvalue(side: int) -> float:
    h = 1.0 / (side + 1)
    return 2 * 4 / h**2 * np.sin(np.pi * h / 2) ** 2


# --- 1. the inverse problem ------------------------------------------------------------


class MatvecCounter:
    """Counts applications of the operator with a host callback."""

    def __init__(self):
        self.count = 0

    def tick(self, _):
        self.count += 1

    def wrap(self, fn):
        def counted(u):
            # A batched argument: a block product (A·W) counts once per column.
            jax.debug.callback(self.tick, u[0])
            return fn(u)

        return counted


def inverse_problem_source(side: int):
    """The true source: three Gaussian bumps."""
    grid = np.linspace(0, 1, side + 2)[1:-1]
    xx, yy = np.meshgrid(grid, grid)
    source = np.zeros((side, side))
    for cx, cy, w in ((0.3, 0.6, 1.0), (0.7, 0.3, -0.7), (0.55, 0.75, 0.5)):
        source += w * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.005)
    return jnp.asarray(1e3 * source.reshape(-1))


def inverse_problem(side: int, seed: int = 0):
    """A noisy observation of the true source's field, the regularisation weight, and the
    gradient-descent step size 1/L for the Tikhonov-regularised least squares."""
    n = side * side
    source = inverse_problem_source(side)
    # The exact field, by a tightly converged solve.
    op = ls.FunctionOperator(laplacian(side), jnp.zeros(n), PSD)
    u_true = ls.linear_solve(op, source, ls.CG(rtol=1e-13, max_steps=20 * n)).value
    rng = np.random.default_rng(seed)
    u_obs = np.asarray(u_true) + 0.01 * float(jnp.max(jnp.abs(u_true))) * rng.standard_normal(n)
    alpha = 1e-6
    lr = 1.0 / (1.0 / smallest_eigenvalue(side) ** 2 + alpha)
    return jnp.asarray(u_obs), alpha, lr


VARIANTS = ("cold", "warm", "recycle", "both")


def make_step(solver, warm: bool, u_obs, alpha, lr):
    @eqx.filter_jit
    def step(op, f, u_prev, lam_prev):
        def loss(f):
            sol = ls.linear_solve(
                op, f, solver, y0=u_prev if warm else None, adjoint_y0=lam_prev if warm else None
            )
            u = sol.value
            value = 0.5 * jnp.sum((u - u_obs) ** 2) + 0.5 * alpha * jnp.sum(f**2)
            return value, (u, sol.stats["num_steps"])

        (value, (u, num_steps)), g = jax.value_and_grad(loss, has_aux=True)(f)
        # The gradient w.r.t. the right-hand side is the adjoint solution (+ αf here).
        lam = g - alpha * f
        return f - lr * g, u, lam, value, num_steps

    return step


def run_descent(step, op, n, steps):
    f = jnp.zeros(n)
    u = jnp.zeros(n)
    lam = jnp.zeros(n)
    losses, forward_steps = [], []
    for _ in range(steps):
        f, u, lam, value, num_steps = step(op, f, u, lam)
        losses.append(float(value))
        forward_steps.append(int(num_steps))
    return losses, forward_steps


def measure_descent(side, steps, rtol, recycle, repeats):
    n = side * side
    u_obs, alpha, lr = inverse_problem(side)
    counter = MatvecCounter()
    counted_op = ls.FunctionOperator(counter.wrap(laplacian(side)), jnp.zeros(n), PSD)
    plain_op = ls.FunctionOperator(laplacian(side), jnp.zeros(n), PSD)
    rows = {}
    for variant in VARIANTS:
        m = recycle if variant in ("recycle", "both") else 0
        warm = variant in ("warm", "both")
        step = make_step(ls.CG(rtol=rtol, recycle=m, max_steps=20 * n), warm, u_obs, alpha, lr)
        # Matrix-vector products, counted. The forward solve's count is num_steps (+1 for
        # the initial residual when y0 is given); everything else is the adjoint solve.
        counter.count = 0
        losses, forward_steps = run_descent(step, counted_op, n, steps)
        jax.effects_barrier()
        total = counter.count
        forward = sum(forward_steps) + (steps if warm else 0)
        # Wall time of the whole descent (compiled), median of `repeats`.
        run_descent(step, plain_op, n, 1)  # compile
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run_descent(step, plain_op, n, steps)
            times.append(time.perf_counter() - start)
        rows[variant] = dict(
            forward=forward,
            backward=total - forward,
            time=statistics.median(times),
            final_loss=losses[-1],
        )
    return rows


def measure_inside_outside(side, rtol, ms):
    """Iterations of the transposed solve after one forward solve `A x = f` (f the true
    source of the inverse problem), for a right-hand side inside the forward Krylov space
    (`x` itself, as for the loss ½‖x‖²) and outside it (a random vector), against the
    number `m` of recycled vectors (0: no recycling). Uses the solver's own methods, the
    ones `linear_solve`'s derivative calls."""
    n = side * side
    op = ls.FunctionOperator(laplacian(side), jnp.zeros(n), PSD)
    f = inverse_problem_source(side)
    outside = jnp.asarray(np.random.default_rng(2).standard_normal(n))
    rows = []
    for m in ms:
        solver = ls.CG(rtol=rtol, recycle=m, max_steps=20 * n)

        @eqx.filter_jit
        def run(op, f, outside, solver=solver):
            state = solver.init(op)
            x, _, forward = solver.solve(state, f, None)
            state = solver.adjoint_state(state, forward)
            inside_steps = solver.transpose_solve(state, x, None)[2]["num_steps"]
            outside_steps = solver.transpose_solve(state, outside, None)[2]["num_steps"]
            return forward["num_steps"], inside_steps, outside_steps

        rows.append((m,) + tuple(int(v) for v in run(op, f, outside)))
    return rows


# --- 2. per-solve time against lineax and jax.scipy -----------------------------------


def per_solve_functions(side, iters):
    stencil = laplacian(side)

    def linsolve_cg(c, b):
        op = ls.FunctionOperator(lambda u: stencil(u) + c * u, b, PSD)
        return ls.linear_solve(op, b, ls.CG(rtol=0.0, atol=0.0, max_steps=iters), throw=False).value

    def lineax_cg(c, b):
        structure = jax.ShapeDtypeStruct(b.shape, b.dtype)
        op = lx.FunctionLinearOperator(
            lambda u: stencil(u) + c * u, structure, lx.positive_semidefinite_tag
        )
        return lx.linear_solve(op, b, lx.CG(rtol=0.0, atol=0.0, max_steps=iters), throw=False).value

    def jax_scipy_cg(c, b):
        return jax.scipy.sparse.linalg.cg(
            lambda u: stencil(u) + c * u, b, tol=0.0, atol=0.0, maxiter=iters
        )[0]

    return {"linsolve": linsolve_cg, "lineax": lineax_cg, "jax.scipy": jax_scipy_cg}


def measure_per_solve(side, iters, repeats):
    n = side * side
    rng = np.random.default_rng(1)
    c = jnp.asarray(rng.uniform(0, 1, n) * (side + 1) ** 2 * 1e-2)
    b = jnp.asarray(rng.standard_normal(n))
    fns = {}
    for name, solve in per_solve_functions(side, iters).items():

        def loss(c, b, solve=solve):
            x = solve(c, b)
            return 0.5 * jnp.sum(x * x)

        fns[(name, "forward")] = loss
        fns[(name, "value_and_grad")] = jax.value_and_grad(loss, argnums=(0, 1))
    compiled = {key: compile_fn(fn, c, b, cold=False)[0] for key, fn in fns.items()}
    # The three compute the same thing (same iterations): check before timing.
    ref = compiled[("jax.scipy", "value_and_grad")](c, b)
    for name in ("linsolve", "lineax"):
        got = compiled[(name, "value_and_grad")](c, b)
        for g, r in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
            if not np.allclose(g, r, rtol=1e-6, atol=1e-12 * float(jnp.max(jnp.abs(r)))):
                print(f"WARNING: {name} disagrees with jax.scipy", file=sys.stderr)
    timings = time_interleaved(
        {key: (exe, (c, b)) for key, exe in compiled.items()}, repeats=repeats
    )
    return {key: t.median for key, t in timings.items()}


# --- 3. residual histories -------------------------------------------------------------


_LINE = re.compile(r"^(CG|CG \(transposed\)): step (\d+), residual norm ([0-9.e+-]+)")


def residual_histories(side, rtol, recycle, at_step):
    """Residual norms of the forward and adjoint solves at gradient-descent step
    `at_step`, cold and warm + recycled, read from the solver's `verbose` output."""
    n = side * side
    u_obs, alpha, lr = inverse_problem(side)
    op = ls.FunctionOperator(laplacian(side), jnp.zeros(n), PSD)
    out = {}
    for variant, m, warm in (
        ("cold", 0, False),
        ("warm", 0, True),
        ("warm + recycle", recycle, True),
    ):
        quiet = make_step(ls.CG(rtol=rtol, recycle=m, max_steps=20 * n), warm, u_obs, alpha, lr)
        loud = make_step(
            ls.CG(rtol=rtol, recycle=m, max_steps=20 * n, verbose=True), warm, u_obs, alpha, lr
        )
        f, u, lam = jnp.zeros(n), jnp.zeros(n), jnp.zeros(n)
        for _ in range(at_step):
            f, u, lam, _, _ = quiet(op, f, u, lam)
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            jax.block_until_ready(loud(op, f, u, lam))
            jax.effects_barrier()
        hist = {"forward": [], "adjoint": []}
        for line in buffer.getvalue().splitlines():
            match = _LINE.match(line)
            if match:
                key = "adjoint" if "transposed" in match.group(1) else "forward"
                hist[key].append((int(match.group(2)), float(match.group(3))))
        out[variant] = hist
    return out


def plot(histories, path, side, at_step):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    styles = {"cold": "tab:gray", "warm": "tab:orange", "warm + recycle": "tab:blue"}
    for variant, hist in histories.items():
        for kind, dash in (("forward", "-"), ("adjoint", "--")):
            steps, res = zip(*sorted(hist[kind])) if hist[kind] else ((), ())
            ax.semilogy(steps, res, dash, color=styles[variant], label=f"{kind}, {variant}")
    ax.set_xlabel("CG iteration")
    ax.set_ylabel("residual norm ‖b − A x‖₂")
    ax.set_title(
        f"2-D Poisson inverse problem, n = {side * side}: the solves of gradient-descent step {at_step}",
        fontsize="medium",
    )
    ax.legend(fontsize="small", ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


# --- 4. recycling across the steps of a loop ------------------------------------------


CROSS_VARIANTS = ("cold", "warm", "within", "cross")


def drifting_operator(side: int, counter: MatvecCounter | None = None):
    """`(kappa, shift) ↦ A = −∇·(κ∇) + shift·I` (finite volumes, κ at the nodes, arithmetic
    means on the faces, Dirichlet boundary), matrix-free."""
    inv_h2 = float((side + 1) ** 2)

    def make(kappa, shift):
        k = jnp.pad(kappa.reshape(side, side), 1, mode="edge")
        kx = 0.5 * (k[1:, 1:-1] + k[:-1, 1:-1])
        ky = 0.5 * (k[1:-1, 1:] + k[1:-1, :-1])

        def apply(u):
            grid = jnp.pad(u.reshape(side, side), 1)
            fx = kx * (grid[1:, 1:-1] - grid[:-1, 1:-1])
            fy = ky * (grid[1:-1, 1:] - grid[1:-1, :-1])
            out = ((fx[:-1] - fx[1:]) + (fy[:, :-1] - fy[:, 1:])).reshape(-1) * inv_h2
            return out + shift * u

        fn = apply if counter is None else counter.wrap(apply)
        return ls.FunctionOperator(fn, jnp.zeros(side * side), PSD)

    return make


def drift_schedule(side: int, steps: int):
    """Per step: the conductivity field (a smooth field translating slowly) and the shift."""
    grid = np.linspace(0, 1, side + 2)[1:-1]
    xx, yy = np.meshgrid(grid, grid, indexing="ij")
    lam_min = smallest_eigenvalue(side)
    out = []
    for k in range(steps):
        phase = k / 200
        kappa = np.exp(0.7 * np.sin(2 * np.pi * (xx - phase)) * np.cos(np.pi * (yy + 0.5 * phase)))
        out.append((jnp.asarray(kappa.reshape(-1)), jnp.asarray(0.5 * lam_min * (1 + 0.02 * k))))
    return out


def make_cross_step(make_op, solver, warm: bool, cross: bool, u_obs, alpha, lr):
    @eqx.filter_jit
    def step(params, f, u_prev, lam_prev, space):
        op = make_op(*params)

        def loss(f):
            sol = ls.linear_solve(
                op,
                f,
                solver,
                y0=u_prev if warm else None,
                adjoint_y0=lam_prev if warm else None,
                recycle=space if cross else None,
            )
            u = sol.value
            value = 0.5 * jnp.sum((u - u_obs) ** 2) + 0.5 * alpha * jnp.sum(f**2)
            return value, (u, sol.stats.get("recycle", space))

        (value, (u, new_space)), g = jax.value_and_grad(loss, has_aux=True)(f)
        return f - lr * g, u, g - alpha * f, value, new_space

    return step


def run_cross(step, schedule, n, m, counter=None):
    f, u, lam = jnp.zeros(n), jnp.zeros(n), jnp.zeros(n)
    space = ls.RecycleSpace.empty(n, m)
    per_step, losses = [], []
    for params in schedule:
        if counter is not None:
            counter.count = 0
        f, u, lam, value, space = step(params, f, u, lam, space)
        if counter is not None:
            value.block_until_ready()
            jax.effects_barrier()
            per_step.append(counter.count)
        losses.append(value)
    jax.block_until_ready(f)
    return per_step, [float(v) for v in losses]


def heavier(make_op, side: int, reps: int):
    """The same operator with `reps` extra 3×3 averaging stencils of work per product:
    `u ↦ A u + z · Bʳᵉᵖˢ u`, `z = 0` passed at run time (the last parameter), so XLA cannot
    drop the work and the operator, hence every iterate and product count, is unchanged.
    Stands in for a costlier operator (a wider stencil, a matrix-free finite-element
    product)."""

    def blur(u):
        p = jnp.pad(u.reshape(side, side), 1)
        out = sum(p[i : i + side, j : j + side] for i in range(3) for j in range(3))
        return out.reshape(-1) / 9  # norm <= 1: no overflow however many

    def make(*params):
        *params, zero = params
        op = make_op(*params)

        def apply(u):
            extra = u
            for _ in range(reps):
                extra = blur(extra)
            return op.mv(u) + zero * extra

        return ls.FunctionOperator(apply, jnp.zeros(side * side), PSD)

    return make


def product_time(make_op, params, n, products=200):
    """Seconds per operator product (a compiled chain of `products`)."""

    @jax.jit
    def chain(params, u):
        op = make_op(*params)
        return jax.lax.fori_loop(0, products, lambda _, v: op.mv(v) / (1 + jnp.max(jnp.abs(v))), u)

    u = jnp.ones(n)
    chain(params, u).block_until_ready()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        chain(params, u).block_until_ready()
        times.append(time.perf_counter() - start)
    return statistics.median(times) / products


def measure_cross(problem, side, steps, rtol, m, repeats, costs=(0,)):
    """Products per step of the four variants on one problem, and the loop wall time of
    each at every operator cost in `costs` (extra stencils per product, `heavier`),
    sampled round-robin (one loop of each variant per round) so that the machine's load
    affects all alike; medians of `repeats` rounds."""
    n = side * side
    u_obs, alpha, lr = inverse_problem(side)
    counter = MatvecCounter()
    if problem == "poisson":
        fixed = laplacian(side)
        make_counted = lambda: ls.FunctionOperator(counter.wrap(fixed), jnp.zeros(n), PSD)  # noqa: E731
        make_plain = lambda: ls.FunctionOperator(fixed, jnp.zeros(n), PSD)  # noqa: E731
        schedule = [()] * steps
    else:
        make_counted = drifting_operator(side, counter)
        make_plain = drifting_operator(side)
        schedule = drift_schedule(side, steps)
        # The drifting problem's operator is larger (κ up to e^0.7 and a shift): a safe step.
        lr = 0.5 * lr
    rows = {}
    solvers = {}
    for variant in CROSS_VARIANTS:
        warm = variant != "cold"
        solver = ls.CG(
            rtol=rtol, recycle=m if variant in ("within", "cross") else 0, max_steps=20 * n
        )
        cross = variant == "cross"
        solvers[variant] = (solver, warm, cross)
        counted = make_cross_step(make_counted, solver, warm, cross, u_obs, alpha, lr)
        per_step, losses = run_cross(counted, schedule, n, m, counter)
        rows[variant] = dict(per_step=per_step, total=sum(per_step), final_loss=losses[-1], time={})
    per_product = {}
    zero = jnp.zeros(())
    for reps in costs:
        make_op = heavier(make_plain, side, reps)
        timed = [params + (zero,) for params in schedule]
        per_product[reps] = product_time(make_op, timed[-1], n)
        loops = {}
        for variant, (solver, warm, cross) in solvers.items():
            loops[variant] = make_cross_step(make_op, solver, warm, cross, u_obs, alpha, lr)
            run_cross(loops[variant], timed[:1], n, m)  # compile
        times = {variant: [] for variant in loops}
        for _ in range(repeats):
            for variant, loop in loops.items():
                start = time.perf_counter()
                run_cross(loop, timed, n, m)
                times[variant].append(time.perf_counter() - start)
        for variant in loops:
            rows[variant]["time"][reps] = statistics.median(times[variant])
    return rows, per_product


def plot_cross(results, path, side, m, args_note=""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {
        "poisson": "Poisson inverse problem (fixed operator)",
        "drift": "drifting operator −∇·(κ_k∇) + c_k I",
    }
    styles = {"cold": "tab:gray", "warm": "tab:orange", "within": "tab:green", "cross": "tab:blue"}
    labels = {
        "cold": "cold",
        "warm": "warm (y0, adjoint_y0)",
        "within": f"warm + CG(recycle={m}), within a step",
        "cross": f"warm + RecycleSpace carried across steps (m = {m})",
    }
    fig, axes = plt.subplots(1, len(results), figsize=(6.2 * len(results), 4.2), squeeze=False)
    for ax, (problem, rows) in zip(axes[0], results.items()):
        for variant, row in rows.items():
            ax.plot(
                np.arange(1, len(row["per_step"]) + 1),
                row["per_step"],
                color=styles[variant],
                label=labels[variant],
            )
        ax.set_xlabel("gradient-descent step")
        ax.set_ylabel("operator products (forward + adjoint)")
        ax.set_title(f"{titles[problem]}, n = {side * side}", fontsize="medium")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize="small")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    fig.suptitle(
        f"{args_note}machine load average at the end of the run (1, 5, 15 min): {load}",
        fontsize="small",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


# --- main ------------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--side", type=int, default=100, help="grid side; n = side² (default 100)")
    parser.add_argument("--steps", type=int, default=50, help="gradient-descent steps (default 50)")
    parser.add_argument("--rtol", type=float, default=1e-8)
    parser.add_argument(
        "--recycle", type=int, default=8, help="recycled Ritz vectors m (default 8)"
    )
    parser.add_argument("--iters", type=int, default=200, help="iterations per solve in part 2")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--descent-repeats", type=int, default=3)
    parser.add_argument("--plot", default=None, help="write the residual plot (PNG) here")
    parser.add_argument("--plot-step", type=int, default=10)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--skip-descent", action="store_true")
    parser.add_argument("--skip-per-solve", action="store_true")
    parser.add_argument("--cross", action="store_true", help="part 4: recycling across steps")
    parser.add_argument("--cross-steps", type=int, default=40)
    parser.add_argument("--cross-problems", default="poisson,drift")
    parser.add_argument(
        "--cross-costs",
        default="0",
        help="part 4: operator costs to time, as extra 3×3 stencils per product, e.g. 0,2,8,32",
    )
    parser.add_argument(
        "--cross-plot", default=None, help="write part 4's products-per-step plot here"
    )
    parser.add_argument("--threads", default="1")
    args = parser.parse_args(argv)
    n = args.side**2
    print(environment())
    print()
    if not args.skip_descent:
        rows = measure_descent(args.side, args.steps, args.rtol, args.recycle, args.descent_repeats)
        cold = rows["cold"]
        table = []
        for variant in VARIANTS:
            r = rows[variant]
            table.append(
                [
                    variant,
                    r["forward"],
                    r["backward"],
                    f"{r['backward'] / cold['backward']:.2f}",
                    r["forward"] + r["backward"],
                    f"{(r['forward'] + r['backward']) / (cold['forward'] + cold['backward']):.2f}",
                    format_seconds(r["time"]),
                    f"{r['time'] / cold['time']:.2f}",
                    f"{r['final_loss']:.6e}",
                ]
            )
        print(
            f"1. Poisson inverse problem: n = {n}, {args.steps} gradient-descent steps, CG rtol = "
            f"{args.rtol:g}, recycle m = {args.recycle}"
        )
        header = [
            "variant",
            "forward matvecs",
            "backward matvecs",
            "backward / cold",
            "total matvecs",
            "total / cold",
            "wall time",
            "time / cold",
            "final loss",
        ]
        print(format_table(header, table, markdown=args.markdown))
        best = min(rows[v]["backward"] for v in VARIANTS)
        print(f"best backward / cold = {best / cold['backward']:.2f} (target <= 0.50)")
        print()
        ms = sorted({0, 4, args.recycle, 2 * args.recycle})
        table = [
            [m, fwd, inside, outside]
            for m, fwd, inside, outside in measure_inside_outside(args.side, args.rtol, ms)
        ]
        print(
            f"1b. Transposed-solve iterations after one forward solve (n = {n}, rtol = {args.rtol:g}): "
            "adjoint right-hand side inside (x) and outside (random) the forward Krylov space"
        )
        print(
            format_table(
                ["recycle m", "forward iterations", "inside: iterations", "outside: iterations"],
                table,
                markdown=args.markdown,
            )
        )
        print("(with recycling, A·W adds m products, made once per derivative)")
        print()
    if not args.skip_per_solve:
        times = measure_per_solve(args.side, args.iters, args.repeats)
        table = []
        for mode in ("forward", "value_and_grad"):
            anchor = min(times[("lineax", mode)], times[("jax.scipy", mode)])
            table.append(
                [
                    mode,
                    format_seconds(times[("linsolve", mode)]),
                    format_seconds(times[("lineax", mode)]),
                    format_seconds(times[("jax.scipy", mode)]),
                    f"{times[('linsolve', mode)] / anchor:.2f}",
                ]
            )
        print(f"2. Per-solve time: n = {n}, exactly {args.iters} CG iterations per solve (float64)")
        header = ["mode", "linsolve", "lineax", "jax.scipy", "linsolve / faster anchor"]
        print(format_table(header, table, markdown=args.markdown))
        print("target: linsolve / faster anchor <= 1.00")
        print()
    if args.plot:
        hist = residual_histories(args.side, args.rtol, args.recycle, args.plot_step)
        for variant, h in hist.items():
            print(
                f"3. step {args.plot_step}, {variant}: forward {len(h['forward']) - 1} iterations, "
                f"adjoint {len(h['adjoint']) - 1} iterations"
            )
        plot(hist, args.plot, args.side, args.plot_step)
    if args.cross:
        results = {}
        for problem in args.cross_problems.split(","):
            costs = [int(c) for c in args.cross_costs.split(",")]
            rows, per_product = measure_cross(
                problem,
                args.side,
                args.cross_steps,
                args.rtol,
                args.recycle,
                args.descent_repeats,
                costs,
            )
            results[problem] = rows
            cold = rows["cold"]
            base = costs[0]
            table = [
                [
                    v,
                    rows[v]["total"],
                    f"{rows[v]['total'] / cold['total']:.2f}",
                    format_seconds(rows[v]["time"][base]),
                    f"{rows[v]['time'][base] / cold['time'][base]:.2f}",
                    f"{rows[v]['final_loss']:.6e}",
                ]
                for v in CROSS_VARIANTS
            ]
            print(
                f"4. {problem}: n = {n}, {args.cross_steps} gradient-descent steps, CG rtol = {args.rtol:g}, "
                f"m = {args.recycle}"
            )
            print(
                format_table(
                    [
                        "variant",
                        "products (fwd + adj)",
                        "products / cold",
                        "loop wall time",
                        "time / cold",
                        "final loss",
                    ],
                    table,
                    markdown=args.markdown,
                )
            )
            cross_time = rows["cross"]["time"]
            print(
                f"targets: cross products / cold <= 0.40 (got {rows['cross']['total'] / cold['total']:.2f}), "
                f"time / cold <= 0.60 (got {cross_time[base] / cold['time'][base]:.2f})"
            )
            if len(costs) > 1:
                print(
                    f"4b. {problem}: loop wall time against the cost of a product (extra 3×3 "
                    "stencils per product, same operator and products)"
                )
                table = [
                    [reps, format_seconds(per_product[reps]), format_seconds(cold["time"][reps])]
                    + [
                        f"{rows[v]['time'][reps] / cold['time'][reps]:.2f}"
                        for v in CROSS_VARIANTS[1:]
                    ]
                    for reps in costs
                ]
                header = ["extra stencils", "time / product", "cold loop"] + [
                    f"{v} / cold" for v in CROSS_VARIANTS[1:]
                ]
                print(format_table(header, table, markdown=args.markdown))
            print()
        if args.cross_plot:
            plot_cross(
                results,
                args.cross_plot,
                args.side,
                args.recycle,
                f"{args.cross_steps} gradient-descent steps, CG rtol = {args.rtol:g}; ",
            )


if __name__ == "__main__":
    main()
