"""QR: square, least-squares (tall, full column rank) and minimum-norm (wide, full row
rank) solves."""

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .. import _lapack
from .._solution import RESULTS
from .abstract import AbstractSolver, dense_input, input_check, numerically_singular


class _QRState(eqx.Module):
    q: Array
    r: Array
    wide: bool = eqx.field(static=True)
    result: Array


class QR(AbstractSolver):
    """Householder QR. For a square operator it solves `A x = b`; for a tall one
    (full column rank) it returns the least-squares solution; for a wide one (full row
    rank) the minimum-norm solution. Derivatives are those of the pseudo-inverse
    solution. A diagonal entry of `R` that is zero up to rounding gives `RESULTS.singular`."""

    supports_nonsquare: ClassVar[bool] = True

    def init(self, operator) -> _QRState:
        matrix = dense_input(operator)
        m, n = operator.shape
        wide = m < n
        # A wide A is factored through Aᴴ = Q R, so both cases use a tall QR.
        matrix = jax.lax.stop_gradient(matrix)  # the state is not differentiated
        q, r = _lapack.qr(jnp.conj(matrix.T) if wide else matrix)
        result = input_check(operator, numerically_singular(r), RESULTS.singular)
        return _QRState(q, r, wide, result)

    def solve(self, state, vector, y0):
        del y0
        q, r = state.q, state.r
        if state.wide:  # A = Rᴴ Qᴴ: x = Q R⁻ᴴ b
            x = q @ _lapack.solve_triangular(r, vector, trans="C", lower=False)
        else:  # A = Q R: x = R⁻¹ Qᴴ b
            x = _lapack.solve_triangular(r, jnp.conj(q.T) @ vector, lower=False)
        return x, state.result, {}

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
        return y, state.result, {}
