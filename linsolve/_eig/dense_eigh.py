"""Dense eigendecomposition of a symmetric operator (or pencil), under the structure
convention, with the same derivative rule as `lobpcg`.

The matrix is `operator.as_matrix()`, which for a tagged dense matrix is built from its
lower triangle: gradients w.r.t. the stored array fold into that triangle and the unread
upper triangle gets exactly zero. With `B`, the pencil is reduced by the Cholesky factor
`B = L Lᵀ` to `L⁻¹ A L⁻ᵀ` and the eigenvectors mapped back, `V = L⁻ᵀ Y`.

The derivative is the `lobpcg` one with U the whole eigenbasis (`adjoint.py`), so
degenerate eigenvalues are handled the same way: pairs closer than
`degeneracy_rtol · max|λ|` are one eigenspace, and basis-independent losses (sums of
its eigenvalues, its projector) get finite, exact gradients where `jnp.linalg.eigh`'s
rule divides by zero.
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array

from .._dtype import check_same_dtype
from .._lapack import unbatched_on_cpu
from .._solution import RESULTS, first_failure
from .adjoint import eigenpair_tangents
from .lobpcg_iteration import Eigenpairs, check_operator


@unbatched_on_cpu(1)
def _standard_eigh(a):
    return jnp.linalg.eigh(a)


@unbatched_on_cpu(2)
def _generalized_eigh(a, b):
    chol = jnp.linalg.cholesky(b)
    c = jsl.solve_triangular(chol, a, lower=True)
    c = jsl.solve_triangular(chol, c.T, lower=True)
    values, y = jnp.linalg.eigh(c)
    return values, jsl.solve_triangular(chol.T, y, lower=False)


def _dense_eigh(a, b):
    # (The primal of a custom JVP: never differentiated, so it may loop under vmap.)
    a = jax.lax.stop_gradient(a)
    values, vectors = (
        _standard_eigh(a) if b is None else _generalized_eigh(a, jax.lax.stop_gradient(b))
    )
    # A plain pair (not jnp's `EighResult`): the JVP rule's primal output must have the
    # same pytree structure, which JAX checks when the rule runs inside a jit.
    return values, vectors


@eqx.filter_custom_jvp
def _eigh(op, B, *, rtol):
    del rtol
    return _dense_eigh(op.as_matrix(), None if B is None else B.as_matrix())


@_eigh.def_jvp
def _eigh_jvp(primals, tangents, *, rtol):
    op, B = primals
    t_op, t_B = tangents
    values, vectors = _eigh(op, B, rtol=rtol)
    threshold = rtol * jnp.max(jnp.abs(values))
    t_values, t_vectors = eigenpair_tangents(
        op,
        B,
        t_op,
        t_B,
        values,
        vectors,
        largest=False,
        threshold=threshold,
        solver=None,
        preconditioner=None,
        throw=False,
        complete=True,
    )
    return (values, vectors), (t_values, t_vectors)


def eigh(operator: Any, B: Any = None, *, degeneracy_rtol: float | None = None) -> Eigenpairs:
    """All eigenpairs of a symmetric operator, densely (`jnp.linalg.eigh` on
    `operator.as_matrix()`); with `B`, of the pencil `A v = λ B v`. For small operators,
    and as a reference for [`linsolve.lobpcg`][].

    **Arguments:**

    - `operator`: `A`, tagged symmetric (or semidefinite); a tagged dense matrix is read
      by its lower triangle. Any linsolve or lineax operator (matrix-free ones are
      materialised with `as_matrix`).
    - `B`: symmetric positive definite, or `None`.
    - `degeneracy_rtol`: eigenvalues closer than `degeneracy_rtol · max|λ|` are one
      eigenspace for the derivative (default `sqrt(eps)`), as in `lobpcg`.

    **Returns:**

    An [`linsolve.Eigenpairs`][] with all `n` eigenvalues ascending, `B`-orthonormal
    eigenvectors, `result` (`successful`; `nonfinite_input` for NaN/Inf;
    `not_positive_definite` for a `B` that is not positive definite, or singular to
    working precision) and empty `stats`. Differentiable w.r.t. the arrays inside `A` and `B`.
    """
    op = check_operator(operator, "operator")
    if B is not None:
        B = check_operator(B, "B")
        if B.shape != op.shape:
            raise ValueError(f"eigh: `B` has shape {B.shape}, the operator {op.shape}.")
        check_same_dtype(op.dtype, B.dtype, "the operator", "eigh: `B`")
    dtype = op.dtype
    rtol = float(jnp.finfo(dtype).eps) ** 0.5 if degeneracy_rtol is None else float(degeneracy_rtol)
    values, vectors = _eigh(op, B, rtol=rtol)
    finite = jnp.all(jnp.isfinite(jax.lax.stop_gradient(values))) & jnp.all(
        jnp.isfinite(jax.lax.stop_gradient(vectors))
    )
    a = jax.lax.stop_gradient(op.as_matrix())
    finite_in = jnp.all(jnp.isfinite(a))
    not_pd = jnp.asarray(False)
    if B is not None:
        b = jax.lax.stop_gradient(B.as_matrix())
        finite_in = finite_in & jnp.all(jnp.isfinite(b))
        not_pd = ~_positive_definite(b)
    result = first_failure(
        (~finite_in, RESULTS.nonfinite_input),
        (not_pd, RESULTS.not_positive_definite),
        (~finite, RESULTS.nonfinite_input),
    )
    return Eigenpairs(values, vectors, result, {})


@unbatched_on_cpu(1)
def _cholesky(b):
    return jnp.linalg.cholesky(b)


def _positive_definite(b) -> Array:
    """Whether `B` is numerically positive definite: its Cholesky factorization succeeds
    with no pivot zero to working precision (`min lᵢᵢ² > n eps max bᵢᵢ`; a `B` with
    a smaller pivot is singular to rounding, and the reduced problem `L⁻¹ A L⁻ᵀ` garbage).
    A second Cholesky factorization: a third of the cost of the dense eigensolver's."""
    n = b.shape[-1]
    d = jnp.diagonal(_cholesky(b), axis1=-2, axis2=-1)
    eps = jnp.finfo(d.dtype).eps
    big = jnp.max(jnp.abs(jnp.diagonal(b, axis1=-2, axis2=-1)), axis=-1)
    return jnp.all(jnp.isfinite(d)) & (jnp.min(d) ** 2 > n * eps * big)
