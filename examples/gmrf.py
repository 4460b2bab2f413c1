"""Gaussian Markov random field: fit the hyperparameters of a sparse-precision Gaussian
process by maximising its marginal likelihood, with sparse log-determinant gradients.

Run with `python examples/gmrf.py` (about a minute on a laptop CPU, most of it XLA
compilation); it writes `examples/gmrf.png`.

Model (a Matérn field in 2D through the SPDE link, Lindgren, Rue and Lindström 2011): on
an m x m grid with graph Laplacian `L`, the field has precision

    Q(kappa, tau) = tau * (kappa^2 I + L)^2,

a sparse matrix (13-point stencil) whose pattern does not depend on the hyperparameters:
only its stored values do, so the sparse Cholesky's symbolic analysis is done once and
every evaluation below reuses it. Noisy observations `y = x[obs] + noise` are taken at a
random 30% of the sites. With `Q_post = Q + P^T P / sigma^2` (P picks the observed sites)
and `mu = Q_post^-1 P^T y / sigma^2`, the log marginal likelihood is

    log p(y) = -k/2 log(2 pi sigma^2) - |y - P mu|^2 / (2 sigma^2)
               + 1/2 log det Q - 1/2 mu^T Q mu - 1/2 log det Q_post.

Its gradient w.r.t. (log kappa, log tau, log sigma) flows through two sparse log-determinants
(derivative from the selected inverse, never a dense inverse) and one sparse solve, and
optimistix's BFGS maximises it. The posterior mean is `mu`, the marginal standard
deviations are `sqrt(diag(Q_post^-1))` from `ls.diag_inverse`.
"""

import time
from pathlib import Path

from _needs import require


require("matplotlib", "optimistix")  # before the work, not after it

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np
import optimistix as optx
import scipy.sparse as sp
import scipy.sparse.linalg as spla

import linsolve as ls


M = 60  # grid side: n = 3600 unknowns
OBSERVED = 0.3
TRUE = {"kappa": 0.3, "tau": 4.0, "sigma": 0.15}


def laplacian(m: int) -> sp.csc_matrix:
    """Graph Laplacian of the m x m grid (Neumann boundary)."""
    d = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(m, m)).tolil()
    d[0, 0] = d[-1, -1] = 1.0
    eye = sp.eye(m)
    return (sp.kron(d, eye) + sp.kron(eye, d)).tocsc()


def main():
    rng = np.random.default_rng(0)
    n = M * M
    lap = laplacian(M)
    eye = sp.eye(n, format="csc")

    # The common pattern of I, L and L^2 (lower triangle), and each one's values on it.
    pattern = sp.tril(abs(lap @ lap) + abs(lap) + eye).tocsc()
    pattern.sort_indices()
    pattern.data[:] = 1.0
    rows = pattern.indices
    cols = np.repeat(np.arange(n), np.diff(pattern.indptr))

    def on_pattern(m: sp.spmatrix) -> jnp.ndarray:
        return jnp.asarray(np.asarray(m.tocsr()[rows, cols]).ravel())

    v_eye, v_lap, v_lap2 = on_pattern(eye), on_pattern(lap), on_pattern(lap @ lap)
    on_diag = jnp.asarray(rows == cols)

    def precision_values(kappa, tau):
        # tau (kappa^2 I + L)^2 = tau (kappa^4 I + 2 kappa^2 L + L^2)
        return tau * (kappa**4 * v_eye + 2 * kappa**2 * v_lap + v_lap2)

    def operator(values):
        return ls.SparseOperator(
            values, pattern.indices, pattern.indptr, (n, n), ls.positive_semidefinite_tag
        )

    # Synthetic truth: x = K^-1 z / sqrt(tau) has covariance (tau K K)^-1 = Q^-1.
    K = (TRUE["kappa"] ** 2 * eye + lap).tocsc()
    x_true = spla.spsolve(K, rng.standard_normal(n)) / np.sqrt(TRUE["tau"])
    obs = np.sort(rng.choice(n, size=int(OBSERVED * n), replace=False))
    y = x_true[obs] + TRUE["sigma"] * rng.standard_normal(obs.size)
    mask = np.zeros(n)
    mask[obs] = 1.0
    Pty = np.zeros(n)
    Pty[obs] = y
    mask, Pty, y_obs = jnp.asarray(mask), jnp.asarray(Pty), jnp.asarray(y)

    # --8<-- [start:marginal]
    def posterior(theta):
        kappa, tau, sigma = jnp.exp(theta)
        q = precision_values(kappa, tau)
        # Q_post = Q + P^T P / sigma^2 adds to the diagonal only: same pattern as Q.
        q_post = q + jnp.where(on_diag, mask[rows] / sigma**2, 0.0)
        return q, q_post, sigma

    def neg_log_marginal(theta, args=None):
        q, q_post, sigma = posterior(theta)
        mu = ls.linear_solve(operator(q_post), Pty / sigma**2).value
        resid = y_obs - mu[obs]
        quad = operator(q).mv(mu) @ mu
        k = obs.size
        log_p = (
            -0.5 * k * jnp.log(2 * jnp.pi * sigma**2)
            - 0.5 * resid @ resid / sigma**2
            + 0.5 * ls.logdet(operator(q))
            - 0.5 * quad
            - 0.5 * ls.logdet(operator(q_post))
        )
        return -log_p / k

    # --8<-- [end:marginal]

    theta0 = jnp.log(jnp.array([1.0, 1.0, 0.5]))
    start = time.perf_counter()
    # --8<-- [start:fit]
    solver = optx.BFGS(rtol=1e-6, atol=1e-6)
    fit = optx.minimise(neg_log_marginal, solver, theta0, max_steps=100)
    # --8<-- [end:fit]
    theta = fit.value
    seconds = time.perf_counter() - start
    est = dict(zip(["kappa", "tau", "sigma"], np.exp(np.asarray(theta))))
    print(
        f"fit in {seconds:.1f} s (compilation included), {int(fit.stats['num_steps'])} BFGS steps"
    )
    for name in TRUE:
        print(f"  {name:6s} true {TRUE[name]:.3f}  estimated {est[name]:.3f}")

    @jax.jit
    def summaries(theta):
        _, q_post, sigma = posterior(theta)
        op = operator(q_post)
        mu = ls.linear_solve(op, Pty / sigma**2).value
        return mu, jnp.sqrt(ls.diag_inverse(op))

    mean, std = summaries(theta)
    err = np.asarray(mean) - x_true
    print(f"posterior mean RMSE {np.sqrt(np.mean(err**2)):.3f}; field std {x_true.std():.3f}")
    inside = np.mean(np.abs(err) <= 2 * np.asarray(std))
    print(f"truth within 2 posterior std at {100 * inside:.0f}% of the sites")

    plot(x_true, obs, y, np.asarray(mean), np.asarray(std), est)


def plot(x_true, obs, y, mean, std, est):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 4.2), constrained_layout=True)
    lim = np.abs(x_true).max()
    kw = dict(cmap="RdBu_r", vmin=-lim, vmax=lim, origin="lower")
    axes[0].imshow(x_true.reshape(M, M), **kw)
    axes[0].set_title("true field")
    obs_img = np.full(M * M, np.nan)
    obs_img[obs] = y
    axes[1].imshow(obs_img.reshape(M, M), **kw)
    axes[1].set_title(f"{int(100 * OBSERVED)}% observed, noisy")
    im = axes[2].imshow(mean.reshape(M, M), **kw)
    axes[2].set_title("posterior mean")
    fig.colorbar(im, ax=axes[:3], shrink=0.8)
    im = axes[3].imshow(std.reshape(M, M), cmap="viridis", origin="lower")
    axes[3].set_title("marginal std (ls.diag_inverse)")
    fig.colorbar(im, ax=axes[3], shrink=0.8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        "GMRF fit: kappa {kappa:.2f}, tau {tau:.2f}, sigma {sigma:.3f} (truth {k0}, {t0}, {s0})".format(
            **est, k0=TRUE["kappa"], t0=TRUE["tau"], s0=TRUE["sigma"]
        )
    )
    path = Path(__file__).resolve().parent / "gmrf.png"
    fig.savefig(path, dpi=90)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
