"""The derivative of the selected inverse: `X -> P(Z X Z)` on the pattern of L, Z = A^-1.

If `Z = A^-1` then `dZ = -Z dA Z`, and the selected inverse needs `dZ` only on the pattern
of L (P). `sandwich(sym, g, x)` computes `P(Z H(x) Z)`, where `x` lives on the pattern of L
in the layout of the factor blocks (`Factor.g`: per bucket `(b, N, K)`, the pivot columns
of each front) and `H(x)` is the hermitian matrix whose lower triangle is `x` (real
diagonal). It is the forward-mode derivative of factorization + Takahashi recurrence in
the direction `x` assembled into the fronts, written from the factor blocks alone:

- leaves up, per front with `G = [Y; -W]`, `Y = L11^-1`, `W = F21 F11^-1`, `dF` the
  assembled tangent:
  `dY = -Phi(Y dF11 Y^H) Y` (Phi: lower triangle, halved diagonal),
  `dW = (dF21 - W dF11) Y^H Y`, and the parent receives
  `dU = -(T W^H + W T^H)`, `T = dF21 - W dF11 / 2`;
- roots down, the Takahashi recurrence and its tangent together (`takahashi.fronts`).

No residuals of the recurrences are stored (only the factor is read), so memory is that
of one factorization-sized pass, and nothing calls LAPACK.

The map is linear in `x` and self-adjoint up to weights: for the pairing
`<c, x> = Re sum(c x)` that JAX transposes with, the transpose is
`c -> w * conj(sandwich(conj(c) / w))` (w = 2 on strict-lower entries, 1 on the
diagonal: a stored lower entry stands for two entries of the matrix). So it is a
primitive whose transpose rule calls itself: reverse mode costs one more forward-mode
pass instead of a tape of the recurrences. Its derivative with respect to `g` (second
order) is plain forward-mode autodiff of the same computation.
"""

from __future__ import annotations

import jax
import jax.core
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from .numeric import factor_tangent, mask, valid_weights
from .symbolic import Symbolic
from .takahashi import fronts


def _sandwich_one(sym: Symbolic, g, x):
    """`P(Z H(x) Z)` for one (unbatched) factor."""
    x = [mask(B, xb) for B, xb in zip(sym.buckets, x)]
    dg = factor_tangent(sym, g, x)
    out = [None] * len(sym.buckets)

    def emit(b, z11, z21, dz11, dz21):
        d = dz11 if dz21 is None else jnp.concatenate([dz11, dz21], axis=1)
        out[b] = -mask(sym.buckets[b], d)  # dZ = -Z dA Z

    fronts(sym, g, emit, dg)
    return out


def _impl(*args, sym: Symbolic, nbatch: int):
    nb = len(sym.buckets)
    fn = lambda g, x: _sandwich_one(sym, g, x)  # noqa: E731
    for _ in range(nbatch):
        fn = jax.vmap(fn)
    return fn(list(args[:nb]), list(args[nb:]))


_sandwich_p = Primitive("selinv_sandwich")
_sandwich_p.multiple_results = True
_sandwich_p.def_impl(_impl)
mlir.register_lowering(_sandwich_p, mlir.lower_fun(_impl, multiple_results=True))


@_sandwich_p.def_abstract_eval
def _abstract_eval(*avals, sym, nbatch):
    del nbatch
    g, x = avals[: len(sym.buckets)], avals[len(sym.buckets) :]
    for a, b in zip(g, x):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise TypeError(f"sandwich: factor block {a} and input {b} differ")
    return [jax.core.ShapedArray(a.shape, a.dtype) for a in x]


def _jvp(primals, tangents, *, sym, nbatch):
    nb = len(sym.buckets)
    g, x = primals[:nb], primals[nb:]
    dg, dx = tangents[:nb], tangents[nb:]
    y = _sandwich_p.bind(*g, *x, sym=sym, nbatch=nbatch)
    dy = None
    if not all(type(t) is ad.Zero for t in dx):
        dy = _sandwich_p.bind(*g, *map(ad.instantiate_zeros, dx), sym=sym, nbatch=nbatch)
    if not all(type(t) is ad.Zero for t in dg):
        # Second order only: plain forward-mode autodiff of the computation in g.
        _, dy_g = jax.jvp(
            lambda *gg: _impl(*gg, *x, sym=sym, nbatch=nbatch),
            tuple(g),
            tuple(map(ad.instantiate_zeros, dg)),
        )
        dy = dy_g if dy is None else [a + b for a, b in zip(dy, dy_g)]
    if dy is None:
        dy = [ad.Zero(jax.typeof(a).to_tangent_aval()) for a in y]
    return y, dy


ad.primitive_jvps[_sandwich_p] = _jvp


def _transpose(cts, *args, sym, nbatch):
    nb = len(sym.buckets)
    g, x = args[:nb], args[nb:]
    if any(ad.is_undefined_primal(a) for a in g):
        raise NotImplementedError("sandwich is linear in x only")
    if all(type(c) is ad.Zero for c in cts):
        return [None] * nb + [ad.Zero(a.aval) for a in x]
    # c -> w conj(S(conj(c) / w))  (see the module docstring)
    ws = [valid_weights(B, a.aval.dtype).astype(a.aval.dtype) for B, a in zip(sym.buckets, x)]
    cin = [
        jnp.where(w > 0, jnp.conj(ad.instantiate_zeros(c)) / jnp.where(w > 0, w, 1), 0)
        for c, w in zip(cts, ws)
    ]
    out = _sandwich_p.bind(*g, *cin, sym=sym, nbatch=nbatch)
    return [None] * nb + [w * jnp.conj(o) for w, o in zip(ws, out)]


ad.primitive_transposes[_sandwich_p] = _transpose


def _batch(args, dims, *, sym, nbatch):
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    moved = [
        jnp.broadcast_to(a, (size, *a.shape)) if d is None else jnp.moveaxis(a, d, 0)
        for a, d in zip(args, dims)
    ]
    out = _sandwich_p.bind(*moved, sym=sym, nbatch=nbatch + 1)
    return out, [0] * len(out)


batching.primitive_batchers[_sandwich_p] = _batch


def sandwich(sym: Symbolic, g, x) -> list:
    """`P(Z H(x) Z)` in the layout of the factor blocks `g` (see the module docstring);
    linear in `x`, differentiable in both, batchable."""
    return _sandwich_p.bind(*g, *x, sym=sym, nbatch=0)
