"""The structure convention: which stored entries a tagged array defines, and how.

Every dense read of a tagged array in linsolve goes through `effective_matrix`, so the
gradient of anything computed from it is automatically the derivative of what was
computed: JAX folds the contributions of mirrored entries into the read ones (with the
conjugate for hermitian operators) and unread entries get exactly zero.

Selection (`jnp.where` on iota masks, which lowers to `select`) is used
rather than multiplication by masks, so garbage (NaN/Inf included) in an unread triangle
never leaks into the result, and no n×n constant is baked into the compiled program.
"""

import functools

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
    return jax.lax.broadcasted_iota(jnp.int32, shape, 0), jax.lax.broadcasted_iota(
        jnp.int32, shape, 1
    )


def _diagonal_value(a, tags: frozenset):
    """What `read_diagonal` says each diagonal entry is, as a full array (only its
    diagonal is meant): selected on the diagonal mask, no gather/scatter."""
    if unit_diagonal_tag in tags:
        return jnp.ones_like(a)
    if is_hermitian(tags, jnp.iscomplexobj(a)):
        return jnp.real(a).astype(a.dtype)
    return a


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

    diag = part(row == col, _diagonal_value(a, tags))
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


_NARROWING = frozenset(
    {lower_triangular_tag, upper_triangular_tag, diagonal_tag, unit_diagonal_tag}
)


def _split_parts(a, tags: frozenset):
    """(strict lower triangle, read diagonal) of a self-adjoint array, each zero elsewhere."""
    row, col = _positions(a)
    zero = jnp.zeros_like(a)
    return jnp.where(row > col, a, zero), jnp.where(row == col, _diagonal_value(a, tags), zero)


def _mirror_mv(lower, x, hermitian: bool):
    """`lowerᵀ x` (`lowerᴴ x` if hermitian), contracting over the rows of `lower`, so no
    transposed copy of the matrix is formed (nor, in reverse mode, of its cotangent)."""
    if hermitian:
        return jnp.conj(jnp.tensordot(lower, jnp.conj(x), axes=((0,), (0,))))
    return jnp.tensordot(lower, x, axes=((0,), (0,)))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _self_adjoint_matvec(a, x, tags):
    return effective_matrix(a, tags) @ x


@_self_adjoint_matvec.defjvp
def _self_adjoint_matvec_jvp(tags, primals, tangents):
    a, x = primals
    ta, tx = tangents
    y = _self_adjoint_matvec(a, x, tags)
    # Ȧ x as (strict lower + diagonal) x + (strict lower)ᵀ x: linear in Ȧ with no transpose
    # of Ȧ, so its reverse-mode transpose — the gradient w.r.t. the stored matrix — is two
    # masked outer products that XLA fuses into one cheap pass (the transposed form
    # becomes a heavier fusion that XLA:CPU splits across threads, ~0.1 ms at n = 100).
    lower, diag = _split_parts(ta, tags)
    hermitian = is_hermitian(tags, jnp.iscomplexobj(a))
    ty = (lower + diag) @ x + _mirror_mv(lower, x, hermitian)
    return y, ty + _self_adjoint_matvec(a, tx, tags)


def _plain_self_adjoint(tags: frozenset) -> bool:
    """Self-adjoint with a full lower triangle read (no triangular/diagonal/unit tag)."""
    return is_self_adjoint(tags) and not (tags & _NARROWING)


def structured_matvec(a, x, tags: frozenset):
    """`effective_matrix(a, tags) @ x`, with a derivative in `a` that XLA compiles lean."""
    if _plain_self_adjoint(tags):
        return _self_adjoint_matvec(a, x, tags)
    return effective_matrix(a, tags) @ x


def lower_read(a, tags: frozenset):
    """An array whose lower triangle (diagonal included) is that of `effective_matrix(a,
    tags)`, upper triangle unspecified: for a plain self-adjoint array that is `a` itself
    (with a real diagonal if hermitian), so a one-triangle factorization reads `a` once."""
    if not _plain_self_adjoint(tags):
        return effective_matrix(a, tags)
    if is_hermitian(tags, jnp.iscomplexobj(a)):
        row, col = _positions(a)
        return jnp.where(row == col, _diagonal_value(a, tags), a)
    return a
