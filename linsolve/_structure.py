"""The structure convention: which stored entries a tagged array defines, and how.

Every dense read of a tagged array in linsolve goes through `effective_matrix`, so the
gradient of anything computed from it is automatically the derivative of what was
computed: JAX folds the contributions of mirrored entries into the read ones (with the
conjugate for hermitian operators) and unread entries get exactly zero.

`jnp.where` with static masks is used instead of multiplying by masks so that garbage
(including NaN/Inf) in an unread triangle never leaks into the result.
"""

import jax.numpy as jnp
import numpy as np

from ._tags import (
    diagonal_tag,
    is_hermitian,
    is_self_adjoint,
    lower_triangular_tag,
    unit_diagonal_tag,
    upper_triangular_tag,
)


def _mask(shape, k_lower: int | None, k_upper: int | None):
    """Static boolean mask of `i - j >= k_lower` and `j - i >= k_upper` style bands."""
    m, n = shape[-2:]
    i = np.arange(m)[:, None]
    j = np.arange(n)[None, :]
    mask = np.ones((m, n), dtype=bool)
    if k_lower is not None:
        mask &= i - j >= k_lower
    if k_upper is not None:
        mask &= j - i >= k_upper
    return mask


def _diag_part(a, tags):
    """The diagonal that is read: ones for unit-diagonal, real part for hermitian."""
    d = jnp.diagonal(a, axis1=-2, axis2=-1)
    if unit_diagonal_tag in tags:
        return jnp.ones_like(d)
    if is_hermitian(tags, jnp.iscomplexobj(a)):
        return jnp.real(d).astype(a.dtype)
    return d


def _with_diag(strict, d):
    m, n = strict.shape[-2:]
    return jnp.where(np.eye(m, n, dtype=bool), _embed_diag(d, m, n), strict)


def _embed_diag(d, m, n):
    k = min(m, n)
    out = jnp.zeros(d.shape[:-1] + (m, n), d.dtype)
    idx = np.arange(k)
    return out.at[..., idx, idx].set(d)


def effective_matrix(a, tags: frozenset):
    """The matrix a tagged array `a` (shape (..., m, n)) defines under the structure
    convention. Differentiable; unread entries get zero gradient."""
    if diagonal_tag in tags:
        d = _diag_part(a, tags)
        return _embed_diag(d, *a.shape[-2:])
    lower = lower_triangular_tag in tags
    upper = upper_triangular_tag in tags
    if is_self_adjoint(tags):
        if lower or upper:
            # Self-adjoint and triangular: only the diagonal survives.
            return _embed_diag(_diag_part(a, tags), *a.shape[-2:])
        strict = jnp.where(_mask(a.shape, 1, None), a, 0)
        mirror = jnp.swapaxes(strict, -1, -2)
        if is_hermitian(tags, jnp.iscomplexobj(a)):
            mirror = jnp.conj(mirror)
        return _with_diag(strict + mirror, _diag_part(a, tags))
    if lower:
        return _with_diag(jnp.where(_mask(a.shape, 1, None), a, 0), _diag_part(a, tags))
    if upper:
        return _with_diag(jnp.where(_mask(a.shape, None, 1), a, 0), _diag_part(a, tags))
    if unit_diagonal_tag in tags:
        return _with_diag(a, _diag_part(a, tags))
    return a


def read_diagonal(d, tags: frozenset):
    """The diagonal vector a `DiagonalOperator` defines (ones if unit, real if hermitian)."""
    if unit_diagonal_tag in tags:
        return jnp.ones_like(d)
    if is_hermitian(tags, jnp.iscomplexobj(d)):
        return jnp.real(d).astype(d.dtype)
    return d
