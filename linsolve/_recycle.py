"""Krylov recycling: the `RecycleSpace` a user carries across a sequence of solves, and the
linear algebra that uses and refreshes it (shared by CG and MINRES).

A recycle space is a basis `W` of `m` vectors that approximate the eigenvectors of the
(preconditioned) operator for the eigenvalues that slow a Krylov method down — the
smallest for CG, the smallest in magnitude for MINRES. A solve that gets one

1. makes an orthonormal basis `Q` of it (`orthonormal_coefficients`: non-finite or
   dependent vectors are dropped, so any `W` at all is admissible), takes `AQ` from the
   space's stored image when one product confirms that the operator has not moved
   (`image_matches`), else computes it (`m` products), and the pseudo-inverse of
   `E = QᴴAQ`: a `Recycled` (`attach`);
2. solves deflated — CG keeps its search directions `A`-conjugate to `Q` (Saad, Yeung,
   Erhel & Guyomarc'h 2000), MINRES runs on `P A`, `P = I − AQ E⁺ Qᴴ` (a hermitian,
   consistent singular system; Gaul, Gutknecht, Liesen & Nabben 2013) — which changes
   the iteration count, never the solution: the stopping test is on `b − A x`;
3. collects the Lanczos vectors of that run in an eigCG window (`window_restart`,
   `ritz_rows`) and returns the new space (`refresh`): a Rayleigh–Ritz step over
   `[Q, Y]` (`Y` the `m` window Ritz vectors, `AY` `m` more products) in the `A`-inner
   product for CG, harmonic (Ritz values nearest zero) for MINRES, with `M` (the
   preconditioner) inside, as in Parks, de Sturler, Mackey, Johnson & Maiti 2006 (GCRO-DR)
   and Wang, de Sturler & Paulino 2007 (RMINRES). The new basis and its image `AW` (free:
   a combination of `AQ` and `AY`) start and deflate the derivative's solves at once.
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Inexact

from . import _lapack


class RecycleSpace(eqx.Module):
    """A fixed-size recycle space for Krylov solves, carried from one `linear_solve` to the
    next like `adjoint_y0`.

    `linear_solve(op, b, CG(recycle=m), recycle=space)` starts and deflates its solve
    with `space`, refreshes it with what the solve learned, and returns the new one in
    `sol.stats["recycle"]`; the transposed solve of reverse mode (and the tangent solve of
    forward mode) deflate with that refreshed space. Pass it to the next step's solve.

    A space only changes iteration counts, never the solution or its derivative: any
    basis is accepted (a stale one from an earlier operator, random vectors, zeros;
    non-finite columns are ignored, so a NaN space is as good as an empty one), and its
    derivative is exactly zero — it is a preconditioner, not an input.

    **Arguments:**

    - `basis`: `W`, of shape `(n, m)`; or `(k, n, m)`, one space per column of an `(n, k)`
      right-hand side (what a block solve returns). An `(n, m)` space given to an `(n, k)`
      solve serves every column.
    - `values`: the Ritz values of `W` when it was made (shape `(m,)` or `(k, m)`; `inf`
      where unknown, the default). A CG solve whose space still has these Ritz values
      (within `STABLE`, relative) on its operator keeps the space as it is and skips the
      collection and the refresh (`m` products and the window's work saved); a moving
      operator makes it collect again.
    - `image`: `A W` on the operator the space was made with (the shape of `basis`; zeros
      where unknown, the default). The next solve checks it with one product (`A W g`
      against `image · g` for fixed weights `g`, `check_image`) and, when the operator
      has not moved, uses it instead of making `A W` again (`m − 1` products saved); a
      moved operator or a wrong image costs the `m` products, never the answer.
    """

    basis: Inexact[Array, "n m"] | Inexact[Array, "k n m"]
    values: Array
    image: Inexact[Array, "n m"] | Inexact[Array, "k n m"]

    def __init__(self, basis, values=None, image=None):
        self.basis = basis
        if values is None:
            values = jnp.full(
                jnp.shape(basis)[:-2] + jnp.shape(basis)[-1:],
                jnp.inf,
                jnp.finfo(jnp.result_type(basis)).dtype,
            )
        self.values = values
        self.image = jnp.zeros_like(basis) if image is None else image

    def __check_init__(self):
        if jnp.ndim(self.basis) not in (2, 3):
            raise ValueError(
                "RecycleSpace: `basis` must have shape (n, m) or (k, n, m); got "
                f"{jnp.shape(self.basis)}."
            )
        shape = jnp.shape(self.basis)
        if jnp.shape(self.values) != shape[:-2] + shape[-1:]:
            raise ValueError(
                f"RecycleSpace: `values` must have shape {shape[:-2] + shape[-1:]} for a basis "
                f"of shape {shape}; got {jnp.shape(self.values)}."
            )
        if jnp.shape(self.image) != shape:
            raise ValueError(
                f"RecycleSpace: `image` must have the shape of `basis`, {shape}; got "
                f"{jnp.shape(self.image)}."
            )

    @property
    def size(self) -> int:
        """`m`, the number of vectors."""
        return self.basis.shape[-1]

    @staticmethod
    def empty(n: int, m: int, dtype: Any = float, columns: int | None = None) -> "RecycleSpace":
        """An all-zero space (no deflation) of the size a loop will carry, so that the first
        step has the same pytree structure as the next ones (`lax.scan`, one trace).

        **Arguments:**

        - `n`: the operator's size; `m`: the number of vectors (the solver's `recycle`).
        - `dtype`: the operator's dtype.
        - `columns`: `k` for one space per column of an `(n, k)` right-hand side.

        **Returns:**

        A `RecycleSpace` with basis of zeros, `(n, m)` or `(k, n, m)`.
        """
        shape = (n, m) if columns is None else (columns, n, m)
        return RecycleSpace(jnp.zeros(shape, dtype))


class Recycled(eqx.Module):
    """A deflation space ready for a solve: basis `Q` (n, m), its image `AQ`, and
    `(QᴴAQ)⁺`; the user's space's Ritz `values`. `collect`: the solve also refreshes it (a
    primal solve), rather than only using it (the derivative's solves)."""

    basis: Array
    image: Array
    gram_pinv: Array
    values: Array | None = None
    collect: bool = eqx.field(static=True, default=False)


def _ct(a: Array) -> Array:
    return jnp.conj(jnp.swapaxes(a, -1, -2))


def hermitian_pinv(matrix: Array, definite: bool = True) -> Array:
    """Pseudo-inverse of a hermitian matrix, semidefinite (`definite`) or indefinite;
    eigenvalues below `size · eps` relative to the largest magnitude (zero columns of a
    short solve's basis, dependent vectors, rounding) are dropped."""
    matrix = 0.5 * (matrix + _ct(matrix))
    lam, q = _lapack.eigh(matrix)
    eps = jnp.finfo(lam.dtype).eps
    size = jnp.abs(lam) if not definite else lam
    keep = size > matrix.shape[-1] * eps * jnp.max(jnp.abs(lam), axis=-1, keepdims=True)
    inv = jnp.where(keep, 1 / jnp.where(keep, lam, 1), 0)
    return (q * inv.astype(q.dtype)[..., None, :]) @ _ct(q)  # strict promotion: real weights


def _orthonormalize_pass(z: Array, cutoff: float) -> Array:
    """Coefficients `C` such that `z C` has orthonormal columns spanning the directions of
    `z` whose Gram eigenvalue exceeds `cutoff · max` (zero columns for the others)."""
    gram = _ct(z) @ z
    gram = 0.5 * (gram + _ct(gram))
    lam, u = _lapack.eigh(gram)
    keep = lam > cutoff * jnp.max(lam)
    return u * jnp.where(keep, 1 / jnp.sqrt(jnp.where(keep, lam, 1)), 0).astype(u.dtype)


def orthonormal_coefficients(z: Array) -> Array:
    """`C` (m × m) such that `z C` has orthonormal or zero columns and spans every direction
    of `z` that is not (numerically) dependent on the others. Columns are normalised first,
    so their scales do not matter; a non-finite column makes every coefficient zero (the
    space is ignored). Two passes through the Gram matrix (CholeskyQR2-like: a reduction,
    so sharding-friendly) — the first drops directions below `√eps` relative, so that the
    second restores orthogonality to rounding."""
    rdt = jnp.finfo(z.dtype).dtype
    finite = jnp.all(jnp.isfinite(z))
    z = jnp.where(finite, z, 0)
    norms = jnp.sqrt(jnp.sum(jnp.abs(z) ** 2, axis=0)).astype(rdt)
    scale = jnp.where(norms > 0, 1 / jnp.where(norms > 0, norms, 1), 0).astype(z.dtype)
    eps = float(jnp.finfo(rdt).eps)
    c1 = scale[:, None] * _orthonormalize_pass(z * scale, eps**0.5)
    c2 = _orthonormalize_pass(z @ c1, 0.5)  # after pass 1, Gram eigenvalues are ≈ 1 or 0
    c = (c1 @ c2).astype(z.dtype)
    return jnp.where(finite, c, 0)


def _weights(m: int, dtype) -> Array:
    """The fixed weights `g` of the image check: distinct and all nonzero, so `Q g` is zero
    only for an all-zero `Q` (orthonormal or zero columns)."""
    return (1 / jnp.sqrt(1 + jnp.arange(m))).astype(dtype)


def image_matches(candidate: Array, q: Array, aqg: Array) -> Array:
    """Whether a stored image `candidate` of `Q` is `A Q` on this operator, from one
    product `aqg = A (Q g)` (Freivalds' check: a moved operator, or a wrong image, changes
    `A Q g` for all but a measure-zero set of `g`). Agreement to `√eps` relative: the
    image is then exact to the accuracy deflation needs (and the solve's stopping test is
    on the true residual in any case)."""
    g = _weights(q.shape[-1], q.dtype)
    want = candidate @ g
    rdt = jnp.finfo(q.dtype).dtype
    err = jnp.sqrt(jnp.sum(jnp.abs(aqg - want) ** 2)).astype(rdt)
    scale = (jnp.sqrt(jnp.sum(jnp.abs(want) ** 2)) + jnp.sqrt(jnp.sum(jnp.abs(aqg) ** 2))).astype(
        rdt
    )
    return jnp.isfinite(err) & (err <= float(jnp.finfo(rdt).eps) ** 0.5 * scale)


def _prepare(basis: Array, image: Array):
    """The orthonormal basis `Q = W C` of a user's space and the candidate image `(AW) C`
    (zero where the basis or the image is not finite: NaN · 0 is NaN)."""
    finite = jnp.all(jnp.isfinite(basis))
    basis = jnp.where(finite, basis, 0)
    image = jnp.where(finite & jnp.all(jnp.isfinite(image)), image, 0)
    c = orthonormal_coefficients(basis)
    return basis @ c, image @ c


def from_image(basis: Array, image: Array, definite: bool) -> Recycled:
    """The `Recycled` of a basis whose image `AW` is already known (no products): the
    refreshed space, for the derivative's solves on the same operator as the primal."""
    return Recycled(basis, image, hermitian_pinv(_ct(basis) @ image, definite), None, False)


def adjoint_recycled(state, stats: dict, mv, definite: bool):
    """The state of the derivative's solves: the primal solve's refreshed space
    (`stats["recycle"]`) with its image (known when it was refreshed from a given space,
    else `m` products) and the Galerkin matrix `WᴴAW`, formed explicitly rather than from
    the Ritz values."""
    basis = stats["recycle"].basis
    if "recycle_image" in stats:
        image = stats["recycle_image"]
    else:
        image = jax.vmap(mv)(basis) if basis.ndim == 3 else mv(basis)  # (k, n, m): per column

    def make(w, aw):
        return from_image(w, aw, definite=definite)

    recycled = jax.vmap(make)(basis, image) if basis.ndim == 3 else make(basis, image)
    return eqx.tree_at(lambda s: s.recycled, state, recycled, is_leaf=lambda x: x is None)


def attach(solver, state, space: Any, vector_shape, mv, definite: bool):
    """`solver.recycle_state` of CG and MINRES: check `space` (at trace time) and put its
    deflation into the Krylov state (a `Recycled` that the primal solve also refreshes),
    one per column for a `(k, n, m)` space: `Q` orthonormal, its image `AQ` — the space's
    stored image when one product confirms it (`image_matches`), else `m` products (none
    at all for an all-zero space) — and `(QᴴAQ)⁺`."""
    name = type(solver).__name__
    m = solver.recycle
    if m == 0:
        raise ValueError(
            f"linear_solve: a recycle space was given to {name}(recycle=0); use "
            f"{name}(recycle=m) with m the space's size ({getattr(getattr(space, 'basis', None), 'shape', '?')})."
        )
    basis = jax.lax.stop_gradient(
        check_space(
            space,
            state.operator.shape,
            vector_shape,
            state.operator.dtype,
            f"{name}(recycle={m})",
            m,
        )
    )
    values = jax.lax.stop_gradient(space.values)
    image = jax.lax.stop_gradient(space.image)
    batched = basis.ndim == 3

    def per_column(f):
        return jax.vmap(f) if batched else f

    block_mv = per_column(mv)
    q, candidate = per_column(_prepare)(basis, image)
    # One product checks the stored image; none for an all-zero space (the first step of a
    # loop), whose image is zero. (Predicates over all columns: a cond, not a select.)
    qg = q @ _weights(m, q.dtype)
    empty = ~jnp.any(qg != 0)
    aqg = jax.lax.cond(empty, jnp.zeros_like, block_mv, qg)
    matches = jnp.all(per_column(image_matches)(candidate, q, aqg))
    aq = jax.lax.cond(matches, lambda: candidate, lambda: block_mv(q))

    def make(q, aq, values):
        return Recycled(q, aq, hermitian_pinv(_ct(q) @ aq, definite), values, True)

    recycled = per_column(make)(q, aq, values)
    return eqx.tree_at(lambda s: s.recycled, state, recycled, is_leaf=lambda x: x is None)


def _order(lam: Array, by_magnitude: bool) -> Array:
    """Indices of `lam`, the wanted Ritz values first: smallest (CG) or smallest in
    magnitude (MINRES)."""
    return jnp.argsort(jnp.abs(lam) if by_magnitude else lam)


def window_restart(window, tri: Array, m: int, by_magnitude: bool = False):
    """eigCG restart of a full window (rows `v_0 … v_{s−1}`, `tri = VᴴAV` padded to
    `(s+1, s+1)`, its last row holding the coupling to the next Lanczos vector): keep the
    span of the `m` wanted Ritz vectors of `tri[:s, :s]` and of `tri[:s−1, :s−1]`
    (Stathopoulos & Orginos 2010). `window` may be a tuple of `(s, n)` arrays (vectors
    and their images), each transformed alike: separate arrays, so that a sharded `n`
    axis is never concatenated (which would gather it)."""
    s = tri.shape[0] - 1
    coupling = tri[s, s - 1]
    t = tri[:s, :s]
    lam, y = _lapack.eigh(t)
    y = y[:, _order(lam, by_magnitude)[:m]]
    lam_lead, y_lead = _lapack.eigh(t[: s - 1, : s - 1])
    y_lead = y_lead[:, _order(lam_lead, by_magnitude)[:m]]
    y_lead = jnp.concatenate([y_lead, jnp.zeros((1, m), t.dtype)], axis=0)
    q, _ = _lapack.qr(jnp.concatenate([y, y_lead], axis=1))  # (s, 2m), orthonormal
    keep = 2 * m
    new_window = jax.tree.map(
        lambda w: jnp.zeros_like(w).at[:keep].set((q.T @ w).astype(w.dtype)), window
    )
    new_tri = jnp.zeros_like(tri).at[:keep, :keep].set(q.T @ t @ q)
    # Lanczos relation A V = V T + coupling · v_next e_lastᵀ: the kept vectors couple to
    # the next Lanczos vector through the last row of q.
    arrow = coupling * q[s - 1]
    new_tri = new_tri.at[keep, :keep].set(arrow).at[:keep, keep].set(arrow)
    return new_window, new_tri


def ritz_rows(window, tri: Array, count, m: int, by_magnitude: bool = False):
    """The `m` wanted Ritz vectors from the first `count` rows of the window (an array or a
    tuple of arrays, as in `window_restart`), as rows; zero rows where fewer than `m`
    exist."""
    s = tri.shape[0] - 1
    valid = jnp.arange(s, dtype=jnp.result_type(count)) < count  # strict promotion: one int type
    t = jnp.where(valid[:, None] & valid[None, :], tri[:s, :s], 0)
    # Unused slots get a diagonal above every eigenvalue of the used block (Gershgorin).
    big = 2 * jnp.max(jnp.sum(jnp.abs(t), axis=1)) + 1
    t = t + jnp.diag(jnp.where(valid, 0, big))
    lam, y = _lapack.eigh(t)
    idx = _order(lam, by_magnitude)[:m]
    # Drop the unused slots' eigenvectors (eigenvalue `big`) when fewer than m exist.
    y = jnp.where(valid[:, None] & (jnp.abs(lam[idx]) < 0.75 * big), y[:, idx], 0)
    return jax.tree.map(lambda w: (y.T @ w).astype(w.dtype), window)


def _ritz_pairs(z: Array, az: Array, maz: Array, definite: bool):
    """Wanted-first Ritz pairs of `M A` over the span of `z` (orthonormal or zero columns),
    as `(θ, coefficients)`: for `definite` (CG) the pencil `(ZᴴAMAZ, ZᴴAZ)` — Rayleigh–Ritz in
    the `A`-inner product, in which `MA` is self-adjoint — smallest `θ` first; otherwise
    (MINRES) harmonic Ritz, the pencil `(ZᴴAZ, ZᴴAMAZ)` with eigenvalues `1/θ`, smallest
    `|θ|` first. Solved through `S^{-1/2}` on the numerically nonzero part of the
    semidefinite matrix `S`; missing directions get `θ = inf` and zero coefficients."""
    zaz = _ct(z) @ az
    amaz = _ct(az) @ maz
    h, s = (amaz, zaz) if definite else (zaz, amaz)
    s = 0.5 * (s + _ct(s))
    h = 0.5 * (h + _ct(h))
    lam_s, u = _lapack.eigh(s)
    eps = jnp.finfo(lam_s.dtype).eps
    keep = lam_s > s.shape[-1] * eps * jnp.max(jnp.abs(lam_s))
    root = u * jnp.where(keep, 1 / jnp.sqrt(jnp.where(keep, lam_s, 1)), 0)
    k = _ct(root) @ h @ root
    k = 0.5 * (k + _ct(k))
    if definite:
        # Dropped directions get an eigenvalue above all others: chosen last.
        big = 2 * jnp.max(jnp.sum(jnp.abs(k), axis=1)) + 1
        k = k + jnp.diag(jnp.where(keep, 0, big)).astype(k.dtype)
        lam, g = _lapack.eigh(k)
        idx = jnp.argsort(lam)
        theta = jnp.where(jnp.abs(lam[idx]) < 0.75 * big, lam[idx], jnp.inf)
    else:
        lam, g = _lapack.eigh(k)  # dropped directions have eigenvalue 0: chosen last
        idx = jnp.argsort(-jnp.abs(lam))
        theta = jnp.where(lam[idx] != 0, 1 / jnp.where(lam[idx] != 0, lam[idx], 1), jnp.inf)
    return theta, root @ g[:, idx]


def refresh(q: Array, aq: Array, y: Array, ay: Array, pre, m: int, definite: bool):
    """The next recycle space: Rayleigh–Ritz (`_ritz_pairs`) over `Z = [Q, Y]` for the `m`
    wanted eigenvectors of `M A` (M the preconditioner, `pre` applies it to a block). Every
    product is explicit, so nothing assumes the Lanczos vectors stayed orthogonal. Returns
    `(W, AW)`, unit columns (zero columns where fewer than `m` directions exist)."""
    z = jnp.concatenate([q, y], axis=1)
    az = jnp.concatenate([aq, ay], axis=1)
    finite = jnp.all(jnp.isfinite(z)) & jnp.all(jnp.isfinite(az))
    z, az = jnp.where(finite, z, 0), jnp.where(finite, az, 0)  # e.g. after a breakdown
    c = orthonormal_coefficients(z)
    z, az = z @ c, az @ c
    theta, coef = _ritz_pairs(z, az, pre(az), definite)
    coef = coef[:, :m]
    w, aw = z @ coef, az @ coef
    norms = jnp.sqrt(jnp.sum(jnp.abs(w) ** 2, axis=0))
    scale = jnp.where(norms > 0, 1 / jnp.where(norms > 0, norms, 1), 0).astype(w.dtype)
    w, aw = w * scale, aw * scale
    ok = jnp.all(jnp.isfinite(w)) & jnp.all(jnp.isfinite(aw))
    theta = theta[:m].astype(jnp.finfo(w.dtype).dtype)
    return jnp.where(ok, w, 0), jnp.where(ok, aw, 0), jnp.where(ok, theta, jnp.inf)


#: A given space whose Ritz values on the new operator are within this (relative) of the
#: ones it was made with is kept: the solve skips the window and the refresh.
STABLE = 0.01


def stable(recycled: Recycled, values: Array, pre, definite: bool):
    """Whether a given space can be kept as it is: full rank, and its Ritz values on this
    operator within `STABLE` of `values`, those it was made with — the refreshes have
    stopped improving it, and the operator has not moved it (eigCG's incremental variant
    stops collecting in the same way). Also returns the Ritz values, the kept space's."""
    q, aq = recycled.basis, recycled.image
    theta, _ = _ritz_pairs(q, aq, pre(aq), definite)
    theta = theta[: q.shape[-1]].astype(values.dtype)
    close = jnp.abs(theta - values) <= STABLE * jnp.abs(values)
    return jnp.all(jnp.isfinite(theta)) & jnp.all(close), theta


def check_space(space: Any, operator_shape, vector_shape, dtype, solver_name: str, m: int) -> Array:
    """Trace-time checks of a user's space against the solve; returns its basis."""
    if not isinstance(space, RecycleSpace):
        raise TypeError(
            f"linear_solve: `recycle` must be a linsolve.RecycleSpace (e.g. the previous "
            f"solve's sol.stats['recycle']); got {type(space).__name__}."
        )
    basis = space.basis
    n = operator_shape[1]
    columns = vector_shape[1:] if len(vector_shape) == 2 else ()
    ok_shapes = [(n, m)] + ([(columns[0], n, m)] if columns else [])
    if basis.shape not in ok_shapes:
        expected = " or ".join(str(s) for s in ok_shapes)
        raise ValueError(
            f"linear_solve: the recycle space has basis of shape {basis.shape}, but the operator "
            f"has shape {tuple(operator_shape)}, the right-hand side shape {tuple(vector_shape)} "
            f"and the solver {solver_name} keeps m = {m} vectors: expected {expected}."
        )
    if space.values.shape != basis.shape[:-2] + basis.shape[-1:]:
        raise ValueError(
            f"linear_solve: the recycle space's values have shape {space.values.shape}; its "
            f"basis has shape {basis.shape}."
        )
    if basis.dtype != dtype:
        raise TypeError(
            f"linear_solve: the recycle space has dtype {basis.dtype} but the operator has "
            f"dtype {dtype}; cast one of them explicitly."
        )
    if space.image.dtype != dtype:
        raise TypeError(
            f"linear_solve: the recycle space's image has dtype {space.image.dtype} but the "
            f"operator has dtype {dtype}; cast one of them explicitly."
        )
    return basis
