"""Pieces shared by the Krylov solvers (CG, MINRES, GMRES, BiCGStab).

- `AbstractKrylovSolver`: the common configuration (`rtol`, `atol`, `max_steps`,
  `preconditioner`, `verbose`), its resolution against an operator, and the state every
  Krylov solver starts from (operator and preconditioner, both `stop_gradient`-ed by
  `linear_solve` because they live in the state).
- The stopping test `‖r‖₂ <= atol + rtol ‖b‖₂`, the verbose printer and the result codes.
- `map_columns`: a right-hand side of shape `(n, k)` is solved column by column (`vmap`),
  each column with its own Krylov space and stopping test.

None of this is differentiated: `linear_solve` differentiates the solution through
`jax.lax.custom_linear_solve`, never through the iterations, so plain `lax.while_loop`s
are used.
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._dtype import check_same_dtype
from .._operator import AbstractOperator, as_operator
from .._solution import RESULTS, result_code
from .abstract import AbstractSolver, check_square


def inner(a: Array, b: Array) -> Array:
    """`aᴴ b` for vectors (conjugate-linear in the first argument)."""
    return jnp.sum(jnp.conj(a) * b)


def norm(a: Array) -> Array:
    """Euclidean norm, real dtype."""
    return jnp.sqrt(jnp.real(inner(a, a)))


def real_dtype(dtype) -> Any:
    return jnp.finfo(dtype).dtype


def default_tolerance(dtype) -> float:
    """`eps**0.75`: about 2e-12 in double and 7e-6 in single precision. Tight enough that
    a well-conditioned solve is accurate to most digits, loose enough to be reachable."""
    return float(jnp.finfo(dtype).eps) ** 0.75


class KrylovState(eqx.Module):
    """What a Krylov solve needs from `init`: the operator, the preconditioner (`None` for
    none), the resolved tolerances, and — for a recycling CG, after
    `adjoint_state` — the recycled subspace."""

    operator: AbstractOperator
    preconditioner: AbstractOperator | None
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    negate: bool = eqx.field(static=True, default=False)
    recycled: Any = None


class AbstractKrylovSolver(AbstractSolver[KrylovState]):
    """Configuration shared by linsolve's Krylov solvers.

    **Arguments:**

    - `rtol`, `atol`: stop when `‖b − A x‖₂ <= atol + rtol ‖b‖₂` (per right-hand side),
      for the true residual: the recursively updated residual a solver monitors drifts
      from it in floating point, so it is recomputed (one product) before convergence is
      claimed, and the iteration restarts from it if it misses. A restart that cannot
      help (the true residual did not halve) gives `RESULTS.stagnation`: the system is
      too ill-conditioned for the tolerance in this precision. `None` (the default)
      means `eps**0.75` of the operator's dtype for `rtol` and `0` for `atol`; both must
      be finite and `>= 0`.
    - `max_steps`: the most iterations (default `10 n`). Not converging in time gives
      `RESULTS.max_steps_reached` — except with `rtol=0` and `atol=0`, which ask for
      exactly `max_steps` iterations (a fixed-cost, truncated solve) and succeed.
    - `preconditioner`: an operator (linsolve or lineax) approximating `A⁻¹`, or `None`.
      The transposed solve of reverse mode uses its transpose. It may be built from
      traced arrays; like the operator it gets no derivative through the solver.
    - `verbose`: print the residual norm at every step (`jax.debug.print`, works under
      `jit`).
    """

    # Declared here, defined (with their defaults) by each final solver: equinox's rule
    # that fields live on final classes only.
    rtol: eqx.AbstractVar[float | None]
    atol: eqx.AbstractVar[float | None]
    max_steps: eqx.AbstractVar[int | None]
    preconditioner: eqx.AbstractVar[Any]
    verbose: eqx.AbstractVar[bool]

    def __check_init__(self):
        name = type(self).__name__
        for what, value in (("rtol", self.rtol), ("atol", self.atol)):
            # (`not >= 0` also rejects NaN; an infinite tolerance would accept anything.)
            if value is not None and not 0 <= value < float("inf"):
                raise ValueError(f"{name}: `{what}` must be finite and >= 0, got {value}.")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError(f"{name}: `max_steps` must be >= 0, got {self.max_steps}.")

    def _make_state(self, operator, negate: bool = False) -> KrylovState:
        check_square(operator, type(self).__name__)
        n = operator.shape[0]
        preconditioner = None
        if self.preconditioner is not None:
            preconditioner = as_operator(self.preconditioner)
            if preconditioner.shape != operator.shape:
                raise ValueError(
                    f"The preconditioner of {type(self).__name__} has shape "
                    f"{preconditioner.shape}; the operator has shape {operator.shape}."
                )
            check_same_dtype(
                operator.dtype,
                preconditioner.dtype,
                "the operator",
                f"The preconditioner of {type(self).__name__}",
            )
        rtol = default_tolerance(operator.dtype) if self.rtol is None else float(self.rtol)
        atol = 0.0 if self.atol is None else float(self.atol)
        max_steps = 10 * n if self.max_steps is None else int(self.max_steps)
        return KrylovState(operator, preconditioner, rtol, atol, max_steps, negate)


def transposed(state: KrylovState) -> KrylovState:
    """The state of the transposed system: `Aᵀ` and the transposed preconditioner."""
    pre = None if state.preconditioner is None else state.preconditioner.T
    return KrylovState(
        state.operator.T, pre, state.rtol, state.atol, state.max_steps, state.negate, state.recycled
    )


def matvec(state: KrylovState):
    """`v ↦ A v` (`−A v` for a negated, i.e. negative definite, operator)."""

    def mv(v):
        out = state.operator.mv(v)
        return -out if state.negate else out

    return mv


def precondition(state: KrylovState):
    """`v ↦ M v`, the identity without a preconditioner (negated with the operator)."""
    preconditioner = state.preconditioner
    if preconditioner is None:
        return lambda v: v

    def apply(v):
        out = preconditioner.mv(v)
        return -out if state.negate else out

    return apply


def target(state: KrylovState, b_norm: Array) -> Array:
    """The residual norm at which a solve has converged."""
    return state.atol + state.rtol * b_norm


def start(state: KrylovState, b: Array, y0: Array | None):
    """Initial iterate and residual. A zero right-hand side gives `x = 0` exactly (whatever
    `y0`), so that e.g. a zero cotangent never runs into `max_steps`."""
    b_norm = norm(b)
    if y0 is None:
        return jnp.zeros_like(b), b, b_norm
    x = jnp.where(b_norm == 0, jnp.zeros_like(y0), y0)
    return x, b - matvec(state)(x), b_norm


def failure_code(value: Array) -> Array:
    """`breakdown` for a finite non-admissible value (e.g. a zero or negative curvature),
    `nonfinite_input` for NaN/Inf (almost always NaN/Inf in the operator or `b`)."""
    return jnp.where(
        jnp.isfinite(value), result_code(RESULTS.breakdown), result_code(RESULTS.nonfinite_input)
    )


def final_result(state: KrylovState, code: Array, converged: Array) -> Array:
    """The result of a finished loop: its failure code, else `max_steps_reached` if it
    stopped before converging. With `rtol = atol = 0` the solver was asked for exactly
    `max_steps` iterations (it cannot converge otherwise), so reaching them is success."""
    if state.rtol == 0 and state.atol == 0:
        converged = jnp.asarray(True)
    return jnp.where(
        code != RESULTS.successful,
        code,
        jnp.where(
            converged, result_code(RESULTS.successful), result_code(RESULTS.max_steps_reached)
        ),
    ).astype(jnp.int32)


def report(verbose: bool, label: str, step, residual_norm, goal) -> None:
    """Print one line per iteration when `verbose` (a no-op at trace time otherwise)."""
    if verbose:
        jax.debug.print(
            label + ": step {step}, residual norm {r:.3e} (target {t:.3e})",
            step=step,
            r=residual_norm,
            t=goal,
        )


def stats(num_steps, residual_norm, **extra) -> dict:
    out = {"num_steps": jnp.asarray(num_steps, jnp.int32), "residual_norm": residual_norm}
    out.update(extra)
    return out


def true_residual_loop(
    state: KrylovState,
    b: Array,
    y0: Array | None,
    cycle,
    extra: Any = None,
    *,
    own_norm: bool = False,
    verbose: bool = False,
    label: str = "",
):
    """Run a Krylov recurrence in cycles, each started from the true residual, until the
    true residual `‖b − A x‖₂` meets the target: the recursively updated residual a
    solver monitors drifts from the true one in floating point (badly so for an
    ill-conditioned operator), so convergence is never claimed from it alone.

    `cycle(k, x, r, r_norm, goal, code, extra) -> (k, x, code, claimed, extra)` runs the
    recurrence from the true residual `r` until its own estimate says it has converged
    (`claimed`), it fails (`code`), it wants a restart, or `k` reaches `max_steps`.
    After each cycle the true residual is computed (one product) and:

    - it meets the target: successful (whatever the cycle reported: the answer is right);
    - NaN/Inf: `nonfinite_input` (NaN/Inf in the operator, `b` or `y0`);
    - ten cycles in a row claimed convergence but the true residual did not even halve
      over any: rounding dominates, restarting again will not help: `stagnation`, or
      `breakdown`
      when the cycle measured its residual in its own norm (`own_norm`: MINRES's
      preconditioner norm), which a singular preconditioner makes blind to part of the
      residual;
    - otherwise, with steps left, another cycle from the true residual.
    """
    mv = matvec(state)
    rdt = real_dtype(b.dtype)
    x, r, b_norm = start(state, b, y0)
    goal = target(state, b_norm)
    r_norm = norm(r).astype(rdt)
    code = jnp.where(
        jnp.isfinite(r_norm), result_code(RESULTS.successful), result_code(RESULTS.nonfinite_input)
    )
    stuck = result_code(RESULTS.breakdown if own_norm else RESULTS.stagnation)

    def running(c):
        k, _, _, r_norm, code, *_ = c
        return (r_norm > goal) & (k < state.max_steps) & (code == RESULTS.successful)

    def body(c):
        k, x, r, r_norm, code, stalls, extra, cycles = c
        k, x, code, claimed, extra = cycle(k, x, r, r_norm, goal, code, extra)
        r = b - mv(x)
        new_norm = norm(r).astype(rdt)
        report(verbose, label + " (true residual)", k, new_norm, goal)
        met = new_norm <= goal
        code = jnp.where(met, result_code(RESULTS.successful), code)
        # (goal = 0 asks for a fixed number of steps: no stagnation test.)
        no_progress = claimed & ~met & ~(new_norm <= 0.5 * r_norm) & (goal > 0)
        # (Several: near the attainable accuracy the true residual fluctuates around the
        # target from restart to restart, and a few more restarts meet it.)
        stalls = jnp.where(no_progress, stalls + 1, 0)
        code = jnp.where((stalls >= 10) & (code == RESULTS.successful), stuck, code)
        # NaN/Inf met inside the recurrence while A x and b are finite: the recurrence
        # broke down (e.g. a singular preconditioner), the input is not to blame.
        code = jnp.where(code == RESULTS.nonfinite_input, result_code(RESULTS.breakdown), code)
        code = jnp.where(jnp.isfinite(new_norm), code, result_code(RESULTS.nonfinite_input))
        return k, x, r, new_norm, code, stalls, extra, cycles + 1

    zero = jnp.asarray(0, jnp.int32)
    carry = (zero, x, r, r_norm, code, zero, extra, zero)
    k, x, _, r_norm, code, _, extra, cycles = jax.lax.while_loop(running, body, carry)
    return x, final_result(state, code, r_norm <= goal), k, r_norm, cycles, extra


def map_columns(single, vector: Array, y0: Array | None, extra: Any = None, extra_batched=False):
    """Run `single(b, y0, extra) -> (x, result, stats)` on a vector, or on every column of
    an `(n, k)` block (`vmap`). `extra` is passed whole, or sliced along its leading axis
    when `extra_batched`. The block's result is that of its first failing column; stats
    get a leading axis of length k.

    The iteration is traced under standard dtype promotion even where a user enabled
    `jax_numpy_dtype_promotion="strict"`: it scales complex vectors by real norms and
    coefficients on purpose. Precisions are not mixed: the solver's `init` refuses a
    preconditioner of another dtype, and `linear_solve` vectors of another dtype."""
    with jax.numpy_dtype_promotion("standard"):
        if vector.ndim == 1:
            return single(vector, y0, extra)
        in_axes = (1, None if y0 is None else 1, 0 if extra_batched else None)
        x, result, out_stats = jax.vmap(single, in_axes=in_axes, out_axes=(1, 0, 0))(
            vector, y0, extra
        )
    if vector.shape[1] == 0:  # no columns: nothing to fail (and no argmax of nothing)
        return x, result_code(RESULTS.successful), out_stats
    failed = result != RESULTS.successful
    first = result[jnp.argmax(failed)]
    result = jnp.where(jnp.any(failed), first, result_code(RESULTS.successful))
    return x, result, out_stats
