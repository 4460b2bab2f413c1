"""k smallest eigenpairs: linsolve.lobpcg vs scipy.sparse.linalg.lobpcg vs
jax.experimental.sparse.linalg.lobpcg_standard (and dense eigh where it fits).

Problems (float64, k = 8 smallest):

- `laplace`: the 2D Dirichlet Laplacian (5-point stencil, unscaled) on an N × N grid,
  n = N², plus a diagonal potential `c` (zero here) that the gradient is taken w.r.t.;
- `fem`: the generalized pair (K + diag(c), M) of linear finite elements on a uniform
  right-triangle mesh of the unit square: K is again the 5-point stencil, M the
  consistent mass matrix (h²/12 · (6 on the diagonal, 1 for the six neighbours)).

Each with no preconditioner and with an (exact) fast-Poisson preconditioner K⁻¹ applied
by sine transforms (the stand-in for a multigrid cycle). linsolve gets matrix-free
stencil operators (and, for `laplace`, also a `SparseOperator` holding scipy's matrix:
the stored-matrix path, forward only); scipy gets CSR matrices (and a `LinearOperator` preconditioner via
`scipy.fft.dstn`); jax's `lobpcg_standard` finds largest eigenvalues only, without
preconditioner or B, so it runs on `σI − A` (σ = 8 ≥ λ_max; LOBPCG is shift-invariant)
for the standard problem only.

Stopping rule, the same for all: linsolve stops when every wanted pair has backward
error `‖Ax − λBx‖ / ((‖A‖ + |λ| ‖B‖) ‖x‖) <= tol` (`tol = 1e-8` here); scipy's `tol` is an
absolute residual bound, set to the smallest of those right-hand sides (computed from
linsolve's eigenvectors, so scipy's test is the stricter); jax's test `‖r‖ <= tol · 10 n
(λ + ‖Av‖)` gets `tol / (20 n)`. The tables report each method's iterations and
achieved worst backward error (computed afterwards, the same way for all).

Measured: forward time (median after warm-up, linsolve and jax jitted), value_and_grad
time of `loss(c) = Σλ + Σ (gᵀuᵢ)²` for linsolve (the only one of them that
differentiates), compile times separately (cold). Targets from the issue: forward ≤ 1.5×
scipy, value_and_grad ≤ 2× forward.

Usage:

    python benchmarks/eigen.py                          # all problems, N = 100 and 316
    python benchmarks/eigen.py --sizes 100 --repeats 3  # quick
    python benchmarks/eigen.py --markdown               # tables for docs/eigen.md
    python benchmarks/eigen.py --dense-size 40          # dense eigh crossover at N = 40

Timing conventions are those of `benchmarks/_timing.py` (medians, interleaved samples,
one BLAS/XLA thread unless `--threads`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _timing import limit_threads, threads_from_argv  # noqa: E402


if __name__ == "__main__":
    limit_threads(threads_from_argv(sys.argv[1:]))

import jax  # noqa: E402


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy.fft  # noqa: E402
import scipy.linalg  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import scipy.sparse.linalg as spla  # noqa: E402
from _timing import compile_fn, environment, format_seconds, format_table, time_interleaved  # noqa: E402
from jax.experimental.sparse.linalg import lobpcg_standard  # noqa: E402

import linsolve as ls  # noqa: E402


K = 8
TOL = 1e-8
BLOCK = int(os.environ.get("BLOCK", 10))
SIGMA = 8.0  # ≥ λ_max of the stencil: jax's lobpcg_standard runs on σI − A


# --- problems ----------------------------------------------------------------------------


def _stencil(u):
    """5-point Laplacian (Dirichlet) of an (N, N) grid function."""
    p = jnp.pad(u, 1)
    return 4 * u - p[:-2, 1:-1] - p[2:, 1:-1] - p[1:-1, :-2] - p[1:-1, 2:]


def _mass(u, h):
    """Consistent P1 mass matrix on right triangles (diagonals from (i, j) to (i+1, j+1))."""
    p = jnp.pad(u, 1)
    nb = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] + p[:-2, :-2] + p[2:, 2:]
    return h * h / 12 * (6 * u + nb)


def _sine(u, axis):
    """Orthonormal DST-I along `axis` (it is its own inverse), through a length-2(N+1)
    FFT of the odd extension."""
    u = jnp.moveaxis(u, axis, -1)
    n = u.shape[-1]
    zero = jnp.zeros(u.shape[:-1] + (1,), u.dtype)
    ext = jnp.concatenate([zero, u, zero, -u[..., ::-1]], axis=-1)
    out = -jnp.imag(jnp.fft.rfft(ext)[..., 1 : n + 1]) * (0.5 * np.sqrt(2.0 / (n + 1)))
    return jnp.moveaxis(out, -1, axis)


def _poisson_eigenvalues(n_side):
    mu = 2 - 2 * np.cos(np.pi * np.arange(1, n_side + 1) / (n_side + 1))
    return mu[:, None] + mu[None, :]


def _fast_poisson(u, lam):
    """K⁻¹ u by sine transforms: K = S diag(μᵢ + μⱼ) S with S the orthonormal DST-I."""
    return _sine(_sine(_sine(_sine(u, 0), 1) / lam, 0), 1)


class Problem:
    """Operators for linsolve (matrix-free), CSR matrices for scipy, exact norms."""

    def __init__(self, kind: str, n_side: int, precondition: bool):
        self.kind, self.n_side, self.precondition = kind, n_side, precondition
        self.n = n = n_side * n_side
        self.h = 1.0 / (n_side + 1)
        t = sp.diags([-np.ones(n_side - 1), 2 * np.ones(n_side), -np.ones(n_side - 1)], [-1, 0, 1])
        eye = sp.eye(n_side)
        self.A = (sp.kron(eye, t) + sp.kron(t, eye)).tocsr()
        self.B = None
        self.anorm = 8.0  # ‖K‖₂ < 8
        self.bnorm = 1.0
        if kind == "fem":
            rows = np.arange(n).reshape(n_side, n_side)
            m = sp.lil_matrix((n, n))
            m.setdiag(6.0)
            for di, dj in [(1, 0), (0, 1), (1, 1)]:
                a = rows[: n_side - di, : n_side - dj].ravel()
                b = rows[di:, dj:].ravel()
                m[a, b] = 1.0
                m[b, a] = 1.0
            self.B = (m.tocsr() * self.h**2 / 12).tocsr()
            self.bnorm = self.h**2  # ‖M‖₂ < h² (Gershgorin: (6 + 6) h²/12)
        self.lam = jnp.asarray(_poisson_eigenvalues(n_side))
        self.g = np.random.default_rng(1).standard_normal(n)
        self.x0 = np.random.default_rng(0).standard_normal((n, K))

    # linsolve ---------------------------------------------------------------------------

    def operator(self, c):
        shape = (self.n_side, self.n_side)

        def apply(x):
            u = x.reshape(shape)
            return (_stencil(u) + c.reshape(shape) * u).reshape(-1)

        return ls.FunctionOperator(apply, jnp.zeros(self.n), ls.symmetric_tag)

    def mass(self):
        if self.kind != "fem":
            return None
        shape, h = (self.n_side, self.n_side), self.h
        return ls.FunctionOperator(
            lambda x: _mass(x.reshape(shape), h).reshape(-1),
            jnp.zeros(self.n),
            ls.positive_semidefinite_tag,
        )

    def preconditioner(self):
        if not self.precondition:
            return None
        shape, lam = (self.n_side, self.n_side), self.lam
        return ls.FunctionOperator(
            lambda x: _fast_poisson(x.reshape(shape), lam).reshape(-1),
            jnp.zeros(self.n),
            ls.positive_semidefinite_tag,
        )

    def sparse_operator(self, c):
        """The same `A + diag(c)` as a `SparseOperator` holding scipy's lower triangle
        (symmetric tag), `c` added to the stored diagonal."""
        low = sp.csc_matrix(sp.tril(self.A))
        low.sort_indices()
        rows = low.indices
        cols = np.repeat(np.arange(self.n), np.diff(low.indptr))
        diag = np.flatnonzero(rows == cols)
        values = jnp.asarray(low.data).at[diag].add(c[cols[diag]])
        return ls.SparseOperator(
            values, low.indices, low.indptr, (self.n, self.n), tags=ls.symmetric_tag
        )

    def linsolve_eig(self, c, sparse=False):
        op = self.sparse_operator(c) if sparse else self.operator(c)
        return ls.lobpcg(
            op,
            K,
            B=self.mass(),
            X0=self.x0,
            tol=TOL,
            max_steps=20000,
            preconditioner=self.preconditioner(),
            throw=False,
            block_size=BLOCK,
        )

    def loss(self, c):
        out = self.linsolve_eig(c)
        return jnp.sum(out.eigenvalues) + jnp.sum((self.g @ out.eigenvectors) ** 2)

    # scipy ------------------------------------------------------------------------------

    def scipy_preconditioner(self):
        if not self.precondition:
            return None
        lam = np.asarray(self.lam)
        ns = self.n_side

        def matmat(x):
            x = np.asarray(x).reshape(ns, ns, -1)
            y = scipy.fft.dstn(x, type=1, norm="ortho", axes=(0, 1)) / lam[:, :, None]
            return scipy.fft.dstn(y, type=1, norm="ortho", axes=(0, 1)).reshape(self.n, -1)

        return spla.LinearOperator((self.n, self.n), matvec=matmat, matmat=matmat, dtype=np.float64)

    # accuracy ---------------------------------------------------------------------------

    def backward_errors(self, values, vectors):
        x = np.asarray(vectors)
        values = np.asarray(values)
        bx = x if self.B is None else self.B @ x
        r = self.A @ x - bx * values[None, :]
        denom = (self.anorm + np.abs(values) * self.bnorm) * np.linalg.norm(x, axis=0)
        return np.linalg.norm(r, axis=0) / denom

    def scipy_tol(self, values, vectors):
        x = np.asarray(vectors)
        denom = (self.anorm + np.abs(np.asarray(values)) * self.bnorm) * np.linalg.norm(x, axis=0)
        return TOL * float(np.min(denom))

    @property
    def name(self):
        pre = "K⁻¹ (DST)" if self.precondition else "none"
        return f"{self.kind} n={self.n} pre={pre}"


# --- measurement -----------------------------------------------------------------------


def _timings(calls, repeats):
    """Median seconds per call, sampled round-robin. `repeats == 1` (for the large,
    slow problems) times one call of each, without the warm-up and calibration calls of
    `time_interleaved` (the jitted functions are compiled ahead of time already)."""
    if repeats > 1:
        return {
            name: t.median for name, t in time_interleaved(calls, repeats=repeats, warmup=1).items()
        }
    out = {}
    for name, (fn, args) in calls.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        out[name] = time.perf_counter() - start
    return out


def measure(problem: Problem, repeats: int, grad: bool):
    rows = []
    c = jnp.zeros(problem.n)

    def forward(c):
        out = problem.linsolve_eig(c)
        return out.eigenvalues, out.eigenvectors, out.stats["num_steps"], out.result

    fwd, fwd_compile = compile_fn(forward, c)
    values, vectors, steps, result = fwd(c)
    if int(result) != 0:
        print(f"WARNING: linsolve did not converge on {problem.name}", file=sys.stderr)
    calls = {"fwd": (fwd, (c,))}
    sparse_fn = None
    if problem.kind == "laplace":
        # The stored-matrix path, on the very CSR data scipy gets.
        def sparse_forward(c):
            out = problem.linsolve_eig(c, sparse=True)
            return out.eigenvalues, out.eigenvectors, out.stats["num_steps"], out.result

        sparse_fn, sparse_compile = compile_fn(sparse_forward, c)
        calls["sparse"] = (sparse_fn, (c,))
    vg_compile = None
    if grad:
        vg, vg_compile = compile_fn(jax.value_and_grad(problem.loss), c)
        calls["vg"] = (vg, (c,))

    # scipy: the stricter of the two tests (see the module docstring).
    tol_s = problem.scipy_tol(values, vectors)
    x0 = problem.x0
    pre = problem.scipy_preconditioner()

    def scipy_run():
        return spla.lobpcg(
            problem.A,
            x0,
            B=problem.B,
            M=pre,
            largest=False,
            tol=tol_s,
            maxiter=20000,
            retResidualNormsHistory=True,
        )

    jax_fn = None
    if problem.kind == "laplace" and not problem.precondition:
        op = problem.operator(c)
        n = problem.n

        def jax_run(x0):
            return lobpcg_standard(lambda x: SIGMA * x - op.mv(x), x0, m=20000, tol=TOL / (20 * n))

        jax_fn, jax_compile = compile_fn(jax_run, jnp.asarray(x0))
        calls["jax"] = (jax_fn, (jnp.asarray(x0),))

    with warnings.catch_warnings():
        # scipy warns when it stops on its own stagnation test short of `tol`; the
        # achieved backward error is reported instead.
        warnings.simplefilter("ignore")
        w_s, v_s, hist = scipy_run()
        # scipy sampled round-robin with the others: load from other processes hits all.
        calls["scipy"] = (lambda: (scipy_run(), None)[1], ())
        timings = _timings(calls, repeats)
    t_scipy = timings["scipy"]

    ours = problem.backward_errors(values, vectors)
    rows.append(
        dict(
            method="linsolve.lobpcg",
            forward=timings["fwd"],
            iters=int(steps),
            error=float(ours.max()),
            compile=fwd_compile,
            vg=timings["vg"] if grad else None,
            vg_compile=vg_compile,
            values=np.asarray(values),
        )
    )
    if sparse_fn is not None:
        s_values, s_vectors, s_steps, _ = sparse_fn(c)
        rows.append(
            dict(
                method="linsolve.lobpcg (SparseOperator)",
                forward=timings["sparse"],
                iters=int(s_steps),
                error=float(problem.backward_errors(s_values, s_vectors).max()),
                compile=sparse_compile,
                values=np.asarray(s_values),
            )
        )
    order = np.argsort(w_s)
    rows.append(
        dict(
            method="scipy lobpcg",
            forward=t_scipy,
            iters=len(hist) - 1,
            error=float(problem.backward_errors(w_s[order], v_s[:, order]).max()),
            values=np.sort(w_s),
        )
    )
    if jax_fn is not None:
        theta, u, iters = jax_fn(jnp.asarray(x0))
        w_j = SIGMA - np.asarray(theta)
        order = np.argsort(w_j)
        rows.append(
            dict(
                method="jax lobpcg_standard (σI − A)",
                forward=timings["jax"],
                iters=int(iters),
                error=float(problem.backward_errors(w_j[order], np.asarray(u)[:, order]).max()),
                compile=jax_compile,
                values=w_j[order],
            )
        )
    return rows


def measure_dense(n_side, repeats):
    """The crossover: dense eigh (all eigenpairs; and LAPACK's subset driver) vs lobpcg
    on a small Laplacian."""
    problem = Problem("laplace", n_side, False)
    a = jnp.asarray(problem.A.toarray())
    c = jnp.zeros(problem.n)

    def forward(c):
        out = problem.linsolve_eig(c)
        return out.eigenvalues, out.eigenvectors

    fwd, _ = compile_fn(forward, c)
    eigh, _ = compile_fn(
        lambda a: ls.eigh(ls.MatrixOperator(a, ls.symmetric_tag)).eigenvalues[:K], a
    )
    a_np = np.asarray(a)
    subset = (lambda: (scipy.linalg.eigh(a_np, subset_by_index=[0, K - 1]), None)[1], ())
    timings = time_interleaved(
        {"lobpcg": (fwd, (c,)), "eigh": (eigh, (a,)), "subset": subset}, repeats=repeats, warmup=1
    )
    t_sub = timings["subset"].median
    return [
        ["linsolve.lobpcg (matrix-free)", format_seconds(timings["lobpcg"].median)],
        ["linsolve.eigh (dense, all pairs)", format_seconds(timings["eigh"].median)],
        ["scipy.linalg.eigh (dense, subset 0..7)", format_seconds(t_sub)],
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[100, 316], help="grid sides N (n = N²)"
    )
    parser.add_argument(
        "--problems", nargs="+", default=["laplace", "fem"], choices=["laplace", "fem"]
    )
    parser.add_argument(
        "--preconditioners", nargs="+", default=["none", "dst"], choices=["none", "dst"]
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed samples per method")
    parser.add_argument(
        "--dense-size",
        type=int,
        default=40,
        help="grid side of the dense-eigh comparison (0: skip)",
    )
    parser.add_argument("--no-grad", action="store_true")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--threads", default="1", help="BLAS/XLA CPU threads, or 'all' (default 1)")
    args = parser.parse_args(argv)

    print(environment(("linsolve", "jax", "jaxlib", "equinox", "scipy", "numpy")))
    print(f"float64, k = {K} smallest, tol = {TOL}; {args.repeats} timed samples\n")
    header = [
        "problem",
        "method",
        "iterations",
        "worst backward error",
        "forward",
        "fwd / scipy",
        "value_and_grad",
        "v&g / fwd",
        "compile fwd",
        "compile v&g",
    ]
    table, verdicts = [], []
    for n_side in args.sizes:
        for kind in args.problems:
            for pre in args.preconditioners:
                problem = Problem(kind, n_side, pre == "dst")
                rows = measure(problem, args.repeats, grad=not args.no_grad)
                scipy_time = next(r["forward"] for r in rows if r["method"] == "scipy lobpcg")
                ref = next(r["values"] for r in rows if r["method"] == "scipy lobpcg")
                for r in rows:
                    if np.max(np.abs(r["values"] - ref) / np.abs(ref)) > 1e-6:
                        print(
                            f"WARNING: {r['method']} eigenvalues differ on {problem.name}",
                            file=sys.stderr,
                        )
                    vg = r.get("vg")
                    table.append(
                        [
                            problem.name,
                            r["method"],
                            r["iters"],
                            f"{r['error']:.1e}",
                            format_seconds(r["forward"]),
                            f"{r['forward'] / scipy_time:.2f}",
                            "" if vg is None else format_seconds(vg),
                            "" if vg is None else f"{vg / r['forward']:.2f}",
                            format_seconds(r["compile"]) if r.get("compile") else "",
                            format_seconds(r["vg_compile"]) if r.get("vg_compile") else "",
                        ]
                    )
                ours = rows[0]
                fwd_ratio = ours["forward"] / scipy_time
                verdict = [
                    problem.name,
                    f"{fwd_ratio:.2f}",
                    "met" if fwd_ratio <= 1.5 else "MISSED",
                ]
                if ours.get("vg") is not None:
                    vg_ratio = ours["vg"] / ours["forward"]
                    verdict += [f"{vg_ratio:.2f}", "met" if vg_ratio <= 2 else "MISSED"]
                else:
                    verdict += ["", ""]
                verdicts.append(verdict)
                print(f"  measured {problem.name}", file=sys.stderr, flush=True)
    print(format_table(header, table, args.markdown))
    print("\nTargets: forward <= 1.5x scipy; value_and_grad <= 2x forward:")
    print(format_table(["problem", "fwd / scipy", "", "v&g / fwd", ""], verdicts, args.markdown))
    if args.dense_size:
        print(f"\nDense eigh vs lobpcg, laplace n = {args.dense_size**2} (forward, median):")
        print(
            format_table(
                ["method", "time"], measure_dense(args.dense_size, args.repeats), args.markdown
            )
        )


if __name__ == "__main__":
    main()
