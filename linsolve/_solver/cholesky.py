"""Cholesky: positive (or negative) definite operators, real symmetric or complex hermitian."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .. import _lapack
from .._operator import is_matrix_free, lower_matrix
from .._solution import RESULTS, first_failure, result_code
from .._tags import negative_semidefinite_tag
from . import rcond as _rcond
from .abstract import (
    AbstractDeterminantSolver,
    check_square,
    dense_input,
    hermitian_transpose_solve,
    is_negative_definite,
)
from .checks import broken_symmetry
from .determinant import dense_determinant_checks, finite, logdet_cholesky


class _CholeskyState(eqx.Module):
    factor: Array  # lower L with L Lᴴ = ±A
    negative: bool = eqx.field(static=True)
    result: Array
    stats: dict


@_lapack.diagnosis_on_cpu(1, lambda: result_code(RESULTS.successful))
def _failure_code(failed, matrix, norm):
    """The code of a Cholesky factorization that `failed`, worked out only then (inside
    the `cond`; under `vmap` on CPU, member by member, so that a batch of good matrices
    never pays for it): NaN/Inf in the lower triangle, or a matrix positive semidefinite
    up to rounding (no eigenvalue below −10 n eps ‖A‖₁: singular to working precision),
    or one genuinely not definite. An eigensolver, not a second Cholesky: a solve keeps
    exactly one factorization. `norm` is ‖A‖₁, or 0 if not computed yet.

    The eigensolver reads the upper triangle of `Aᵀ` (for complex input the conjugate
    hermitian matrix, whose eigenvalues are the same): LAPACK wants column-major input,
    which `Aᵀ` of a row-major `A` already is. Asked for `A` itself, XLA:CPU gave the
    `cond`'s operand that layout, copying the whole matrix at every call, failed or not."""

    n = matrix.shape[0]
    if n == 0:  # an empty matrix never fails (and has no eigenvalues)
        return result_code(RESULTS.successful)

    def diagnose():
        row, col = jnp.arange(n)[:, None], jnp.arange(n)[None, :]
        lower = jnp.where(row >= col, matrix, 0)
        finite = jnp.all(jnp.isfinite(lower))
        eps = jnp.finfo(matrix.dtype).eps
        norm1 = jnp.where(norm > 0, norm, _rcond.hermitian_norm1(matrix))
        safe = jnp.where(finite, matrix, 0)  # NaN input: answered by `finite` alone
        near_psd = jnp.min(_lapack.eigvalsh_upper(safe.T)) >= -10 * n * eps * norm1
        code = jnp.where(near_psd, RESULTS.singular, RESULTS.not_positive_definite)
        return jnp.where(finite, code, RESULTS.nonfinite_input).astype(jnp.int32)

    return jax.lax.cond(failed, diagnose, lambda: result_code(RESULTS.successful))


@_lapack.whole_on_cpu(1)
def _factor_and_rcond(matrix):
    """`(L, ‖A‖₁, rcond)` from the lower triangle of `A`: under `vmap` on CPU one loop
    over the batch (or the small kernels), not one loop per LAPACK call."""
    factor = _lapack.cholesky(matrix)
    norm = _rcond.hermitian_norm1(matrix)
    return factor, norm, _rcond.cholesky_rcond(factor, norm)


class Cholesky(AbstractDeterminantSolver[_CholeskyState]):
    """Dense Cholesky factorization `A = L Lᴴ` (or `−A = L Lᴴ` for a negative definite
    operator). Needs `positive_semidefinite_tag` or `negative_semidefinite_tag`; reads the
    lower triangle only.

    A matrix that is not definite gives `RESULTS.not_positive_definite`, one that is
    semidefinite up to rounding (its factorization fails, but no eigenvalue is below
    `−10 n eps ‖A‖₁`) `RESULTS.singular`. The reciprocal
    condition number is estimated from the factor (LAPACK `xPOCON`, O(n²)) and reported as
    `sol.stats["rcond"]`; below machine epsilon the system is singular to working
    precision and gives `RESULTS.singular`. A matrix-free operator (materialized here)
    whose function is not symmetric gives `RESULTS.not_symmetric`.

    **Arguments:**

    - `check_condition`: estimate `rcond` (default `True`). `False` skips the estimate
      (a few triangular solves), and then only a failed factorization is reported.
    """

    check_condition: bool = eqx.field(static=True, default=True)

    def init(self, operator) -> _CholeskyState:
        negative = _check_tags(operator)
        if is_matrix_free(operator):
            # Materialized in full, so that the symmetry the tag promises can be checked.
            matrix = jax.lax.stop_gradient(operator.as_matrix())
            asymmetric = broken_symmetry(operator, matrix)
        else:
            # LAPACK/cuSOLVER potrf reads only the lower triangle (so does
            # lax.linalg.cholesky with symmetrize_input=False): no mirrored upper one.
            matrix = jax.lax.stop_gradient(lower_matrix(operator))
            asymmetric = None
        if negative:
            matrix = -matrix
        # The state is not differentiated. ‖A‖₁ (O(n²)) for the estimate; without it,
        # worked out only on failure.
        stats = {}
        if self.check_condition:
            factor, norm, rc = _factor_and_rcond(matrix)
            stats = {"rcond": rc}
        else:
            factor = _lapack.cholesky(matrix)
            norm = jnp.zeros((), jnp.finfo(matrix.dtype).dtype)
        # A failed factorization (not definite, or NaN/Inf input) shows on L's diagonal.
        failed = ~jnp.all(jnp.isfinite(jnp.diagonal(factor)))
        checks = [(failed, _failure_code(failed, matrix, norm))]
        if asymmetric is not None:
            checks.insert(0, (asymmetric, RESULTS.not_symmetric))
        if self.check_condition:
            checks.append((_rcond.ill_conditioned(stats["rcond"], matrix.dtype), RESULTS.singular))
        result = first_failure(*checks)
        return _CholeskyState(factor, negative, result, stats)

    def _solve(self, state: _CholeskyState, vector):
        x = _lapack.cho_solve(state.factor, vector)
        return -x if state.negative else x

    def solve(self, state, vector, y0):
        del y0
        return self._solve(state, vector), state.result, dict(state.stats)

    def transpose_solve(self, state, vector, y0):
        return hermitian_transpose_solve(lambda v, _: self.solve(state, v, None), vector, y0)

    def slogdet(self, operator):
        negative = _check_tags(operator)
        matrix = dense_input(operator)
        checks = dense_determinant_checks(operator, matrix)
        if negative:
            n = operator.shape[0]
            sign = jnp.asarray(-1.0 if n % 2 else 1.0, matrix.dtype)
            value = logdet_cholesky(-matrix)
        else:
            sign, value = jnp.ones((), matrix.dtype), logdet_cholesky(matrix)
        # A failed factorization shows as a NaN log-determinant (−inf: a zero pivot).
        checks.append((~finite(value), RESULTS.not_positive_definite))
        return sign, value, first_failure(*checks)

    def positive_definite(self, operator):
        return negative_semidefinite_tag not in operator.tags


def _check_tags(operator) -> bool:
    """Cholesky's trace-time checks (tags, shape); whether the operator is negative
    definite."""
    negative = is_negative_definite(operator, "Cholesky", "Use LU() otherwise.")
    check_square(operator, "Cholesky")
    return negative
