"""The structure convention: which stored entries a tagged array defines, and how.

Every dense read of a tagged array in linsolve goes through `effective_matrix`, so the
gradient of anything computed from it is automatically the derivative of what was
computed: JAX folds the contributions of mirrored entries into the read ones (with the
conjugate for hermitian operators) and unread entries get exactly zero.

Selection (`jnp.where` / `jnp.tril`, which lower to `select` on iota masks) is used
rather than multiplication by masks, so garbage (NaN/Inf included) in an unread triangle
never leaks into the result, and no n×n constant is baked into the compiled program.
"""

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


def _eye_mask(a):
    m, n = a.shape[-2:]
    return jnp.eye(m, n, dtype=bool)


def _with_diag(a, d):
    """`a` with its (square) diagonal replaced by `d`."""
    return jnp.where(_eye_mask(a), d[..., None, :], a)


def effective_matrix(a, tags: frozenset):
    """The matrix a tagged square array `a` (shape (..., n, n)) defines under the structure
    convention; an untagged array (any shape) is returned as is. Differentiable; unread
    entries get zero gradient."""
    if not tags:
        return a
    d = read_diagonal(jnp.diagonal(a, axis1=-2, axis2=-1), tags)
    lower = lower_triangular_tag in tags
    upper = upper_triangular_tag in tags
    if diagonal_tag in tags or (is_self_adjoint(tags) and (lower or upper)):
        # Diagonal, or self-adjoint and triangular: only the diagonal survives.
        return _with_diag(jnp.zeros_like(a), d)
    if is_self_adjoint(tags):
        strict = jnp.tril(a, -1)
        mirror = jnp.swapaxes(strict, -1, -2)
        if is_hermitian(tags, jnp.iscomplexobj(a)):
            mirror = jnp.conj(mirror)
        return _with_diag(strict + mirror, d)
    if lower:
        return _with_diag(jnp.tril(a), d)
    if upper:
        return _with_diag(jnp.triu(a), d)
    return _with_diag(a, d)
