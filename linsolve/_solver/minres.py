"""MINRES (Paige & Saunders 1975) for symmetric / hermitian, possibly indefinite, operators."""

import equinox as eqx
import jax
import jax.numpy as jnp

from .._solution import RESULTS, result_code
from .._tags import is_hermitian, is_self_adjoint
from .abstract import tag_names
from .krylov import (
    AbstractKrylovSolver,
    KrylovState,
    failure_code,
    inner,
    map_columns,
    matvec,
    precondition,
    real_dtype,
    report,
    stats,
    true_residual_loop,
)


class MINRES(AbstractKrylovSolver):
    """Preconditioned MINRES for self-adjoint operators: real ones tagged symmetric,
    hermitian or semidefinite; complex ones tagged hermitian or semidefinite (a complex
    operator tagged only `symmetric_tag` is complex-symmetric, not self-adjoint: use
    GMRES or BiCGStab). Indefinite operators are fine. One matrix-vector product per
    iteration; the residual norm it monitors is the one MINRES minimizes, so it needs no
    extra product (but one per restart for the true residual).

    **Arguments:**

    - `rtol`, `atol`, `max_steps`, `preconditioner`, `verbose`: as for [`linsolve.CG`][]
      (`‖b − A x‖₂ <= atol + rtol ‖b‖₂`, checked on the true residual). The
      preconditioner must be positive definite. With one, MINRES minimizes the residual
      in the preconditioner's norm `‖v‖_M = √(vᴴ M v)` and is asked for the reduction
      the 2-norm needs.

    `sol.stats` has `num_steps` and `residual_norm` (of the true residual, 2-norm). A
    preconditioner that is not positive definite, or one that annihilates the residual
    (zero, or singular: its norm is blind to part of the residual, which then never
    decreases), gives `RESULTS.breakdown`.
    """

    def init(self, operator) -> KrylovState:
        tags = operator.tags
        cplx = jnp.issubdtype(operator.dtype, jnp.complexfloating)
        if not (is_hermitian(tags, cplx) if cplx else is_self_adjoint(tags)):
            raise ValueError(
                "MINRES needs a self-adjoint operator: tagged symmetric_tag, hermitian_tag "
                "or semidefinite if real, hermitian_tag or semidefinite if complex; got tags "
                f"{tag_names(tags)} (dtype {operator.dtype}). Use GMRES() or BiCGStab()."
            )
        return self._make_state(operator)

    def solve(self, state, vector, y0):
        return map_columns(lambda b, x0, _: _minres(state, b, x0, self.verbose, "MINRES"), vector, y0)

    def transpose_solve(self, state, vector, y0):
        label = "MINRES (transposed)"
        # Aᵀ = A (real symmetric) or conj(A) (hermitian): Aᵀ x = b  ⇔  A conj(x) = conj(b).
        if jnp.iscomplexobj(vector):
            y0 = None if y0 is None else jnp.conj(y0)
            x, result, out = map_columns(
                lambda b, x0, _: _minres(state, b, x0, self.verbose, label), jnp.conj(vector), y0
            )
            return jnp.conj(x), result, out
        return map_columns(lambda b, x0, _: _minres(state, b, x0, self.verbose, label), vector, y0)


@eqx.filter_jit  # eager calls (and repeated traces) reuse one compiled loop
def _minres(state: KrylovState, b, y0, verbose: bool, label: str):
    """MINRES on one right-hand side. Lanczos on `M A` in the `M⁻¹` inner product (M the
    preconditioner) with a QR factorization of the tridiagonal matrix updated by one
    Givens rotation per step; the rotations are real because the Lanczos coefficients of
    a self-adjoint operator are."""
    mv = matvec(state)
    pre = precondition(state)
    rdt = real_dtype(b.dtype)

    def cycle(k, x, r, r_norm, goal, code, _):
        y = pre(r)
        beta1_sq = jnp.real(inner(r, y)).astype(rdt)
        code = jnp.where(beta1_sq < 0, failure_code(beta1_sq), code)
        code = jnp.where(jnp.isfinite(beta1_sq), code, result_code(RESULTS.nonfinite_input))
        beta1 = jnp.sqrt(jnp.maximum(beta1_sq, 0))
        # MINRES minimizes the residual in the preconditioner's norm: ask it for the
        # reduction the true (2-norm) residual needs. (The same goal without one.)
        inner_goal = goal if state.preconditioner is None else beta1 * (goal / r_norm)
        report(verbose, label, k, beta1, inner_goal)
        out = _minres_cycle(state, mv, pre, k, x, r, y, beta1, inner_goal, code, verbose, label)
        return out["k"], out["x"], out["code"], out["phibar"] <= inner_goal, None

    x, result, k, r_norm, _, _ = true_residual_loop(
        state, b, y0, cycle, own_norm=state.preconditioner is not None, verbose=verbose, label=label
    )
    return x, result, stats(k, r_norm)


def _minres_cycle(state, mv, pre, k, x, r, y, beta1, goal, code, verbose, label):
    """The MINRES recurrence from `(x, r)` (`y = M r`, `beta1 = ‖r‖_M`) until its residual
    estimate meets `goal`, it fails or `max_steps`."""
    rdt = beta1.dtype
    zero = jnp.zeros((), rdt)
    one = jnp.ones((), rdt)
    zeros = jnp.zeros_like(x)
    k_start = k  # the first step of a cycle has no previous Lanczos vector
    carry = dict(
        k=k, x=x, r_prev=r, r_cur=r, y=y, beta=beta1, beta_old=zero,
        dbar=zero, eps=zero, phibar=beta1, cs=-one, sn=zero, w=zeros, w_old=zeros, code=code,
    )

    def cond(c):
        return (c["phibar"] > goal) & (c["k"] < state.max_steps) & (c["code"] == RESULTS.successful)

    def body(c):
        beta = c["beta"]
        v = c["y"] / jnp.where(beta == 0, 1, beta)
        y = mv(v)
        y = jnp.where(c["k"] > k_start, y - (beta / jnp.where(c["beta_old"] == 0, 1, c["beta_old"])) * c["r_prev"], y)
        alpha = jnp.real(inner(v, y)).astype(rdt)
        y = y - (alpha / beta) * c["r_cur"]
        r_prev, r_cur = c["r_cur"], y
        y = pre(r_cur)
        beta_sq = jnp.real(inner(r_cur, y)).astype(rdt)
        beta_new = jnp.sqrt(jnp.maximum(beta_sq, 0))
        # Apply the previous rotation to the new column of the tridiagonal matrix, then
        # make the rotation that annihilates its subdiagonal entry beta_new.
        delta = c["cs"] * c["dbar"] + c["sn"] * alpha
        gbar = c["sn"] * c["dbar"] - c["cs"] * alpha
        eps_new = c["sn"] * beta_new
        dbar = -c["cs"] * beta_new
        gamma = jnp.hypot(gbar, beta_new)
        singular = gamma == 0  # an exactly singular projected matrix: no MINRES step
        gamma_safe = jnp.where(singular, 1, gamma)
        cs = gbar / gamma_safe
        sn = beta_new / gamma_safe
        phi = cs * c["phibar"]
        phibar = sn * c["phibar"]
        w_new = (v - c["eps"] * c["w_old"] - delta * c["w"]) / gamma_safe
        x = c["x"] + phi * w_new
        code = jnp.where(
            beta_sq < 0,
            failure_code(beta_sq),
            jnp.where(
                jnp.isfinite(alpha) & jnp.isfinite(beta_sq),
                jnp.where(singular, result_code(RESULTS.breakdown), c["code"]),
                result_code(RESULTS.nonfinite_input),
            ),
        )
        report(verbose, label, c["k"] + 1, phibar, goal)
        return dict(
            k=c["k"] + 1, x=jnp.where(singular, c["x"], x), r_prev=r_prev, r_cur=r_cur, y=y,
            beta=beta_new, beta_old=beta, dbar=dbar, eps=eps_new, phibar=phibar, cs=cs, sn=sn,
            w=w_new, w_old=c["w"], code=code,
        )

    return jax.lax.while_loop(cond, body, carry)
