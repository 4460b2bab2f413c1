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
    nonfinite_output = 6
    not_symmetric = 7

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
    RESULTS.nonfinite_input: "The operator or the right-hand side contains NaN or Inf.",
    RESULTS.breakdown: "The iterative solver broke down (a zero inner product was met).",
    RESULTS.nonfinite_output: (
        "The operator and the right-hand side are finite but the result is not: it overflowed "
        "(the operator is singular or badly scaled for this dtype; rescale, or use float64), or "
        "a matrix-free operator's function produced NaN/Inf."
    ),
    RESULTS.not_symmetric: (
        "The operator is tagged symmetric, hermitian or semidefinite, but the matrix its "
        "function applies is not symmetric (hermitian) to working precision: the tag's promise "
        "is broken. Fix the function or drop the tag."
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
