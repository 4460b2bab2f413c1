"""Conjugate gradients for positive (or negative) definite operators, with optional Krylov
recycling of the forward solve into the solves of the derivative.

Recycling (`CG(recycle=m)`): while the forward solve runs, its search directions (already
multiplied by `A`: no extra matrix-vector products) are collected in a pool of `2m`
vectors; whenever the pool is full, a Rayleigh–Ritz step keeps the `m` Ritz vectors of the
smallest Ritz values — the slow modes of CG — and the pool refills with new directions. At
the end the Ritz vectors `W` and `AW` are returned in `stats["recycle_basis"]` and
`stats["recycle_image"]`, and `adjoint_state` attaches them (with the pseudo-inverse of
the `m × m` matrix `WᴴAW`) to the state of the derivative's solves. Those start from the
Galerkin projection onto `W`, added to `adjoint_y0` when given, and run deflated CG
(Saad, Yeung, Erhel, Guyomarc'h 2000): every search direction is kept `A`-conjugate to
`W`, which removes the recycled eigenvalues from the effective spectrum.
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
    norm,
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
    return (q * inv[..., None, :]) @ jnp.conj(jnp.swapaxes(q, -1, -2))


def _ritz(pool: Array, image: Array, count: Array, m: int) -> tuple[Array, Array]:
    """Rayleigh–Ritz on the first `count` columns of `pool` (with `image = A pool`): the
    `m` Ritz vectors of the smallest Ritz values and their images, `A`-orthonormal.

    The pool is orthonormalised in the `A` inner product by an eigendecomposition of its
    Gram matrix `PᴴAP` (dropping directions that are dependent to rounding), then the
    Ritz values are the reciprocals of the eigenvalues of `PᴴP` in that basis."""
    s = pool.shape[1]
    valid = jnp.arange(s) < count
    both = valid[:, None] & valid[None, :]
    gram_a = jnp.conj(pool.T) @ image
    gram_a = jnp.where(both, 0.5 * (gram_a + jnp.conj(gram_a.T)), 0)
    gram = jnp.where(both, jnp.conj(pool.T) @ pool, 0)
    lam, q = jnp.linalg.eigh(gram_a)
    eps = jnp.finfo(lam.dtype).eps
    keep = lam > s * eps * jnp.max(lam)
    z = q * jnp.where(keep, 1 / jnp.sqrt(jnp.where(keep, lam, 1)), 0)
    c = jnp.conj(z.T) @ gram @ z
    _, u = jnp.linalg.eigh(0.5 * (c + jnp.conj(c.T)))
    y = z @ u[:, -m:]  # largest eigenvalues of PᴴP ⇔ smallest Ritz values of A
    return pool @ y, image @ y


class CG(AbstractKrylovSolver):
    """Preconditioned conjugate gradients for operators tagged `positive_semidefinite_tag`
    (or `negative_semidefinite_tag`: CG then runs on `−A`), real symmetric or complex
    hermitian. One matrix-vector product per iteration.

    **Arguments:**

    - `rtol`, `atol`, `max_steps`, `preconditioner`, `verbose`: as for every Krylov
      solver: stop when `‖b − A x‖₂ <= atol + rtol ‖b‖₂`; `rtol=None` is `eps**0.75`,
      `atol=None` is 0, `max_steps=None` is `10 n`. The preconditioner approximates `A⁻¹`
      and must be positive definite (hermitian) itself.
    - `recycle`: keep `m = recycle` Ritz vectors of the forward solve to start and deflate
      the solves of the derivative (reverse mode's transposed solve, forward mode's tangent
      solve). Costs `2m` vectors of memory in the state (`W` and `A W`) and a pool of `4m`
      during the forward solve; no extra matrix-vector products.

    `sol.stats` has `num_steps` and `residual_norm` (per column for a `(n, k)` right-hand
    side) and, with `recycle`, `recycle_basis` (W) and `recycle_image` (AW). A
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
        basis, image = stats["recycle_basis"], stats["recycle_image"]
        # The Galerkin matrix WᴴAW, formed explicitly: the recycled vectors are only
        # A-orthonormal up to rounding, and a diagonal formula would be wrong once they
        # are not.
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

        def single(b, x0, rec):
            return _cg(state, b, x0, rec, self.recycle if collect else 0, self.verbose, label)

        return map_columns(single, vector, y0, recycled, extra_batched=batched)


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
    r_norm = norm(r).astype(rdt)
    code = jnp.where(rz < 0, result_code(RESULTS.breakdown), result_code(RESULTS.successful))
    n = b.shape[0]
    pool_size = 2 * m
    pool = jnp.zeros((n, pool_size), b.dtype)
    carry = (jnp.asarray(0, jnp.int32), x, r, p, rz, r_norm, code, pool, pool, jnp.asarray(0, jnp.int32))
    report(verbose, label, 0, r_norm, goal)

    def cond(carry):
        k, _, _, _, _, r_norm, code, _, _, _ = carry
        return (r_norm > goal) & (k < state.max_steps) & (code == RESULTS.successful)

    def body(carry):
        k, x, r, p, rz, _, code, pool, image, count = carry
        ap = mv(p)
        pap = jnp.real(inner(p, ap)).astype(rdt)
        bad = ~(pap > 0)  # not definite, or NaN
        alpha = rz / jnp.where(bad, 1, pap)
        x_new = x + alpha * p
        r_new = r - alpha * ap
        z = pre(r_new)
        rz_new = jnp.real(inner(r_new, z)).astype(rdt)
        bad_pre = rz_new < 0  # the preconditioner is not positive definite
        beta = rz_new / jnp.where(rz == 0, 1, rz)
        p_new = deflate(z) + beta * p
        code = jnp.where(bad, failure_code(pap), jnp.where(bad_pre, result_code(RESULTS.breakdown), code))
        x_new = jnp.where(bad, x, x_new)
        r_new = jnp.where(bad, r, r_new)
        r_norm = norm(r_new).astype(rdt)
        if m > 0:
            scale = jnp.where(bad, 0, 1 / jnp.sqrt(jnp.where(bad, 1, pap)))
            pool = pool.at[:, count].set(scale * p)
            image = image.at[:, count].set(scale * ap)
            count = count + 1

            def restart(args):
                pool, image, _ = args
                w, aw = _ritz(pool, image, jnp.asarray(pool_size), m)
                zeros = jnp.zeros((n, pool_size - m), pool.dtype)
                return (
                    jnp.concatenate([w, zeros], axis=1),
                    jnp.concatenate([aw, zeros], axis=1),
                    jnp.asarray(m, jnp.int32),
                )

            pool, image, count = jax.lax.cond(
                count == pool_size, restart, lambda args: args, (pool, image, count)
            )
        report(verbose, label, k + 1, r_norm, goal)
        return (k + 1, x_new, r_new, p_new, rz_new, r_norm, code, pool, image, count)

    k, x, r, _, _, r_norm, code, pool, image, count = jax.lax.while_loop(cond, body, carry)
    result = final_result(code, r_norm <= goal)
    extra = {}
    if m > 0:
        w, aw = _ritz(pool, image, count, m)
        extra = {"recycle_basis": w, "recycle_image": aw}
    return x, result, stats(k, r_norm, **extra)
