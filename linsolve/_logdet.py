"""`logdet` and `slogdet`: log-determinants from a solver's factorization.

Each solver with a determinant ([`linsolve.AbstractDeterminantSolver`][]) computes it
with its own derivative rule (`_solver/determinant.py`); this module picks the solver and
reports failures, as `linear_solve` does.
"""

from typing import Any, Literal, overload

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Inexact, Int, Real

from ._operator import as_operator
from ._solution import RESULTS, first_failure, raise_on_failure
from ._solver.abstract import AbstractDeterminantSolver, AbstractSolver, check_square
from ._solver.auto import AutoSolver


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
    if throw:
        leaves = [x for x in jax.tree_util.tree_leaves(value) if eqx.is_inexact_array(x)]
        # A real zero: cast to each leaf's dtype below (complex → real casts are deprecated).
        zero = jnp.zeros((), jnp.finfo(leaves[0].dtype).dtype)
        flag = raise_on_failure(zero, result, "factorization", name=name, messages=messages)
        # Added to every output, so that using any of them runs the check.
        value = jax.tree_util.tree_map(
            lambda x: x + flag.astype(x.dtype) if eqx.is_inexact_array(x) else x, value
        )
    return (value, result) if return_result else value


def _determinant_solver(operator, solver: AbstractSolver) -> AbstractDeterminantSolver:
    """The solver whose factorization and derivative rule give the determinant: `solver`,
    or the one `AutoSolver` picks."""
    if isinstance(solver, AutoSolver):
        solver = solver.select(operator, direct=True)
    if not isinstance(solver, AbstractDeterminantSolver):
        raise ValueError(
            "slogdet supports the solvers with a determinant (Cholesky, LU, SparseCholesky, "
            f"Triangular, Diagonal); got {type(solver).__name__}."
        )
    return solver


_THROW_DOC = """
    - `throw`: if `True` (default), a failure raises (also under `jit`), as in
      [`linsolve.linear_solve`][]; if `False`, the value is returned as computed (NaN
      where it failed).
    - `return_result`: if `True`, return `(value, result)` where `result` is a
      [`linsolve.RESULTS`][] code (an int32 array; works under `jit` and `vmap`)."""


_SignLogabsdet = tuple[Inexact[Array, ""], Real[Array, ""]]


# The return type depends on `return_result`: a value, or `(value, result)`.
@overload
def slogdet(
    operator: Any,
    solver: AbstractSolver = ...,
    *,
    throw: bool = ...,
    return_result: Literal[False] = ...,
) -> _SignLogabsdet: ...
@overload
def slogdet(
    operator: Any, solver: AbstractSolver = ..., *, throw: bool = ..., return_result: Literal[True]
) -> tuple[_SignLogabsdet, Int[Array, ""]]: ...
@overload
def slogdet(
    operator: Any, solver: AbstractSolver = ..., *, throw: bool = ..., return_result: bool
) -> _SignLogabsdet | tuple[_SignLogabsdet, Int[Array, ""]]: ...
def slogdet(
    operator: Any,
    solver: AbstractSolver = AutoSolver(),
    *,
    throw: bool = True,
    return_result: bool = False,
) -> _SignLogabsdet | tuple[_SignLogabsdet, Int[Array, ""]]:
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
    check_square(operator, "slogdet")
    sign, logabsdet, result = _determinant_solver(operator, solver).slogdet(operator)
    return finish("linsolve.slogdet", (sign, logabsdet), result, throw, return_result)


@overload
def logdet(
    operator: Any,
    solver: AbstractSolver = ...,
    *,
    throw: bool = ...,
    return_result: Literal[False] = ...,
) -> Inexact[Array, ""]: ...
@overload
def logdet(
    operator: Any, solver: AbstractSolver = ..., *, throw: bool = ..., return_result: Literal[True]
) -> tuple[Inexact[Array, ""], Int[Array, ""]]: ...
@overload
def logdet(
    operator: Any, solver: AbstractSolver = ..., *, throw: bool = ..., return_result: bool
) -> Inexact[Array, ""] | tuple[Inexact[Array, ""], Int[Array, ""]]: ...
def logdet(
    operator: Any,
    solver: AbstractSolver = AutoSolver(),
    *,
    throw: bool = True,
    return_result: bool = False,
) -> Inexact[Array, ""] | tuple[Inexact[Array, ""], Int[Array, ""]]:
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
    check_square(operator, "logdet")
    solver = _determinant_solver(operator, solver)
    sign, logabsdet, result = solver.slogdet(operator)
    if solver.positive_definite(operator):
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


slogdet.__doc__ = (slogdet.__doc__ or "").replace("    {throw}", _THROW_DOC.strip("\n"))
logdet.__doc__ = (logdet.__doc__ or "").replace("    {throw}", _THROW_DOC.strip("\n"))
