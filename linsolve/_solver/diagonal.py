"""Diagonal operators: elementwise division."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from .._solution import RESULTS, first_failure
from .._structure import read_diagonal
from .._tags import diagonal_tag
from .abstract import AbstractDeterminantSolver, tag_names
from .determinant import factorization_failure, finite, slogdet_of_diagonal


class _DiagonalState(eqx.Module):
    diagonal: Array
    result: Array


class Diagonal(AbstractDeterminantSolver[_DiagonalState]):
    """`x = b / d` for an operator tagged `diagonal_tag` (only the diagonal is read).
    A zero entry gives `RESULTS.singular`."""

    def init(self, operator) -> _DiagonalState:
        diagonal = _read(operator)
        finite = jnp.all(jnp.isfinite(diagonal))
        result = first_failure(
            (~finite, RESULTS.nonfinite_input), (jnp.any(diagonal == 0), RESULTS.singular)
        )
        return _DiagonalState(diagonal, result)

    def solve(self, state, vector, y0):
        del y0
        d = state.diagonal if vector.ndim == 1 else state.diagonal[:, None]
        return vector / d, state.result, {}

    def transpose_solve(self, state, vector, y0):
        return self.solve(state, vector, y0)

    def slogdet(self, operator):
        d = _read(operator)
        sign, logabsdet = slogdet_of_diagonal(d)
        return sign, logabsdet, factorization_failure(jnp.asarray(True), finite(d))

    def positive_definite(self, operator):
        return False


def _read(operator) -> Array:
    """The diagonal the operator defines (trace-time tag check included)."""
    if diagonal_tag not in operator.tags:
        raise ValueError(
            f"Diagonal needs an operator tagged diagonal_tag; got tags {tag_names(operator.tags)}."
        )
    return read_diagonal(operator.diag(), operator.tags)
