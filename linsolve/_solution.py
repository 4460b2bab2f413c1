"""The result of a solve: `Solution` and the `RESULTS` codes."""

import enum
from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Int


class RESULTS(enum.IntEnum):
    """Result codes of a solve. `sol.result` is an int32 array holding one of these;
    compare with `sol.result == ls.RESULTS.successful` (works under `jit` and `vmap`)."""

    successful = 0
    max_steps_reached = 1
    singular = 2
    not_positive_definite = 3
    nonfinite_input = 4
    breakdown = 5
    stagnation = 6

    @classmethod
    def message(cls, code: int) -> str:
        """A human-readable explanation of a (concrete) result code."""
        return _MESSAGES[cls(int(code))]


_MESSAGES = {
    RESULTS.successful: "The solve succeeded.",
    RESULTS.max_steps_reached: (
        "The iterative solver did not converge within `max_steps` iterations; increase "
        "`max_steps`, loosen `rtol`/`atol`, or use a preconditioner."
    ),
    RESULTS.singular: "The operator is singular (a pivot or diagonal entry is zero, up to rounding for LU/QR).",
    RESULTS.not_positive_definite: (
        "The operator is not positive definite: the Cholesky factorization failed. Check the "
        "positive/negative semidefinite tag, and remember that a tagged matrix is read by its "
        "lower triangle."
    ),
    RESULTS.nonfinite_input: (
        "The operator or the right-hand side (or an iterative solver's initial guess `y0`) "
        "contains NaN or Inf."
    ),
    RESULTS.breakdown: (
        "The iterative solver broke down (a zero inner product was met; e.g. an operator "
        "that is not definite for CG, or a preconditioner that is singular or not definite)."
    ),
    RESULTS.stagnation: (
        "The iterative solver stagnated: its recursively updated residual met the tolerance "
        "but the true residual ‖b − A x‖ did not, even after restarting from it. The system is "
        "too ill-conditioned for the tolerance in this precision: loosen `rtol`/`atol`, use a "
        "preconditioner, a direct solver, or float64."
    ),
}


def result_code(code) -> Int[Array, ""]:
    """A `RESULTS` member (or a traced code) as an int32 array."""
    return jnp.asarray(code, dtype=jnp.int32)


def first_failure(*pairs) -> Int[Array, ""]:
    """Combine `(failed, code)` checks in priority order: the first failing one wins."""
    out = result_code(RESULTS.successful)
    for failed, code in reversed(pairs):
        out = jnp.where(failed, result_code(code), out)
    return out


class Solution(eqx.Module):
    """What `linear_solve` returns.

    **Attributes:**

    - `value`: the solution `x` (shape of `b`, or `(n,)`/`(n, k)` for non-square operators).
    - `result`: an int32 array, one of `linsolve.RESULTS`.
    - `stats`: a dict; iterative solvers report at least `num_steps` and `residual_norm`.
    """

    value: Array
    result: Int[Array, ""]
    stats: dict[str, Any]
