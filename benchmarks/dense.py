"""Dense direct solves: linsolve vs lineax vs jax.scipy, forward and value_and_grad.

For each size n (float64) and each factorization (Cholesky on a symmetric positive
definite matrix, LU on the same matrix treated as general), this times

- `forward`: `loss(A, b) = 0.5 * |x|²` with `x = solve(A, b)`, jitted;
- `value_and_grad`: `jax.value_and_grad(loss, argnums=(0, 1))`, jitted;
- compile time of each (trace + lower + XLA compile, cold caches),

for linsolve, lineax, two jax.scipy variants and a "floor" (the bare LAPACK kernels
with a hand-written VJP and no checks: the least work any method can do), side by side
in one run, and prints the ratios the core issue sets targets for:

- value_and_grad time, linsolve / lineax <= 0.9
- value_and_grad / forward time of linsolve <= 1.1
- compile time, linsolve / lineax <= 1

Usage:

    python benchmarks/dense.py                         # n = 100, 500, 2000
    python benchmarks/dense.py --sizes 50 100 --repeats 3 --compile-repeats 1
    python benchmarks/dense.py --markdown              # tables for docs/benchmarks.md
    python benchmarks/dense.py --threads all           # multithreaded BLAS (default: 1 thread)
    python benchmarks/dense.py --kernels               # LAPACK kernels alone vs lineax's v&g
    python benchmarks/dense.py --vmap --repeats 3      # vmap over batches of matrices
    python benchmarks/dense.py --vmap --dtype float32
    python benchmarks/dense.py --rcond --sizes 100 200 # cost of the rcond estimate
    python benchmarks/dense.py --vmap --batches 100x50 --clock cpu  # CPU time (loaded machine)

Timing conventions are those of `benchmarks/_timing.py` (medians, interleaved samples).
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
import jax.scipy.linalg as jsl  # noqa: E402
import lineax as lx  # noqa: E402
import numpy as np  # noqa: E402
from _timing import (  # noqa: E402
    compile_fn,
    compiled_op_counts,
    environment,
    format_seconds,
    format_table,
    time_interleaved,
)

import linsolve as ls  # noqa: E402


# --- the solves being compared: (A, b) -> x ------------------------------------------


def linsolve_cholesky(A, b):
    return ls.linear_solve(
        ls.MatrixOperator(A, ls.positive_semidefinite_tag), b, ls.Cholesky()
    ).value


def linsolve_cholesky_no_rcond(A, b):
    op = ls.MatrixOperator(A, ls.positive_semidefinite_tag)
    return ls.linear_solve(op, b, ls.Cholesky(check_condition=False)).value


def lineax_cholesky(A, b):
    op = lx.MatrixLinearOperator(A, lx.positive_semidefinite_tag)
    return lx.linear_solve(op, b, lx.Cholesky()).value


def jsp_cho(A, b):
    return jsl.cho_solve(jsl.cho_factor(A, lower=True), b)


def jsp_solve_pos(A, b):
    return jsl.solve(A, b, assume_a="pos")


def linsolve_lu(A, b):
    return ls.linear_solve(ls.MatrixOperator(A), b, ls.LU()).value


def linsolve_lu_no_rcond(A, b):
    return ls.linear_solve(ls.MatrixOperator(A), b, ls.LU(check_condition=False)).value


def lineax_lu(A, b):
    return lx.linear_solve(lx.MatrixLinearOperator(A), b, lx.LU()).value


def jsp_lu(A, b):
    return jsl.lu_solve(jsl.lu_factor(A), b)


def jsp_solve_gen(A, b):
    return jsl.solve(A, b)


# The floor: the least work value_and_grad can do — one factorization, the two
# triangular solves of the forward pass and the two of the transposed solve, and the
# rank-one gradient −λ xᵀ — hand-written with a custom VJP and no checks at all. No
# library can do less with the same LAPACK kernels; it shows how close to that lower
# bound each method is (and what ratio to lineax is attainable at all).
def _bare(factor, solve, solve_t):
    @jax.custom_vjp
    def bare(A, b):
        return solve(factor(A), b)

    def fwd(A, b):
        f = factor(A)
        x = solve(f, b)
        return x, (f, x)

    def bwd(res, g):
        f, x = res
        lam = solve_t(f, g)
        return -jnp.outer(lam, x), lam

    bare.defvjp(fwd, bwd)
    return bare


def _chol_factor(A):
    return jax.lax.linalg.cholesky(A, symmetrize_input=False)


def _chol_solve(L, b):
    return jsl.cho_solve((L, True), b)


bare_cholesky = _bare(_chol_factor, _chol_solve, _chol_solve)
bare_lu = _bare(jsl.lu_factor, jsl.lu_solve, lambda f, g: jsl.lu_solve(f, g, trans=1))


FAMILIES = {
    "cholesky": {
        "linsolve": linsolve_cholesky,
        "lineax": lineax_cholesky,
        "jax.scipy cho_factor+cho_solve": jsp_cho,
        "jax.scipy solve(pos)": jsp_solve_pos,
        "bare kernels (floor)": bare_cholesky,
    },
    "lu": {
        "linsolve": linsolve_lu,
        "lineax": lineax_lu,
        "jax.scipy lu_factor+lu_solve": jsp_lu,
        "jax.scipy solve": jsp_solve_gen,
        "bare kernels (floor)": bare_lu,
    },
}
JSP = (
    "jax.scipy cho_factor+cho_solve",
    "jax.scipy solve(pos)",
    "jax.scipy lu_factor+lu_solve",
    "jax.scipy solve",
)
FLOOR = "bare kernels (floor)"


def make_loss(solve):
    def loss(A, b):
        x = solve(A, b)
        return 0.5 * jnp.sum(x * x)

    return loss


def problem(n, seed=0):
    """A well-conditioned symmetric positive definite A (so every method reads the same
    matrix, whichever triangle it uses) and a right-hand side b."""
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((n, n))
    A = M @ M.T / n + np.eye(n)
    b = rng.standard_normal(n)
    return jnp.asarray(A), jnp.asarray(b)


# --- measurement -----------------------------------------------------------------------


def _folded(gA):
    """The gradient a symmetric perturbation sees: entry (i, j), i > j, moves both
    A[i, j] and A[j, i]. Methods differ in which triangle they put the gradient on."""
    gA = np.asarray(gA)
    return np.tril(gA + gA.T, -1) + np.diag(np.diag(gA))


def check_agreement(family, A, b):
    """All methods must compute the same value and (folded) gradient on this symmetric
    input; warn otherwise, so that a table never compares different computations."""
    ref = None
    for name, solve in FAMILIES[family].items():
        v, (gA, gb) = jax.jit(jax.value_and_grad(make_loss(solve), argnums=(0, 1)))(A, b)
        out = (float(v), np.asarray(gb), _folded(gA))
        if ref is None:
            ref = out
            continue
        ok = (
            np.isclose(out[0], ref[0], rtol=1e-8)
            and np.allclose(out[1], ref[1], rtol=1e-6, atol=1e-10)
            and np.allclose(out[2], ref[2], rtol=1e-6, atol=1e-10)
        )
        if not ok:
            err = np.max(np.abs(out[2] - ref[2])) / np.max(np.abs(ref[2]))
            print(
                f"WARNING: {family}/{name} disagrees with linsolve on n={A.shape[0]} "
                f"(relative gradient difference {err:.1e})",
                file=sys.stderr,
            )


def measure(sizes, repeats, compile_repeats, families):
    results = {}  # (family, n, method) -> dict
    for n in sizes:
        A, b = problem(n)
        for family in families:
            methods = FAMILIES[family]
            if n <= 200:
                check_agreement(family, A, b)
            fns = {}
            for name, solve in methods.items():
                loss = make_loss(solve)
                fns[(name, "forward")] = loss
                fns[(name, "value_and_grad")] = jax.value_and_grad(loss, argnums=(0, 1))
            # Compile: cold, interleaved across methods, median of `compile_repeats`.
            compile_samples = {key: [] for key in fns}
            compiled = {}
            for _ in range(max(1, compile_repeats)):
                for key, fn in fns.items():
                    exe, seconds = compile_fn(fn, A, b)
                    compile_samples[key].append(seconds)
                    compiled[key] = exe
            timings = time_interleaved(
                {key: (exe, (A, b)) for key, exe in compiled.items()}, repeats=repeats
            )
            for name in methods:
                results[(family, n, name)] = {
                    "forward": timings[(name, "forward")].median,
                    "value_and_grad": timings[(name, "value_and_grad")].median,
                    "compile_forward": float(np.median(compile_samples[(name, "forward")])),
                    "compile_value_and_grad": float(
                        np.median(compile_samples[(name, "value_and_grad")])
                    ),
                }
            print(f"  measured {family} n={n}", file=sys.stderr, flush=True)
    return results


def kernel_counts(families, n):
    """What XLA runs for value_and_grad, per method: LAPACK kernels and data movement."""
    A, b = problem(n)
    header = [
        "family",
        "method",
        "potrf/getrf",
        "trsm",
        "host callbacks",
        "n×n ops",
        "copy",
        "transpose",
        "fusion",
    ]
    rows = []
    for family in families:
        for name, solve in FAMILIES[family].items():
            fn = jax.value_and_grad(make_loss(solve), argnums=(0, 1))
            c = compiled_op_counts(fn, A, b, full_shape=(n, n))
            factor = c["lapack_dpotrf_ffi"] + c["lapack_dgetrf_ffi"]
            rows.append(
                [
                    family,
                    name,
                    factor,
                    c["lapack_dtrsm_ffi"],
                    c["xla_ffi_python_cpu_callback"],
                    c["full_size_ops"],
                    c["copy"],
                    c["transpose"],
                    c["fusion"],
                ]
            )
    return header, rows


def kernel_share(sizes, repeats):
    """The LAPACK kernels alone — potrf, getrf and the four triangular solves, each jitted
    on its own — against lineax's whole value_and_grad, sampled together: how much of
    that time any method could still save."""
    header = [
        "n",
        "potrf",
        "4 × trsm",
        "getrf",
        "lineax v&g chol",
        "lineax v&g lu",
        "(potrf + 4 trsm) / lineax chol",
        "getrf / lineax lu",
        "ls/lineax chol",
        "ls/lineax lu",
    ]
    rows = []
    for n in sizes:
        A, b = problem(n)
        potrf = jax.jit(_chol_factor).lower(A).compile()
        L = potrf(A)
        trsm4 = jax.jit(lambda L, b: _chol_solve(L, _chol_solve(L, b))).lower(L, b).compile()
        calls = {
            "potrf": (potrf, (A,)),
            "trsm": (trsm4, (L, b)),
            "getrf": (jax.jit(jsl.lu_factor).lower(A).compile(), (A,)),
        }
        for family in ("cholesky", "lu"):
            for name in ("linsolve", "lineax"):
                fn = jax.value_and_grad(make_loss(FAMILIES[family][name]), argnums=(0, 1))
                calls[(family, name)] = (jax.jit(fn).lower(A, b).compile(), (A, b))
        t = {k: v.median for k, v in time_interleaved(calls, repeats=repeats).items()}
        lx_c, lx_l = t[("cholesky", "lineax")], t[("lu", "lineax")]
        rows.append(
            [
                n,
                format_seconds(t["potrf"]),
                format_seconds(t["trsm"]),
                format_seconds(t["getrf"]),
                format_seconds(lx_c),
                format_seconds(lx_l),
                ratio(t["potrf"] + t["trsm"], lx_c),
                ratio(t["getrf"], lx_l),
                ratio(t[("cholesky", "linsolve")], lx_c),
                ratio(t[("lu", "linsolve")], lx_l),
            ]
        )
    return header, rows


VMAP_SIZES = [(10000, 3), (1000, 10), (100, 50), (16, 200)]


def _logdet_linsolve(A, b):
    return ls.logdet(ls.MatrixOperator(A, ls.positive_semidefinite_tag)) * b


def _logdet_jnp(A, b):
    return jnp.linalg.slogdet(A)[1] * b


def _logdet_bare(A, b):
    L = jax.lax.linalg.cholesky(A, symmetrize_input=False)
    return 2 * jnp.sum(jnp.log(jnp.diagonal(L))) * b


# For each family under vmap: linsolve, the reference it must not be slower than (lineax;
# lineax has no log-determinant, so jnp.linalg.slogdet there) and the bare kernels (JAX's
# own batched LAPACK calls, no checks).
VMAP_FAMILIES = {
    "cholesky": (linsolve_cholesky, lineax_cholesky, bare_cholesky),
    "lu": (linsolve_lu, lineax_lu, bare_lu),
    "logdet": (_logdet_linsolve, _logdet_jnp, _logdet_bare),
}


def vmap_batches(repeats, dtype, families, sizes=None, clock=None):
    """`vmap(loss)` and `vmap(value_and_grad(loss))` over a batch of matrices: linsolve,
    the reference (lineax, or `jnp.linalg.slogdet` for the log-determinant) and the bare
    kernels (floor), sampled together. With jaxlib 0.10 on CPU linsolve makes no batched
    LAPACK call (`linsolve._lapack`: two at once can deadlock); the others make one."""
    header = [
        "family",
        "batch × n",
        "mode",
        "linsolve",
        "reference",
        "floor",
        "ls/reference",
        "floor/reference",
    ]
    rows = []
    for batch, n in sizes or VMAP_SIZES:
        g = np.random.default_rng(0).standard_normal((batch, n, n))
        A = jnp.asarray(g @ np.swapaxes(g, 1, 2) / n + np.eye(n), dtype)
        b = jnp.asarray(np.random.default_rng(1).standard_normal((batch, n)), dtype)
        for family in families:
            calls = {}
            for i, solve in enumerate(VMAP_FAMILIES[family]):
                loss = make_loss(solve) if family != "logdet" else lambda A, b, s=solve: s(A, b)[0]
                for mode, fn in (
                    ("forward", loss),
                    ("value_and_grad", jax.value_and_grad(loss, argnums=(0, 1))),
                ):
                    exe, _ = compile_fn(jax.vmap(fn), A, b, cold=False)
                    calls[(mode, i)] = (exe, (A, b))
            t = {k: v.median for k, v in _timed(calls, repeats, clock).items()}
            for mode in ("forward", "value_and_grad"):
                ls_t, ref_t, floor_t = (t[(mode, i)] for i in range(3))
                rows.append(
                    [
                        family,
                        f"{batch} × {n}",
                        mode,
                        format_seconds(ls_t),
                        format_seconds(ref_t),
                        format_seconds(floor_t),
                        ratio(ls_t, ref_t),
                        ratio(floor_t, ref_t),
                    ]
                )
            print(f"  measured {family} {batch} x {n}", file=sys.stderr, flush=True)
    return header, rows


def rcond_cost(sizes, repeats, clock=None):
    """What the reciprocal-condition estimate (`sol.stats["rcond"]`, on by default) costs:
    linsolve's value_and_grad with it and without it (`check_condition=False`) against
    lineax's, sampled together."""
    pairs = {
        "cholesky": (linsolve_cholesky, linsolve_cholesky_no_rcond, lineax_cholesky),
        "lu": (linsolve_lu, linsolve_lu_no_rcond, lineax_lu),
    }
    header = [
        "family",
        "n",
        "ls (rcond)",
        "ls (no rcond)",
        "lineax",
        "rcond/no rcond",
        "ls (rcond)/lineax",
        "ls (no rcond)/lineax",
    ]
    rows = []
    for n in sizes:
        A, b = problem(n)
        for family, fns in pairs.items():
            calls = {}
            for i, solve in enumerate(fns):
                exe, _ = compile_fn(jax.value_and_grad(make_loss(solve), argnums=(0, 1)), A, b)
                calls[i] = (exe, (A, b))
            t = {k: v.median for k, v in _timed(calls, repeats, clock).items()}
            rows.append(
                [
                    family,
                    n,
                    format_seconds(t[0]),
                    format_seconds(t[1]),
                    format_seconds(t[2]),
                    ratio(t[0], t[1]),
                    ratio(t[0], t[2]),
                    ratio(t[1], t[2]),
                ]
            )
    return header, rows


def _timed(calls, repeats, clock):
    """`time_interleaved`, on wall time or (`clock="cpu"`) this process's CPU time."""
    kw = {"clock": time.process_time} if clock == "cpu" else {}
    return time_interleaved(calls, repeats=repeats, **kw)


def ratio(x, y):
    return f"{x / y:.2f}"


def report(results, sizes, families, markdown):
    out = []
    header = [
        "family",
        "n",
        "method",
        "forward",
        "value_and_grad",
        "v&g / fwd",
        "compile fwd",
        "compile v&g",
    ]
    rows = []
    for family in families:
        for n in sizes:
            for name in FAMILIES[family]:
                r = results[(family, n, name)]
                rows.append(
                    [
                        family,
                        n,
                        name,
                        format_seconds(r["forward"]),
                        format_seconds(r["value_and_grad"]),
                        ratio(r["value_and_grad"], r["forward"]),
                        format_seconds(r["compile_forward"]),
                        format_seconds(r["compile_value_and_grad"]),
                    ]
                )
    out.append("Times (median):")
    out.append(format_table(header, rows, markdown))

    header = [
        "family",
        "n",
        "v&g: ls/lineax",
        "v&g: ls/best jsp",
        "fwd: ls/lineax",
        "v&g/fwd: ls",
        "v&g/fwd: lineax",
        "compile v&g: ls/lineax",
        "compile fwd: ls/lineax",
        "v&g: floor/lineax",
        "v&g: ls/floor",
    ]
    rows = []
    verdicts = []
    for family in families:
        for n in sizes:
            r = {name: results[(family, n, name)] for name in FAMILIES[family]}
            ls_, lx_ = r["linsolve"], r["lineax"]
            best_jsp = min(v["value_and_grad"] for k, v in r.items() if k in JSP)
            vg_ratio = ls_["value_and_grad"] / lx_["value_and_grad"]
            gf_ratio = ls_["value_and_grad"] / ls_["forward"]
            cvg_ratio = ls_["compile_value_and_grad"] / lx_["compile_value_and_grad"]
            cf_ratio = ls_["compile_forward"] / lx_["compile_forward"]
            rows.append(
                [
                    family,
                    n,
                    f"{vg_ratio:.2f}",
                    f"{ls_['value_and_grad'] / best_jsp:.2f}",
                    ratio(ls_["forward"], lx_["forward"]),
                    f"{gf_ratio:.2f}",
                    ratio(lx_["value_and_grad"], lx_["forward"]),
                    f"{cvg_ratio:.2f}",
                    f"{cf_ratio:.2f}",
                    ratio(r[FLOOR]["value_and_grad"], lx_["value_and_grad"]),
                    ratio(ls_["value_and_grad"], r[FLOOR]["value_and_grad"]),
                ]
            )
            verdicts.append(
                [
                    family,
                    n,
                    "met" if vg_ratio <= 0.9 else "MISSED",
                    "met" if gf_ratio <= 1.1 else "MISSED",
                    "met" if max(cvg_ratio, cf_ratio) <= 1.0 else "MISSED",
                ]
            )
    out.append(
        "\nRatios (ls = linsolve; best jsp = the faster jax.scipy variant; floor = bare kernels):"
    )
    out.append(format_table(header, rows, markdown))
    out.append("\nTargets: v&g <= 0.9x lineax; v&g/fwd <= 1.1; compile (fwd and v&g) <= lineax:")
    out.append(
        format_table(
            ["family", "n", "v&g <= 0.9 lineax", "v&g/fwd <= 1.1", "compile <= lineax"],
            verdicts,
            markdown,
        )
    )
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500, 2000])
    parser.add_argument("--repeats", type=int, default=7, help="timed samples per function")
    parser.add_argument(
        "--compile-repeats", type=int, default=3, help="cold compilations per function"
    )
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument(
        "--vmap",
        action="store_true",
        help="only time vmapped value_and_grad over batches of matrices",
    )
    parser.add_argument(
        "--dtype", default="float64", choices=["float64", "float32"], help="for --vmap"
    )
    parser.add_argument(
        "--kernels",
        action="store_true",
        help="only time the bare LAPACK kernels against lineax's value_and_grad (21 samples)",
    )
    parser.add_argument(
        "--threads",
        default="1",
        help="BLAS/XLA CPU threads: a number, or 'all' for the library defaults (default 1)",
    )
    parser.add_argument(
        "--batches",
        nargs="+",
        default=None,
        help="for --vmap: batch x n pairs such as 1000x10 (default: all of VMAP_SIZES)",
    )
    parser.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "cpu"],
        help="for --vmap and --rcond: wall time, or this process's CPU time (on a loaded "
        "machine, with one thread: the time spent waiting for a core drops out)",
    )
    parser.add_argument(
        "--rcond",
        action="store_true",
        help="only time value_and_grad with and without the rcond estimate, against lineax",
    )
    args = parser.parse_args(argv)

    print(environment())
    if args.vmap:
        dtype = {"float64": jnp.float64, "float32": jnp.float32}[args.dtype]
        sizes = [tuple(map(int, p.split("x"))) for p in args.batches] if args.batches else None
        header, rows = vmap_batches(
            args.repeats, dtype, args.families + ["logdet"], sizes, args.clock
        )
        print(
            f"vmap over a batch of matrices, {args.dtype} ({args.clock} time, median, "
            "sampled together):"
        )
        print(format_table(header, rows, args.markdown))
        return
    if args.rcond:
        header, rows = rcond_cost(args.sizes, args.repeats, args.clock)
        print(
            f"value_and_grad with / without the rcond estimate ({args.clock} time, median, "
            "sampled together):"
        )
        print(format_table(header, rows, args.markdown))
        return
    if args.kernels:
        header, rows = kernel_share(args.sizes, max(args.repeats, 21))
        print("LAPACK kernels alone vs value_and_grad (median, sampled together):")
        print(format_table(header, rows, args.markdown))
        return
    print(
        f"float64; sizes {args.sizes}; {args.repeats} timed samples, {args.compile_repeats} cold compiles each\n"
    )
    header, rows = kernel_counts(args.families, min(args.sizes))
    print(f"Kernels and ops in the optimised HLO of value_and_grad (n = {min(args.sizes)}):")
    print(format_table(header, rows, args.markdown))
    print()
    results = measure(args.sizes, args.repeats, args.compile_repeats, args.families)
    print(report(results, args.sizes, args.families, args.markdown))


if __name__ == "__main__":
    main()
