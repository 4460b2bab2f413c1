"""The result of a solve: `Solution` and the `RESULTS` codes."""

import enum
from typing import Any

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, Int


class RESULTS(enum.IntEnum):
    """Result codes of a solve. `sol.result` is an int32 array holding one of these;
    compare with `sol.result == ls.RESULTS.successful` (works under `jit` and `vmap`).

    lineax's codes are a different type: `sol.result == lineax.RESULTS.successful` raises
    (equinox refuses to compare its enumerations with anything else). Compare with
    linsolve's codes, or convert: `sol.lineax_result == lineax.RESULTS.successful`
    (see [`linsolve.RESULTS.to_lineax`][]).

    Messages: `RESULTS.message(sol.result)` for a concrete code (outside `jit`);
    `RESULTS.print_message(sol.result)` prints from inside `jit`/`vmap` at run time.
    """

    successful = 0
    max_steps_reached = 1
    singular = 2
    not_positive_definite = 3
    nonfinite_input = 4
    breakdown = 5
    stagnation = 6
    nonfinite_output = 7
    not_symmetric = 8

    @classmethod
    def message(cls, code: Any) -> str:
        """A human-readable explanation of a concrete result code (a `RESULTS` member, an
        int, or a 0-d array such as `sol.result` outside `jit`). An array of codes (from
        `vmap`) gives a numpy array of messages. A traced code raises a `TypeError`: under
        `jit` use [`linsolve.RESULTS.print_message`][], or return `sol.result` and look it
        up outside."""
        if isinstance(code, jax.core.Tracer):
            raise TypeError(
                "RESULTS.message needs a concrete result code, but it was called under a JAX "
                "transformation (jit/vmap/grad) where `sol.result` is traced. Return "
                "`sol.result` from the transformed function and call RESULTS.message on it "
                "outside, or print it at run time with `linsolve.RESULTS.print_message("
                "sol.result)`; `throw=True` (the default) raises with the message."
            )
        codes = np.asarray(code)
        if codes.ndim:
            return np.vectorize(lambda c: _MESSAGES[cls(int(c))], otypes=[object])(codes)
        return _MESSAGES[cls(int(codes))]

    @classmethod
    def print_message(cls, code: Any, prefix: str = "") -> None:
        """Print the name and message of a result code at run time, also under `jit` and
        `vmap` (through `jax.debug.callback`; one line per code)."""

        def show(c):
            for one in np.ravel(np.asarray(c)):
                member = cls(int(one))
                print(f"{prefix}{member.name}: {_MESSAGES[member]}")

        jax.debug.callback(show, jnp.asarray(code))

    @classmethod
    def to_lineax(cls, code: Any):
        """The `lineax.RESULTS` item of a result code (traced or not), for code written
        against lineax: `ls.RESULTS.to_lineax(sol.result) == lineax.RESULTS.successful`.
        `not_positive_definite` maps to lineax's `singular` (lineax has no such code)."""
        return lineax_result(jnp.asarray(code, jnp.int32))


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

    @property
    def lineax_result(self):
        """`result` as a `lineax.RESULTS` item (see [`linsolve.RESULTS.to_lineax`][]), so
        code written for lineax can compare `sol.lineax_result == lineax.RESULTS.successful`."""
        return RESULTS.to_lineax(self.result)

    def __repr__(self) -> str:
        # The result's name when it is concrete, not equinox's `result=i32[]`.
        return (
            f"Solution(value={_short(self.value)}, result={_result_name(self.result)}, "
            f"stats={eqx.tree_pformat(self.stats, short_arrays=True)})"
        )


def _short(x) -> str:
    return eqx.tree_pformat(x, short_arrays=True)


def _result_name(code) -> str:
    if isinstance(code, jax.core.Tracer) or not eqx.is_array_like(code):
        return _short(code)
    codes = np.asarray(code)
    try:
        names = [RESULTS(int(c)).name for c in np.ravel(codes)]
    except ValueError:  # not a linsolve code
        return _short(code)
    if codes.ndim == 0:
        return names[0]
    return f"[{', '.join(names)}]" if codes.size <= 8 else _short(code)


# lineax has no `not_positive_definite`: its own Cholesky reports `singular` (whose
# message names an unmet definiteness promise as a cause).
_RESULTS_TO_LINEAX = {
    RESULTS.successful: lx.RESULTS.successful,
    RESULTS.max_steps_reached: lx.RESULTS.max_steps_reached,
    RESULTS.singular: lx.RESULTS.singular,
    RESULTS.not_positive_definite: lx.RESULTS.singular,
    RESULTS.nonfinite_input: lx.RESULTS.nonfinite_input,
    RESULTS.breakdown: lx.RESULTS.breakdown,
    RESULTS.stagnation: lx.RESULTS.stagnation,
    # An overflowing solution of finite input: lineax's `singular` names ill-conditioning.
    RESULTS.nonfinite_output: lx.RESULTS.singular,
    RESULTS.not_symmetric: lx.RESULTS.singular,  # an unmet promise, as not_positive_definite
}
assert set(_RESULTS_TO_LINEAX) == set(RESULTS), "every linsolve result needs a lineax one"


def lineax_result(code: Array) -> lx.RESULTS:
    """A linsolve result code (int32 array, traced or not) as a `lineax.RESULTS` item."""
    out = lx.RESULTS.successful
    for ours, theirs in _RESULTS_TO_LINEAX.items():
        if ours != RESULTS.successful:
            out = lx.RESULTS.where(code == ours, theirs, out)
    return out


def _error_messages():
    return [RESULTS.message(code) for code in RESULTS]


def raise_on_failure(x, result, where: str, name: str = "linsolve.linear_solve", messages=None):
    """`x`, made to raise (under `jit` too) with the message of `result` when it is not
    `successful`: "`name` (`where`): message". `messages` overrides `RESULTS.message` for
    some codes (other functions' wording)."""
    messages = messages or {}
    msgs = [f"{name} ({where}): {messages.get(c, m)}" for c, m in zip(RESULTS, _error_messages())]
    # The check runs on a scalar that is then added to x, not on x: its error branch is a
    # host callback, and passing x through it would gather a sharded solution onto one
    # device (and replicate the output).
    flag = eqx.branched_error_if(jnp.zeros((), x.dtype), result != RESULTS.successful, result, msgs)
    return x + flag
