"""Timing helpers shared by the benchmark scripts in `benchmarks/`.

Conventions (every script uses them, so tables are comparable):

- **Run time** is the median over `repeats` samples of one call of an already compiled
  function, outputs waited for with `jax.block_until_ready`. Fast calls are batched: a
  sample times `number` back-to-back calls (chosen so a sample lasts at least
  `min_sample_s`) and reports the time per call.
- **Compile time** is the median over `compile_repeats` of tracing + lowering + XLA
  compilation, `jax.jit(fn).lower(*args).compile()`, each after `jax.clear_caches()` so
  that every measurement is cold (no tracing or compilation cache hit).
- Medians, not means: the machines these run on are shared and noisy. Report ratios
  measured in one run, side by side, rather than absolute times from different runs.
- Threads: `limit_threads(1)` (the scripts' default, `--threads` to change it) runs
  BLAS/LAPACK and XLA's CPU kernels single-threaded, which on a loaded machine is both
  faster and much more repeatable than oversubscribed multithreaded kernels.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import importlib.metadata
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any


# JAX is imported lazily, inside the functions, so that `limit_threads` can set the
# environment before anything loads XLA or a BLAS library.


def limit_threads(threads: int | None) -> None:
    """Run BLAS/LAPACK (OpenBLAS, MKL, OpenMP) and XLA's own CPU kernels on `threads`
    threads; `None` leaves the defaults (all cores). Call it before importing JAX, NumPy
    or SciPy. On a shared, loaded machine multithreaded BLAS kernels are both slower and
    far noisier (threads spin-wait for cores that other processes hold), so the benchmark
    scripts default to one thread."""
    if threads is None:
        return
    if any(m in sys.modules for m in ("jax", "numpy", "scipy")):
        print("warning: limit_threads called after JAX/NumPy/SciPy were imported", file=sys.stderr)
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ[var] = str(threads)
    flags = os.environ.get("XLA_FLAGS", "")
    if threads == 1:
        flags += " --xla_cpu_multi_thread_eigen=false"
    os.environ["XLA_FLAGS"] = (flags + f" intra_op_parallelism_threads={threads}").strip()


def threads_from_argv(argv: Sequence[str]) -> int | None:
    """The `--threads N|all` option of a benchmark script (default 1), read before JAX
    is imported: thread counts are fixed when XLA and BLAS load."""
    import argparse

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--threads", default="1")
    value = parser.parse_known_args(list(argv))[0].threads
    return None if value == "all" else int(value)


@dataclasses.dataclass
class Timing:
    """Median seconds per call, with the spread of the samples."""

    median: float
    min: float
    max: float
    samples: int
    number: int  # calls per sample


def _block(out):
    import jax

    return jax.block_until_ready(out)


def compile_fn(fn: Callable, *args, cold: bool = True) -> tuple[Callable, float]:
    """Trace, lower and compile `fn` for `args`; return `(compiled, seconds)`.

    With `cold=True` JAX's in-memory caches are cleared first, so shared sub-functions
    (e.g. `jax.scipy` helpers traced by an earlier benchmark) are traced again.
    """
    import jax

    if cold:
        jax.clear_caches()
    jitted = jax.jit(fn)
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - start


def time_compile(fn: Callable, *args, repeats: int = 3) -> tuple[Callable, Timing]:
    """Compile `fn` `repeats` times (cold); return the last executable and the timing."""
    samples = []
    compiled = None
    for _ in range(max(1, repeats)):
        compiled, seconds = compile_fn(fn, *args)
        samples.append(seconds)
    return compiled, Timing(statistics.median(samples), min(samples), max(samples), len(samples), 1)


def time_run(
    compiled: Callable, *args, repeats: int = 7, min_sample_s: float = 0.02, warmup: int = 2
) -> Timing:
    """Median wall time of one call of `compiled(*args)` (already compiled)."""
    return time_interleaved({"fn": (compiled, args)}, repeats, min_sample_s, warmup)["fn"]


def time_interleaved(
    calls: dict[str, tuple[Callable, tuple]],
    repeats: int = 7,
    min_sample_s: float = 0.02,
    warmup: int = 2,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Timing]:
    """Like `time_run` for several compiled functions at once, sampled round-robin
    (one sample of each per round), so that load from other processes that comes and
    goes during the run affects all of them alike. `calls` maps a name to
    `(compiled, args)`. `clock=time.process_time` measures the CPU time of this process
    instead of wall time: on a machine loaded by other jobs, the time spent waiting for
    a core drops out (meaningful with one thread, `limit_threads(1)`)."""
    numbers = {}
    for name, (compiled, args) in calls.items():
        for _ in range(max(1, warmup)):
            _block(compiled(*args))
        number = 1
        while True:
            start = clock()
            for _ in range(number):
                _block(compiled(*args))
            elapsed = clock() - start
            if elapsed >= min_sample_s or number >= 1 << 16:
                break
            number *= 2 if elapsed == 0 else max(2, min(10, int(min_sample_s / elapsed) + 1))
        numbers[name] = number
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(max(1, repeats)):
        for name, (compiled, args) in calls.items():
            number = numbers[name]
            start = clock()
            for _ in range(number):
                _block(compiled(*args))
            samples[name].append((clock() - start) / number)
    return {
        name: Timing(statistics.median(s), min(s), max(s), len(s), numbers[name])
        for name, s in samples.items()
    }


def count_primitives(fn: Callable, *args, names: Iterable[str]) -> dict[str, int]:
    """How many times each primitive in `names` appears in the jaxpr of `fn(*args)`,
    counting inside nested jaxprs (pjit, custom_jvp/vjp, custom_linear_solve, cond...)."""
    import jax

    try:
        from jax.extend.core import jaxprs_in_params as _jaxprs_in_params
    except ImportError:  # older JAX
        from jax.core import jaxprs_in_params as _jaxprs_in_params

    names = set(names)
    counts = dict.fromkeys(names, 0)

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in names:
                counts[eqn.primitive.name] += 1
            for sub in _jaxprs_in_params(eqn.params):
                visit(getattr(sub, "jaxpr", sub))

    visit(jax.make_jaxpr(fn)(*args).jaxpr)
    return counts


def compiled_op_counts(
    fn: Callable, *args, full_shape: tuple[int, ...] | None = None
) -> collections.Counter:
    """What XLA actually runs: counts of custom-call targets (LAPACK/BLAS kernels such as
    `lapack_dpotrf_ffi`, `lapack_dtrsm_ffi`, host callbacks) and of a few HLO opcodes
    (`copy`, `transpose`, `dot`, `fusion`, `while`, `conditional`) in the optimised HLO of
    `jax.jit(fn)` for `args`. Unlike a jaxpr this sees through opaque primitives (e.g.
    lineax's) and only counts what survived dead-code elimination. With `full_shape`,
    `counts["full_size_ops"]` is the number of top-level instructions producing an array
    of that shape (fusions, copies, scatters, kernels): passes over the full matrix."""
    import jax

    text = jax.jit(fn).lower(*args).compile().as_text()
    counts = collections.Counter(re.findall(r'custom_call_target="([^"]+)"', text))
    counts.update(
        re.findall(r"= \S+ (copy|transpose|dot|fusion|while|conditional|triangular-solve)\(", text)
    )
    if full_shape is not None:
        # Top-level instructions that write an array of `full_shape` (e.g. a pass over
        # the whole n x n matrix); parameters, constants and views are not work.
        dims = ",".join(map(str, full_shape))
        entry = text[text.index("ENTRY") :]
        free = {"parameter", "constant", "get-tuple-element", "bitcast", "tuple"}
        counts["full_size_ops"] = sum(
            1
            for m in re.finditer(r"= \w+\[([\d,]*)\]\{[^}]*\} ([\w-]+)\(", entry)
            if m.group(1) == dims and m.group(2) not in free
        )
    return counts


def format_seconds(seconds: float) -> str:
    """A compact human-readable duration: µs, ms or s."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def format_table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], markdown: bool = False
) -> str:
    """A plain-text (or Markdown) table; numbers should already be formatted as strings."""
    cells = [list(map(str, header))] + [list(map(str, row)) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    if markdown:
        lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |"]
        lines.append("| " + " | ".join("-" * w for w in widths) + " |")
        lines += [
            "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells[1:]
        ]
        return "\n".join(lines)
    lines = ["  ".join(c.ljust(w) for c, w in zip(cells[0], widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells[1:]]
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment(
    packages: Iterable[str] = ("linsolve", "jax", "jaxlib", "equinox", "lineax"),
) -> str:
    """One paragraph describing where and with what a benchmark ran."""
    import jax

    devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
    versions = ", ".join(f"{p} {_version(p)}" for p in packages)
    return (
        f"date {datetime.date.today().isoformat()}; CPU {_cpu_model()}, {os.cpu_count()} cores; "
        f"JAX backend {jax.default_backend()} ({devices}); Python {platform.python_version()}; "
        f"{versions}; threads: OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'default')}, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
        # glibc's allocator settings change XLA:CPU's run times (fresh buffers every call)
        + "".join(
            f", {k}={os.environ[k]!r}"
            for k in ("GLIBC_TUNABLES", "MALLOC_MMAP_MAX_", "LD_PRELOAD")
            if k in os.environ
        )
    )
