"""Log-determinants of dense operators, with their own derivative rules.

`d log det A = tr(A⁻¹ dA)`: the tangent reuses the one factorization of the primal (through
`A⁻¹`, formed from it once; the tangent is an elementwise product with `dA`, so JAX
transposes it for reverse mode), and
since `A` is the effective matrix of the structure convention, the gradient is folded into
the read triangle.
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Inexact, Real

from . import _lapack
from ._operator import as_operator
from ._solution import RESULTS, first_failure
from ._solver.abstract import AbstractSolver, dense_input, tag_names
from ._solver.auto import AutoSolver
from ._solver.checks import broken_symmetry, operator_finite
from ._solver.cholesky import Cholesky
from ._solver.diagonal import Diagonal
from ._solver.lu import LU
from ._solver.sparse_cholesky import SparseCholesky, symbolic_of
from ._solver.triangular import Triangular
from ._sparse import selinv
from ._structure import read_diagonal
from ._tags import negative_semidefinite_tag, positive_semidefinite_tag


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


def _slogdet_lu(matrix):
    return _slogdet_and_inverse_lu(matrix)[:2]


def _check_square(operator, name):
    if operator.shape[0] != operator.shape[1]:
        raise ValueError(f"{name} needs a square operator; got shape {operator.shape}.")


_NEGATIVE_DETERMINANT = (
    "The operator is not positive definite: its Cholesky factorization failed or (without a "
    "positive semidefinite tag) its determinant is negative, so its real log-determinant is "
    "undefined. Check the tag (a tagged matrix is read by its lower triangle), or use "
    "linsolve.slogdet."
)


def finish(name: str, value, result, throw: bool, return_result: bool, messages=None):
    """The common ending of `logdet`, `slogdet`, `selected_inverse` and `diag_inverse`:
    with `throw`, a failure raises (under `jit` too, like `linear_solve`); with
    `return_result`, `(value, result)` is returned. `messages` overrides the wording of
    some codes' errors."""
    from ._solve import _raise_on_failure

    if throw:
        leaves = [x for x in jax.tree_util.tree_leaves(value) if eqx.is_inexact_array(x)]
        flag = _raise_on_failure(
            jnp.zeros((), leaves[0].dtype), result, "factorization", name=name, messages=messages
        )
        # Added to every output, so that using any of them runs the check.
        value = jax.tree_util.tree_map(
            lambda x: x + flag.astype(x.dtype) if eqx.is_inexact_array(x) else x, value
        )
    return (value, result) if return_result else value


def _finite(x) -> Array:
    return jnp.all(jnp.isfinite(jax.lax.stop_gradient(x)))


def _failure(ok, inputs_finite, code=RESULTS.not_positive_definite) -> Array:
    """`code` where the computation failed (`~ok`) on finite input, `nonfinite_input`
    where the input is not finite."""
    return first_failure((~inputs_finite, RESULTS.nonfinite_input), (~ok, code))


def _slogdet(operator, solver):
    """`(sign, logabsdet, result)`: the failures `slogdet` reports are NaN/Inf input, a
    failed Cholesky factorization (not positive definite) and a matrix-free operator that
    breaks its symmetry promise. A singular matrix is not one: `(0, −inf)` is its answer."""
    if isinstance(solver, SparseCholesky):
        # d logdet from the selected inverse (Takahashi), never a dense inverse.
        sym = symbolic_of(operator, solver.ordering)
        value, ok = selinv.logdet_and_ok(sym, operator.values)
        result = _failure(jax.lax.stop_gradient(ok), _finite(operator.values))
        return jnp.ones((), operator.dtype), value, result
    if isinstance(solver, (Diagonal, Triangular)):
        solver.init(operator)  # trace-time tag checks only; XLA drops the unused work
        d = read_diagonal(operator.diag(), operator.tags)
        absd = jnp.abs(d)
        sign = jnp.prod(d / jnp.where(absd == 0, 1, absd).astype(d.dtype))
        sign = jnp.where(jnp.any(d == 0), 0, sign).astype(d.dtype)
        # NaN above / below the diagonal of a triangular operator does not change its
        # determinant, but it is NaN input all the same.
        finite = _finite(d) if isinstance(solver, Diagonal) else operator_finite(operator)
        return sign, jnp.sum(jnp.log(absd)), _failure(jnp.asarray(True), finite)
    if isinstance(solver, (Cholesky, LU)):
        if isinstance(solver, Cholesky):
            _cholesky_tags(operator)
        matrix = dense_input(operator)
        checks = [(~_finite(matrix), RESULTS.nonfinite_input)]
        asymmetric = broken_symmetry(operator, jax.lax.stop_gradient(matrix))
        if asymmetric is not None:
            checks.append((asymmetric, RESULTS.not_symmetric))
        if isinstance(solver, LU):
            sign, logabsdet = _slogdet_lu(matrix)
            return sign, logabsdet, first_failure(*checks)
        n = operator.shape[0]
        if negative_semidefinite_tag in operator.tags:
            sign = jnp.asarray(-1.0 if n % 2 else 1.0, matrix.dtype)
            value = _logdet_cholesky(-matrix)
        else:
            sign, value = jnp.ones((), matrix.dtype), _logdet_cholesky(matrix)
        # A failed factorization shows as a NaN log-determinant (−inf: a zero pivot).
        checks.append((~_finite(value), RESULTS.not_positive_definite))
        return sign, value, first_failure(*checks)
    raise ValueError(
        f"slogdet supports the Cholesky, LU, SparseCholesky, Triangular and Diagonal solvers; "
        f"got {type(solver).__name__}."
    )


def _cholesky_tags(operator):
    """Cholesky's trace-time checks (tags, shape), without its factorization."""
    tags = operator.tags
    if not tags & {positive_semidefinite_tag, negative_semidefinite_tag}:
        raise ValueError(
            "Cholesky needs an operator tagged positive_semidefinite_tag or "
            f"negative_semidefinite_tag; got tags {tag_names(tags)}. Use LU() otherwise."
        )


_THROW_DOC = """
    - `throw`: if `True` (default), a failure raises (also under `jit`), as in
      [`linsolve.linear_solve`][]; if `False`, the value is returned as computed (NaN
      where it failed).
    - `return_result`: if `True`, return `(value, result)` where `result` is a
      [`linsolve.RESULTS`][] code (an int32 array; works under `jit` and `vmap`)."""


def slogdet(
    operator: Any,
    solver: AbstractSolver = AutoSolver(),
    *,
    throw: bool = True,
    return_result: bool = False,
) -> tuple[Inexact[Array, ""], Real[Array, ""]]:
    """Sign and log of the absolute value of the determinant, differentiably.

    **Arguments:**

    - `operator`: a square operator (dense, diagonal, triangular, matrix-free, lineax).
    - `solver`: the factorization to use: `AutoSolver()` (from the tags), `LU()`,
      `Cholesky()`, `SparseCholesky()` (positive definite `SparseOperator`: the gradient
      comes from the selected inverse), `Triangular()` or `Diagonal()`.
    {throw}

    **Returns:**

    `(sign, logabsdet)` with `det = sign * exp(logabsdet)`; `sign` is complex of modulus
    one for complex operators, and `(0, -inf)` for a singular operator (an answer, not a
    failure). With `return_result=True`, `((sign, logabsdet), result)`.

    Failures: `RESULTS.nonfinite_input` (NaN/Inf in the operator),
    `RESULTS.not_positive_definite` (the Cholesky factorization failed),
    `RESULTS.not_symmetric` (a matrix-free operator breaks its symmetry tag).
    """
    operator = as_operator(operator)
    _check_square(operator, "slogdet")
    if isinstance(solver, AutoSolver):
        solver = solver.select(operator, direct=True)
    sign, logabsdet, result = _slogdet(operator, solver)
    return finish("linsolve.slogdet", (sign, logabsdet), result, throw, return_result)


def logdet(
    operator: Any,
    solver: AbstractSolver = AutoSolver(),
    *,
    throw: bool = True,
    return_result: bool = False,
) -> Inexact[Array, ""]:
    """`log det A`, differentiably; meant for positive definite operators (then the
    Cholesky factorization is used and the result is real).

    **Arguments:**

    - `operator`: a square operator; tag it `positive_semidefinite_tag` to use Cholesky.
    - `solver`: as for [`linsolve.slogdet`][].
    {throw}

    **Returns:**

    `log det A`: real for operators tagged positive semidefinite. Otherwise it is
    `log(sign) + logabsdet`: complex for complex operators, `-inf` for a singular one.
    With `return_result=True`, `(logdet, result)`.

    Failures: those of [`linsolve.slogdet`][], and `RESULTS.not_positive_definite` for a
    real operator with a negative determinant (the value is then NaN).
    """
    operator = as_operator(operator)
    _check_square(operator, "logdet")
    if isinstance(solver, AutoSolver):
        solver = solver.select(operator, direct=True)
    sign, logabsdet, result = _slogdet(operator, solver)
    if (
        isinstance(solver, (Cholesky, SparseCholesky))
        and negative_semidefinite_tag not in operator.tags
    ):
        value = logabsdet  # positive definite: real, even for complex hermitian input
    elif jnp.iscomplexobj(sign):
        value = jnp.log(sign) + logabsdet
    else:
        value = jnp.where(sign > 0, logabsdet, jnp.where(sign == 0, -jnp.inf, jnp.nan))
        negative = jax.lax.stop_gradient(sign) < 0
        result = first_failure(
            (result != RESULTS.successful, result), (negative, RESULTS.not_positive_definite)
        )
    messages = {RESULTS.not_positive_definite: _NEGATIVE_DETERMINANT}
    return finish("linsolve.logdet", value, result, throw, return_result, messages)


slogdet.__doc__ = slogdet.__doc__.replace("    {throw}", _THROW_DOC.strip("\n"))
logdet.__doc__ = logdet.__doc__.replace("    {throw}", _THROW_DOC.strip("\n"))
