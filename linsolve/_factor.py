r"""Differentiable dense factorizations: `cholesky` and `lu`.

Both functions work under `jax.jit`, `jax.vmap` and forward/reverse mode
differentiation at any order, for float32/float64/complex64/complex128.

**Cholesky.** Following the structure convention (SPEC section 3), the input is
read by its lower triangle only. The effective matrix is built with `jnp.where`
masks, so nothing from the strict upper triangle (nor the imaginary part of the
diagonal, for complex input) reaches the output or the gradient, not even NaN.
The completed matrix is factored by `_lapack_ad.cholesky` (LAPACK, or plain XLA
kernels for a `vmap`ped batch of small matrices: never a batched LAPACK call, which can
deadlock on CPU with jaxlib 0.10), whose JVP assumes a hermitian tangent; the tangent is
hermitian precisely because it flows through the same completion.

**LU.** The forward factorization is LAPACK's partial-pivoting LU (through `_lapack_ad`,
as above), and its triangular solves are `_lapack_ad`'s. The
derivative is our own `jax.custom_jvp` rule; reverse mode comes from JAX
transposing it, so the rule uses only ops that are linear and transposable in
the tangent (matmuls, `triangular_solve` in its right-hand side, masks by
static `where`). Pivoting is piecewise constant, so `P` has
zero derivative.

Derivation. Let `k = min(m, n)`. Differentiating `A = P L U` with `P` fixed
gives `Pᵀ dA = dL U + L dU`.

*Square* (`m = n = k`). Put `Y = L⁻¹ Pᵀ dA` and `M = L⁻¹ dL` (strictly lower,
since `L` is unit lower). Then `Y = M U + dU`, i.e. `X := Y U⁻¹ = M + dU U⁻¹`
with `dU U⁻¹` upper, so `M = strictly_lower(X)`. Column `j` of `X` only
involves the leading `(j+1)×(j+1)` block of `U` (because `U⁻¹` is upper), and
column `k-1` has no strictly-lower entries. Hence only `U[:k-1, :k-1]` is ever
inverted:

    M[:, :k-1] = strictly_lower(Y[:, :k-1] U[:k-1, :k-1]⁻¹),   M[:, k-1] = 0
    dL = L M,    dU = Y − M U   (upper triangular; masked to kill round-off)

The last pivot `U[k-1, k-1]` is never divided by, so a square matrix of rank
`n-1` whose leading `n-1` pivots are nonzero gets finite, correct derivatives
(the factors are smooth there), where `jax.scipy.linalg.lu` returns NaN.

*Zero pivots* (rank `<= n-2`, or a zero among the leading pivots). Partial
pivoting meets an exactly zero pivot only when the whole column below it is
zero after elimination; LAPACK then leaves that column of `L` at zero. Under a
perturbation that makes the column nonzero, `L`'s column jumps to a ratio of
perturbations: the factors are not differentiable there. The rule holds that
column fixed (`M[:, j] = 0` where `U[j, j] == 0`), which is the exact
derivative along every direction that keeps the column below the pivot zero,
and finite in every direction. Pivots that are tiny but not zero are divided
by (the computed factors are differentiable there, with large derivatives).

*Wide* (`m < n`). `U = [U₁ U₂]` with `U₁` square; the square argument applied
to the first `k` columns gives `M`, and the remaining columns of
`Y = M U + dU` give `dU₂ = Y₂ − M U₂`, again without inverse. So the
formulas above hold unchanged with `Y = L⁻¹ Pᵀ dA` of shape `(k, n)`.

*Tall* (`m > n`). Extend `L` to the invertible unit-lower `m×m` matrix
`L̃ = [L | (0; I)]`. Then `Pᵀ dA = dL U + L dU` reads `Y := L̃⁻¹ Pᵀ dA =
M U + [dU; 0]` with `dL = L̃ M`, where `M` (`m×k`) is strictly lower in its top
`k×k` block and unconstrained below it. So `M = tril(Y U⁻¹, -1)` (rows below
`k` kept whole), `dL = L̃ M` and `dU = Y[:k] − M[:k] U`. Here the full `U` is
inverted: the rows of `L` below `k` genuinely depend on `1 / U[k-1, k-1]`, so
a full-rank `U` is required.

The rule is complex-linear (no conjugates): `A = P L U` is holomorphic in the
factors.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Inexact

from . import _lapack_ad
from ._dtype import as_supported
from ._structure import effective_matrix
from ._tags import positive_semidefinite_tag


def cholesky(A: Inexact[ArrayLike, "... n n"]) -> Inexact[Array, "... n n"]:
    r"""Cholesky factor of a hermitian (real: symmetric) positive definite matrix.

    Only the **lower triangle** of `A` is read (LAPACK `uplo='L'`). The matrix
    that is factored is

    - real: `tril(A, -1) + tril(A, -1)ᵀ + diag(A)`;
    - complex: `tril(A, -1) + tril(A, -1)ᴴ + real(diag(A))`.

    The strict upper triangle (and, for complex input, the imaginary part of
    the diagonal) never influences the result, even if it holds NaN, and its
    gradient is exactly zero. Gradients with respect to the stored array agree
    with finite differences under unconstrained perturbations of every entry.

    If the effective matrix is not positive definite the result contains NaN
    (as with `jax.lax.linalg.cholesky`); no error is raised.

    **Arguments:**

    - `A`: array of shape `(..., n, n)`, float or complex. Leading dimensions
      are batch dimensions.

    **Returns:**

    Lower-triangular `L` of the same shape and dtype as `A` with
    `L @ L.conj().mT` equal to the effective matrix. Its strict upper triangle
    is zero.

    **Raises:**

    `ValueError` (at trace time) if `A` has fewer than two dimensions or its
    last two dimensions differ.
    """
    A = as_supported(A, "the matrix")
    if A.ndim < 2 or A.shape[-1] != A.shape[-2]:
        raise ValueError(
            f"cholesky expects a square matrix of shape (..., n, n), got shape {A.shape}."
        )
    # The structure convention of a PSD-tagged array: lower triangle (hermitian
    # completion, real diagonal for complex). `eff` is exactly hermitian and so is its
    # tangent, which is what the JVP of the LAPACK-style factorization assumes.
    eff = effective_matrix(A, frozenset({positive_semidefinite_tag}))
    L = _lapack_ad.cholesky(eff)  # no batched LAPACK call under vmap (see _lapack)
    # Guarantee exact zeros above the diagonal regardless of backend.
    return jnp.tril(L)


# --------------------------------------------------------------------------- #
# LU
# --------------------------------------------------------------------------- #


@jax.custom_jvp
def _lu_core(A: Array) -> tuple[Array, Array, Array]:
    """`(perm, L, U)` with `A[..., perm, :] = L @ U`."""
    m, n = A.shape[-2:]
    k = min(m, n)
    lu_, _, perm = _lapack_ad.lu(A)
    eye = jnp.eye(m, k, dtype=A.dtype)
    L = jnp.tril(lu_[..., :, :k], -1) + eye
    U = jnp.triu(lu_[..., :k, :])
    return perm, L, U


def _solve_skipping_zero_pivots(U: Array, Y: Array) -> Array:
    """`X` with `X U = Y` column by column, except that a column `j` whose pivot
    `U[j, j]` is exactly zero gets `X[:, j] = 0`: the column of `L` below a zero pivot
    is held fixed (LAPACK leaves it as eliminated, i.e. zero, rather than dividing by
    the pivot). That is the exact derivative along every direction that keeps the
    column below the zero pivot at zero, and finite in every direction (the factors
    themselves jump there). Linear in `Y`, so reverse mode transposes it."""
    diag = jnp.diagonal(U, axis1=-2, axis2=-1)
    zero = diag == 0  # a primal-only mask: masking the tangent stays linear
    j = np.arange(U.shape[-1])
    # Unit pivot and no coupling above it in a zero-pivot column, and a zero right-hand
    # side there, make that column of X exactly zero; later columns then see X[:, j] = 0.
    col_zero = zero[..., None, :]
    U_safe = jnp.where(col_zero & (j[:, None] < j[None, :]), 0, U)
    U_safe = jnp.where(col_zero & (j[:, None] == j[None, :]), 1, U_safe)
    Y = jnp.where(col_zero, 0, Y)
    return _lapack_ad.triangular_solve(U_safe, Y, left_side=False, lower=False)


# (The permutation's tangent is a float0 numpy array, which jax's annotation omits.)
@_lu_core.defjvp  # pyright: ignore[reportArgumentType]
def _lu_core_jvp(primals, tangents):
    (A,), (dA,) = primals, tangents
    # Calling the custom function itself (not lax.linalg.lu) makes higher-order
    # derivatives go through this rule again, keeping them finite too.
    perm, L, U = _lu_core(A)
    m, n = A.shape[-2:]
    k = min(m, n)
    dtype = L.dtype

    # Pᵀ dA as a matmul with the (constant) permutation matrix: cheaper to
    # compile and transpose than a gather/scatter pair at these sizes.
    Pt = (perm[..., :, None] == np.arange(m, dtype=perm.dtype)).astype(dtype)
    PtdA = Pt @ dA

    # L̃ = [L | (0; I)], the m×m unit-lower completion of L (L̃ = L if m ≤ n).
    batch = A.shape[:-2]
    if m > k:
        pad = jnp.eye(m, m - k, -k, dtype=dtype)
        Lt = jnp.concatenate([L, jnp.broadcast_to(pad, batch + pad.shape)], -1)
    else:
        Lt = L
    # Y = L̃⁻¹ Pᵀ dA; unit diagonal, so no pivot is involved.
    Y = _lapack_ad.triangular_solve(Lt, PtdA, left_side=True, lower=True, unit_diagonal=True)

    if m > n:
        # Tall: M = tril(Y U⁻¹, -1) (its rows below k are kept whole). The
        # rows of L below k genuinely depend on 1 / U[k-1, k-1], so the full
        # U is inverted.
        X = _solve_skipping_zero_pivots(U, Y)
        M = jnp.tril(X, -1)
    elif k > 1:
        # Square/wide: M = strictly_lower(Y[:, :k] U₁⁻¹). Its last column is
        # structurally zero and column j only needs U[:j+1, :j+1], so only
        # U[:k-1, :k-1] is inverted: the last pivot is never divided by.
        X = _solve_skipping_zero_pivots(U[..., : k - 1, : k - 1], Y[..., :, : k - 1])
        M = jnp.tril(X, -1)  # X is k×(k−1): its strictly lower part
        M = jnp.concatenate([M, jnp.zeros(batch + (k, 1), dtype)], axis=-1)
    else:
        M = jnp.zeros(batch + (k, k), dtype)

    # Y[:k] = M[:k] U + dU; the difference is upper in exact arithmetic, the
    # mask only removes round-off.
    dU = jnp.triu(Y[..., :k, :] - M[..., :k, :] @ U)
    # dL = L̃ M: strictly lower in its top k×k block (unit-lower × strictly
    # lower), and L₂ M₁ + Y₂ U⁻¹ below it.
    dL = Lt @ M

    dperm = np.zeros(perm.shape, dtype=jax.dtypes.float0)
    return (perm, L, U), (dperm, dL, dU)


def lu(
    A: Inexact[ArrayLike, "... m n"],
) -> tuple[Inexact[Array, "... m m"], Inexact[Array, "... m k"], Inexact[Array, "... k n"]]:
    r"""LU decomposition with partial pivoting, `A = P @ L @ U`.

    Works for square, tall (`m > n`) and wide (`m < n`) matrices; write
    `k = min(m, n)`. Differentiable in forward and reverse mode at any order.
    The permutation is piecewise constant, so `P` has zero derivative.

    For square input the derivative never divides by the last pivot
    `U[k-1, k-1]`: a rank-deficient matrix of rank `n-1` whose leading `n-1`
    pivots are nonzero (e.g. `[[1, 2], [2, 4]]`) gets finite gradients that
    agree with finite differences, where `jax.scipy.linalg.lu` gives NaN. The
    same holds for wide input.

    Derivatives are finite for every rank, the zero matrix included. Where a
    pivot other than the last one is exactly zero (rank `<= n-2`; for tall
    input any zero pivot) the factors are not differentiable: the column of
    `L` below it is zero, and jumps under perturbations that make it nonzero.
    There the derivative holds that column fixed: exact (and
    finite-difference-correct) along perturbations that keep the column below
    the zero pivot zero, finite along all others.

    **Arguments:**

    - `A`: array of shape `(..., m, n)`, float or complex. Leading dimensions
      are batch dimensions.

    **Returns:**

    A tuple `(P, L, U)`:

    - `P`: permutation matrix of shape `(..., m, m)`, same dtype as `A`.
    - `L`: unit lower-trapezoidal, shape `(..., m, k)`.
    - `U`: upper-trapezoidal, shape `(..., k, n)`.

    **Raises:**

    `ValueError` (at trace time) if `A` has fewer than two dimensions.
    """
    A = as_supported(A, "the matrix")
    if A.ndim < 2:
        raise ValueError(f"lu expects a matrix of shape (..., m, n), got shape {A.shape}.")
    perm, L, U = _lu_core(A)
    m = A.shape[-2]
    # P[r, i] = 1 iff perm[i] == r, so that (P @ L @ U)[perm] = L @ U.
    P = (perm[..., None, :] == np.arange(m, dtype=perm.dtype)[:, None]).astype(A.dtype)
    return P, L, U
