"""Entries of the inverse: `selected_inverse` and `diag_inverse`, differentiable."""

from typing import Any, Literal, cast, overload

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Inexact, Int

from ._logdet import finish
from ._operator import as_operator, is_sparse
from ._solution import RESULTS, first_failure
from ._solve import linear_solve
from ._solver.abstract import check_square
from ._solver.sparse_cholesky import symbolic_of
from ._sparse import selinv
from ._sparse.operator import SparseOperator
from ._tags import hermitian_tag, symmetric_tag


def _sparse_result(operator: SparseOperator, out: Array) -> Array:
    """The code of a selected inverse computed as `out`: a failed factorization (not
    positive definite) or NaN/Inf input makes it NaN throughout; finite input giving a
    non-finite result otherwise is an overflow."""
    values = jax.lax.stop_gradient(operator.values)
    finite_in = jnp.all(jnp.isfinite(values))
    finite_out = jnp.all(jnp.isfinite(jax.lax.stop_gradient(out)))
    # Cholesky failure spreads NaN through every entry; overflow leaves Inf, not NaN.
    failed_factor = jnp.any(jnp.isnan(jax.lax.stop_gradient(out)))
    code = jnp.where(failed_factor, RESULTS.not_positive_definite, RESULTS.nonfinite_output)
    return first_failure((~finite_in, RESULTS.nonfinite_input), (~finite_out, code))


# The return types depend on `return_result`: a value, or `(value, result)`.
@overload
def selected_inverse(
    operator: Any, *, throw: bool = ..., return_result: Literal[False] = ...
) -> SparseOperator: ...
@overload
def selected_inverse(
    operator: Any, *, throw: bool = ..., return_result: Literal[True]
) -> tuple[SparseOperator, Int[Array, ""]]: ...
@overload
def selected_inverse(
    operator: Any, *, throw: bool = ..., return_result: bool
) -> SparseOperator | tuple[SparseOperator, Int[Array, ""]]: ...
def selected_inverse(
    operator: Any, *, throw: bool = True, return_result: bool = False
) -> SparseOperator | tuple[SparseOperator, Int[Array, ""]]:
    """The entries of `A⁻¹` on the sparsity pattern of the Cholesky factor of `A`
    (Takahashi recurrences on the supernodal factor; never a dense inverse).

    **Arguments:**

    - `operator`: a `SparseOperator` tagged `positive_semidefinite_tag` (real symmetric
      or complex hermitian).
    - `throw`: if `True` (default), a failure raises (also under `jit`), as in
      [`linsolve.linear_solve`][]; if `False`, the values are returned as computed (NaN
      where the factorization failed).
    - `return_result`: if `True`, return `(inverse, result)` with a [`linsolve.RESULTS`][]
      code: `not_positive_definite` (the factorization failed), `nonfinite_input`, or
      `nonfinite_output` (an entry overflowed).

    **Returns:**

    A `SparseOperator` tagged symmetric (hermitian for complex input), storing the lower triangle of `A⁻¹` restricted to
    the pattern of `L` (which contains the lower pattern of `A`). Differentiable w.r.t. the
    operator's values.
    """
    operator = as_operator(operator)
    sym = symbolic_of(operator)
    rows, cols = selinv.l_pattern(sym)
    values = selinv.selected_inverse_on_l(sym, operator.values)
    result = _sparse_result(operator, values)
    values = cast(Array, finish("linsolve.selected_inverse", values, result, throw, False))
    n = operator.shape[0]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=n))])  # CSC order
    tag = hermitian_tag if jnp.iscomplexobj(values) else symmetric_tag
    out = SparseOperator(values, rows, indptr, (n, n), tag)
    return (out, result) if return_result else out


@overload
def diag_inverse(
    operator: Any, *, throw: bool = ..., return_result: Literal[False] = ...
) -> Inexact[Array, " n"]: ...
@overload
def diag_inverse(
    operator: Any, *, throw: bool = ..., return_result: Literal[True]
) -> tuple[Inexact[Array, " n"], Int[Array, ""]]: ...
@overload
def diag_inverse(
    operator: Any, *, throw: bool = ..., return_result: bool
) -> Inexact[Array, " n"] | tuple[Inexact[Array, " n"], Int[Array, ""]]: ...
def diag_inverse(
    operator: Any, *, throw: bool = True, return_result: bool = False
) -> Inexact[Array, " n"] | tuple[Inexact[Array, " n"], Int[Array, ""]]:
    """`diag(A⁻¹)`, e.g. the marginal variances of a Gaussian Markov random field with
    precision `A`.

    **Arguments:**

    - `operator`: a positive definite `SparseOperator` (selected inverse, never a dense
      inverse), or any square operator (then `A⁻¹` is formed column by column with
      `linear_solve`, so only for small dense operators).
    - `throw`: if `True` (default), a failure raises (also under `jit`); if `False`, the
      values are returned as computed.
    - `return_result`: if `True`, return `(diag, result)` with a [`linsolve.RESULTS`][]
      code: for a sparse operator as in [`linsolve.selected_inverse`][], otherwise that of
      the `linear_solve` (e.g. `singular`).

    **Returns:**

    The vector `diag(A⁻¹)`, differentiable.
    """
    operator = as_operator(operator)
    if is_sparse(operator):
        out = selinv.diag_inverse(symbolic_of(operator), operator.values)
        return finish(
            "linsolve.diag_inverse", out, _sparse_result(operator, out), throw, return_result
        )
    check_square(operator, "diag_inverse")
    n = operator.shape[0]
    eye = jnp.eye(n, dtype=operator.dtype)
    sol = linear_solve(operator, eye, throw=throw)
    out = jnp.diagonal(sol.value)
    return (out, sol.result) if return_result else out
