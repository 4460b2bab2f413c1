"""Tangents of operators, for the derivative rules (`linear_solve`'s, LOBPCG's): whether an
operator moves at all, and its tangent's product `Ȧ v`."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array


def is_zero_tangent(t) -> bool:
    """Whether a tangent tree is symbolically zero (every leaf `None`)."""
    return all(leaf is None for leaf in jax.tree_util.tree_leaves(t, is_leaf=lambda v: v is None))


def tangent_mv(operator, t_operator, v: Array) -> Array:
    """`Ȧ v`: the JVP of `operator.mv(v)` in the operator's arrays, `v` fixed. Linear in
    `t_operator` and transposable (it is a JVP); zero for a zero tangent."""
    if operator is None or t_operator is None or is_zero_tangent(t_operator):
        return jnp.zeros_like(v)
    return eqx.filter_jvp(lambda op: op.mv(v), (operator,), (t_operator,))[1]


def tangent_adjoint_mv(operator, t_operator, v: Array) -> Array:
    """`Ȧᴴ v` (the tangent of the conjugated transpose's product)."""
    tv = eqx.filter_jvp(lambda op: op.rmv(jnp.conj(v)), (operator,), (t_operator,))[1]
    return jnp.conj(tv)
