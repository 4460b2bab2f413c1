"""Tangents of k eigenpairs of a symmetric pencil `(A, B)`, from k projected linear solves.

For `A uⱼ = λⱼ B uⱼ` with `Uᵀ B U = I` (U the k computed eigenvectors) and tangents
`(Ȧ, Ḃ)`, let `Kᵢⱼ = uᵢᵀ (Ȧ − λⱼ Ḃ) uⱼ` and `Gᵢⱼ = uᵢᵀ Ḃ uⱼ`. Then

- `λ̇ⱼ = Kⱼⱼ`;
- `u̇ⱼ = U cⱼ + wⱼ`, split along U and its `B`-orthogonal complement:
  - within the subspace, `cᵢⱼ = Kᵢⱼ / (λⱼ − λᵢ)` for `i ≠ j` and `cⱼⱼ = −½ Gⱼⱼ` (from
    the normalisation `uⱼᵀ B uⱼ = 1`);
  - out of it, `wⱼ` solves `(A − λⱼ B) wⱼ = −Q (Ȧ − λⱼ Ḃ) uⱼ` on the complement, with
    `Q = I − B U Uᵀ`. The operator `Q (A − λⱼ B) Qᵀ` is symmetric and, when the
    `uⱼ` are the k smallest eigenvectors, positive semidefinite with null space span(U)
    (negative semidefinite for the largest); the right-hand side is in its range. It is
    solved with a Krylov method (CG by default) for all j at once (`vmap`), and
    `wⱼ = Qᵀ ŵⱼ`.

Degenerate eigenvalues: for `|λᵢ − λⱼ|` below a threshold the pair is treated as one
eigenspace, whose basis is arbitrary. There `cᵢⱼ = −½ Gᵢⱼ`, the symmetric part that the
normalisation fixes, and the rotation within the eigenspace (the ill-defined part) is
zero. Losses that do not depend on the basis of the eigenspace (sums of its
eigenvalues, its projector `U Uᵀ`) then get the exact derivative: their derivative sees
`C + Cᵀ = −G` only.

The tangent is linear in `(Ȧ, Ḃ)` and built from operator JVPs, matrix products and
`jax.lax.custom_linear_solve`, so reverse mode is its transposition: the gradient costs
the same k projected solves (transposed: the same symmetric operators).
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._operator import FunctionOperator
from .._solve import linear_in_rhs
from .._tags import positive_semidefinite_tag
from .._tangent import is_zero_tangent, tangent_mv


def degenerate_pairs(values: Array, threshold: Array) -> Array:
    """`(k, k)` mask of pairs `i ≠ j` with `|λᵢ − λⱼ| <= threshold`: one eigenspace."""
    k = values.shape[0]
    close = jnp.abs(values[None, :] - values[:, None]) <= threshold
    return close & ~jnp.eye(k, dtype=bool)


def within_subspace(values: Array, k_mat: Array, g_mat: Array | None, degenerate: Array) -> Array:
    """The coefficients `C` of `U̇ = U C + W` along U. `k_mat` is `K`, `g_mat` is `G` (or
    `None` without `B`), `degenerate` the mask of pairs treated as one eigenspace."""
    k = values.shape[0]
    diff = values[None, :] - values[:, None]  # λⱼ − λᵢ
    off = ~jnp.eye(k, dtype=bool) & ~degenerate
    safe = jnp.where(off, diff, 1)
    half_g = jnp.zeros_like(k_mat) if g_mat is None else -0.5 * g_mat
    return jnp.where(off, k_mat / safe, half_g)


def projected_solves(
    operator,
    B,
    values: Array,
    vectors: Array,
    b_vectors: Array,
    rhs: Array,
    *,
    sign: int,
    solver,
    preconditioner,
    throw: bool,
) -> Array:
    """Solve `(A − λⱼ B) wⱼ = rhsⱼ` on the `B`-orthogonal complement of U, for every j.

    `rhs` (n, k) must satisfy `Uᵀ rhsⱼ = 0`. The operators `sign · Q (A − λⱼ B) Qᵀ` are
    positive semidefinite (sign = +1 for the smallest eigenvalues, −1 for the largest).
    Each solve is `linear_solve`'s derivative solve (`linear_in_rhs`) on the projected
    operator, linear and transposable in `rhs`. Returns `W` with `Uᵀ B W = 0`."""
    u, bu = vectors, b_vectors
    n = u.shape[0]
    dtype = u.dtype

    def q(v):  # v − B U Uᵀ v: onto the Euclidean complement of U
        return v - bu @ (u.T @ v)

    def qt(v):  # v − U (BU)ᵀ v: onto the B-orthogonal complement of U
        return v - u @ (bu.T @ v)

    example = jax.ShapeDtypeStruct((n,), dtype)
    this_solver = solver
    if preconditioner is not None and getattr(solver, "preconditioner", 0) is None:
        # The preconditioner, projected as the operator is (the same for every j).
        pre = FunctionOperator(
            lambda v: qt(preconditioner.mv(q(v))), example, tags=positive_semidefinite_tag
        )
        this_solver = dataclasses.replace(solver, preconditioner=pre)

    def one(lam, r):
        def mv(v):
            v = qt(v)
            out = operator.mv(v) - lam * (v if B is None else B.mv(v))
            return sign * q(out)

        proj = FunctionOperator(mv, example, tags=positive_semidefinite_tag)
        state = this_solver.init(proj)
        # `linear_solve`'s derivative solve and failure policy (NaN with throw=False, in
        # both directions: an eigenvector tangent has no result code to carry).
        return linear_in_rhs(
            this_solver,
            state,
            proj,
            sign * r,
            throw=throw,
            name="linsolve.lobpcg (a projected solve of the eigenvector derivative)",
            nan_on_failure=True,
        )

    w_hat = jax.vmap(one, in_axes=(0, 1), out_axes=1)(values, rhs)
    return qt(w_hat)


def eigenpair_tangents(
    operator,
    B,
    t_operator,
    t_B,
    values: Array,
    vectors: Array,
    *,
    largest: bool,
    threshold: Array,
    solver: Any,
    preconditioner,
    throw: bool,
    complete: bool = False,
) -> tuple[Array, Array]:
    """`(λ̇, U̇)` for eigenpairs `(values, vectors)` of `(operator, B)` and tangents
    `(t_operator, t_B)` (either may be `None`). `complete=True` means U spans the whole
    space (dense `eigh`): no projected solves."""
    u = vectors
    a_dot_u = tangent_mv(operator, t_operator, u)
    has_b_dot = B is not None and t_B is not None and not is_zero_tangent(t_B)
    b_dot_u = tangent_mv(B, t_B, u) if has_b_dot else None
    m_cols = a_dot_u if b_dot_u is None else a_dot_u - b_dot_u * values[None, :]
    k_mat = u.T @ m_cols
    g_mat = None if b_dot_u is None else u.T @ b_dot_u
    t_values = jnp.diagonal(k_mat)
    c = within_subspace(values, k_mat, g_mat, degenerate_pairs(values, threshold))
    t_vectors = u @ c
    if not complete:
        b_u = u if B is None else B.mv(u)
        rhs = -(m_cols - b_u @ (u.T @ m_cols))
        w = projected_solves(
            operator,
            B,
            values,
            u,
            b_u,
            rhs,
            sign=-1 if largest else 1,
            solver=solver,
            preconditioner=preconditioner,
            throw=throw,
        )
        t_vectors = t_vectors + w
    return t_values, t_vectors
