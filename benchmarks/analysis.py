"""Host symbolic analysis of the sparse Cholesky: `supernodal_structure` (ordering,
elimination tree, postorder, column counts, supernodes, amalgamation, supernode rows) vs
CHOLMOD's symbolic analysis (`cholmod.symbolic` through cvxopt), side by side in one run.

Problems (lower triangle stored): the 2D 5-point Laplacian on m x m grids and the 3D
7-point Laplacian on a k^3 grid. For each, this reports the median over `--repeats` cold
runs (nothing cached between runs; the compiled kernels are loaded once, before timing) of

- `linsolve`: `supernodal_structure(..., ordering, relax=True)` for each of `--orderings`
  (default: "auto", i.e. METIS, and "amd"), and the ordering it used;
- `cholmod`: `cholmod.symbolic` with default options (CHOLMOD's own choice of ordering);
- their ratio (target <= 3 at 512^2 and 1024^2);
- `whole`: the whole analysis a new pattern costs (`symbolic._analyse`: the structure
  above plus the numeric schedule and its index maps), and its ratio to CHOLMOD's;
- nnz(L) of both (linsolve's without the amalgamation zeros; CHOLMOD's counted from its
  numeric factor of a diagonally dominant matrix on the pattern, amalgamation zeros
  excluded), with their ratio (target <= 1.2).

One thread (OMP/OpenBLAS/MKL set to 1 before any import). Timing samples of the two are
interleaved; the machine may be shared and noisy, so quote medians of one run.

Usage:

    python benchmarks/analysis.py                       # 256^2, 512^2, 1024^2, 64^3
    python benchmarks/analysis.py --grids 256 --cubes   # quick
    python benchmarks/analysis.py --no-nnz              # skip CHOLMOD's numeric factor
"""

from __future__ import annotations

import os


for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from linsolve._sparse import symbolic  # noqa: E402
from linsolve._sparse.elimination import _kernels, supernodal_structure  # noqa: E402


def laplacian_2d(m: int) -> sp.csc_matrix:
    t = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(m, m))
    i = sp.eye(m)
    return (sp.kron(t, i) + sp.kron(i, t)).tocsc()


def laplacian_3d(k: int) -> sp.csc_matrix:
    t = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(k, k))
    i = sp.eye(k)
    return (
        sp.kron(sp.kron(t, i), i) + sp.kron(sp.kron(i, t), i) + sp.kron(sp.kron(i, i), t)
    ).tocsc()


def cholmod_matrix(lower: sp.csc_matrix):
    from cvxopt import matrix, spmatrix

    c = lower.tocoo()
    n = lower.shape[0]
    # Diagonally dominant values: SPD whatever the pattern.
    vals = np.where(c.row == c.col, 8.0, -1.0)
    return spmatrix(
        matrix(vals), matrix(c.row.astype(np.int64)), matrix(c.col.astype(np.int64)), (n, n)
    )


def cholmod_nnz_l(a) -> int:
    from cvxopt import cholmod

    cholmod.options.clear()
    f = cholmod.symbolic(a)
    cholmod.numeric(a, f)
    lf = cholmod.getfactor(f)
    # Relaxed amalgamation stores exact zeros: count only structural nonzeros.
    return int(np.count_nonzero(np.asarray(lf.V).ravel()))


def run(ordering: str, name: str, a: sp.csc_matrix, repeats: int, nnz: bool) -> dict:
    from cvxopt import cholmod

    lower = sp.tril(a).tocsc()
    lower.sort_indices()
    n = lower.shape[0]
    indptr, indices = lower.indptr, lower.indices
    ca = cholmod_matrix(lower)
    cholmod.options.clear()
    t_lin, t_chol, t_whole = [], [], []
    st = None
    ip, ix = indptr.astype(np.int64), indices.astype(np.int64)
    for _ in range(repeats):
        t0 = time.perf_counter()
        st = supernodal_structure(indptr, indices, n, ordering, True)
        t1 = time.perf_counter()
        cholmod.symbolic(ca)
        t2 = time.perf_counter()
        symbolic._analyse(ip, ix, n, ordering, True)  # uncached: what a new pattern costs
        t3 = time.perf_counter()
        t_lin.append(t1 - t0)
        t_chol.append(t2 - t1)
        t_whole.append(t3 - t2)
    lin, chol = statistics.median(t_lin), statistics.median(t_chol)
    whole = statistics.median(t_whole)
    row = dict(
        problem=name,
        n=n,
        ordering=st.ordering,
        linsolve_s=lin,
        cholmod_s=chol,
        ratio=lin / chol,
        whole_s=whole,
        whole_ratio=whole / chol,
        nnz_L=st.nnz_L,
        supernodes=st.sn_start.shape[0] - 1,
    )
    if nnz:
        row["cholmod_nnz_L"] = cholmod_nnz_l(ca)
        row["nnz_ratio"] = st.nnz_L / row["cholmod_nnz_L"]
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grids", type=int, nargs="*", default=[256, 512, 1024])
    ap.add_argument("--cubes", type=int, nargs="*", default=[64])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--orderings", nargs="*", default=["auto", "amd"], help="linsolve orderings to time"
    )
    ap.add_argument("--no-nnz", action="store_true", help="skip CHOLMOD's nnz(L)")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    _kernels()  # numba's import (the kernels themselves load or compile on first call)
    small = sp.tril(laplacian_2d(4)).tocsc()
    supernodal_structure(small.indptr, small.indices, 16, "auto", True)
    symbolic._analyse(
        small.indptr.astype(np.int64), small.indices.astype(np.int64), 16, "auto", True
    )
    print(f"first call (numba import + kernel load/compile): {time.perf_counter() - t0:.2f} s")

    problems = [(f"2D {m}^2", lambda m=m: laplacian_2d(m)) for m in args.grids]
    problems += [(f"3D {k}^3", lambda k=k: laplacian_3d(k)) for k in args.cubes]
    head = (
        f"{'problem':>10} {'n':>8} {'order':>6} {'linsolve s':>10} {'cholmod s':>9} "
        f"{'ratio':>6} {'whole s':>8} {'ratio':>6} {'nnz(L)':>10} {'chol nnz':>10} "
        f"{'nnz ratio':>9} {'snodes':>7}"
    )
    print(head)
    for name, make in problems:
        a = make()
        for ordering in args.orderings:
            r = run(ordering, name, a, args.repeats, not args.no_nnz)
            print(
                f"{r['problem']:>10} {r['n']:>8} {r['ordering']:>6} {r['linsolve_s']:>10.3f} "
                f"{r['cholmod_s']:>9.3f} {r['ratio']:>6.2f} {r['whole_s']:>8.3f} "
                f"{r['whole_ratio']:>6.2f} {r['nnz_L']:>10} "
                f"{r.get('cholmod_nnz_L', '-'):>10} "
                f"{r['nnz_ratio'] if 'nnz_ratio' in r else float('nan'):>9.3f} "
                f"{r['supernodes']:>7}",
                flush=True,
            )


if __name__ == "__main__":
    main()
