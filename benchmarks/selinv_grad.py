"""Cost of the derivative of `diag_inverse` (marginal variances) on the sparse path.

For the 2D 5-point Laplacian + I on m x m grids (float64, lower triangle stored), this
times jitted functions of the stored values:

- `diag_inverse`: diag(A^-1) (factorization + Takahashi pass);
- `value_and_grad`: the value and gradient of `sum(c * diag_inverse)`, the loss shape of
  a Laplace / INLA fit (sum of weighted marginal variances);
- `hvp`: a Hessian-vector product of the same loss (forward over reverse);

and reports their ratio to `diag_inverse` and XLA's temp + output bytes of each compiled
function (`compiled.memory_analysis()`), beside the padded factor size. Timing
conventions are those of `benchmarks/_timing.py` (medians, interleaved samples, one
thread by default).

Usage:

    python benchmarks/selinv_grad.py --grids 64 128
"""

from __future__ import annotations

import argparse
import os
import sys


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _timing import limit_threads, threads_from_argv  # noqa: E402


if __name__ == "__main__":
    limit_threads(threads_from_argv(sys.argv[1:]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from _timing import compile_fn, time_interleaved  # noqa: E402

import linsolve as ls  # noqa: E402
from linsolve._solver.sparse_cholesky import symbolic_of  # noqa: E402


jax.config.update("jax_enable_x64", True)


def laplacian_2d(m: int) -> sp.csc_matrix:
    t = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(m, m))
    a = sp.kron(sp.eye(m), t) + sp.kron(t, sp.eye(m)) + sp.eye(m * m)
    low = sp.tril(a).tocsc()
    low.sort_indices()
    return low


def _memory_mib(compiled) -> float:
    stats = compiled.memory_analysis()
    if stats is None:
        return float("nan")
    return (stats.temp_size_in_bytes + stats.output_size_in_bytes) / 2**20


def run(m: int, repeats: int) -> None:
    low = laplacian_2d(m)
    op = ls.SparseOperator.from_scipy(low, ls.positive_semidefinite_tag)
    p = op.pattern
    c = jnp.asarray(np.cos(np.arange(m * m)))

    def op_of(v):
        return ls.SparseOperator(v, p.indices, p.indptr, p.shape, ls.positive_semidefinite_tag)

    def diag(v):
        return ls.diag_inverse(op_of(v), throw=False)

    def loss(v):
        return jnp.sum(c * diag(v))

    def hvp(v, t):
        return jax.jvp(jax.grad(loss), (v,), (t,))[1]

    v = op.values
    t = jnp.asarray(np.sin(np.arange(v.shape[0])))
    fns = {
        "diag_inverse": (diag, (v,)),
        "value_and_grad": (jax.value_and_grad(loss), (v,)),
        "hvp": (hvp, (v, t)),
    }
    compiled, comp_s, mem = {}, {}, {}
    for name, (f, args) in fns.items():
        compiled[name], comp_s[name] = compile_fn(f, *args)
        mem[name] = _memory_mib(compiled[name])
    times = time_interleaved(
        {name: (compiled[name], fns[name][1]) for name in fns}, repeats=repeats
    )
    sym = symbolic_of(op)
    base = times["diag_inverse"].median
    factor_mib = f", padded factor {sym.nnz_L_padded * 8 / 2**20:.1f} MiB"
    print(f"{m}x{m} grid (n = {m * m}{factor_mib}), load {os.getloadavg()[0]:.1f}")
    print("| | time | / diag_inverse | compile | XLA temp + out |")
    print("| --- | --- | --- | --- | --- |")
    for name in fns:
        print(
            f"| {name} | {times[name].median * 1e3:.1f} ms | {times[name].median / base:.2f} × "
            f"| {comp_s[name]:.1f} s | {mem[name]:.1f} MiB |"
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grids", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", default="1")
    args = parser.parse_args(argv)
    for m in args.grids:
        run(m, args.repeats)


if __name__ == "__main__":
    main()
