"""Triangular solves (lower / upper, optionally unit diagonal)."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .. import _lapack
from .._operator import is_sparse
from .._solution import RESULTS, first_failure
from .._sparse.operator import SparseOperator
from .._sparse.triangular import Schedule, schedule
from .._structure import read_diagonal
from .._tags import diagonal_tag, lower_triangular_tag, unit_diagonal_tag, upper_triangular_tag
from .abstract import AbstractDeterminantSolver, check_square, dense_input, input_check, tag_names
from .checks import operator_finite
from .determinant import factorization_failure, slogdet_of_diagonal


class _TriangularState(eqx.Module):
    matrix: Array
    lower: bool = eqx.field(static=True)
    unit: bool = eqx.field(static=True)
    result: Array


class Triangular(AbstractDeterminantSolver["_TriangularState | _SparseTriangularState"]):
    """Forward / back substitution for an operator tagged `lower_triangular_tag` or
    `upper_triangular_tag` (with `unit_diagonal_tag`, the diagonal is not read). A zero on
    the diagonal gives `RESULTS.singular`."""

    def init(self, operator) -> "_TriangularState | _SparseTriangularState":
        lower, unit = _check_tags(operator)
        if is_sparse(operator):
            return _sparse_init(operator, unit)
        matrix = dense_input(operator)
        # NaN/Inf off the diagonal shows in the solution (checked by linear_solve).
        diagonal = jnp.diagonal(matrix)
        failed = jnp.any(diagonal == 0) | ~jnp.all(jnp.isfinite(diagonal))
        result = input_check(operator, failed, RESULTS.singular)
        return _TriangularState(jax.lax.stop_gradient(matrix), lower, unit, result)

    def _solve(self, state, vector, trans):
        return _lapack.solve_triangular(
            state.matrix, vector, trans=trans, lower=state.lower, unit_diagonal=state.unit
        )

    def solve(self, state, vector, y0):
        del y0
        if isinstance(state, _SparseTriangularState):
            return state.forward.solve(state.off_values, state.diagonal, vector), state.result, {}
        return self._solve(state, vector, 0), state.result, {}

    def transpose_solve(self, state, vector, y0):
        del y0
        if isinstance(state, _SparseTriangularState):
            return state.backward.solve(state.off_values, state.diagonal, vector), state.result, {}
        return self._solve(state, vector, 1), state.result, {}

    def slogdet(self, operator):
        _check_tags(operator)
        sign, logabsdet = slogdet_of_diagonal(read_diagonal(operator.diag(), operator.tags))
        # NaN above / below the diagonal does not change the determinant, but it is NaN
        # input all the same.
        return sign, logabsdet, factorization_failure(jnp.asarray(True), operator_finite(operator))

    def positive_definite(self, operator):
        return False


def _check_tags(operator) -> tuple[bool, bool]:
    """Triangular's trace-time checks (tags, shape); `(lower, unit)`."""
    tags = operator.tags
    lower = lower_triangular_tag in tags or diagonal_tag in tags
    if not (lower or upper_triangular_tag in tags):
        raise ValueError(
            "Triangular needs an operator tagged lower_triangular_tag or "
            f"upper_triangular_tag; got tags {tag_names(tags)}."
        )
    check_square(operator, "Triangular")
    return lower, unit_diagonal_tag in tags


class _SparseTriangularState(eqx.Module):
    off_values: Array
    diagonal: Array | None
    forward: Schedule = eqx.field(static=True)
    backward: Schedule = eqx.field(static=True)
    result: Array


def _sparse_init(operator: SparseOperator, unit: bool) -> _SparseTriangularState:
    """Level-scheduled sparse substitution: never materializes the matrix."""
    forward, off, _ = schedule(operator.pattern, operator.tags, False)
    backward, _, _ = schedule(operator.pattern, operator.tags, True)
    off_values = operator.values[off]
    diagonal = None if unit else operator.diag()
    finite = jnp.all(jnp.isfinite(off_values))
    singular = jnp.asarray(False)
    if diagonal is not None:
        finite = finite & jnp.all(jnp.isfinite(diagonal))
        singular = jnp.any(diagonal == 0)
    result = first_failure((~finite, RESULTS.nonfinite_input), (singular, RESULTS.singular))
    return _SparseTriangularState(off_values, diagonal, forward, backward, result)
