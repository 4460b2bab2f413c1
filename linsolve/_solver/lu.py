"""LU with partial pivoting: general square operators."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .. import _lapack
from .._solution import RESULTS
from .abstract import AbstractSolver, dense_input, input_check, numerically_singular


class _LUState(eqx.Module):
    lu: Array
    pivots: Array
    result: Array


class LU(AbstractSolver):
    """Dense LU factorization with partial pivoting, `P A = L U`, for square operators.
    A pivot that is zero up to rounding gives `RESULTS.singular`."""

    def init(self, operator) -> _LUState:
        if operator.shape[0] != operator.shape[1]:
            raise ValueError(f"LU needs a square operator; got shape {operator.shape}.")
        matrix = dense_input(operator)
        lu, pivots = _lapack.lu(jax.lax.stop_gradient(matrix))  # the state is not differentiated
        result = input_check(operator, numerically_singular(lu), RESULTS.singular)
        return _LUState(lu, pivots, result)

    def solve(self, state, vector, y0):
        del y0
        return _lapack.lu_solve(state.lu, state.pivots, vector, 0), state.result, {}

    def transpose_solve(self, state, vector, y0):
        del y0
        return _lapack.lu_solve(state.lu, state.pivots, vector, 1), state.result, {}
