"""The dtypes linsolve computes in, and its one rule for mixing them.

LAPACK, and the tolerances of the iterative solvers, exist for single and double precision,
real and complex. Half precisions (float16, bfloat16) are refused with a message saying so,
instead of an internal error deep inside a factorization.

Mixed precisions are refused too, at trace time: every operator taking part in one solve
(the operator, `B` of a generalized eigenproblem, a preconditioner) and every vector has
the solve's dtype. Casting silently would either lose the precision a user asked for or
spend time in a precision they did not ask for; a message naming both dtypes lets them
choose.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


SUPPORTED_DTYPES = tuple(map(np.dtype, ("float32", "float64", "complex64", "complex128")))
_NAMES = "float32, float64, complex64 and complex128"


def check_supported(dtype: Any, what: str) -> None:
    """Raise a `TypeError` if `dtype` is not one linsolve computes in (integer and boolean
    data are converted to floats before this check, by the operators' constructors)."""
    if np.dtype(dtype) not in SUPPORTED_DTYPES:
        hint = (
            " Cast it to float32 (or float64) first, e.g. `x.astype(jnp.float32)`."
            if jnp.issubdtype(dtype, jnp.floating)
            else ""
        )
        raise TypeError(f"linsolve supports the dtypes {_NAMES}; {what} has dtype {dtype}.{hint}")


def check_same_dtype(dtype: Any, other: Any, what: str, other_what: str) -> None:
    """Raise a `TypeError` naming both dtypes if `other` (e.g. a preconditioner's) is not
    `dtype` (the solve's, i.e. the operator's)."""
    if np.dtype(other) != np.dtype(dtype):
        raise TypeError(
            f"{other_what} has dtype {np.dtype(other)} but {what} has dtype {np.dtype(dtype)}; "
            "linsolve does not mix precisions within one solve. Cast one of them explicitly "
            "(e.g. build it from `x.astype(...)`)."
        )


def as_supported(x: Any, what: str) -> jax.Array:
    """`x` as an array linsolve computes with: integer and boolean data promoted to JAX's
    default float (as `jnp.linalg` does), then the dtype checked (`check_supported`)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(jnp.result_type(float))
    check_supported(x.dtype, what)
    return x
