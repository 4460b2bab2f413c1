"""BiCGStab (van der Vorst 1992) with right preconditioning, for any square operator."""

import equinox as eqx
import jax
import jax.numpy as jnp

from .._solution import RESULTS, result_code
from .krylov import (
    AbstractKrylovSolver,
    KrylovState,
    final_result,
    inner,
    map_columns,
    matvec,
    norm,
    precondition,
    real_dtype,
    report,
    start,
    stats,
    target,
    transposed,
)


class BiCGStab(AbstractKrylovSolver):
    """Right-preconditioned BiCGStab for any square operator (real or complex). Two
    matrix-vector products per iteration and short recurrences (constant memory); the
    monitored residual is the true one, updated recursively.

    **Arguments:**

    - `rtol`, `atol`, `max_steps`, `preconditioner`, `verbose`: as for [`linsolve.CG`][];
      `max_steps` counts iterations (two products each).

    `sol.stats` has `num_steps` and `residual_norm`. A vanishing inner product (the
    shadow residual orthogonal to the residual, or a zero stabilisation step) before
    convergence gives `RESULTS.breakdown`.
    """

    def init(self, operator) -> KrylovState:
        return self._make_state(operator)

    def solve(self, state, vector, y0):
        return map_columns(lambda b, x0, _: _bicgstab(state, b, x0, self.verbose, "BiCGStab"), vector, y0)

    def transpose_solve(self, state, vector, y0):
        state = transposed(state)
        label = "BiCGStab (transposed)"
        return map_columns(lambda b, x0, _: _bicgstab(state, b, x0, self.verbose, label), vector, y0)


@eqx.filter_jit  # eager calls (and repeated traces) reuse one compiled loop
def _bicgstab(state: KrylovState, b, y0, verbose: bool, label: str):
    mv = matvec(state)
    pre = precondition(state)
    rdt = real_dtype(b.dtype)
    dtype = b.dtype
    x, r, b_norm = start(state, b, y0)
    goal = target(state, b_norm)
    r_norm = norm(r).astype(rdt)
    shadow = r  # the fixed shadow residual r̂₀
    one = jnp.ones((), dtype)
    code = jnp.where(jnp.isfinite(r_norm), result_code(RESULTS.successful), result_code(RESULTS.nonfinite_input))
    zeros = jnp.zeros_like(b)
    report(verbose, label, 0, r_norm, goal)
    carry = (jnp.asarray(0, jnp.int32), x, r, zeros, zeros, one, one, one, r_norm, code)

    def cond(c):
        k, _, _, _, _, _, _, _, r_norm, code = c
        return (r_norm > goal) & (k < state.max_steps) & (code == RESULTS.successful)

    def body(c):
        k, x, r, p, v, rho, alpha, omega, _, code = c
        rho_new = inner(shadow, r)
        beta = (rho_new / rho) * (alpha / omega)
        p = r + beta * (p - omega * v)
        p_hat = pre(p)
        v = mv(p_hat)
        sv = inner(shadow, v)
        breakdown = (rho_new == 0) | (sv == 0)
        alpha = rho_new / jnp.where(sv == 0, 1, sv)
        s = r - alpha * v
        s_norm = norm(s).astype(rdt)
        half_done = s_norm <= goal
        s_hat = pre(s)
        t = mv(s_hat)
        tt = jnp.real(inner(t, t))
        # Once the half step has converged, the stabilisation step is skipped (omega = 0).
        omega = jnp.where(half_done | (tt == 0), 0, inner(t, s) / jnp.where(tt == 0, 1, tt)).astype(dtype)
        x_new = x + alpha * p_hat + omega * s_hat
        r_new = s - omega * t
        r_norm = jnp.where(half_done, s_norm, norm(r_new).astype(rdt))
        breakdown = breakdown | (~half_done & (omega == 0))
        finite = jnp.isfinite(r_norm) & jnp.isfinite(rho_new) & jnp.isfinite(sv)
        code = jnp.where(
            ~finite, result_code(RESULTS.nonfinite_input),
            jnp.where(breakdown, result_code(RESULTS.breakdown), code),
        )
        failed = code != RESULTS.successful
        report(verbose, label, k + 1, r_norm, goal)
        return (
            k + 1, jnp.where(failed, x, x_new), r_new, p, v, rho_new, alpha,
            jnp.where(omega == 0, one, omega), r_norm, code,
        )

    k, x, _, _, _, _, _, _, r_norm, code = jax.lax.while_loop(cond, body, carry)
    return x, final_result(state, code, r_norm <= goal), stats(k, r_norm)
