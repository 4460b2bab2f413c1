"""Cholesky: positive (or negative) definite operators, real symmetric or complex hermitian."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .. import _lapack
from .._solution import RESULTS
from .._tags import negative_semidefinite_tag, positive_semidefinite_tag
from .abstract import AbstractSolver, input_check, tag_names


class _CholeskyState(eqx.Module):
    factor: Array  # lower L with L Lᴴ = ±A
    negative: bool = eqx.field(static=True)
    result: Array


class Cholesky(AbstractSolver):
    """Dense Cholesky factorization `A = L Lᴴ` (or `−A = L Lᴴ` for a negative definite
    operator). Needs `positive_semidefinite_tag` or `negative_semidefinite_tag`; reads the
    lower triangle only. A matrix that is not definite gives
    `RESULTS.not_positive_definite`."""

    def init(self, operator) -> _CholeskyState:
        tags = operator.tags
        negative = negative_semidefinite_tag in tags
        if not (negative or positive_semidefinite_tag in tags):
            raise ValueError(
                "Cholesky needs an operator tagged positive_semidefinite_tag or "
                f"negative_semidefinite_tag; got tags {tag_names(tags)}. Use LU() otherwise."
            )
        if operator.shape[0] != operator.shape[1]:
            raise ValueError(f"Cholesky needs a square operator; got shape {operator.shape}.")
        # LAPACK/cuSOLVER potrf reads only the lower triangle (so does lax.linalg.cholesky
        # with symmetrize_input=False): no need to form the mirrored upper one.
        matrix = operator._lower_matrix()
        if negative:
            matrix = -matrix
        factor = _lapack.cholesky(jax.lax.stop_gradient(matrix))  # the state is not differentiated
        # A failed factorization (not definite, or NaN/Inf input) shows on L's diagonal.
        failed = ~jnp.all(jnp.isfinite(jnp.diagonal(factor)))
        result = input_check(operator, failed, RESULTS.not_positive_definite)
        return _CholeskyState(factor, negative, result)

    def _solve(self, state: _CholeskyState, vector):
        x = _lapack.cho_solve(state.factor, vector)
        return -x if state.negative else x

    def solve(self, state, vector, y0):
        del y0
        return self._solve(state, vector), state.result, {}

    def transpose_solve(self, state, vector, y0):
        del y0
        # A is hermitian: Aᵀ = conj(A), so Aᵀ x = b  ⇔  A conj(x) = conj(b).
        if jnp.iscomplexobj(state.factor):
            return jnp.conj(self._solve(state, jnp.conj(vector))), state.result, {}
        return self._solve(state, vector), state.result, {}
