"""BiCGStab (van der Vorst 1992) with right preconditioning, for any square operator."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from .._solution import RESULTS, result_code
from .abstract import AbstractReusingSolver
from .krylov import (
    AbstractKrylovSolver,
    KrylovState,
    inner,
    map_columns,
    matvec,
    norm,
    precondition,
    real_dtype,
    report,
    stats,
    transposed,
    true_residual_loop,
)


class BiCGStab(AbstractKrylovSolver, AbstractReusingSolver[KrylovState]):
    """Right-preconditioned BiCGStab for any square operator (real or complex). Two
    matrix-vector products per iteration and short recurrences (constant memory); the
    monitored residual is the unpreconditioned one.

    **Arguments:**

    - `rtol`, `atol`, `max_steps`, `preconditioner`, `verbose`: as for [`linsolve.CG`][];
      `max_steps` counts iterations (two products each).

    When the recurrence (nearly) breaks down — the shadow residual (nearly) orthogonal to
    the residual, or a zero stabilisation step — BiCGStab restarts from the true residual
    `b − A x` as new shadow residual; it also checks the true residual (one product) before
    it reports convergence, and continues from it if the recursively updated residual has
    drifted. Only a breakdown in the first step after a restart gives `RESULTS.breakdown`.

    `sol.stats` has `num_steps` (iterations), `num_restarts` and `residual_norm` (of the
    true residual).
    """

    rtol: float | None = eqx.field(static=True, default=None)
    atol: float | None = eqx.field(static=True, default=None)
    max_steps: int | None = eqx.field(static=True, default=None)
    preconditioner: Any = None
    verbose: bool = eqx.field(static=True, default=False)

    def init(self, operator) -> KrylovState:
        return self._make_state(operator)

    def solve(self, state, vector, y0):
        return map_columns(
            lambda b, x0, _: _bicgstab(state, b, x0, self.verbose, "BiCGStab"), vector, y0
        )

    def transpose_solve(self, state, vector, y0):
        state = transposed(state)
        label = "BiCGStab (transposed)"
        return map_columns(
            lambda b, x0, _: _bicgstab(state, b, x0, self.verbose, label), vector, y0
        )


@eqx.filter_jit  # eager calls (and repeated traces) reuse one compiled loop
def _bicgstab(state: KrylovState, b, y0, verbose: bool, label: str):
    """BiCGStab on one right-hand side, in cycles: each cycle runs BiCGStab with the
    current true residual as shadow residual until the recursively updated residual
    converges or the recurrence (nearly) breaks down; then the true residual `b − A x`
    is computed (one product) and, if it has not converged, a new cycle starts from it."""
    mv = matvec(state)
    pre = precondition(state)
    rdt = real_dtype(b.dtype)
    dtype = b.dtype
    # A shadow residual (nearly) orthogonal to the residual: |r̂ᴴr| <= √eps ‖r̂‖ ‖r‖.
    near_zero = float(jnp.finfo(rdt).eps) ** 0.5
    one = jnp.ones((), dtype)
    zeros = jnp.zeros_like(b)

    def cycle(k, x, r, r_norm, goal, code, _):
        report(verbose, label, k, r_norm, goal)
        shadow = r  # r̂ for this cycle; ‖r̂‖ = r_norm
        shadow_norm = r_norm

        def cond(c):
            k, j, _, _, _, _, _, _, _, r_norm, code, restart = c
            return (r_norm > goal) & (k < state.max_steps) & (code == RESULTS.successful) & ~restart

        def body(c):
            k, j, x, r, p, v, rho, alpha, omega, r_norm, code, _ = c
            rho_new = inner(shadow, r)
            # Lost bi-orthogonality: restart rather than divide by a vanishing rho.
            stuck = jnp.abs(rho_new) <= near_zero * shadow_norm * r_norm
            beta = (rho_new / rho) * (alpha / omega)
            p = r + beta * (p - omega * v)
            p_hat = pre(p)
            v = mv(p_hat)
            sv = inner(shadow, v)
            stuck = stuck | (sv == 0)
            alpha = rho_new / jnp.where(sv == 0, 1, sv)
            s = r - alpha * v
            s_norm = norm(s).astype(rdt)
            half_done = s_norm <= goal
            s_hat = pre(s)
            t = mv(s_hat)
            tt = jnp.real(inner(t, t))
            # Once the half step has converged, the stabilisation step is skipped (omega =
            # 0). A zero stabilisation step otherwise (t ⟂ s) keeps the half step and
            # restarts: the next beta would divide by omega.
            omega = jnp.where(
                half_done | (tt == 0), 0, inner(t, s) / jnp.where(tt == 0, 1, tt)
            ).astype(dtype)
            x_new = jnp.where(stuck, x, x + alpha * p_hat + omega * s_hat)
            r_new = jnp.where(stuck, r, s - omega * t)
            r_norm = jnp.where(stuck, r_norm, jnp.where(half_done, s_norm, norm(r_new).astype(rdt)))
            restart = stuck | (~half_done & (omega == 0))
            finite = jnp.isfinite(r_norm) & jnp.isfinite(rho_new) & jnp.isfinite(sv)
            code = jnp.where(finite, code, result_code(RESULTS.nonfinite_input))
            failed = code != RESULTS.successful
            report(verbose, label, k + 1, r_norm, goal)
            return (
                k + 1,
                j + 1,
                jnp.where(failed, x, x_new),
                r_new,
                p,
                v,
                rho_new,
                alpha,
                jnp.where(omega == 0, one, omega),
                r_norm,
                code,
                restart,
            )

        init = (
            k,
            jnp.asarray(0, jnp.int32),
            x,
            r,
            zeros,
            zeros,
            one,
            one,
            one,
            r_norm,
            code,
            jnp.asarray(False),
        )
        k, j, x, _, _, _, _, _, _, est, code, restart = jax.lax.while_loop(cond, body, init)
        # A breakdown in the first step from a fresh shadow residual: restarting again
        # would meet it again (e.g. r̂ᴴAr̂ = 0 for an indefinite operator). (Unless the
        # true residual, checked next, has converged.)
        code = jnp.where(restart & (j == 1), result_code(RESULTS.breakdown), code)
        return k, x, code, est <= goal, None

    x, result, k, r_norm, cycles, _ = true_residual_loop(
        state, b, y0, cycle, verbose=verbose, label=label
    )
    return x, result, stats(k, r_norm, num_restarts=jnp.maximum(cycles - 1, 0))
