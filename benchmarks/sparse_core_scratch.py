"""Private timing script for the sparse Cholesky engine (not part of the benchmark suite)."""
import os, sys, time
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # oversubscribed 2-core box: OpenBLAS threads spin
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from linsolve._sparse import symbolic as S, numeric as Nm
try:
    from linsolve._sparse import selinv as Si
except ImportError:
    Si = None


def lap2d(m):
    T = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(m, m))
    I = sp.eye(m)
    return (sp.kron(T, I) + sp.kron(I, T) + sp.eye(m * m)).tocsc()


def timeit(f, *args, reps=5):
    t = time.perf_counter(); out = f(*args); jax.block_until_ready(out); first = time.perf_counter() - t
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); out = f(*args); jax.block_until_ready(out); ts.append(time.perf_counter() - t)
    return first, min(ts), out


def main(sizes, what):
    for m in sizes:
        A = sp.tril(lap2d(m)).tocsc(); A.sort_indices()
        t = time.perf_counter()
        sym = S.analyse(A.indptr, A.indices, m * m)
        print(f"{m}^2: symbolic {time.perf_counter() - t:.3f}s {sym} stored={sym.nnz_L_stored} flops={sym.flops:.3g}")
        vals = jnp.asarray(A.data)
        if "factor" in what:
            f = jax.jit(lambda v: Nm.factor(sym, v))
            first, best, fac = timeit(f, vals)
            print(f"  factor: first {first:.2f}s  best {best*1e3:.1f} ms  ok={bool(fac.ok)}")
        if "solve" in what:
            fs = jax.jit(lambda v, b: Nm.solve(sym, Nm.factor(sym, v), b))
            b = jnp.ones(m * m)
            first, best, x = timeit(fs, vals, b)
            print(f"  factor+solve: first {first:.2f}s  best {best*1e3:.1f} ms  resid={np.abs(lap2d(m) @ np.asarray(x) - 1).max():.2e}")
        if "logdet" in what and Si is not None:
            g = jax.jit(jax.value_and_grad(lambda v: Si.logdet(sym, v)))
            first, best, _ = timeit(g, vals)
            print(f"  logdet+grad: first {first:.2f}s  best {best*1e3:.1f} ms")
        if "selinv" in what and Si is not None:
            g = jax.jit(lambda v: Si.selected_inverse(sym, v))
            first, best, _ = timeit(g, vals)
            print(f"  selinv: first {first:.2f}s  best {best*1e3:.1f} ms")


if __name__ == "__main__":
    sizes = [int(x) for x in sys.argv[1].split(",")]
    what = sys.argv[2].split(",") if len(sys.argv) > 2 else ["factor"]
    main(sizes, what)
