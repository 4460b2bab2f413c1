"""Diagonal operators: elementwise division."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from .._solution import RESULTS, first_failure
from .._structure import read_diagonal
from .._tags import diagonal_tag
from .abstract import AbstractSolver, tag_names


class _DiagonalState(eqx.Module):
    diagonal: Array
    result: Array


class Diagonal(AbstractSolver):
    """`x = b / d` for an operator tagged `diagonal_tag` (only the diagonal is read).
    A zero entry gives `RESULTS.singular`."""

    def init(self, operator) -> _DiagonalState:
        if diagonal_tag not in operator.tags:
            raise ValueError(
                f"Diagonal needs an operator tagged diagonal_tag; got tags {tag_names(operator.tags)}."
            )
        diagonal = read_diagonal(operator.diag(), operator.tags)
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
