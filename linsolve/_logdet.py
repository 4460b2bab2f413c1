"""Log-determinants of dense operators, with their own derivative rules.

`d log det A = tr(A⁻¹ dA)`: the tangent reuses the one factorization of the primal (through
`A⁻¹`, formed from it once; the tangent is an elementwise product with `dA`, so JAX
transposes it for reverse mode), and
since `A` is the effective matrix of the structure convention, the gradient is folded into
the read triangle.
"""

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Inexact, Real

from . import _lapack
from ._operator import as_operator
from ._solver.abstract import AbstractSolver, dense_input
from ._solver.auto import AutoSolver
from ._solver.cholesky import Cholesky
from ._solver.diagonal import Diagonal
from ._solver.lu import LU
from ._solver.sparse_cholesky import SparseCholesky, symbolic_of
from ._solver.triangular import Triangular
from ._sparse import selinv
from ._structure import read_diagonal
from ._tags import negative_semidefinite_tag


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
    return (logdet, inverse), (jnp.real(_trace_product(inverse, t_matrix)), _inverse_jvp(inverse, t_matrix))


def _logdet_cholesky(matrix):
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
    lu, pivots = _lapack.lu(matrix)
    sign, logabsdet = _lu_slogdet(lu, pivots)
    return sign, logabsdet, _lapack.lu_solve(lu, pivots, jnp.eye(matrix.shape[-1], dtype=matrix.dtype))


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
    return (sign, logabsdet, inverse), (t_sign.astype(sign.dtype), jnp.real(t), _inverse_jvp(inverse, t_matrix))


def _slogdet_lu(matrix):
    return _slogdet_and_inverse_lu(matrix)[:2]


def _check_square(operator, name):
    if operator.shape[0] != operator.shape[1]:
        raise ValueError(f"{name} needs a square operator; got shape {operator.shape}.")


def slogdet(
    operator: Any, solver: AbstractSolver = AutoSolver()
) -> tuple[Inexact[Array, ""], Real[Array, ""]]:
    """Sign and log of the absolute value of the determinant, differentiably.

    **Arguments:**

    - `operator`: a square operator (dense, diagonal, triangular, matrix-free, lineax).
    - `solver`: the factorization to use: `AutoSolver()` (from the tags), `LU()`,
      `Cholesky()`, `SparseCholesky()` (positive definite `SparseOperator`: the gradient
      comes from the selected inverse), `Triangular()` or `Diagonal()`.

    **Returns:**

    `(sign, logabsdet)` with `det = sign * exp(logabsdet)`; `sign` is complex of modulus
    one for complex operators and 0 for singular ones.
    """
    operator = as_operator(operator)
    _check_square(operator, "slogdet")
    if isinstance(solver, AutoSolver):
        solver = solver.select(operator, direct=True)
    if isinstance(solver, SparseCholesky):
        # d logdet from the selected inverse (Takahashi), never a dense inverse.
        sym = symbolic_of(operator, solver.ordering)
        return jnp.ones((), operator.dtype), selinv.logdet(sym, operator.values)
    if isinstance(solver, (Diagonal, Triangular)):
        solver.init(operator)  # trace-time tag checks only; XLA drops the unused work
        d = read_diagonal(operator.diag(), operator.tags)
        absd = jnp.abs(d)
        sign = jnp.prod(d / jnp.where(absd == 0, 1, absd).astype(d.dtype))
        return jnp.where(jnp.any(d == 0), 0, sign).astype(d.dtype), jnp.sum(jnp.log(absd))
    if isinstance(solver, Cholesky):
        solver.init(operator)
        matrix = dense_input(operator)
        n = operator.shape[0]
        if negative_semidefinite_tag in operator.tags:
            sign = jnp.asarray(-1.0 if n % 2 else 1.0, matrix.dtype)
            return sign, _logdet_cholesky(-matrix)
        return jnp.ones((), matrix.dtype), _logdet_cholesky(matrix)
    if isinstance(solver, LU):
        return _slogdet_lu(dense_input(operator))
    raise ValueError(
        f"slogdet supports the Cholesky, LU, Triangular and Diagonal solvers; got {type(solver).__name__}."
    )


def logdet(operator: Any, solver: AbstractSolver = AutoSolver()) -> Inexact[Array, ""]:
    """`log det A`, differentiably; meant for positive definite operators (then the
    Cholesky factorization is used and the result is real).

    **Arguments:**

    - `operator`: a square operator; tag it `positive_semidefinite_tag` to use Cholesky.
    - `solver`: as for [`linsolve.slogdet`][].

    **Returns:**

    `log det A`: real for operators tagged positive semidefinite (NaN if the Cholesky
    factorization fails). Otherwise it is `log(sign) + logabsdet`: NaN for a negative
    real determinant, complex for complex operators.
    """
    operator = as_operator(operator)
    if isinstance(solver, AutoSolver):
        solver = solver.select(operator, direct=True)
    sign, logabsdet = slogdet(operator, solver)
    if isinstance(solver, (Cholesky, SparseCholesky)) and negative_semidefinite_tag not in operator.tags:
        return logabsdet  # positive definite: real, even for complex hermitian input
    if jnp.iscomplexobj(sign):
        return jnp.log(sign) + logabsdet
    return jnp.where(sign > 0, logabsdet, jnp.where(sign == 0, -jnp.inf, jnp.nan))
