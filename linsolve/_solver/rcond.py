"""Reciprocal condition estimates of dense factorizations (LAPACK `xGECON` / `xPOCON` /
`xTRCON`): `rcond = 1 / (‖A‖₁ ‖A⁻¹‖₁)`, with `‖A⁻¹‖₁` estimated by Hager's method with
Higham's refinements (Higham, *Accuracy and Stability of Numerical Algorithms*, §15.3;
LAPACK `xLACN2`) from a few solves with the factors: O(n²) next to the O(n³)
factorization.

The estimate is a lower bound on `‖A⁻¹‖₁` (each candidate is `‖A⁻¹ v‖₁ / ‖v‖₁` for some
`v`), so `rcond` can only be overestimated; in practice it is within a factor of a few of
the truth. A fixed number of steps (no data-dependent loop) keeps it cheap under `jit`
and `vmap`. It runs on `stop_gradient`-ed factors and is never differentiated.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array

from .. import _lapack


# Hager steps after the first solve: one, so three solve calls in all, the first with
# two columns (LAPACK xLACN2's shortest path; it stops after at most 5 solves). Each
# step costs a solve with Aᴴ and then one with A. On 600 random, graded, SPD and
# triangular matrices (n ≤ 80) the three solves underestimated ‖A⁻¹‖₁ by at most 3.5×
# (99th percentile 2.1×, exact in 73%), xLACN2's full iteration by at most 1.9×, and
# stopping after two solves by up to 8.7×. Higham's alternating vector below catches
# the classic counterexamples of the power-method part.
_STEPS = 1


def _sign(y: Array) -> Array:
    """`sign(y)` with `sign(0) = 1` (complex: `y / |y|`)."""
    absy = jnp.abs(y)
    return jnp.where(absy == 0, 1, y / jnp.where(absy == 0, 1, absy).astype(y.dtype)).astype(
        y.dtype
    )


def inverse_norm1(solve: Callable, solve_h: Callable, n: int, dtype) -> Array:
    """A lower bound on `‖A⁻¹‖₁` (usually within a factor of 3), from `solve(V) = A⁻¹ V`
    and `solve_h(V) = A⁻ᴴ V` for blocks `V` of shape `(n, k)`."""
    real = jnp.finfo(dtype).dtype
    i = jnp.arange(n, dtype=real)
    start = jnp.full((n,), 1 / n, dtype)
    # Higham's vector x_i = (−1)^i (1 + i/(n−1)), whose image is a second estimate
    # 2‖A⁻¹x‖₁ / (3n) for matrices on which the power method stalls.
    alt = jnp.where(i % 2 == 0, 1, -1) * (1 + i / max(n - 1, 1))
    y = solve(jnp.stack([start, alt.astype(dtype)], axis=1))
    estimate = jnp.maximum(jnp.sum(jnp.abs(y[:, 0])), 2 * jnp.sum(jnp.abs(y[:, 1])) / (3 * n))
    y = y[:, 0]
    for _ in range(_STEPS):
        # The subgradient of ‖A⁻¹x‖₁ points to the column of A⁻¹ most likely to be largest.
        z = solve_h(_sign(y)[:, None])[:, 0]
        j = jnp.argmax(jnp.abs(z))
        y = solve(jax.nn.one_hot(j, n, dtype=dtype)[:, None])[:, 0]
        estimate = jnp.maximum(estimate, jnp.sum(jnp.abs(y)))
    return estimate


def rcond(norm1: Array, solve: Callable, solve_h: Callable, n: int, dtype) -> Array:
    """`1 / (‖A‖₁ ‖A⁻¹‖₁)` from `‖A‖₁` and solves with the factors; 0 where a solve
    overflows or gives NaN (a zero pivot), 1 for `n = 0` (as LAPACK)."""
    real = jnp.finfo(dtype).dtype
    if n == 0:
        return jnp.ones((), real)
    inv_norm = inverse_norm1(solve, solve_h, n, dtype)
    # Divide in two steps: ‖A‖₁ ‖A⁻¹‖₁ can overflow where the ratio does not.
    out = (1 / inv_norm) / norm1
    ok = jnp.isfinite(inv_norm) & (norm1 > 0) & jnp.isfinite(out)
    return jnp.where(ok, out, 0).astype(real)


def cholesky_rcond(factor: Array, norm: Array) -> Array:
    """`rcond` of `A = L Lᴴ` from its lower factor `L` and `‖A‖₁` (LAPACK `xPOCON`)."""

    def solve(v):
        return _lapack.cho_solve(factor, v)

    return rcond(norm, solve, solve, factor.shape[0], factor.dtype)


def lu_rcond(lu: Array, perm: Array, norm: Array) -> Array:
    """`rcond` of `A` from its partial-pivoting LU, `A[perm] = L U` (LAPACK `xGECON`)."""

    # Solves from the permutation LU already returns (`lu_solve` would rebuild it from
    # the pivots, a sequential loop): A⁻¹ = U⁻¹ L⁻¹ P and A⁻ᴴ = Pᵀ L⁻ᴴ U⁻ᴴ, (P v) = v[perm].
    def solve(v):
        y = _lapack.solve_triangular(lu, v[perm], lower=True, unit_diagonal=True)
        return _lapack.solve_triangular(lu, y, lower=False)

    def solve_h(v):
        y = _lapack.solve_triangular(lu, v, trans="C", lower=False)
        y = _lapack.solve_triangular(lu, y, trans="C", lower=True, unit_diagonal=True)
        return jnp.zeros_like(y).at[perm].set(y)

    return rcond(norm, solve, solve_h, lu.shape[0], lu.dtype)


def ill_conditioned(value: Array, dtype) -> Array:
    """`rcond < eps`: singular to working precision (LAPACK `xGESVX`); NaN counts."""
    return ~(value >= jnp.finfo(dtype).eps)


def norm1(matrix: Array) -> Array:
    """`‖A‖₁`, the largest column sum of `|A|`."""
    if matrix.size == 0:
        return jnp.zeros((), jnp.finfo(matrix.dtype).dtype)
    return jnp.max(jnp.sum(jnp.abs(matrix), axis=0))


def hermitian_norm1(lower: Array) -> Array:
    """`‖A‖₁` of the hermitian matrix whose lower triangle is that of `lower` (the upper
    triangle is not read): column `j` of `|A|` is column `j` of `|tril(A)|` plus row `j`
    of `|tril(A, −1)|`."""
    if lower.size == 0:
        return jnp.zeros((), jnp.finfo(lower.dtype).dtype)
    n = lower.shape[0]
    r = jnp.arange(n)
    # One masked pass over the matrix, then its column and row sums as two products with
    # ones (BLAS): separate masked reductions along both axes cost XLA:CPU two more passes
    # over the whole matrix, and a transposed one.
    absl = jnp.where(r[:, None] >= r[None, :], jnp.abs(lower), 0)
    ones = jnp.ones((n,), absl.dtype)
    dot = functools.partial(jnp.dot, precision=jax.lax.Precision.HIGHEST)
    sums = dot(ones, absl) + dot(absl, ones) - jnp.abs(jnp.diagonal(lower))
    return jnp.max(sums)


def triangular_norm1(upper: Array) -> Array:
    """`‖triu(R)‖₁` (the strict lower triangle is not read)."""
    if upper.size == 0:
        return jnp.zeros((), jnp.finfo(upper.dtype).dtype)
    return norm1(jnp.triu(upper))
