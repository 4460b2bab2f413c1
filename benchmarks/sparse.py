"""Sparse Cholesky: linsolve's JAX-native supernodal factorization vs CHOLMOD, sparsax,
scipy's splu and dense `jnp.linalg.cholesky`, side by side in one run.

Problems (float64, lower triangle stored): the 2D 5-point Laplacian + I on m x m grids
and the 3D 7-point Laplacian + I on a k^3 grid. For each, this reports

- `symbolic`: host-side analysis (ordering, elimination tree, supernodes, index maps),
  cold (the per-pattern cache cleared); CHOLMOD's `symbolic` (its AMD ordering) beside it;
- run times of jitted functions of the stored values: `factor` (numeric factorization),
  `solve` (factor + one solve), `logdet`, `logdet+grad` (`jax.value_and_grad`, gradient
  from the selected inverse), `diag_inverse` (marginal variances) and `selected_inverse`
  (A^-1 on the whole pattern of L);
- compile time of each (trace + lower + XLA compile, cold caches), reported separately;
- memory: XLA's temp + output bytes of the compiled `factor` and `logdet+grad`
  (`compiled.memory_analysis()`), and the padded factor size;
- anchors: CHOLMOD through cvxopt (supernodal, numeric factorization and solve with a
  precomputed symbolic analysis), sparsax (CHOLMOD behind a JAX custom call; logdet and
  its gradient; its factorization cache is cleared before every call, so its time also
  includes its symbolic analysis), scipy's `splu` (SuperLU, factorization only) and dense
  `jnp` Cholesky
  (only where the dense matrix is small). Missing anchors (not installed) are skipped;
  `pip install linsolve[bench]` installs them.

Ratios printed: factor / CHOLMOD numeric (target <= 2 at 512^2), logdet+grad / CHOLMOD
numeric (target <= 5), and linsolve / sparsax for logdet+grad.

Usage:

    python benchmarks/sparse.py                          # 2D 128, 256, 512 and 3D 32
    python benchmarks/sparse.py --grids 64 128 --cubes   # quick
    python benchmarks/sparse.py --markdown               # tables for docs/benchmarks.md
    python benchmarks/sparse.py --threads all            # multithreaded (default: 1 thread)
    python benchmarks/sparse.py --large --cubes          # 2D 1024^2, with peak RSS (one
    python benchmarks/sparse.py --large --grids          # 3D 64^3   problem per process)
    python benchmarks/sparse.py --kernels traced         # the traced XLA phase (GPU's)

Timing conventions are those of `benchmarks/_timing.py` (medians, interleaved samples).
Note: XLA:CPU allocates its buffers afresh on every call, and on Linux the first touch of
that memory (page faults, 4 KiB at a time) is a sizeable part of the run time at these
sizes; CHOLMOD here refactorizes into memory it already owns. With glibc >= 2.35, run as
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python benchmarks/sparse.py ...` to let large
allocations use transparent huge pages (the environment line then shows it): 20-36 %
less time for linsolve's numeric phases at 128^2-512^2 (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import time


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _timing import limit_threads, threads_from_argv  # noqa: E402


if __name__ == "__main__":
    limit_threads(threads_from_argv(sys.argv[1:]))

import jax  # noqa: E402


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import scipy.sparse.linalg as spla  # noqa: E402
from _timing import compile_fn, environment, format_seconds, format_table, time_interleaved  # noqa: E402

import linsolve as ls  # noqa: E402
from linsolve._sparse import numeric, symbolic  # noqa: E402


DENSE_MAX_N = 4096  # dense Cholesky anchor only up to this size


def laplacian(m: int, dim: int) -> sp.csc_matrix:
    """The `dim`-dimensional (2 or 3) finite-difference Laplacian + I on an m^dim grid."""
    t = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(m, m))
    eye = sp.eye(m)
    if dim == 2:
        a = sp.kron(t, eye) + sp.kron(eye, t)
    else:
        a = (
            sp.kron(sp.kron(t, eye), eye)
            + sp.kron(sp.kron(eye, t), eye)
            + sp.kron(sp.kron(eye, eye), t)
        )
    a = (a + sp.eye(a.shape[0])).tocsc()
    a.sort_indices()
    return a


def lower(a: sp.csc_matrix) -> sp.csc_matrix:
    m = sp.tril(a).tocsc()
    m.sort_indices()
    return m


def _mb(nbytes: float) -> str:
    return f"{nbytes / 2**20:.0f} MiB"


def _resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _call_memory(compiled, args) -> float:
    """Peak resident memory of the process during one call, above its level before the
    call (sampled every 2 ms by a thread; Linux): what the call needs, whoever allocates
    it (XLA's buffers, the host kernels' arrays, the callbacks' copies)."""
    import gc
    import threading

    gc.collect()
    before = _resident()
    peak, done = [before], threading.Event()

    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], _resident())
            time.sleep(0.002)

    thread = threading.Thread(target=poll)
    thread.start()
    out = compiled(*args)
    jax.block_until_ready(out)
    done.set()
    thread.join()
    peak[0] = max(peak[0], _resident())
    del out
    return peak[0] - before


def _memory(compiled) -> float:
    stats = compiled.memory_analysis()
    if stats is None:
        return float("nan")
    return float(stats.temp_size_in_bytes + stats.output_size_in_bytes)


def _cholmod_matrix(a_low: sp.csc_matrix):
    """`a_low` as a cvxopt matrix, with CHOLMOD set to supernodal; None without cvxopt."""
    try:
        from cvxopt import cholmod, spmatrix
    except ImportError:
        return None
    coo = a_low.tocoo()
    n = a_low.shape[0]
    cholmod.options["supernodal"] = 2  # always supernodal
    return spmatrix(coo.data.tolist(), coo.row.tolist(), coo.col.tolist(), (n, n))


def cholmod_anchor(a_low: sp.csc_matrix, b: np.ndarray):
    """(symbolic seconds, {name: (callable, args)}) for CHOLMOD via cvxopt, or None."""
    A = _cholmod_matrix(a_low)
    if A is None:
        return None
    from cvxopt import cholmod, matrix

    start = time.perf_counter()
    F = cholmod.symbolic(A, uplo="L")
    t_sym = time.perf_counter() - start
    cholmod.numeric(A, F)
    B = matrix(b)

    def solve():
        cholmod.numeric(A, F)
        X = matrix(B)
        cholmod.solve(F, X)
        return X

    def logdet():
        cholmod.numeric(A, F)
        return 2.0 * np.sum(np.log(np.asarray(cholmod.diag(F))))

    return t_sym, {
        "CHOLMOD factor": (lambda: cholmod.numeric(A, F), ()),
        "CHOLMOD solve": (solve, ()),
        "CHOLMOD logdet": (logdet, ()),
    }


def sparsax_anchor(a: sp.csc_matrix):
    try:
        import sparsax
    except ImportError:
        return None
    # sparsax reads the upper triangle: give it the full symmetric matrix
    coo = a.tocoo()
    ai = jnp.asarray(coo.row.astype(np.int32))
    aj = jnp.asarray(coo.col.astype(np.int32))
    n = a.shape[0]
    fn = jax.jit(jax.value_and_grad(lambda x: sparsax.logdet(ai, aj, x, n)))

    def uncached(x):
        # sparsax caches numeric factorizations by value: time a real factorization
        sparsax.clear_cache()
        return fn(x)

    return {"sparsax logdet+grad": (uncached, (jnp.asarray(coo.data),))}


def run_problem(name: str, a: sp.csc_matrix, args) -> list[list[str]]:
    n = a.shape[0]
    a_low = lower(a)
    values = jnp.asarray(a_low.data)
    rng = np.random.default_rng(0)
    b = rng.standard_normal(n)

    # --- symbolic ----------------------------------------------------------------------
    # Load the compiled graph kernels first (a one-off per process: `first_call.py`).
    small = lower(laplacian(3, 2))
    symbolic.analyse(small.indptr, small.indices, small.shape[0])
    symbolic._analyse_cached.cache_clear()
    start = time.perf_counter()
    sym = symbolic.analyse(a_low.indptr, a_low.indices, n)
    t_sym = time.perf_counter() - start
    print(f"\n== {name}: n = {n}, nnz(A lower) = {a_low.nnz}; {sym!r}", flush=True)
    print(
        f"   nnz(L) = {sym.nnz_L}, stored {sym.nnz_L_stored} (amalgamation), "
        f"padded {sym.nnz_L_padded} (buckets); flops {sym.flops:.3g}",
        flush=True,
    )

    pattern = (a_low.indices, a_low.indptr)

    def op_of(v):
        return ls.SparseOperator(v, *pattern, (n, n), ls.positive_semidefinite_tag)

    def factor(v):
        # The factor as the consumers read it: its flat blocks (host kernels) or the
        # per-bucket blocks (traced), and the log-determinant.
        fac = numeric.factor(sym, v)
        return (fac.g if fac.flat is None else fac.flat), fac.logdet

    fns = {
        "factor": factor,
        "solve": lambda v, rhs: ls.linear_solve(op_of(v), rhs, ls.SparseCholesky()).value,
        "logdet": lambda v: ls.logdet(op_of(v)),
        "logdet+grad": jax.value_and_grad(lambda v: ls.logdet(op_of(v))),
        "diag_inverse": lambda v: ls.diag_inverse(op_of(v)),
        "selected_inverse": lambda v: ls.selected_inverse(op_of(v)).values,
    }
    fn_args = {k: (values,) for k in fns}
    fn_args["solve"] = (values, jnp.asarray(b))
    if args.skip:
        for k in args.skip:
            fns.pop(k, None)

    calls, compile_s, memory = {}, {}, {}
    for k, fn in fns.items():
        # XLA:CPU's compile is mostly single-threaded: its CPU time is what a loaded
        # machine does not distort (the wall time is printed too).
        cpu = time.process_time()
        compiled, seconds = compile_fn(fn, *fn_args[k])
        cpu = time.process_time() - cpu
        calls[f"linsolve {k}"] = (compiled, fn_args[k])
        compile_s[k] = cpu
        memory[k] = _memory(compiled)
        print(
            f"   compiled {k}: {cpu:.1f} s CPU, {seconds:.1f} s wall "
            f"(load average {os.getloadavg()[0]:.1f})",
            flush=True,
        )

    # correctness check of what is timed (cheap): residual of the solve
    x = np.asarray(calls["linsolve solve"][0](*fn_args["solve"])) if "solve" in fns else None
    if x is not None:
        res = np.linalg.norm(a @ x - b) / np.linalg.norm(b)
        print(f"   solve relative residual {res:.1e}", flush=True)

    chol = cholmod_anchor(a_low, b[:, None])
    t_chol_sym = None
    if chol is not None:
        t_chol_sym, chol_calls = chol
        calls.update(chol_calls)
    sx = None if args.no_sparsax else sparsax_anchor(a)
    if sx is not None:
        calls.update(sx)
    if not args.no_splu:
        a_full = a.tocsc()
        calls["scipy splu factor"] = (lambda: spla.splu(a_full, permc_spec="COLAMD"), ())
    if n <= DENSE_MAX_N:
        dense = jnp.asarray(a.toarray())
        dense_fn = jax.jit(lambda m: jnp.linalg.cholesky(m))
        calls["dense jnp cholesky"] = (dense_fn, (dense,))

    times = time_interleaved(calls, repeats=args.repeats, min_sample_s=0.05, warmup=1)

    rows = []
    ref = times.get("CHOLMOD factor")
    for k, t in times.items():
        short = k.split(" ", 1)[1] if k.startswith("linsolve ") else None
        ratio = f"{t.median / ref.median:.1f}x" if ref is not None else "-"
        rows.append(
            [
                name,
                k,
                format_seconds(t.median),
                ratio,
                f"{compile_s[short]:.1f} s CPU" if short in compile_s else "-",
                _mb(memory[short]) if short in memory else "-",
            ]
        )
    rows.insert(
        0,
        [name, "linsolve symbolic (cold)", format_seconds(t_sym), "-", "-", "-"],
    )
    if t_chol_sym is not None:
        rows.insert(1, [name, "CHOLMOD symbolic", format_seconds(t_chol_sym), "-", "-", "-"])
    if args.large:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        rows.append([name, "peak RSS of this process (everything above)", _mb(peak), "-", "-", "-"])
        for k in compile_s:
            compiled, fargs = calls[f"linsolve {k}"]
            rows.append(
                [name, f"linsolve {k}: memory a call adds", _mb(_call_memory(compiled, fargs))]
                + ["-"] * 3
            )
        lnz = _cholmod_factor_nnz(a_low)
        if lnz is not None:
            rows.append(
                [name, "CHOLMOD factor size (nnz(L) x 8 bytes)", _mb(8 * lnz), "-", "-", "-"]
            )
            rows.append(
                [
                    name,
                    "linsolve padded factor (nnz_L_padded x 8 bytes)",
                    _mb(8 * sym.nnz_L_padded),
                    "-",
                    "-",
                    "-",
                ]
            )
    return rows


def _cholmod_factor_nnz(a_low: sp.csc_matrix) -> int | None:
    """Entries of CHOLMOD's (supernodal) factor, or None without cvxopt."""
    A = _cholmod_matrix(a_low)
    if A is None:
        return None
    from cvxopt import cholmod

    F = cholmod.symbolic(A, uplo="L")
    cholmod.numeric(A, F)
    return len(cholmod.getfactor(F).V)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--grids", type=int, nargs="*", default=[128, 256, 512], help="2D grid sides"
    )
    parser.add_argument("--cubes", type=int, nargs="*", default=[32], help="3D grid sides")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip", nargs="*", default=[], help="linsolve functions not to time")
    parser.add_argument("--no-splu", action="store_true", help="skip scipy's splu (slow at 512^2)")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--threads", default="1", help="threads for BLAS/XLA (read before import)")
    parser.add_argument(
        "--large",
        action="store_true",
        help="the scale problems (2D 1024^2, 3D 64^3) one at a time, with peak RSS and "
        "CHOLMOD's factor size; no sparsax, splu or selected_inverse",
    )
    parser.add_argument("--no-sparsax", action="store_true")
    parser.add_argument(
        "--kernels",
        choices=["auto", "host", "traced"],
        default="auto",
        help="numeric phase: auto (host kernels on CPU), host, or traced (XLA, as on GPU)",
    )
    args = parser.parse_args(argv)
    from linsolve._sparse import host

    host.MODE = args.kernels
    if args.large:
        if args.grids == [128, 256, 512]:
            args.grids = [1024]
        if args.cubes == [32]:
            args.cubes = [64]
        args.repeats = min(args.repeats, 3)
        args.no_splu = args.no_sparsax = True
        args.skip = sorted(set(args.skip) | {"selected_inverse"})

    print(
        environment(("linsolve", "jax", "jaxlib", "cvxopt", "sparsax", "scipy", "pymetis", "numba"))
    )
    print(f"numeric phase: {'host kernels' if host.enabled() else 'traced XLA'} ({args.kernels})")
    problems = [(f"2D {m}^2", laplacian(m, 2)) for m in args.grids]
    problems += [(f"3D {k}^3", laplacian(k, 3)) for k in args.cubes]
    header = ["problem", "what", "run (median)", "/ CHOLMOD factor", "compile", "XLA memory"]
    all_rows = []
    for name, a in problems:
        rows = run_problem(name, a, args)
        all_rows += rows
        print(format_table(header, rows), flush=True)
    print("\nAll problems:\n")
    print(format_table(header, all_rows, markdown=args.markdown))


if __name__ == "__main__":
    main()
