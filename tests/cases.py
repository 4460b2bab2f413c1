"""The central parametrisation table: (solver, tags, matrix kind, operator kind).

Every transform test iterates over `CASES`; a new solver is tested everywhere by adding a
row. `Case.stored` returns the array a user would store — with garbage (including NaN on
request) in every entry the tags say is not read — and `Case.effective` the matrix it
defines, written independently of linsolve in numpy.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np

import linsolve as ls


PSD = ls.positive_semidefinite_tag
NSD = ls.negative_semidefinite_tag


def _randn(rng, shape, dtype):
    x = rng.standard_normal(shape)
    if np.issubdtype(dtype, np.complexfloating):
        x = x + 1j * rng.standard_normal(shape)
    return x.astype(dtype)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    solver: Callable[[], ls.AbstractSolver]
    tags: tuple = ()
    matrix: str = (
        "general"  # general | spd | nsd | symmetric | hermitian | lower | upper | diagonal
    )
    kind: str = "matrix"  # matrix | function | lineax | diagonal | sparse
    shape: tuple = (4, 4)
    unit: bool = False
    # Iterative rows: `solver` is called with the dtype, to pick converged tolerances.
    iterative: bool = False

    def __str__(self):
        return self.name

    # -- what the user stores ----------------------------------------------------------
    def stored(self, rng, dtype, garbage=None):
        m, n = self.shape
        cplx = np.issubdtype(dtype, np.complexfloating)
        a = _randn(rng, (m, n), dtype)
        if self.matrix in ("spd", "nsd"):
            a = a @ a.conj().T + n * np.eye(n)
            a = -a if self.matrix == "nsd" else a
        elif self.matrix in ("general", "symmetric", "hermitian", "lower", "upper"):
            if m == n:
                a = a + n * np.eye(n)
        elif self.matrix == "diagonal":
            a = a + 3 * np.eye(n)
        if self.kind == "diagonal":
            return np.diagonal(a).astype(dtype)
        g = self._garbage_mask()
        fill = _randn(rng, (m, n), dtype) * 100 if garbage is None else garbage
        a = np.where(g, fill, a).astype(dtype)
        if cplx and self._hermitian(dtype):
            # The imaginary part of a hermitian diagonal is not read either.
            idx = np.arange(n)
            a[idx, idx] = a[idx, idx].real + 1j * (37.0 if garbage is None else np.imag(garbage))
        return a

    def _hermitian(self, dtype):
        cplx = np.issubdtype(dtype, np.complexfloating)
        return cplx and (self.matrix in ("spd", "nsd", "hermitian"))

    def _garbage_mask(self):
        """Entries that the tags say are never read."""
        m, n = self.shape
        i, j = np.indices((m, n))
        if self.matrix in ("spd", "nsd", "symmetric", "hermitian"):
            mask = j > i
        elif self.matrix == "lower":
            mask = j > i
        elif self.matrix == "upper":
            mask = j < i
        elif self.matrix == "diagonal":
            mask = i != j
        else:
            mask = np.zeros((m, n), bool)
        if self.unit:
            mask = mask | (i == j)
        return mask

    # -- what it means -----------------------------------------------------------------
    def effective(self, stored, dtype):
        a = np.asarray(stored)
        if self.kind == "diagonal":
            return np.diag(a)
        if self.matrix in ("spd", "nsd", "symmetric", "hermitian"):
            low = np.tril(a, -1)
            mirror = low.conj().T if self._hermitian(dtype) else low.T
            d = np.diagonal(a).real if self._hermitian(dtype) else np.diagonal(a)
            return low + mirror + np.diag(d).astype(a.dtype)
        if self.matrix == "lower":
            out = np.tril(a)
        elif self.matrix == "upper":
            out = np.triu(a)
        elif self.matrix == "diagonal":
            out = np.diag(np.diagonal(a))
        else:
            out = a
        if self.unit:
            out = out.copy()
            np.fill_diagonal(out, 1)
        return out

    # -- the operator of this kind -----------------------------------------------------
    def operator(self, stored):
        tags = self.tags
        if self.kind == "diagonal":
            return ls.DiagonalOperator(stored, tags)
        if self.kind == "matrix":
            return ls.MatrixOperator(stored, tags)
        if self.kind == "function":
            inner = ls.MatrixOperator(stored, tags)
            example = jnp.zeros(self.shape[1], stored.dtype)
            return ls.FunctionOperator(lambda v: inner.mv(v), example, tags)
        if self.kind == "sparse":
            # Every entry stored (CSC, column-major), so unread entries are stored too.
            m, n = self.shape
            indptr, indices = np.arange(n + 1) * m, np.tile(np.arange(m), n)
            return ls.SparseOperator(stored.T.reshape(-1), indices, indptr, (m, n), tags)
        if self.kind == "lineax":
            lx_tags = {
                PSD: lx.positive_semidefinite_tag,
                NSD: lx.negative_semidefinite_tag,
                ls.symmetric_tag: lx.symmetric_tag,
            }
            return lx.MatrixLinearOperator(stored, tuple(lx_tags[t] for t in tags))
        raise ValueError(self.kind)

    def make_solver(self, dtype):
        return self.solver(np.dtype(dtype)) if self.iterative else self.solver()

    def solve(self, stored, b, **kwargs):
        return ls.linear_solve(self.operator(stored), b, self.make_solver(stored.dtype), **kwargs)


def _converged(dtype):
    """Tolerances at which an iterative solve is converged to (nearly) working precision."""
    return 1e-13 if np.finfo(dtype).bits == 64 else 1e-6


def iterative(cls, **kwargs):
    """A solver factory `dtype -> cls(rtol, atol, **kwargs)` with converged tolerances."""

    def make(dtype):
        tol = _converged(dtype)
        return cls(rtol=tol, atol=tol, **kwargs)

    return make


def _cg_preconditioned(dtype):
    # A fixed positive definite preconditioner: any one is valid, it only changes speed.
    diagonal = np.array([0.3, 0.2, 0.25, 0.1]).astype(dtype)
    tol = _converged(dtype)
    return ls.CG(rtol=tol, atol=tol, preconditioner=ls.DiagonalOperator(diagonal))


CASES = [
    Case("cholesky-psd", ls.Cholesky, (PSD,), "spd"),
    Case("cholesky-nsd", ls.Cholesky, (NSD,), "nsd"),
    Case("lu", ls.LU, (), "general"),
    Case("lu-symmetric", ls.LU, (ls.symmetric_tag,), "symmetric"),
    Case("lu-hermitian", ls.LU, (ls.hermitian_tag,), "hermitian"),
    Case("qr", ls.QR, (), "general"),
    Case("qr-tall", ls.QR, (), "general", shape=(6, 4)),
    Case("qr-wide", ls.QR, (), "general", shape=(4, 6)),
    Case("triangular-lower", ls.Triangular, (ls.lower_triangular_tag,), "lower"),
    Case(
        "triangular-upper-unit",
        ls.Triangular,
        (ls.upper_triangular_tag, ls.unit_diagonal_tag),
        "upper",
        unit=True,
    ),
    Case("diagonal-tagged-matrix", ls.Diagonal, (ls.diagonal_tag,), "diagonal"),
    Case("diagonal-operator", ls.Diagonal, (), "diagonal", kind="diagonal"),
    Case("auto-psd", ls.AutoSolver, (PSD,), "spd"),
    Case(
        "auto-lower-unit",
        ls.AutoSolver,
        (ls.lower_triangular_tag, ls.unit_diagonal_tag),
        "lower",
        unit=True,
    ),
    Case("auto-function-psd", ls.AutoSolver, (PSD,), "spd", kind="function"),
    Case("auto-function-lu", ls.AutoSolver, (), "general", kind="function"),
    Case("auto-lineax-psd", ls.AutoSolver, (PSD,), "spd", kind="lineax"),
    Case("auto-lineax-lu", ls.AutoSolver, (), "general", kind="lineax"),
    Case("sparse-cholesky-psd", ls.Cholesky, (PSD,), "spd", kind="sparse"),
    Case(
        "sparse-lu-lower-unit",
        ls.LU,
        (ls.lower_triangular_tag, ls.unit_diagonal_tag),
        "lower",
        kind="sparse",
        unit=True,
    ),
    # The sparse factorization itself (the row above densifies for dense Cholesky).
    Case("sparsecholesky", ls.SparseCholesky, (PSD,), "spd", kind="sparse"),
    # Krylov solvers (more in tests/test_iterative.py, recycling included). Few rows, mostly
    # dense: each costs compile time, and a FunctionOperator defeats the compilation cache.
    Case("cg-preconditioned", _cg_preconditioned, (PSD,), "spd", iterative=True),
    Case(
        "minres-hermitian", iterative(ls.MINRES), (ls.hermitian_tag,), "hermitian", iterative=True
    ),
    Case(
        "gmres-restart",
        iterative(ls.GMRES, restart=2, max_steps=200),
        (),
        "general",
        iterative=True,
    ),
    Case(
        "bicgstab-function", iterative(ls.BiCGStab), (), "general", kind="function", iterative=True
    ),
    Case("cg-sparse", iterative(ls.CG), (PSD,), "spd", kind="sparse", iterative=True),
]

REAL_DTYPES = (np.float32, np.float64)
ALL_DTYPES = (np.float32, np.float64, np.complex64, np.complex128)
GRAD_DTYPES = (np.float64, np.complex128)


def skip_reason(case, dtype):
    """Combinations that do not exist (lineax's matrix operator cannot carry our
    hermitian convention for complex semidefinite input)."""
    if case.kind == "lineax" and np.issubdtype(dtype, np.complexfloating) and case.matrix == "spd":
        return "lineax has no hermitian tag"
    return None


def rhs(rng, case, dtype, k=None):
    m = case.shape[0]
    return _randn(rng, (m,) if k is None else (m, k), dtype)


def reference_solution(case, stored, b, dtype):
    a = case.effective(stored, dtype).astype(
        np.complex128 if np.iscomplexobj(stored) else np.float64
    )
    return np.linalg.lstsq(a, np.asarray(b, a.dtype), rcond=None)[0]


__all__ = [
    "CASES",
    "Case",
    "ALL_DTYPES",
    "GRAD_DTYPES",
    "REAL_DTYPES",
    "rhs",
    "reference_solution",
    "skip_reason",
    "jax",
]
