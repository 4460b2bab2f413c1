"""Conjugate gradients for positive (or negative) definite operators, with optional Krylov
recycling of the forward solve into the solves of the derivative.

Recycling (`CG(recycle=m)`), in two halves:

- **Collecting** (the forward solve). The CG coefficients `α_k, β_k` are the Lanczos
  coefficients of the (preconditioned) operator: with `v_k = z_k / √(r_kᴴ z_k)` the
  projected matrix `T = VᴴAV` is tridiagonal with `T_kk = 1/α_k + β_{k−1}/α_{k−1}` and
  `T_{k+1,k} = −√β_k / α_k`, known without any extra product. The `v_k` are written into a
  window of `4m` vectors; when it is full, the window restarts from the `m` Ritz vectors of
  the smallest Ritz values of `T` together with the `m` of its leading `(4m−1)`-block
  (Stathopoulos & Orginos' eigCG, 2010: the second set keeps the information a plain thick
  restart loses, and the Ritz vectors come out as good as from the whole Krylov space),
  and `T` restarts as the projection onto them plus the one coupling row to the next
  Lanczos vector. At the end the `m` Ritz vectors of the smallest Ritz values are
  `stats["recycle_basis"]` (`W`, shape `(n, m)`) — approximate eigenvectors of `MA` for the
  smallest eigenvalues, the modes that slow CG down.
  The window holds each `v_k` with its image `A v_k`, made without products from the
  `A p_k` that CG computes (`_cg_cycle`), so `AW` comes with `W`.
- **Using** (the derivative's solves). `adjoint_state` forms the pseudo-inverse of the
  `m × m` matrix `WᴴAW` explicitly (the Lanczos vectors lose orthogonality in floating point, so no formula is
  trusted). The tangent and transposed solves start from the Galerkin projection onto `W`
  — added to `adjoint_y0` when given — and run deflated CG (Saad, Yeung, Erhel &
  Guyomarc'h, 2000): every search direction is kept `A`-conjugate to `W`, which removes the
  recycled eigenvalues from the spectrum CG sees.

Across solves (`linear_solve(..., recycle=space)`, see `linsolve/_recycle.py`): the forward
solve orthonormalises the given space to `Q`, takes `AQ` from the space's stored image
when one product confirms it (else `m` products), starts from the Galerkin projection onto
`Q` and runs deflated while collecting in the window; at the end a Rayleigh–Ritz step over
`Q` and the window's Ritz vectors (their images from the window: no products) gives the
refreshed space `stats["recycle"]` and its image, which the derivative's solves and the
next solve then use.

Memory: the state holds `W` and `AW`, `2m` vectors; the forward solve works in a window of
`4m` vectors and their images. Work: about `16m` flops per entry and iteration for the
window restarts in the forward solve and `4m` for the deflation in the derivative's solves — worth it when a
matrix-vector product costs more than that.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._recycle import (
    Recycled,
    RecycleSpace,
    adjoint_recycled,
    attach,
    refresh,
    ritz_rows,
    stable,
    window_restart,
)
from .._solution import RESULTS, result_code
from .abstract import hermitian_transpose_solve, is_negative_definite
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


class CG(AbstractKrylovSolver):
    """Preconditioned conjugate gradients for operators tagged `positive_semidefinite_tag`
    (or `negative_semidefinite_tag`: CG then runs on `−A`), real symmetric or complex
    hermitian. One matrix-vector product per iteration.

    **Arguments:**

    - `rtol`, `atol`, `max_steps`, `preconditioner`, `verbose`: as for every Krylov
      solver: stop when `‖b − A x‖₂ <= atol + rtol ‖b‖₂`; `rtol=None` is `eps**0.75`,
      `atol=None` is 0, `max_steps=None` is `10 n`. The preconditioner approximates `A⁻¹`
      and must be definite (hermitian) with the operator's sign.
    - `recycle`: keep `m = recycle` Ritz vectors of the forward solve to start and deflate
      the solves of the derivative (reverse mode's transposed solve, forward mode's tangent
      solve). Memory: `W` and `AW` in the state (`2m` vectors) and a window of `4m` vectors
      and their images during the forward solve; `AW` comes from the window (no
      products). With `linear_solve(..., recycle=space)` ([`linsolve.RecycleSpace`][] of
      `m` vectors, e.g. the previous solve's `stats["recycle"]`) the forward solve is
      deflated by the space too and refreshes it: 1 product per forward solve when the
      operator has not moved (the space's stored image is checked), `m + 1` when it has.

    `sol.stats` has `num_steps` and `residual_norm` (per column for a `(n, k)` right-hand
    side) and, with `recycle`, `recycle` (the [`linsolve.RecycleSpace`][] to carry to the
    next solve) and `recycle_basis`, its `(n, m)` basis `W`. A
    non-positive curvature `pᴴAp <= 0` (the operator is not definite) gives
    `RESULTS.breakdown`.
    """

    rtol: float | None = eqx.field(static=True, default=None)
    atol: float | None = eqx.field(static=True, default=None)
    max_steps: int | None = eqx.field(static=True, default=None)
    preconditioner: Any = None
    verbose: bool = eqx.field(static=True, default=False)
    recycle: int = eqx.field(static=True, default=0)

    def __check_init__(self):
        if self.recycle < 0:
            raise ValueError(f"CG: `recycle` must be >= 0, got {self.recycle}.")

    def init(self, operator) -> KrylovState:
        negative = is_negative_definite(
            operator,
            "CG",
            "Use MINRES() for symmetric indefinite operators, GMRES() or BiCGStab() otherwise.",
        )
        return self._make_state(operator, negate=negative)

    def solve(self, state: KrylovState, vector, y0):
        # A primal solve collects (and refreshes a given space); the derivative's solves,
        # whose state comes from `adjoint_state`, only use theirs.
        collect = self.recycle > 0 and (state.recycled is None or state.recycled.collect)
        return self._solve(state, vector, y0, collect, "CG")

    def recycle_state(self, state: KrylovState, space: RecycleSpace, vector_shape) -> KrylovState:
        return attach(self, state, space, vector_shape, matvec(state), definite=True)

    def transpose_solve(self, state: KrylovState, vector, y0):
        # A is hermitian: Aᵀ = conj(A), so Aᵀ x = b  ⇔  A conj(x) = conj(b). The
        # preconditioner (hermitian too) and a recycled subspace of A apply unchanged.
        return hermitian_transpose_solve(
            lambda v, x0: self._solve(state, v, x0, False, "CG (transposed)"), vector, y0
        )

    def adjoint_state(self, state: KrylovState, stats: dict) -> KrylovState:
        if self.recycle == 0 or "recycle" not in stats:
            return state
        return adjoint_recycled(state, stats, matvec(state), definite=True)

    def _solve(self, state, vector, y0, collect, label):
        if state.negate:
            vector = -vector
        recycled = state.recycled
        batched = recycled is not None and recycled.basis.ndim == 3
        m = self.recycle if collect else 0

        def single(b, x0, rec):
            return _cg(state, b, x0, rec, m, self.verbose, label)

        return map_columns(single, vector, y0, recycled, extra_batched=batched)


@eqx.filter_jit  # eager calls (and repeated traces) reuse one compiled loop
def _cg(state: KrylovState, b, y0, recycled: Recycled | None, m: int, verbose: bool, label: str):
    """CG on one right-hand side; deflated against `recycled` if given; collecting `m`
    Ritz vectors if `m > 0`. Runs in cycles from the true residual (`true_residual_loop`):
    a restart only when the recursive residual has drifted from the true one."""
    mv = matvec(state)
    pre = precondition(state)
    rdt = real_dtype(b.dtype)

    if recycled is not None:
        w, aw, e_pinv = recycled.basis, recycled.image, recycled.gram_pinv

    def deflation(z):  # g = (WᴴAW)⁻¹ (AW)ᴴ z: z − W g is A-conjugate to W (A hermitian)
        if recycled is None:
            return jnp.zeros((0,), z.dtype)
        return e_pinv @ (jnp.conj(aw.T) @ z)

    keep = jnp.asarray(False)
    if recycled is not None and m > 0:
        # A given space whose Ritz values have stopped moving is kept: no collection.
        assert recycled.values is not None  # m > 0: a collecting space, made with its values
        keep, kept_values = stable(recycled, recycled.values, pre, definite=True)

    context = _Context(state, mv, pre, deflation, recycled, keep, m, verbose, label)

    def cycle(k, x, r, r_norm, goal, code, best):
        if recycled is not None:
            # Galerkin projection onto W of the residual left by the current iterate.
            h = e_pinv @ (jnp.conj(w.T) @ r)
            x = x + w @ h
            r = r - aw @ h
        z = pre(r)
        rz = jnp.real(inner(r, z)).astype(rdt)
        p = z if recycled is None else z - w @ deflation(z)
        # The loops carry the squared residual norm: no square root per iteration.
        res2 = jnp.real(inner(r, r)).astype(rdt)
        goal2 = goal * goal
        code = jnp.where(rz < 0, result_code(RESULTS.breakdown), code)
        report(verbose, label, k, jnp.sqrt(res2), goal)
        x, code, res2, k, best = _cg_cycle(context, k, x, r, z, p, rz, res2, goal, code, best)
        return k, x, code, res2 <= goal2, best

    n = b.shape[0]
    # The Ritz vectors of the longest cycle and their images, two (n, m) arrays, with the
    # cycle's count of steps.
    zero = jnp.zeros((n, m), b.dtype)
    best = None if m == 0 else ((zero, zero), jnp.asarray(-1, jnp.int32))
    x, result, k, r_norm, _, best = true_residual_loop(
        state, b, y0, cycle, best, verbose=verbose, label=label
    )
    if m == 0:
        return x, result, stats(k, r_norm)
    basis, image = best[0]
    # Not finite e.g. after a breakdown: the space is then dropped.
    finite = jnp.all(jnp.isfinite(basis)) & jnp.all(jnp.isfinite(image))
    basis, image = jnp.where(finite, basis, 0), jnp.where(finite, image, 0)
    values = None  # a fresh space: Ritz values unknown (RecycleSpace's default)
    if recycled is not None:
        # Cross-step recycling. A converged space is kept as it is (its image known);
        # otherwise Rayleigh–Ritz over the old space and the new Ritz vectors (their
        # images came with them: no products).
        def refreshed():
            return refresh(w, aw, basis, image, pre, m, definite=True)

        basis, image, values = jax.lax.cond(keep, lambda: (w, aw, kept_values), refreshed)
    extra = dict(
        recycle_basis=basis, recycle=RecycleSpace(basis, values, image), recycle_image=image
    )
    return x, result, stats(k, r_norm, **extra)


class _Context(NamedTuple):
    """What the CG cycles of one solve share: the operator's state and maps, the deflation
    space (`recycled`, with `keep`: whether it is kept as given), the collection size `m`
    and the report settings."""

    state: KrylovState
    mv: Callable
    pre: Callable
    deflation: Callable
    recycled: Recycled | None
    keep: Array
    m: int
    verbose: bool
    label: str


def _cg_cycle(context: _Context, k, x, r, z, p, rz, res2, goal, code, best):
    """The CG recurrence from `(x, r)` until its residual meets `goal`, it fails, or
    `max_steps`; with `m > 0` collecting Ritz vectors and their images, kept in `best` if
    this cycle is the longest so far. Returns `(x, code, res2, k, best)`.

    The images come without products: the Lanczos vector `v_k = z_k / √(r_kᴴz_k)` and the
    search direction satisfy `z_k = p_k − β_{k−1} p_{k−1} + W g_k` (`g_k` the deflation
    coefficients of `z_k`), so `A v_k` follows from the products `A p_k`, `A p_{k−1}` that
    CG makes anyway and from `AW`."""
    state, mv, pre, deflation, recycled, keep, m, verbose, label = context
    rdt = real_dtype(x.dtype)
    goal2 = goal * goal
    k0 = k

    def running(k, res2, code):
        return (res2 > goal2) & (k < state.max_steps) & (code == RESULTS.successful)

    def cg_step(k, x, r, p, rz, code):
        """One CG iteration; also returns alpha and beta (the Lanczos coefficients)."""
        ap = mv(p)
        pap = jnp.real(inner(p, ap)).astype(rdt)
        bad = ~(pap > 0)  # not definite, or NaN
        # On failure alpha = 0 leaves x and r as they were (no extra pass over them).
        alpha = jnp.where(bad, 0, rz / jnp.where(bad, 1, pap))
        x = x + alpha * p
        r = r - alpha * ap
        z_new = pre(r)
        rz_new = jnp.real(inner(r, z_new)).astype(rdt)
        beta = rz_new / jnp.where(rz == 0, 1, rz)
        g = deflation(z_new)
        p = (z_new if recycled is None else z_new - recycled.basis @ g) + beta * p
        code = jnp.where(bad, failure_code(pap), code)
        if state.preconditioner is None:
            res2 = rz_new  # rᴴz is ‖r‖²: no second reduction
        else:
            res2 = jnp.real(inner(r, r)).astype(rdt)
            bad_pre = rz_new < 0  # the preconditioner is not positive definite
            code = jnp.where(bad_pre & ~bad, result_code(RESULTS.breakdown), code)
        report(verbose, label, k + 1, jnp.sqrt(res2), goal)
        return x, r, z_new, p, rz_new, res2, code, alpha, beta, ap, g

    def body(c):
        k, x, r, p, rz, _, code = c
        x, r, _, p, rz, res2, code, *_ = cg_step(k, x, r, p, rz, code)
        return k + 1, x, r, p, rz, res2, code

    def plain_loop(carry):
        return jax.lax.while_loop(lambda c: running(c[0], c[5], c[6]), body, carry)

    if m == 0:
        k, x, _, _, _, res2, code = plain_loop((k, x, r, p, rz, res2, code))
        return x, code, res2, k, best

    # Collecting: an inner loop fills the window, the outer loop restarts it. (A restart
    # inside a single loop would sit in a `lax.cond`, which copies the window every step.)
    s = 4 * m
    n = x.shape[0]
    # One Lanczos vector per row, and its image in a second array (not one `(s, 2n)`
    # array: concatenating along a sharded `n` axis would gather it in the loop).
    window = (jnp.zeros((s, n), x.dtype), jnp.zeros((s, n), x.dtype))
    tri = jnp.zeros((s + 1, s + 1), rdt)  # real: the Lanczos coefficients are

    def inner_body(c):
        k, x, r, z, p, rz, _, code, window, tri, count, ratio, ap_prev, beta_prev, g = c
        scale = 1 / jnp.sqrt(jnp.where(rz > 0, rz, 1))
        x, r, z_new, p, rz_new, res2, code, alpha, beta, ap, g_new = cg_step(k, x, r, p, rz, code)
        # A z_k from z_k = p_k − β_{k−1} p_{k−1} + W g_k (no product).
        az = ap - beta_prev * ap_prev
        if recycled is not None:
            az = az + recycled.image @ g
        ok = alpha > 0
        window = tuple(
            jax.lax.dynamic_update_index_in_dim(w, row, count, 0)
            for w, row in zip(window, (z * scale, az * scale))
        )
        diag = jnp.where(ok, 1 / jnp.where(ok, alpha, 1) + ratio, 0)
        off = jnp.where(ok, -jnp.sqrt(beta) / jnp.where(ok, alpha, 1), 0)
        tri = (
            tri.at[count, count]
            .set(diag)
            .at[count + 1, count]
            .set(off)
            .at[count, count + 1]
            .set(off)
        )
        ratio = jnp.where(ok, beta / jnp.where(ok, alpha, 1), 0)
        return (
            k + 1,
            x,
            r,
            z_new,
            p,
            rz_new,
            res2,
            code,
            window,
            tri,
            count + 1,
            ratio,
            ap,
            beta,
            g_new,
        )

    def outer_body(c):
        c = jax.lax.while_loop(lambda c: running(c[0], c[6], c[7]) & (c[10] < s), inner_body, c)
        window, tri, count = c[8], c[9], c[10]
        window, tri, count = jax.lax.cond(
            count == s,
            lambda w, t: (*window_restart(w, t, m), jnp.asarray(2 * m, jnp.int32)),
            lambda w, t: (w, t, count),
            window,
            tri,
        )
        return c[:8] + (window, tri, count) + c[11:]

    carry = (
        k,
        x,
        r,
        z,
        p,
        rz,
        res2,
        code,
        window,
        tri,
        jnp.asarray(0, jnp.int32),
        jnp.zeros((), rdt),
        jnp.zeros_like(x),  # A p_{k−1}
        jnp.zeros((), rdt),  # β_{k−1}
        deflation(z),  # g_k
    )
    # A given space that is already converged (`keep`) is used as it is: no window.
    carry = jax.lax.while_loop(lambda c: running(c[0], c[6], c[7]) & ~keep, outer_body, carry)
    k, x, r, _, p, rz, res2, code, window, tri, count, *_ = carry
    k, x, _, _, _, res2, code = plain_loop((k, x, r, p, rz, res2, code))
    rows = ritz_rows(window, tri, count, m)
    longer = k - k0 > best[1]
    kept = tuple(jnp.where(longer, row.T, old) for row, old in zip(rows, best[0]))
    best = (kept, jnp.where(longer, k - k0, best[1]))
    return x, code, res2, k, best
