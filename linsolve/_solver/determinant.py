"""Log-determinants from factorizations, each with its own derivative rule.

`d log det A = tr(A⁻¹ dA)`: the tangent reuses the one factorization of the primal
(through `A⁻¹`, formed from it once; the tangent is an elementwise product with `dA`, so
JAX transposes it for reverse mode). Since `A` is the effective matrix of the structure
convention, the gradient is folded into the read triangle. The solvers'
`slogdet` methods (`AbstractDeterminantSolver`) are built from these pieces.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array

from .. import _lapack
from .._solution import RESULTS, first_failure
from .checks import broken_symmetry


def _trace_product(inverse, t_matrix):
    """`tr(A⁻¹ Ȧ)`, elementwise: linear in `Ȧ` with no solve to transpose."""
    return jnp.sum(jnp.swapaxes(inverse, -1, -2) * t_matrix)


def _inverse_jvp(inverse, t_matrix):
    """`d(A⁻¹) = −A⁻¹ Ȧ A⁻¹`."""
    return -inverse @ t_matrix @ inverse


@jax.custom_jvp
def _logdet_and_inverse_cholesky(matrix):
    """`(log det A, A⁻¹)` from one Cholesky factorization. The derivative rules below use
    only `A⁻¹` and products with it, so every order of derivative reuses that one
    factorization, and the LAPACK calls are never differentiated themselves (see
    `_lapack`). Without a derivative XLA drops the unused inverse."""
    factor = _lapack.cholesky(matrix)
    logdet = 2 * jnp.sum(jnp.log(jnp.real(jnp.diagonal(factor))))
    return logdet, _lapack.cho_solve(factor, jnp.eye(matrix.shape[-1], dtype=matrix.dtype))


@_logdet_and_inverse_cholesky.defjvp
def _logdet_and_inverse_cholesky_jvp(primals, tangents):
    (matrix,), (t_matrix,) = primals, tangents
    logdet, inverse = _logdet_and_inverse_cholesky(matrix)
    return (logdet, inverse), (
        jnp.real(_trace_product(inverse, t_matrix)),
        _inverse_jvp(inverse, t_matrix),
    )


def logdet_cholesky(matrix):
    return _logdet_and_inverse_cholesky(matrix)[0]


def _lu_slogdet(lu, pivots):
    diag = jnp.diagonal(lu)
    swaps = jnp.sum(pivots != jnp.arange(pivots.shape[-1], dtype=pivots.dtype))
    parity = jnp.where(swaps % 2 == 0, 1, -1).astype(lu.dtype)
    absdiag = jnp.abs(diag)
    sign = parity * jnp.prod(diag / jnp.where(absdiag == 0, 1, absdiag).astype(lu.dtype))
    sign = jnp.where(jnp.any(diag == 0), 0, sign).astype(lu.dtype)
    return sign, jnp.sum(jnp.log(absdiag))


@jax.custom_jvp
def _slogdet_and_inverse_lu(matrix):
    """`(sign, log|det A|, A⁻¹)` from one LU factorization (as for Cholesky above)."""
    lu, pivots, _ = _lapack.lu(matrix)
    sign, logabsdet = _lu_slogdet(lu, pivots)
    return (
        sign,
        logabsdet,
        _lapack.lu_solve(lu, pivots, jnp.eye(matrix.shape[-1], dtype=matrix.dtype)),
    )


@_slogdet_and_inverse_lu.defjvp
def _slogdet_and_inverse_lu_jvp(primals, tangents):
    (matrix,), (t_matrix,) = primals, tangents
    sign, logabsdet, inverse = _slogdet_and_inverse_lu(matrix)
    t = _trace_product(inverse, t_matrix)
    if jnp.iscomplexobj(t):
        # i·Im(t) by lax.complex: strict promotion has no float -> complex path.
        t_sign = sign * jax.lax.complex(jnp.zeros_like(jnp.imag(t)), jnp.imag(t))
    else:
        t_sign = jnp.zeros_like(sign)
    return (sign, logabsdet, inverse), (
        t_sign.astype(sign.dtype),
        jnp.real(t),
        _inverse_jvp(inverse, t_matrix),
    )


def slogdet_lu(matrix):
    return _slogdet_and_inverse_lu(matrix)[:2]


def slogdet_of_diagonal(d: Array) -> tuple[Array, Array]:
    """`(sign, logabsdet)` of a triangular or diagonal matrix with diagonal `d` (plain JAX:
    its derivative is that of the diagonal entries)."""
    absd = jnp.abs(d)
    sign = jnp.prod(d / jnp.where(absd == 0, 1, absd).astype(d.dtype))
    sign = jnp.where(jnp.any(d == 0), 0, sign).astype(d.dtype)
    return sign, jnp.sum(jnp.log(absd))


def finite(x) -> Array:
    """Whether every entry of `x` is finite (no derivative)."""
    return jnp.all(jnp.isfinite(jax.lax.stop_gradient(x)))


def factorization_failure(ok, inputs_finite, code=RESULTS.not_positive_definite) -> Array:
    """`code` where the factorization failed (`~ok`) on finite input, `nonfinite_input`
    where the input is not finite."""
    return first_failure((~inputs_finite, RESULTS.nonfinite_input), (~ok, code))


def dense_determinant_checks(operator, matrix: Array) -> list:
    """The failures a dense log-determinant checks before its factorization's own: NaN/Inf
    in the (effective) `matrix`, and a matrix-free operator that breaks its symmetry
    promise. As `(failed, code)` pairs for `first_failure`."""
    checks = [(~finite(matrix), RESULTS.nonfinite_input)]
    asymmetric = broken_symmetry(operator, jax.lax.stop_gradient(matrix))
    if asymmetric is not None:
        checks.append((asymmetric, RESULTS.not_symmetric))
    return checks
