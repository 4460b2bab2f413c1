"""SparseCholesky: supernodal Cholesky of a positive definite `SparseOperator`.

The symbolic phase (ordering, elimination tree, supernodes, index maps) runs on the host
once per sparsity pattern and is cached; the numeric phase is traced JAX (jit, vmap over
values, CPU and GPU). Derivatives come from `linear_solve`'s one mechanism, reusing the
factor for the transposed solve.
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from .._operator import is_sparse
from .._solution import RESULTS
from .._sparse import numeric, selinv
from .._sparse.elimination import ORDERINGS
from .._sparse.operator import SparseOperator
from .._sparse.symbolic import Symbolic, analyse, cache_hits
from .._tags import positive_semidefinite_tag
from .abstract import AbstractDeterminantSolver, hermitian_transpose_solve, tag_names
from .determinant import factorization_failure, finite


class _SparseCholeskyState(eqx.Module):
    symbolic: Symbolic = eqx.field(static=True)
    factor: Any
    result: jax.Array


def symbolic_of(operator, ordering: str = "auto") -> Symbolic:
    """The cached symbolic analysis of a positive definite `SparseOperator` (trace-time
    checks included)."""
    if not is_sparse(operator):
        raise TypeError(
            f"SparseCholesky needs a linsolve.SparseOperator; got {type(operator).__name__}."
        )
    if positive_semidefinite_tag not in operator.tags:
        raise ValueError(
            "SparseCholesky needs an operator tagged positive_semidefinite_tag; got tags "
            f"{tag_names(operator.tags)}."
        )
    p = operator.pattern
    return analyse(p.indptr, p.indices, p.shape[0], ordering=ordering)


class SparseCholesky(AbstractDeterminantSolver[_SparseCholeskyState]):
    """Sparse supernodal Cholesky `P A Pᵀ = L Lᴴ` with a fill-reducing ordering (METIS
    nested dissection via `pymetis`). Needs a `SparseOperator` tagged
    `positive_semidefinite_tag`, real symmetric or complex hermitian; only its lower
    triangle is read (for complex input, the real part of the diagonal). A matrix that is not
    positive definite (or holds NaN/Inf) gives `RESULTS.not_positive_definite`
    (resp. `nonfinite_input`).

    **Arguments:**

    - `ordering`: the fill-reducing ordering of the symbolic analysis: `"auto"` (METIS
      nested dissection if `pymetis` is installed, else AMD, else reverse Cuthill-McKee),
      `"metis"`, `"amd"` (SuiteSparse AMD; needs `pip install "linsolve[amd]"`), `"rcm"`
      or `"natural"`. The analysis is cached per (pattern, ordering).
    - `verbose`: print a one-line summary of the symbolic analysis (ordering, `n`,
      nonzeros of `A` and of `L`, supernodes, flops, analysis time; "cached" when the
      analysis of this pattern was reused) each time `init` is traced. The same line is
      returned by [`linsolve.SparseCholesky.analysis_summary`][].
    """

    ordering: str = eqx.field(static=True, default="auto")
    verbose: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        if self.ordering not in ORDERINGS:
            raise ValueError(
                "SparseCholesky(ordering=...) must be one of 'auto', 'metis', 'amd', 'rcm', "
                f"'natural'; got {self.ordering!r}."
            )

    def analysis_summary(self, operator) -> str:
        """The one-line summary of the symbolic analysis of `operator`'s pattern (run now
        if not cached): ordering, `n`, `nnz(A lower)`, `nnz(L)`, supernodes, flops, time."""
        return symbolic_of(operator, self.ordering).summary()

    def init(self, operator) -> _SparseCholeskyState:
        hits = cache_hits()
        sym = symbolic_of(operator, self.ordering)
        if self.verbose:
            cached = cache_hits() > hits
            print(sym.summary() + (" (cached)" if cached else ""))
        factor = numeric.factor(sym, operator.values)
        finite = jnp.all(
            jnp.isfinite(operator.values[operator.pattern.rows >= operator.pattern.cols])
        )
        result = jnp.where(
            factor.ok,
            jnp.int32(RESULTS.successful),
            jnp.where(
                finite, jnp.int32(RESULTS.not_positive_definite), jnp.int32(RESULTS.nonfinite_input)
            ),
        )
        return _SparseCholeskyState(sym, factor, result)

    def solve(self, state, vector, y0):
        del y0
        return numeric.solve(state.symbolic, state.factor, vector), state.result, {}

    def transpose_solve(self, state, vector, y0):
        return hermitian_transpose_solve(lambda v, _: self.solve(state, v, None), vector, y0)

    def slogdet(self, operator):
        # d logdet from the selected inverse (Takahashi), never a dense inverse.
        sym = symbolic_of(operator, self.ordering)
        assert isinstance(operator, SparseOperator)  # checked by symbolic_of
        value, ok = selinv.logdet_and_ok(sym, operator.values)
        result = factorization_failure(jax.lax.stop_gradient(ok), finite(operator.values))
        return jnp.ones((), operator.dtype), value, result

    def positive_definite(self, operator):
        return True
