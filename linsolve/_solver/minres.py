"""MINRES (Paige & Saunders 1975) for symmetric / hermitian, possibly indefinite, operators,
with optional Krylov recycling across solves (`MINRES(recycle=m)` and
`linear_solve(..., recycle=space)`; see `linsolve/_recycle.py`).

Deflated MINRES: with `Q` the orthonormalised space, `E = QᴴAQ` and `P = I − AQ E⁺ Qᴴ`,
MINRES runs on `P A x̃ = P b` — `PA` is hermitian, singular on `span Q`, the system
consistent — from `x̃₀ = y0`, and `x = x̃ + Q E⁺ (Qᴴb − (AQ)ᴴx̃)`. Then `b − A x = P b − PA x̃`
exactly, so MINRES's monitored residual is still that of `x`. The Lanczos vectors of the
run go into an eigCG window (Ritz values smallest in magnitude), and the refreshed space is
a harmonic Rayleigh–Ritz step over `Q` and the window's Ritz vectors.
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from .._recycle import (
    Recycled,
    RecycleSpace,
    adjoint_recycled,
    attach,
    refresh,
    ritz_rows,
    window_restart,
)
from .._solution import RESULTS, result_code
from .._tags import is_hermitian, is_self_adjoint
from .abstract import hermitian_transpose_solve, tag_names
from .krylov import (
    AbstractKrylovSolver,
    KrylovState,
    failure_code,
    inner,
    map_columns,
    matvec,
    norm,
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

    - `recycle`: the size `m` of the [`linsolve.RecycleSpace`][] that
      `linear_solve(..., recycle=space)` takes, deflates with and refreshes (harmonic Ritz
      vectors: the eigenvalues nearest zero). The derivative's solves use the refreshed
      space. Work: `2m` products per solve, a window of `4m` vectors. With `recycle=m` and
      no space, the solve starts one (`stats["recycle"]`).

    `sol.stats` has `num_steps` and `residual_norm` (of the true residual, 2-norm; and,
    with `recycle`, `recycle`, the space to carry to the next solve). A preconditioner
    that is not positive definite, or one that annihilates the residual (zero, or
    singular: its norm is blind to part of the residual, which then never decreases),
    gives `RESULTS.breakdown`.
    """

    rtol: float | None = eqx.field(static=True, default=None)
    atol: float | None = eqx.field(static=True, default=None)
    max_steps: int | None = eqx.field(static=True, default=None)
    preconditioner: Any = None
    verbose: bool = eqx.field(static=True, default=False)
    # The size of the space; 0: no recycling.
    recycle: int = eqx.field(static=True, default=0)

    def __check_init__(self):
        if self.recycle < 0:
            raise ValueError(f"MINRES: `recycle` must be >= 0, got {self.recycle}.")

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
        # A primal solve collects (and refreshes a given space); the derivative's solves,
        # whose state comes from `adjoint_state`, only use theirs.
        collect = self.recycle > 0 and (state.recycled is None or state.recycled.collect)
        return self._solve(state, vector, y0, collect, "MINRES")

    def transpose_solve(self, state, vector, y0):
        # Aᵀ = A (real symmetric) or conj(A) (hermitian): Aᵀ x = b  ⇔  A conj(x) = conj(b).
        # A recycled space of A serves unchanged.
        return hermitian_transpose_solve(
            lambda v, x0: self._solve(state, v, x0, False, "MINRES (transposed)"), vector, y0
        )

    def recycle_state(self, state, space: RecycleSpace, vector_shape):
        return attach(self, state, space, vector_shape, matvec(state), definite=False)

    def adjoint_state(self, state, stats: dict):
        if self.recycle == 0 or "recycle" not in stats:
            return state
        return adjoint_recycled(state, stats, matvec(state), definite=False)

    def _solve(self, state, vector, y0, collect, label):
        recycled = state.recycled
        batched = recycled is not None and recycled.basis.ndim == 3
        m = self.recycle if collect else 0

        def single(b, x0, rec):
            return _minres(state, b, x0, self.verbose, label, rec, m)

        return map_columns(single, vector, y0, recycled, extra_batched=batched)


@eqx.filter_jit  # eager calls (and repeated traces) reuse one compiled loop
def _minres(
    state: KrylovState,
    b,
    y0,
    verbose: bool,
    label: str,
    recycled: Recycled | None = None,
    m: int = 0,
):
    """MINRES on one right-hand side. Lanczos on `M A` in the `M⁻¹` inner product (M the
    preconditioner) with a QR factorization of the tridiagonal matrix updated by one
    Givens rotation per step; the rotations are real because the Lanczos coefficients of
    a self-adjoint operator are. Deflated by `recycled` if given (on `P A`, see the
    module's docstring); collecting `m` Ritz vectors if `m > 0`."""
    mv = matvec(state)
    pre = precondition(state)
    rdt = real_dtype(b.dtype)
    plain_mv = mv
    if recycled is not None:
        w, aw, e_pinv = recycled.basis, recycled.image, recycled.gram_pinv

        def project(v):  # P v = v − AQ E⁺ Qᴴ v
            return v - aw @ (e_pinv @ (jnp.conj(w.T) @ v))

        def mv(v):
            return project(plain_mv(v))

    def cycle(k, x, r, r_norm, goal, code, best):
        if recycled is not None:
            # MINRES on P A x̃ = P b from x̃ = x: its residual P b − PA x̃ = P r is the true
            # residual of the corrected iterate.
            r = project(r)
            r_norm = norm(r).astype(rdt)
        y = pre(r)
        beta1_sq = jnp.real(inner(r, y)).astype(rdt)
        code = jnp.where(beta1_sq < 0, failure_code(beta1_sq), code)
        code = jnp.where(jnp.isfinite(beta1_sq), code, result_code(RESULTS.nonfinite_input))
        beta1 = jnp.sqrt(jnp.maximum(beta1_sq, 0))
        # MINRES minimizes the residual in the preconditioner's norm: ask it for the
        # reduction the true (2-norm) residual needs. (The same goal without one.)
        if state.preconditioner is None:
            inner_goal = goal
        else:
            inner_goal = beta1 * (goal / jnp.where(r_norm == 0, 1, r_norm))
        report(verbose, label, k, beta1, inner_goal)
        k0 = k
        out = _minres_cycle(state, mv, pre, k, x, r, y, beta1, inner_goal, code, verbose, label, m)
        x = out["x"]
        if recycled is not None:
            x = x + w @ (e_pinv @ (jnp.conj(w.T) @ b - jnp.conj(aw.T) @ x))
        if m > 0:
            # Keep the Ritz vectors of the longest cycle (with its count of steps).
            basis = ritz_rows(out["window"], out["tri"], out["count"], m, by_magnitude=True).T
            longer = out["k"] - k0 > best[1]
            best = (jnp.where(longer, basis, best[0]), jnp.where(longer, out["k"] - k0, best[1]))
        return out["k"], x, out["code"], out["phibar"] <= inner_goal, best

    best = None if m == 0 else (jnp.zeros((b.shape[0], m), b.dtype), jnp.asarray(-1, jnp.int32))
    x, result, k, r_norm, _, best = true_residual_loop(
        state,
        b,
        y0,
        cycle,
        best,
        own_norm=state.preconditioner is not None,
        verbose=verbose,
        label=label,
    )
    extra = {}
    if m > 0:
        basis = jnp.where(jnp.all(jnp.isfinite(best[0])), best[0], 0)  # e.g. after a breakdown
        if recycled is None:
            extra = dict(recycle=RecycleSpace(basis))
        else:
            # Harmonic Rayleigh–Ritz over the old space and the new Ritz vectors (m
            # products for their image); the new image comes free for the derivative.
            basis, image, values = refresh(w, aw, basis, plain_mv(basis), pre, m, definite=False)
            extra = dict(recycle=RecycleSpace(basis, values, image), recycle_image=image)
    return x, result, stats(k, r_norm, **extra)


def _minres_cycle(state, mv, pre, k, x, r, y, beta1, goal, code, verbose, label, m):
    """The MINRES recurrence from `(x, r)` (`y = M r`, `beta1 = ‖r‖_M`) until its residual
    estimate meets `goal`, it fails or `max_steps`; with `m > 0` writing its Lanczos
    vectors into an eigCG window (`_collecting_loop`)."""
    rdt = beta1.dtype
    zero = jnp.zeros((), rdt)
    one = jnp.ones((), rdt)
    zeros = jnp.zeros_like(x)
    k_start = k  # the first step of a cycle has no previous Lanczos vector
    carry = dict(
        k=k,
        x=x,
        r_prev=r,
        r_cur=r,
        y=y,
        beta=beta1,
        beta_old=zero,
        dbar=zero,
        eps=zero,
        phibar=beta1,
        cs=-one,
        sn=zero,
        w=zeros,
        w_old=zeros,
        code=code,
        alpha=zero,  # the last Lanczos diagonal entry (for recycling)
    )

    def cond(c):
        return (c["phibar"] > goal) & (c["k"] < state.max_steps) & (c["code"] == RESULTS.successful)

    def body(c):
        beta = c["beta"]
        v = c["y"] / jnp.where(beta == 0, 1, beta)
        y = mv(v)
        y = jnp.where(
            c["k"] > k_start,
            y - (beta / jnp.where(c["beta_old"] == 0, 1, c["beta_old"])) * c["r_prev"],
            y,
        )
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
            k=c["k"] + 1,
            x=jnp.where(singular, c["x"], x),
            r_prev=r_prev,
            r_cur=r_cur,
            y=y,
            beta=beta_new,
            beta_old=beta,
            dbar=dbar,
            eps=eps_new,
            phibar=phibar,
            cs=cs,
            sn=sn,
            w=w_new,
            w_old=c["w"],
            code=code,
            alpha=alpha,
        )

    if m == 0:
        return jax.lax.while_loop(cond, body, carry)
    return _collecting_loop(cond, body, carry, x, m, rdt)


def _collecting_loop(cond, body, carry, b, m, rdt):
    """The MINRES loop, writing each Lanczos vector `v_k` (and the tridiagonal `T = VᴴAV`:
    `alpha` on the diagonal, `beta` below it) into an eigCG window of `4m` vectors, restarted
    when full (an inner loop fills it, the outer loop restarts it: a restart inside one
    loop would sit in a `lax.cond` that copies the window every step)."""
    s = 4 * m
    carry = dict(
        carry,
        window=jnp.zeros((s, b.shape[0]), b.dtype),
        tri=jnp.zeros((s + 1, s + 1), rdt),
        count=jnp.asarray(0, jnp.int32),
    )

    def inner_body(c):
        beta = c["beta"]
        v = c["y"] / jnp.where(beta == 0, 1, beta)  # the Lanczos vector `body` uses
        new = body({key: val for key, val in c.items() if key not in ("window", "tri", "count")})
        count = c["count"]
        window = jax.lax.dynamic_update_index_in_dim(c["window"], v, count, 0)
        tri = c["tri"].at[count, count].set(new["alpha"])
        tri = tri.at[count + 1, count].set(new["beta"]).at[count, count + 1].set(new["beta"])
        return dict(new, window=window, tri=tri, count=count + 1)

    def outer_body(c):
        c = jax.lax.while_loop(lambda c: cond(c) & (c["count"] < s), inner_body, c)
        window, tri, count = jax.lax.cond(
            c["count"] == s,
            lambda w, t: (
                *window_restart(w, t, m, by_magnitude=True),
                jnp.asarray(2 * m, jnp.int32),
            ),
            lambda w, t: (w, t, c["count"]),
            c["window"],
            c["tri"],
        )
        return dict(c, window=window, tri=tri, count=count)

    return jax.lax.while_loop(cond, outer_body, carry)
