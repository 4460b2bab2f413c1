"""Entries of the inverse: `selected_inverse` and `diag_inverse`, differentiable."""

from typing import Any

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Inexact

from ._operator import as_operator
from ._solve import linear_solve
from ._sparse import selinv
from ._sparse.operator import SparseOperator
from ._solver.sparse_cholesky import symbolic_of
from ._tags import hermitian_tag, symmetric_tag


def selected_inverse(operator: Any) -> SparseOperator:
    """The entries of `A⁻¹` on the sparsity pattern of the Cholesky factor of `A`
    (Takahashi recurrences on the supernodal factor; never a dense inverse).

    **Arguments:**

    - `operator`: a `SparseOperator` tagged `positive_semidefinite_tag` (real symmetric
      or complex hermitian).

    **Returns:**

    A `SparseOperator` tagged symmetric (hermitian for complex input), storing the lower triangle of `A⁻¹` restricted to
    the pattern of `L` (which contains the lower pattern of `A`). Differentiable w.r.t. the
    operator's values.
    """
    operator = as_operator(operator)
    sym = symbolic_of(operator)
    rows, cols = selinv.l_pattern(sym)
    values = selinv.selected_inverse_on_l(sym, operator.values)
    order = np.lexsort((rows, cols))  # CSC: by column, then row
    n = operator.shape[0]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=n))])
    tag = hermitian_tag if jnp.iscomplexobj(values) else symmetric_tag
    return SparseOperator(values[order], rows[order], indptr, (n, n), tag)


def diag_inverse(operator: Any) -> Inexact[Array, " n"]:
    """`diag(A⁻¹)`, e.g. the marginal variances of a Gaussian Markov random field with
    precision `A`.

    **Arguments:**

    - `operator`: a positive definite `SparseOperator` (selected inverse, never a dense
      inverse), or any square operator (then `A⁻¹` is formed column by column with
      `linear_solve`, so only for small dense operators).

    **Returns:**

    The vector `diag(A⁻¹)`, differentiable.
    """
    operator = as_operator(operator)
    if isinstance(operator, SparseOperator):
        return selinv.diag_inverse(symbolic_of(operator), operator.values)
    n = operator.shape[0]
    if operator.shape[1] != n:
        raise ValueError(f"diag_inverse needs a square operator; got shape {operator.shape}.")
    eye = jnp.eye(n, dtype=operator.dtype)
    return jnp.diagonal(linear_solve(operator, eye).value)
