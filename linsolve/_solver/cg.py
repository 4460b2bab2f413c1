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
- **Using** (the derivative's solves). `adjoint_state` computes `AW` (`m` products, only
  when a derivative is taken) and the pseudo-inverse of the `m × m` matrix `WᴴAW`, formed
  explicitly (the Lanczos vectors lose orthogonality in floating point, so no formula is
  trusted). The tangent and transposed solves start from the Galerkin projection onto `W`
  — added to `adjoint_y0` when given — and run deflated CG (Saad, Yeung, Erhel &
  Guyomarc'h, 2000): every search direction is kept `A`-conjugate to `W`, which removes the
  recycled eigenvalues from the spectrum CG sees.

Memory: the state holds `W` and `AW`, `2m` vectors; the forward solve works in a window of
`4m`. Work: about `8m` flops per entry and iteration for the window restarts in the forward
solve and `4m` for the deflation in the derivative's solves — worth it when a
matrix-vector product costs more than that.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._solution import RESULTS, result_code
from .._tags import negative_semidefinite_tag, positive_semidefinite_tag
from .abstract import tag_names
from .krylov import (
    AbstractKrylovSolver,
    KrylovState,
    failure_code,
    final_result,
    inner,
    map_columns,
    matvec,
    precondition,
    real_dtype,
    report,
    start,
    stats,
    target,
)


class Recycled(eqx.Module):
    """A recycled subspace: basis `W` (n, m), its image `AW`, and `(WᴴAW)⁺`."""

    basis: Array
    image: Array
    gram_pinv: Array


def _hermitian_pinv(matrix: Array) -> Array:
    """Pseudo-inverse of a hermitian positive semidefinite matrix; tiny eigenvalues (zero
    columns of a short solve's basis, or rounding) are dropped."""
    matrix = 0.5 * (matrix + jnp.conj(jnp.swapaxes(matrix, -1, -2)))
    lam, q = jnp.linalg.eigh(matrix)
    eps = jnp.finfo(lam.dtype).eps
    keep = lam > matrix.shape[-1] * eps * jnp.max(lam, axis=-1, keepdims=True)
    inv = jnp.where(keep, 1 / jnp.where(keep, lam, 1), 0)
    return (q * inv.astype(q.dtype)[..., None, :]) @ jnp.conj(jnp.swapaxes(q, -1, -2))


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
      during the forward solve. `AW` costs `m` products, made only when differentiating.

    `sol.stats` has `num_steps` and `residual_norm` (per column for a `(n, k)` right-hand
    side) and, with `recycle`, `recycle_basis`: the `(n, m)` Ritz vectors `W`. A
    non-positive curvature `pᴴAp <= 0` (the operator is not definite) gives
    `RESULTS.breakdown`.
    """

    recycle: int = eqx.field(static=True, default=0)

    def init(self, operator) -> KrylovState:
        tags = operator.tags
        negative = negative_semidefinite_tag in tags
        if not (negative or positive_semidefinite_tag in tags):
            raise ValueError(
                "CG needs an operator tagged positive_semidefinite_tag or "
                f"negative_semidefinite_tag; got tags {tag_names(tags)}. Use MINRES() for "
                "symmetric indefinite operators, GMRES() or BiCGStab() otherwise."
            )
        if self.recycle < 0:
            raise ValueError(f"CG: `recycle` must be >= 0, got {self.recycle}.")
        return self._make_state(operator, negate=negative)

    def solve(self, state: KrylovState, vector, y0):
        collect = self.recycle > 0 and state.recycled is None
        return self._solve(state, vector, y0, collect, "CG")

    def transpose_solve(self, state: KrylovState, vector, y0):
        # A is hermitian: Aᵀ = conj(A), so Aᵀ x = b  ⇔  A conj(x) = conj(b). The
        # preconditioner (hermitian too) and a recycled subspace of A apply unchanged.
        if jnp.iscomplexobj(vector):
            y0 = None if y0 is None else jnp.conj(y0)
            x, result, out = self._solve(state, jnp.conj(vector), y0, False, "CG (transposed)")
            return jnp.conj(x), result, out
        return self._solve(state, vector, y0, False, "CG (transposed)")

    def adjoint_state(self, state: KrylovState, stats: dict) -> KrylovState:
        if self.recycle == 0 or "recycle_basis" not in stats:
            return state
        basis = stats["recycle_basis"]
        mv = matvec(state)
        image = jax.vmap(mv)(basis) if basis.ndim == 3 else mv(basis)  # (k, n, m): per column
        # The Galerkin matrix WᴴAW, formed explicitly rather than from the Ritz values.
        gram = jnp.conj(jnp.swapaxes(basis, -1, -2)) @ image
        recycled = Recycled(basis, image, _hermitian_pinv(gram))
        return KrylovState(
            state.operator, state.preconditioner, state.rtol, state.atol, state.max_steps,
            state.negate, recycled,
        )

    def _solve(self, state, vector, y0, collect, label):
        if state.negate:
            vector = -vector
        recycled = state.recycled
        batched = recycled is not None and recycled.basis.ndim == 3
        m = self.recycle if collect else 0

        def single(b, x0, rec):
            return _cg(state, b, x0, rec, m, self.verbose, label)

        return map_columns(single, vector, y0, recycled, extra_batched=batched)


def _window_restart(window, tri, m):
    """eigCG restart of a full window (rows `v_0 … v_{s−1}`, `tri = VᴴAV` padded to
    `(s+1, s+1)`, its last row holding the coupling to the next Lanczos vector): keep the
    span of the `m` smallest Ritz vectors of `tri[:s, :s]` and of `tri[:s−1, :s−1]`."""
    s = window.shape[0]
    coupling = tri[s, s - 1]
    t = tri[:s, :s]
    _, y = jnp.linalg.eigh(t)
    _, y_lead = jnp.linalg.eigh(t[: s - 1, : s - 1])
    y_lead = jnp.concatenate([y_lead[:, :m], jnp.zeros((1, m), t.dtype)], axis=0)
    q, _ = jnp.linalg.qr(jnp.concatenate([y[:, :m], y_lead], axis=1))  # (s, 2m), orthonormal
    keep = 2 * m
    new_window = jnp.zeros_like(window).at[:keep].set((q.T @ window).astype(window.dtype))
    new_tri = jnp.zeros_like(tri).at[:keep, :keep].set(q.T @ t @ q)
    # Lanczos relation A V = V T + coupling · v_next e_lastᵀ: the kept vectors couple to
    # the next Lanczos vector through the last row of q.
    arrow = coupling * q[s - 1]
    new_tri = new_tri.at[keep, :keep].set(arrow).at[:keep, keep].set(arrow)
    return new_window, new_tri


def _ritz_basis(window, tri, count, m):
    """The `m` Ritz vectors of the smallest Ritz values from the first `count` rows of the
    window, as rows; zero rows where fewer than `m` exist."""
    s = window.shape[0]
    valid = jnp.arange(s, dtype=jnp.result_type(count)) < count  # strict promotion: one int type
    t = jnp.where(valid[:, None] & valid[None, :], tri[:s, :s], 0)
    # Unused slots get a diagonal above every eigenvalue of the used block (Gershgorin).
    big = 2 * jnp.max(jnp.sum(jnp.abs(t), axis=1)) + 1
    t = t + jnp.diag(jnp.where(valid, 0, big))
    _, y = jnp.linalg.eigh(t)
    y = jnp.where(valid[:, None], y[:, :m], 0)
    return (y.T @ window).astype(window.dtype)


@eqx.filter_jit  # eager calls (and repeated traces) reuse one compiled loop
def _cg(state: KrylovState, b, y0, recycled: Recycled | None, m: int, verbose: bool, label: str):
    """CG on one right-hand side; deflated against `recycled` if given; collecting `m`
    Ritz vectors if `m > 0`."""
    mv = matvec(state)
    pre = precondition(state)
    rdt = real_dtype(b.dtype)
    x, r, b_norm = start(state, b, y0)
    goal = target(state, b_norm)

    if recycled is None:
        deflate = lambda z: z  # noqa: E731
    else:
        w, aw, e_pinv = recycled.basis, recycled.image, recycled.gram_pinv

        def deflate(z):  # z − W (WᴴAW)⁻¹ (AW)ᴴ z: A-conjugate to W (A is hermitian)
            return z - w @ (e_pinv @ (jnp.conj(aw.T) @ z))

        # Galerkin projection onto W of the residual left by the initial guess.
        h = e_pinv @ (jnp.conj(w.T) @ r)
        x = x + w @ h
        r = r - aw @ h

    z = pre(r)
    rz = jnp.real(inner(r, z)).astype(rdt)
    p = deflate(z)
    # The loops carry the squared residual norm: no square root per iteration.
    res2 = jnp.real(inner(r, r)).astype(rdt)
    goal2 = goal * goal
    code = jnp.where(rz < 0, result_code(RESULTS.breakdown), result_code(RESULTS.successful))
    report(verbose, label, 0, jnp.sqrt(res2), goal)

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
        p = deflate(z_new) + beta * p
        code = jnp.where(bad, failure_code(pap), code)
        if state.preconditioner is None:
            res2 = rz_new  # rᴴz is ‖r‖²: no second reduction
        else:
            res2 = jnp.real(inner(r, r)).astype(rdt)
            bad_pre = rz_new < 0  # the preconditioner is not positive definite
            code = jnp.where(bad_pre & ~bad, result_code(RESULTS.breakdown), code)
        report(verbose, label, k + 1, jnp.sqrt(res2), goal)
        return x, r, z_new, p, rz_new, res2, code, alpha, beta

    if m == 0:

        def body(c):
            k, x, r, p, rz, _, code = c
            x, r, _, p, rz, res2, code, _, _ = cg_step(k, x, r, p, rz, code)
            return k + 1, x, r, p, rz, res2, code

        carry = (jnp.asarray(0, jnp.int32), x, r, p, rz, res2, code)
        k, x, _, _, _, res2, code = jax.lax.while_loop(lambda c: running(c[0], c[5], c[6]), body, carry)
        return x, final_result(state, code, res2 <= goal2), stats(k, jnp.sqrt(res2))

    # Collecting: an inner loop fills the window, the outer loop restarts it. (A restart
    # inside a single loop would sit in a `lax.cond`, which copies the window every step.)
    s = 4 * m
    n = b.shape[0]
    window = jnp.zeros((s, n), b.dtype)  # one Lanczos vector per row: contiguous writes
    tri = jnp.zeros((s + 1, s + 1), rdt)  # real: the Lanczos coefficients are

    def inner_body(c):
        k, x, r, z, p, rz, _, code, window, tri, count, ratio = c
        v = z / jnp.sqrt(jnp.where(rz > 0, rz, 1))
        x, r, z_new, p, rz_new, res2, code, alpha, beta = cg_step(k, x, r, p, rz, code)
        ok = alpha > 0
        window = jax.lax.dynamic_update_index_in_dim(window, v, count, 0)
        diag = jnp.where(ok, 1 / jnp.where(ok, alpha, 1) + ratio, 0)
        off = jnp.where(ok, -jnp.sqrt(beta) / jnp.where(ok, alpha, 1), 0)
        tri = tri.at[count, count].set(diag).at[count + 1, count].set(off).at[count, count + 1].set(off)
        ratio = jnp.where(ok, beta / jnp.where(ok, alpha, 1), 0)
        return k + 1, x, r, z_new, p, rz_new, res2, code, window, tri, count + 1, ratio

    def outer_body(c):
        c = jax.lax.while_loop(lambda c: running(c[0], c[6], c[7]) & (c[10] < s), inner_body, c)
        window, tri, count = c[8], c[9], c[10]
        window, tri, count = jax.lax.cond(
            count == s,
            lambda w, t: (*_window_restart(w, t, m), jnp.asarray(2 * m, jnp.int32)),
            lambda w, t: (w, t, count),
            window,
            tri,
        )
        return c[:8] + (window, tri, count, c[11])

    carry = (jnp.asarray(0, jnp.int32), x, r, z, p, rz, res2, code, window, tri,
             jnp.asarray(0, jnp.int32), jnp.zeros((), rdt))
    carry = jax.lax.while_loop(lambda c: running(c[0], c[6], c[7]), outer_body, carry)
    k, x, _, _, _, _, res2, code, window, tri, count, _ = carry
    basis = _ritz_basis(window, tri, count, m).T
    basis = jnp.where(jnp.all(jnp.isfinite(basis)), basis, 0)  # e.g. after a breakdown
    return x, final_result(state, code, res2 <= goal2), stats(k, jnp.sqrt(res2), recycle_basis=basis)
