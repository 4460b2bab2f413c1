"""Graph spectral design: choose edge weights that put the low Laplacian spectrum where we
want it, with gradients through `linsolve.lobpcg`.

A random geometric graph (points in the unit square, edges between close points) has a
weighted Laplacian `L(w) = Σₑ wₑ (e_i − e_j)(e_i − e_j)ᵀ`. Its smallest eigenvalue is 0
(constant vector); the next ones, λ₂ (the algebraic connectivity) … λ₇, measure how
fast diffusion mixes and how well the graph resists being cut. With the total edge weight
fixed, we move λ₂ … λ₇ to targets (here: all of them 80% above λ₂ at the start, a
six-fold degenerate cluster) by gradient descent on the weights. Each step runs LOBPCG
on a matrix-free Laplacian and differentiates its eigenvalues w.r.t. the weights (k
projected CG solves, never the full eigenbasis).

The zero eigenvalue is deflated by a shift: `A = L + σ 11ᵀ/n` with σ above every
eigenvalue of L (twice the largest weighted degree, by Gershgorin), so the constant
vector becomes the *largest* eigenvector of A and the 6 smallest eigenpairs of A are
exactly λ₂ … λ₇ of L with their eigenvectors (all orthogonal to 1, which A and L treat
alike). Since `11ᵀ/n` does not depend on w, their derivatives are those of L's.

    python examples/graph_spectral.py          # about a minute on 2 CPU cores

Writes `examples/graph_spectral.png`: the spectrum before and after, the loss, and the
graph with the optimised weights.
"""

import os
import time
from pathlib import Path

from _needs import require


require("matplotlib")  # before the work, not after it

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from scipy.sparse.csgraph import connected_components  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402

import linsolve as ls  # noqa: E402


K = 6  # λ₂ … λ₇
PLOT = Path(__file__).resolve().parent / "graph_spectral.png"  # next to this script
STEPS = int(os.environ.get("STEPS", 150))
TOL = float(os.environ.get("TOL", 1e-9))

# --- The graph: a random geometric graph, its largest connected component ------------

rng = np.random.default_rng(0)
points = rng.uniform(size=(900, 2))
pairs = cKDTree(points).query_pairs(r=0.065, output_type="ndarray")
adjacency = sp.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(900, 900))
_, label = connected_components(adjacency, directed=False)
keep = label == np.bincount(label).argmax()
renumber = np.cumsum(keep) - 1
pairs = pairs[keep[pairs[:, 0]] & keep[pairs[:, 1]]]
points = points[keep]
src, dst = renumber[pairs[:, 0]], renumber[pairs[:, 1]]
n, n_edges = len(points), len(src)


def weights(theta):
    """Positive edge weights with a fixed total (`n_edges`, mean weight 1)."""
    return n_edges * jax.nn.softmax(theta)


def laplacian(w):
    """`L(w)` as a matrix-free operator: `(L x)_i = Σ_{e ∋ i} wₑ (x_i − x_other)`. Symmetric
    for every w, so its derivative w.r.t. w is that of a symmetric matrix."""

    def apply(x):
        flow = w * (x[src] - x[dst])
        return jax.ops.segment_sum(flow, src, n) - jax.ops.segment_sum(flow, dst, n)

    return apply


# --8<-- [start:deflated]
def deflated(w):
    """`L(w) + σ 11ᵀ/n`, σ = 2 max weighted degree ≥ λ_max(L) (no derivative through σ),
    and its Jacobi preconditioner."""
    degree = jax.ops.segment_sum(w, src, n) + jax.ops.segment_sum(w, dst, n)
    sigma = jax.lax.stop_gradient(2 * jnp.max(degree))
    lap = laplacian(w)
    op = ls.FunctionOperator(
        lambda x: lap(x) + sigma * jnp.mean(x), jnp.zeros(n), ls.positive_semidefinite_tag
    )
    return op, ls.DiagonalOperator(1 / (degree + sigma / n))


# --8<-- [end:deflated]


def dense_spectrum(w):
    """All eigenvalues of L(w), densely (n = 900): for the plot and the check."""
    lap = sp.coo_matrix((np.asarray(w), (src, dst)), shape=(n, n))
    lap = sp.diags(np.asarray(lap.sum(0) + lap.sum(1).T).ravel()) - lap - lap.T
    return np.linalg.eigvalsh(lap.toarray())


# --- Objective and one optimisation step --------------------------------------------


# --8<-- [start:step]
def loss(theta, targets, x0):
    op, jacobi = deflated(weights(theta))
    # The preconditioner gets no derivative; it speeds up the iteration (and the
    # derivative's CG solves, when eigenvectors enter the loss) as the weights spread.
    eig = ls.lobpcg(op, K, X0=x0, tol=TOL, preconditioner=jacobi)
    values = eig.eigenvalues
    # A symmetric function of the k eigenvalues when the targets are equal: finite and
    # exact even when the eigenvalues coincide (see docs/eigen.md, degenerate eigenvalues).
    return jnp.sum(((values - targets) / targets) ** 2), eig


@jax.jit
def adam_step(theta, state, targets, x0):
    (value, eig), grad = jax.value_and_grad(loss, has_aux=True)(theta, targets, x0)
    m, v, t = state
    t = t + 1
    m = 0.9 * m + 0.1 * grad
    v = 0.999 * v + 0.001 * grad**2
    step = 0.05 * (m / (1 - 0.9**t)) / (jnp.sqrt(v / (1 - 0.999**t)) + 1e-8)
    return theta - step, (m, v, t), value, eig


# --8<-- [end:step]


def main(path=PLOT):
    theta = jnp.zeros(n_edges)  # all weights 1
    before = dense_spectrum(weights(theta))
    targets = jnp.full(K, 1.8 * before[1])
    print(f"graph: n = {n} nodes, {n_edges} edges; λ₂…λ₇ = {np.round(before[1 : K + 1], 4)}")
    print(f"targets: {np.asarray(targets)[0]:.4f} (all six)")

    state = (jnp.zeros(n_edges), jnp.zeros(n_edges), jnp.zeros((), jnp.int32))
    # Warm start: each step starts LOBPCG from the previous eigenvectors. X0 has
    # derivative zero, so it is passed as it is.
    x0 = jnp.asarray(np.random.default_rng(1).standard_normal((n, K)))
    history, iterations = [], []
    start = time.perf_counter()
    for i in range(STEPS):
        theta_in = theta
        theta, state, value, eig = adam_step(theta, state, targets, x0)
        x0 = eig.eigenvectors
        history.append(float(value))
        iterations.append(int(eig.stats["num_steps"]))
        if i == 0:
            compiled = time.perf_counter()
        if i % 25 == 0 or i == STEPS - 1:
            print(f"step {i:3d}  loss {history[-1]:.3e}  LOBPCG iterations {iterations[-1]}")
    elapsed = time.perf_counter() - compiled
    print(
        f"{STEPS} steps: first (with compilation) {compiled - start:.1f} s, "
        f"the rest {elapsed:.1f} s; LOBPCG iterations: first step {iterations[0]}, "
        f"median of the warm-started ones {int(np.median(iterations[1:]))}"
    )

    w = np.asarray(weights(theta))
    after = dense_spectrum(w)
    print(
        f"λ₂…λ₇ after: {np.round(after[1 : K + 1], 4)} (targets {float(targets[0]):.4f}); "
        f"weights from {w.min():.3f} to {w.max():.3f}, total {w.sum():.1f}"
    )
    check = dense_spectrum(weights(theta_in))[1 : K + 1]
    print(
        f"check: last step's lobpcg eigenvalues vs dense eigh, max |Δλ| = "
        f"{np.max(np.abs(np.asarray(eig.eigenvalues) - check)):.1e}"
    )
    _plot(path, before, after, np.asarray(targets), history, w)


def _plot(path, before, after, targets, history, w):
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    ax = axes[0]
    shown = 16
    idx = np.arange(1, shown + 1)
    ax.plot(idx, before[:shown], "o", color="tab:blue", label="before (all weights 1)")
    ax.plot(idx, after[:shown], "s", color="tab:red", mfc="none", label="after")
    ax.hlines(targets, 2 - 0.3, K + 1 + 0.3, colors="k", linestyles="--", label="target for λ₂…λ₇")
    ax.axvspan(1.5, K + 1.5, color="0.9", zorder=-1)
    ax.set_xlabel("index i")
    ax.set_ylabel("eigenvalue λᵢ of the graph Laplacian")
    ax.set_title("Spectrum before and after")
    ax.legend(loc="upper left")

    ax = axes[1]
    ax.semilogy(history)
    ax.set_xlabel("Adam step")
    ax.set_ylabel("Σ ((λᵢ − t)/t)²")
    ax.set_title("Loss")

    ax = axes[2]
    segments = np.stack([points[src], points[dst]], axis=1)
    order = np.argsort(w)
    lines = LineCollection(
        segments[order],
        linewidths=0.4 + 1.6 * w[order] / w.max(),
        cmap="viridis",
        norm=matplotlib.colors.LogNorm(),
    )
    lines.set_array(w[order])
    ax.add_collection(lines)
    ax.scatter(points[:, 0], points[:, 1], s=2, color="k")
    ax.set_aspect("equal")
    ax.set_title("Optimised edge weights")
    fig.colorbar(lines, ax=ax, label="weight")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
