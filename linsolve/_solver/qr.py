"""QR: square, least-squares (tall, full column rank) and minimum-norm (wide, full row
rank) solves."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .. import _lapack
from .._solution import RESULTS, first_failure
from . import rcond as _rcond
from .abstract import AbstractLeastSquaresSolver, dense_input, input_check, numerically_singular
from .checks import broken_symmetry


class _QRState(eqx.Module):
    q: Array
    r: Array
    wide: bool = eqx.field(static=True)
    result: Array
    stats: dict


class QR(AbstractLeastSquaresSolver[_QRState]):
    """Householder QR. For a square operator it solves `A x = b`; for a tall one
    (full column rank) it returns the least-squares solution; for a wide one (full row
    rank) the minimum-norm solution. Derivatives are those of the pseudo-inverse
    solution.

    A diagonal entry of `R` that is zero up to rounding gives `RESULTS.singular`, and so
    does an `R` singular to working precision: its reciprocal condition number is
    estimated (LAPACK `xTRCON`, O(n²)) and reported as `sol.stats["rcond"]` (`R` has the
    2-norm condition number of `A`; in the 1-norm the two agree within a factor `n`), and
    below machine epsilon the solve fails (rank deficiency for a non-square `A`).

    **Arguments:**

    - `check_condition`: estimate `rcond` (default `True`); `False` skips it (a few
      triangular solves) and keeps only the test on `R`'s diagonal.
    """

    check_condition: bool = eqx.field(static=True, default=True)

    def init(self, operator) -> _QRState:
        matrix = jax.lax.stop_gradient(dense_input(operator))  # the state is not differentiated
        m, n = operator.shape
        wide = m < n
        # A wide A is factored through Aᴴ = Q R, so both cases use a tall QR.
        q, r = _lapack.qr(jnp.conj(matrix.T) if wide else matrix)
        checks = [(numerically_singular(r), RESULTS.singular)]
        asymmetric = broken_symmetry(operator, matrix)
        if asymmetric is not None:
            checks.insert(0, (asymmetric, RESULTS.not_symmetric))
        stats = {}
        if self.check_condition:
            rc = _rcond.rcond(
                _rcond.triangular_norm1(r),
                lambda v: _lapack.solve_triangular(r, v, lower=False),
                lambda v: _lapack.solve_triangular(r, v, trans="C", lower=False),
                r.shape[0],
                r.dtype,
            )
            checks.append((_rcond.ill_conditioned(rc, r.dtype), RESULTS.singular))
            stats = {"rcond": rc}
        code = first_failure(*checks)
        result = input_check(operator, code != RESULTS.successful, code)
        return _QRState(q, r, wide, result, stats)

    def solve(self, state, vector, y0):
        del y0
        q, r = state.q, state.r
        if state.wide:  # A = Rᴴ Qᴴ: x = Q R⁻ᴴ b
            x = q @ _lapack.solve_triangular(r, vector, trans="C", lower=False)
        else:  # A = Q R: x = R⁻¹ Qᴴ b
            x = _lapack.solve_triangular(r, jnp.conj(q.T) @ vector, lower=False)
        return x, state.result, dict(state.stats)

    def gram_solve(self, state, vector):
        """Solve with the Gram matrix `AᴴA` (tall) or `AAᴴ` (wide), both `= RᴴR`."""
        z = _lapack.solve_triangular(state.r, vector, trans="C", lower=False)
        return _lapack.solve_triangular(state.r, z, lower=False)

    def transpose_solve(self, state, vector, y0):
        del y0
        q, r = state.q, state.r
        if state.wide:  # Aᵀ = conj(Q) conj(R), tall: y = conj(R)⁻¹ Qᵀ c
            y = _lapack.solve_triangular(jnp.conj(r), q.T @ vector, lower=False)
        else:  # Aᵀ = Rᵀ Qᵀ, wide: y = conj(Q) R⁻ᵀ c
            y = jnp.conj(q) @ _lapack.solve_triangular(r, vector, trans="T", lower=False)
        return y, state.result, dict(state.stats)
