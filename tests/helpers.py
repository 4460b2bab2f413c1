"""Test helpers: entrywise central finite differences under unconstrained perturbations."""

import jax
import jax.numpy as jnp
import numpy as np


def fd_grad(f, x, eps=1e-6):
    """Central-difference gradient of a real scalar `f` w.r.t. every entry of `x`
    (real and imaginary parts separately for complex `x`), returned in JAX's convention
    for complex inputs: ∂f/∂Re − i ∂f/∂Im."""
    x = np.asarray(x)
    f = jax.jit(f)  # one compilation for the 2·size evaluations (jit of a jit is free)
    out = np.zeros(x.shape, dtype=x.dtype)
    directions = [1.0] + ([1j] if np.iscomplexobj(x) else [])
    for idx in np.ndindex(x.shape):
        for d in directions:
            e = np.zeros_like(x)
            e[idx] = d * eps
            df = (float(f(jnp.asarray(x + e))) - float(f(jnp.asarray(x - e)))) / (2 * eps)
            out[idx] += df if d == 1.0 else -1j * df
    return out


def assert_grad_matches_fd(f, x, *, rtol=1e-6, atol=1e-7, eps=1e-6):
    g = np.asarray(jax.jit(jax.grad(f))(jnp.asarray(x)))
    fd = fd_grad(f, x, eps)
    np.testing.assert_allclose(g, fd, rtol=rtol, atol=atol)
    return g


def real_loss(x):
    """A real scalar loss that depends on every entry (and on both parts if complex)."""
    return jnp.sum(jnp.sin(jnp.real(x))) + jnp.sum(jnp.cos(jnp.imag(x)) * jnp.imag(x))


def count_primitive(closed_jaxpr, name):
    """Count equations of a primitive in a jaxpr, recursing into sub-jaxprs."""

    def walk(jaxpr):
        total = 0
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == name:
                total += 1
            for sub in _subjaxprs(eqn.params):
                total += walk(sub)
        return total

    return walk(closed_jaxpr.jaxpr)


def _subjaxprs(params):
    for v in params.values():
        vals = v if isinstance(v, (tuple, list)) else (v,)
        for item in vals:
            if hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
                yield item.jaxpr
            elif hasattr(item, "eqns"):
                yield item
