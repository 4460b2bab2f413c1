"""The structure convention: which stored entries a tagged array defines, and how.

Every dense read of a tagged array in linsolve goes through `effective_matrix`, so the
gradient of anything computed from it is automatically the derivative of what was
computed: JAX folds the contributions of mirrored entries into the read ones (with the
conjugate for hermitian operators) and unread entries get exactly zero.

Selection (`jnp.where` on iota masks, which lowers to `select`) is used
rather than multiplication by masks, so garbage (NaN/Inf included) in an unread triangle
never leaks into the result, and no n×n constant is baked into the compiled program.
"""

import jax
import jax.numpy as jnp

from ._tags import (
    diagonal_tag,
    is_hermitian,
    is_self_adjoint,
    lower_triangular_tag,
    unit_diagonal_tag,
    upper_triangular_tag,
)


def read_diagonal(d, tags: frozenset):
    """The diagonal that is read: ones for unit-diagonal, real part for hermitian."""
    if unit_diagonal_tag in tags:
        return jnp.ones_like(d)
    if is_hermitian(tags, jnp.iscomplexobj(d)):
        return jnp.real(d).astype(d.dtype)
    return d


def _positions(a):
    """Row and column index grids (iota: no n×n constant in the compiled program)."""
    shape = a.shape[-2:]
    return jax.lax.broadcasted_iota(jnp.int32, shape, 0), jax.lax.broadcasted_iota(jnp.int32, shape, 1)


def effective_matrix(a, tags: frozenset):
    """The matrix a tagged square array `a` (shape (..., n, n)) defines under the structure
    convention; an untagged array (any shape) is returned as is. Differentiable; unread
    entries get zero gradient.

    Written as a sum of selections on disjoint position masks (lower, diagonal, upper), which
    XLA fuses, with its reverse-mode transpose, into one pass over the matrix. (A nested
    `select(lower, a, aᵀ)` computes the same, but XLA:CPU compiles it in time growing
    with n² — minutes at n = 1000.)"""
    if not tags:
        return a
    row, col = _positions(a)
    zero = jnp.zeros_like(a)

    def part(mask, x):
        return jnp.where(mask, x, zero)

    # The diagonal: what `read_diagonal` says, without extracting it (no gather/scatter).
    if unit_diagonal_tag in tags:
        diag = part(row == col, jnp.ones_like(a))
    elif is_hermitian(tags, jnp.iscomplexobj(a)):
        diag = part(row == col, jnp.real(a).astype(a.dtype))
    else:
        diag = part(row == col, a)
    lower = lower_triangular_tag in tags
    upper = upper_triangular_tag in tags
    if diagonal_tag in tags or (is_self_adjoint(tags) and (lower or upper)):
        # Diagonal, or self-adjoint and triangular: only the diagonal survives.
        return diag
    if is_self_adjoint(tags):
        mirror = jnp.swapaxes(a, -1, -2)
        if is_hermitian(tags, jnp.iscomplexobj(a)):
            mirror = jnp.conj(mirror)
        return part(row > col, a) + diag + part(row < col, mirror)
    if lower:
        return part(row > col, a) + diag
    if upper:
        return part(row < col, a) + diag
    return part(row != col, a) + diag
