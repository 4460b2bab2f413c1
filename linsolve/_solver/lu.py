"""LU with partial pivoting: general square operators."""

import equinox as eqx
import jax
from jaxtyping import Array

from .. import _lapack
from .._solution import RESULTS, first_failure
from . import rcond as _rcond
from .abstract import (
    AbstractDeterminantSolver,
    check_square,
    dense_input,
    input_check,
    numerically_singular,
)
from .checks import broken_symmetry
from .determinant import dense_determinant_checks, slogdet_lu


class _LUState(eqx.Module):
    lu: Array
    pivots: Array
    result: Array
    stats: dict


@_lapack.whole_on_cpu(1)
def _factor_and_rcond(matrix):
    """`(lu, pivots, rcond)` of `A`: under `vmap` on CPU one loop over the batch (or the
    small kernels), not one loop per LAPACK call."""
    lu, pivots, perm = _lapack.lu(matrix)
    return lu, pivots, _rcond.lu_rcond(lu, perm, _rcond.norm1(matrix))


class LU(AbstractDeterminantSolver[_LUState]):
    """Dense LU factorization with partial pivoting, `P A = L U`, for square operators.

    A pivot that is zero up to rounding gives `RESULTS.singular`, and so does a system
    singular to working precision: the reciprocal condition number is estimated from
    the factors (LAPACK `xGECON`, O(n²)), reported as `sol.stats["rcond"]`, and below
    machine epsilon the solve fails. A matrix-free operator tagged symmetric / hermitian /
    semidefinite whose function is not gives `RESULTS.not_symmetric`.

    **Arguments:**

    - `check_condition`: estimate `rcond` (default `True`); `False` skips it (a few
      triangular solves) and keeps only the pivot test.
    """

    check_condition: bool = eqx.field(static=True, default=True)

    def init(self, operator) -> _LUState:
        check_square(operator, "LU")
        matrix = jax.lax.stop_gradient(dense_input(operator))  # the state is not differentiated
        stats = {}
        if self.check_condition:
            lu, pivots, rc = _factor_and_rcond(matrix)
            stats = {"rcond": rc}
        else:
            lu, pivots, _ = _lapack.lu(matrix)
        checks = [(numerically_singular(lu), RESULTS.singular)]
        asymmetric = broken_symmetry(operator, matrix)
        if asymmetric is not None:
            checks.insert(0, (asymmetric, RESULTS.not_symmetric))
        if self.check_condition:
            checks.append((_rcond.ill_conditioned(stats["rcond"], matrix.dtype), RESULTS.singular))
        code = first_failure(*checks)
        result = input_check(operator, code != RESULTS.successful, code)
        return _LUState(lu, pivots, result, stats)

    def solve(self, state, vector, y0):
        del y0
        return _lapack.lu_solve(state.lu, state.pivots, vector, 0), state.result, dict(state.stats)

    def transpose_solve(self, state, vector, y0):
        del y0
        return _lapack.lu_solve(state.lu, state.pivots, vector, 1), state.result, dict(state.stats)

    def slogdet(self, operator):
        check_square(operator, "LU")
        matrix = dense_input(operator)
        sign, logabsdet = slogdet_lu(matrix)
        return sign, logabsdet, first_failure(*dense_determinant_checks(operator, matrix))

    def positive_definite(self, operator):
        return False
