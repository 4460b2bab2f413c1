"""`linear_solve`: the one adjoint mechanism every solver plugs into.

How derivatives work here (and nowhere else):

- `solver.init(operator)` runs once, outside any derivative rule, and its state is
  `stop_gradient`-ed: reverse mode and forward mode reuse the factorization.
- The solve is a `filter_custom_jvp` function. Its tangent is the solution of
  `A ẋ = ḃ − Ȧ x`, computed by `jax.lax.custom_linear_solve` whose `solve` starts from
  zero (never from the primal `y0`, so the tangent is linear in the input tangent even for
  a truncated iterative solve) and whose `transpose_solve` — used by reverse mode — starts
  from `adjoint_y0`. `Ȧ x` is the JVP of `operator.mv`, so the derivative w.r.t. the
  operator flows through whatever the operator reads: under the structure convention,
  folded into the read triangle and exactly zero on unread entries.
- `y0` and `adjoint_y0` are inputs whose tangents are ignored: their derivative is exactly
  zero, traced or not. So is a `recycle` space's: it is attached to the stopped state.
- `throw` holds for the derivative's solves too: with `throw=True` a failed tangent or
  transposed solve raises. With `throw=False` a failed transposed solve makes the
  gradient NaN (reverse mode has no other way to report it), while the tangent solve
  returns what the solver reached, like the primal it accompanies (so a truncated
  Krylov solve still has a JVP linear in the tangent).
- Non-square operators (QR least squares / minimum norm) get the pseudo-inverse
  derivative through the normal equations, solved with the solver's factorization of the
  Gram matrix (`gram_solve`).
"""

import functools
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Inexact

from ._operator import AbstractOperator, as_operator
from ._recycle import RecycleSpace
from ._solution import RESULTS, Solution, first_failure, raise_on_failure
from ._solver.abstract import AbstractLeastSquaresSolver, AbstractSolver
from ._solver.auto import AutoSolver
from ._solver.checks import operator_finite
from ._tangent import is_zero_tangent, tangent_adjoint_mv, tangent_mv


def _stop(tree):
    return jax.tree_util.tree_map(
        lambda x: jax.lax.stop_gradient(x) if eqx.is_inexact_array(x) else x, tree
    )


def _zero_tangents(tree):
    return jax.tree_util.tree_map(
        lambda x: jnp.zeros_like(x) if eqx.is_inexact_array(x) else None, tree
    )


@eqx.filter_custom_jvp
def _solve(solver, state, operator, vector, y0, adjoint_y0, *, throw):
    del operator, adjoint_y0, throw
    return solver.solve(state, vector, y0)


@_solve.def_jvp
def _solve_jvp(primals, tangents, *, throw):
    solver, state, operator, vector, y0, adjoint_y0 = primals
    _, _, t_operator, t_vector, _, _ = tangents  # y0 / adjoint_y0 / state: zero derivative
    out = _solve(solver, state, operator, vector, y0, adjoint_y0, throw=throw)
    x = out[0]
    out_tangents = (None, None, _zero_tangents(out[2]))
    operator_moves = not is_zero_tangent(t_operator)
    if t_vector is None and not operator_moves:
        return out, (jnp.zeros_like(x),) + out_tangents[1:]

    t_mv = functools.partial(tangent_mv, operator, t_operator)  # Ȧ v
    t_hmv = functools.partial(tangent_adjoint_mv, operator, t_operator)  # Ȧᴴ v

    hmv = functools.partial(adjoint_mv, operator)  # Aᴴ v

    rhs = jnp.zeros_like(vector) if t_vector is None else t_vector
    # What the forward solve learned (e.g. a recycled Krylov subspace) for the derivative's
    # solves; the state itself for direct solvers.
    state = solver.adjoint_state(state, out[2])
    m, n = operator.shape
    if m == n:
        # A ẋ = ḃ − Ȧ x. Reverse mode transposes this into the transposed solve.
        if operator_moves:
            rhs = rhs - t_mv(x)

        t_x = linear_in_rhs(solver, state, operator, rhs, throw=throw, adjoint_y0=adjoint_y0)
        return out, (t_x,) + out_tangents[1:]

    # Non-square: differentiate the normal equations with the Gram matrix G (AᴴA if tall,
    # AAᴴ if wide), solved from the solver's factorization. Every solve is a
    # custom_linear_solve on G, so all orders and reverse mode come out right, while the
    # primal keeps the solver's own (orthogonal-factor) accuracy.
    def gram_solve(w):
        return _gram_solve(solver, state, operator, w)

    if m > n:
        # AᴴA x = Aᴴ b  ⇒  AᴴA ẋ = Aᴴ(ḃ − Ȧ x) + Ȧᴴ (b − A x)
        g_rhs = hmv(rhs)
        if operator_moves:
            g_rhs = g_rhs - hmv(t_mv(x)) + t_hmv(vector - operator.mv(x))
        return out, (gram_solve(g_rhs),) + out_tangents[1:]
    # x = Aᴴ y with AAᴴ y = b  ⇒  ẋ = Ȧᴴ y + Aᴴ ẏ,  AAᴴ ẏ = ḃ − Ȧ Aᴴ y − A Ȧᴴ y
    y = gram_solve(vector)
    if operator_moves:
        rhs = rhs - t_mv(hmv(y)) - operator.mv(t_hmv(y))
    t_x = hmv(gram_solve(rhs))
    if operator_moves:
        t_x = t_x + t_hmv(y)
    return out, (t_x,) + out_tangents[1:]


def linear_in_rhs(
    solver,
    state,
    operator,
    rhs,
    *,
    throw: bool,
    adjoint_y0=None,
    name: str = "linsolve.linear_solve",
    nan_on_failure: bool = False,
):
    """`A⁻¹ rhs` from the solver's (stopped) `state`, as a function linear in `rhs` and
    transposable: a `jax.lax.custom_linear_solve` whose transpose is the solver's
    `transpose_solve` from the same state, starting from `adjoint_y0`. Derivatives in the
    operator flow through `operator.mv`. The failure policy of every derivative solve:
    with `throw`, a failed solve raises (`name` says whose); otherwise a failed transposed
    solve is NaN (a gradient has nowhere to carry a result code), and so is a failed
    forward one with `nan_on_failure` (else it returns what the solver reached, like the
    primal it accompanies)."""

    def checked(y, result, where, nan):
        if throw:
            return raise_on_failure(y, result, where, name=name)
        if nan:
            # Never a silently wrong (e.g. truncated) derivative.
            return jnp.where(result == RESULTS.successful, y, jnp.nan)
        return y

    def solve(_, r):
        y, result, _ = solver.solve(state, r, None)
        return checked(y, result, "tangent solve of forward mode", nan_on_failure)

    def transpose_solve(_, r):
        y, result, _ = solver.transpose_solve(state, r, adjoint_y0)
        return checked(y, result, "transposed solve of reverse mode", True)

    return jax.lax.custom_linear_solve(operator.mv, rhs, solve, transpose_solve)


def adjoint_mv(operator, v):
    """`Aᴴ v` (the plain transpose's product, conjugated)."""
    return jnp.conj(operator.rmv(jnp.conj(v)))


def _gram_solve(solver, state, operator, w):
    """Solve `G z = w` with `G = AᴴA` (tall `A`) or `AAᴴ` (wide), differentiably in `A`."""
    m, n = operator.shape

    hmv = functools.partial(adjoint_mv, operator)  # Aᴴ v

    def gram_mv(v):
        return hmv(operator.mv(v)) if m > n else operator.mv(hmv(v))

    def solve(_, r):
        return solver.gram_solve(state, r)

    def transpose_solve(_, r):  # G is hermitian: Gᵀ = conj(G)
        return jnp.conj(solver.gram_solve(state, jnp.conj(r)))

    return jax.lax.custom_linear_solve(gram_mv, w, solve, transpose_solve)


def _nonfinite_solution_code(operator, failed):
    """A solution with NaN/Inf from a finite `b` and a solve that reported success: NaN/Inf
    in the operator, or a finite system whose solution overflowed. The operator is read
    again only then (inside the `cond`)."""

    def diagnose():
        finite = operator_finite(_stop(operator))
        return jnp.where(finite, RESULTS.nonfinite_output, RESULTS.nonfinite_input).astype(
            jnp.int32
        )

    return jax.lax.cond(failed, diagnose, lambda: jnp.asarray(RESULTS.nonfinite_input, jnp.int32))


def _check_inputs(operator: AbstractOperator, vector, y0, adjoint_y0):
    m, n = operator.shape
    if vector.ndim not in (1, 2) or vector.shape[0] != m:
        raise ValueError(
            f"linear_solve: operator of shape {operator.shape} needs a right-hand side of "
            f"shape ({m},) or ({m}, k); got {vector.shape}."
        )
    x_shape = (n,) + vector.shape[1:]
    for name, guess, shape in (("y0", y0, x_shape), ("adjoint_y0", adjoint_y0, vector.shape)):
        if guess is not None and jnp.shape(guess) != shape:
            raise ValueError(
                f"linear_solve: `{name}` must have shape {shape} (operator {operator.shape}, "
                f"right-hand side {vector.shape}); got {jnp.shape(guess)}."
            )


def _as_vector(vector, dtype, what):
    if isinstance(vector, (jax.Array, np.ndarray, np.generic)):
        vector = jnp.asarray(vector)
        if not jnp.issubdtype(vector.dtype, jnp.inexact):
            return vector.astype(dtype)  # integer data is promoted, as in jnp
        if vector.dtype != dtype:
            raise TypeError(
                f"linear_solve: {what} has dtype {vector.dtype} but the operator has dtype "
                f"{dtype}; cast one of them explicitly."
            )
        return vector
    # Python scalars / lists are weakly typed: take the operator's dtype.
    return jnp.asarray(vector, dtype=dtype)


def linear_solve(
    operator: Any,
    vector: Inexact[ArrayLike, " m"] | Inexact[ArrayLike, "m k"],
    solver: AbstractSolver = AutoSolver(),
    *,
    y0: Inexact[ArrayLike, " n"] | Inexact[ArrayLike, "n k"] | None = None,
    adjoint_y0: Inexact[ArrayLike, " m"] | Inexact[ArrayLike, "m k"] | None = None,
    recycle: RecycleSpace | None = None,
    throw: bool = True,
) -> Solution:
    """Solve `operator @ x = vector`, differentiably.

    **Arguments:**

    - `operator`: a linsolve operator, or any `lineax.AbstractLinearOperator`.
    - `vector`: the right-hand side `b`, of shape `(m,)` or `(m, k)` (k right-hand sides).
    - `solver`: the solver; `AutoSolver()` chooses from the operator's tags and kind.
    - `y0`: initial guess for iterative solvers (ignored by direct ones). Its derivative
      is exactly zero; a traced `y0` (even one computed from `vector`) is fine.
    - `adjoint_y0`: initial guess for the transposed solve of reverse mode. The gradient
      w.r.t. `vector` *is* that transposed solution, so an optimisation loop can carry the
      previous step's gradient here. Derivative exactly zero.
    - `recycle`: a [`linsolve.RecycleSpace`][] (e.g. the previous solve's
      `sol.stats["recycle"]`) for `CG(recycle=m)` or `MINRES(recycle=m)`: the forward
      solve and the derivative's solves are deflated by it, and the refreshed space is
      returned in `sol.stats["recycle"]`. It changes iteration counts only, never the
      solution; derivative exactly zero. Other solvers raise.
    - `throw`: if `True`, a failed solve raises (also under `jit`, and also for the
      transposed solve of reverse mode); if `False`, check `sol.result`.

    **Returns:**

    A [`linsolve.Solution`][] with `value`, `result` and `stats`.

    Shape and dtype mismatches raise at trace time, naming the shapes.
    """
    operator = as_operator(operator)
    if not isinstance(solver, AbstractSolver):
        raise TypeError(f"`solver` must be a linsolve solver, got {type(solver).__name__}.")
    vector = _as_vector(vector, operator.dtype, "the right-hand side")
    y0 = None if y0 is None else _as_vector(y0, operator.dtype, "y0")
    adjoint_y0 = (
        None if adjoint_y0 is None else _as_vector(adjoint_y0, operator.dtype, "adjoint_y0")
    )
    _check_inputs(operator, vector, y0, adjoint_y0)
    if isinstance(solver, AutoSolver):
        solver = solver.select(operator)
    m, n = operator.shape
    if m != n and not isinstance(solver, AbstractLeastSquaresSolver):
        raise ValueError(
            f"{type(solver).__name__} needs a square operator; got shape {operator.shape}. "
            "Use linsolve.QR() for least-squares / minimum-norm solves."
        )

    state = _stop(solver.init(operator))
    if recycle is not None:
        # A preconditioner, not an input: attached to the (stopped) state, outside the rule.
        state = _stop(solver.recycle_state(state, recycle, vector.shape))
    y0 = None if y0 is None else jax.lax.stop_gradient(y0)
    adjoint_y0 = None if adjoint_y0 is None else jax.lax.stop_gradient(adjoint_y0)
    x, result, stats = _solve(solver, state, operator, vector, y0, adjoint_y0, throw=throw)
    finite_b = jnp.all(jnp.isfinite(jax.lax.stop_gradient(vector)))
    finite_x = jnp.all(jnp.isfinite(jax.lax.stop_gradient(x)))
    result = first_failure(
        (~finite_b, RESULTS.nonfinite_input),
        (result != RESULTS.successful, result),
        (~finite_x, _nonfinite_solution_code(operator, ~finite_x)),
    )
    if throw:
        x = raise_on_failure(x, result, "solve")
    return Solution(value=x, result=result, stats=stats)
