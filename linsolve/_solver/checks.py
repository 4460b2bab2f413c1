"""Checks that name what went wrong: a tag's broken promise on a matrix-free operator,
and whether an operator's own entries are finite (to tell an overflowing solution from
NaN/Inf input)."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._operator import MatrixOperator, is_matrix_free
from .._tags import is_hermitian, is_self_adjoint


def symmetry_tolerance(n: int, dtype) -> float:
    """Relative asymmetry `max|A − Aᴴ| / max|A|` a materialized operator may show and still
    count as keeping its symmetric / hermitian / semidefinite promise: rounding in its
    function (`√eps`, or `10 n eps` for large `n` in low precision), far below any real
    asymmetry."""
    eps = float(jnp.finfo(dtype).eps)
    return max(eps**0.5, 10 * n * eps)


def broken_symmetry(operator, matrix: Array) -> Array | None:
    """For a matrix-free operator tagged symmetric / hermitian / semidefinite, whether the
    full `matrix` it materializes to breaks that promise (`None` where there is nothing to
    check: a stored matrix is read by one triangle under the structure convention, so it
    cannot break it). NaN counts as not broken: it is reported as NaN input."""
    tags = operator.tags
    if not (is_self_adjoint(tags) and is_matrix_free(operator)) or matrix.size == 0:
        return None
    cplx = jnp.iscomplexobj(matrix)
    mirror = jnp.conj(matrix.T) if is_hermitian(tags, cplx) else matrix.T
    scale = jnp.max(jnp.abs(matrix))
    tol = symmetry_tolerance(matrix.shape[0], matrix.dtype)
    return jnp.max(jnp.abs(matrix - mirror)) > tol * scale


def operator_finite(operator) -> Array:
    """Whether every entry the operator holds is finite: stored matrices under the
    structure convention (garbage in an unread triangle does not count), and every other
    floating-point array in the operator (sparse values, diagonals, a matrix-free
    function's closed-over arrays) as stored. Never materializes a matrix-free or
    sparse operator."""

    def is_node(x):
        return isinstance(x, MatrixOperator)

    checks = [jnp.asarray(True)]
    for node in jax.tree_util.tree_leaves(operator, is_leaf=is_node):
        if is_node(node):
            checks.append(jnp.all(jnp.isfinite(node.as_matrix())))
        elif eqx.is_inexact_array(node):
            checks.append(jnp.all(jnp.isfinite(node)))
    return jnp.all(jnp.stack(checks))
