"""Time to first result of the sparse Cholesky, as a user feels it: a new Python process
that computes `jax.value_and_grad(logdet)` of a sparse matrix once, beside CHOLMOD's
analysis + numeric factorization in a new process.

Each measurement is its own process (so nothing is cached in memory). For linsolve it
reports the symbolic analysis, the trace + XLA compilation of the jitted function, and
the first call, separately and added up (imports are reported apart). It runs twice with
one fresh JAX persistent compilation cache directory (`jax_compilation_cache_dir`): the
first process compiles and writes the cache, the second loads the executable from it,
which is what a user's second run of the same script gets.

Problems: 2-D 5-point Laplacian + I on m x m grids, lower triangle stored, float64, one
thread everywhere (OpenBLAS/OMP and XLA).

Usage:

    python benchmarks/first_call.py                 # 128^2, 256^2, 512^2
    python benchmarks/first_call.py --grids 128     # quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


_START = time.perf_counter()

THREAD_ENV = {
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
}


def _laplacian_lower(m: int):
    import scipy.sparse as sp

    t = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(m, m))
    a = (sp.kron(t, sp.eye(m)) + sp.kron(sp.eye(m), t) + sp.eye(m * m)).tocsc()
    low = sp.tril(a).tocsc()
    low.sort_indices()
    return low


def child_linsolve(m: int, cache_dir: str) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    # Cache every executable, however quick to compile or small.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    import jax.numpy as jnp

    import linsolve as ls
    from linsolve._sparse import symbolic

    t_import = time.perf_counter() - _START
    low = _laplacian_lower(m)
    n = low.shape[0]
    values = jnp.asarray(low.data)
    pattern = (low.indices, low.indptr)

    start = time.perf_counter()
    symbolic.analyse(low.indptr, low.indices, n)  # what the first trace would do
    t_analysis = time.perf_counter() - start

    def f(v):
        return ls.logdet(ls.SparseOperator(v, *pattern, (n, n), ls.positive_semidefinite_tag))

    start, cpu = time.perf_counter(), time.process_time()
    compiled = jax.jit(jax.value_and_grad(f)).lower(values).compile()
    t_compile = time.perf_counter() - start
    # trace + compile CPU time: what a loaded machine distorts least
    t_compile_cpu = time.process_time() - cpu
    start = time.perf_counter()
    jax.block_until_ready(compiled(values))
    t_call = time.perf_counter() - start
    return dict(
        import_s=t_import,
        analysis_s=t_analysis,
        compile_s=t_compile,
        compile_cpu_s=t_compile_cpu,
        call_s=t_call,
        load=os.getloadavg()[0],
    )


def child_cholmod(m: int) -> dict:
    import numpy as np
    from cvxopt import cholmod, spmatrix

    t_import = time.perf_counter() - _START
    low = _laplacian_lower(m).tocoo()
    n = low.shape[0]
    A = spmatrix(low.data.tolist(), low.row.tolist(), low.col.tolist(), (n, n))
    cholmod.options["supernodal"] = 2
    start = time.perf_counter()
    F = cholmod.symbolic(A, uplo="L")
    t_analysis = time.perf_counter() - start
    start = time.perf_counter()
    cholmod.numeric(A, F)
    2.0 * np.sum(np.log(np.asarray(cholmod.diag(F))))
    t_call = time.perf_counter() - start
    return dict(
        import_s=t_import,
        analysis_s=t_analysis,
        compile_s=0.0,
        compile_cpu_s=0.0,
        call_s=t_call,
        load=os.getloadavg()[0],
    )


def _run_child(*args: str) -> dict:
    env = dict(os.environ, **THREAD_ENV)
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", *args],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", type=int, nargs="*", default=[128, 256, 512])
    parser.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, m = args.child[0], int(args.child[1])
        res = child_linsolve(m, args.child[2]) if kind == "linsolve" else child_cholmod(m)
        print(json.dumps(res))
        return

    head = (
        f"{'problem':>9} {'run':>22} {'import':>7} {'analysis':>9} {'compile':>8} "
        f"{'(CPU)':>7} {'1st call':>9} {'first result':>13} {'/ CHOLMOD':>10} {'load':>5}"
    )
    print(head)
    for m in args.grids:
        rows = []
        with tempfile.TemporaryDirectory() as cache:
            rows.append(("linsolve, cold cache", _run_child("linsolve", str(m), cache)))
            rows.append(("linsolve, warm cache", _run_child("linsolve", str(m), cache)))
        try:
            rows.append(("CHOLMOD (cvxopt)", _run_child("cholmod", str(m))))
        except subprocess.CalledProcessError:
            pass
        total = {k: r["analysis_s"] + r["compile_s"] + r["call_s"] for k, r in rows}
        ref = total.get("CHOLMOD (cvxopt)")
        for name, r in rows:
            ratio = f"{total[name] / ref:9.1f}x" if ref else "-"
            print(
                f"{m:>6}^2 {name:>22} {r['import_s']:>6.2f}s {r['analysis_s']:>8.3f}s "
                f"{r['compile_s']:>7.2f}s {r['compile_cpu_s']:>6.2f}s {r['call_s']:>8.3f}s "
                f"{total[name]:>12.2f}s {ratio:>10} {r['load']:>5.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
