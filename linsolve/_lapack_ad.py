"""Differentiable dense kernels that, like `_lapack`'s, make no batched LAPACK call under
`vmap` on CPU with jaxlib 0.10 (a batch of small matrices runs `_small_dense`'s kernels,
a batch of larger ones is looped over), for the differentiable factorizations of
`_factor.py`.

`_lapack`'s functions have no reverse-mode rule (`custom_vmap`). Here the triangular solve
is a `custom_linear_solve` — linear in the right-hand side and transposable, its
derivative in the matrix taken through the matrix product — and the Cholesky factor has a
JVP rule written with those solves, so every order of forward and reverse mode works and
never differentiates a LAPACK call. Leading batch dimensions are `vmap`ped.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array

from . import _lapack


def _triangle(a: Array, lower: bool, unit: bool) -> Array:
    """The triangle of `a` a triangular solve reads, with a unit diagonal if `unit`."""
    n = a.shape[-1]
    t = jnp.tril(a) if lower else jnp.triu(a)
    return jnp.where(jnp.eye(n, dtype=bool), 1, t).astype(a.dtype) if unit else t


def _left_solve(a: Array, b: Array, lower: bool, trans: int, unit: bool) -> Array:
    """`op(a)⁻¹ b` for one matrix `a` (`op`: identity, transpose, conjugate transpose for
    `trans` 0, 1, 2), `b` of shape `(n, k)`."""

    def op(t, mode):
        return t if mode == 0 else (t.T if mode == 1 else jnp.conj(t).T)

    def matvec(x):
        return op(_triangle(a, lower, unit), trans) @ x

    def solve(_, r):
        return _lapack.solve_triangular(a, r, trans=trans, lower=lower, unit_diagonal=unit)

    def transpose_solve(_, r):  # op(a)ᵀ: the plain transpose of op(a)
        if trans == 2:
            return _lapack.solve_triangular(jnp.conj(a), r, lower=lower, unit_diagonal=unit)
        return _lapack.solve_triangular(a, r, trans=1 - trans, lower=lower, unit_diagonal=unit)

    return jax.lax.custom_linear_solve(matvec, b, solve, transpose_solve)


def triangular_solve(
    a: Array,
    b: Array,
    *,
    left_side: bool = False,
    lower: bool = False,
    transpose_a: bool = False,
    conjugate_a: bool = False,
    unit_diagonal: bool = False,
) -> Array:
    """`jax.lax.linalg.triangular_solve` (same arguments; `a` of shape `(..., n, n)`, `b`
    of `(..., n, k)` if `left_side` else `(..., k, n)`), differentiable at any order and
    with no batched LAPACK call."""
    trans = (2 if conjugate_a else 1) if transpose_a else 0
    if conjugate_a and not transpose_a:
        a, conjugate_a = jnp.conj(a), False

    def one(a, b):
        if left_side:
            return _left_solve(a, b, lower, trans, unit_diagonal)
        # x op(a) = b  ⇔  op(a)ᵀ xᵀ = bᵀ: the plain transpose of op(a).
        if trans == 2:
            return _left_solve(jnp.conj(a), b.T, lower, 0, unit_diagonal).T
        return _left_solve(a, b.T, lower, 1 - trans, unit_diagonal).T

    signature = "(n,n),(n,k)->(n,k)" if left_side else "(n,n),(k,n)->(k,n)"
    return jnp.vectorize(one, signature=signature)(a, b)


def lu(a: Array) -> tuple[Array, Array, Array]:
    """`jax.lax.linalg.lu(a)` for `a` of shape `(..., m, n)` (not differentiable itself:
    `_factor._lu_core` has its own rule)."""
    return jnp.vectorize(_lapack.lu, signature="(m,n)->(m,n),(k),(m)")(a)


def _phi(x: Array) -> Array:
    """The lower triangle of `x` with its diagonal halved."""
    n = x.shape[-1]
    return jnp.tril(x) / (1 + jnp.eye(n, dtype=x.dtype))


@jax.custom_jvp
def cholesky(a: Array) -> Array:
    """Lower Cholesky factor of a hermitian `a` of shape `(..., n, n)` from its lower
    triangle (NaN where not positive definite), differentiable at any order for a
    hermitian tangent."""
    return jnp.vectorize(_lapack.cholesky, signature="(n,n)->(n,n)")(a)


@cholesky.defjvp
def _cholesky_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    # Calling `cholesky` (not `_lapack`) keeps every order of derivative on this rule.
    factor = cholesky(a)
    # dL = L Φ(L⁻¹ dA L⁻ᴴ) (as JAX's rule), with solves that never batch LAPACK.
    tmp = triangular_solve(
        factor, da, left_side=False, lower=True, transpose_a=True, conjugate_a=True
    )
    tmp = triangular_solve(factor, tmp, left_side=True, lower=True)
    return factor, jnp.tril(factor) @ _phi(tmp)
