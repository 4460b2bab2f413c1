"""The Takahashi recurrence on the supernodal factor, roots down (see `selinv.py` for the
formulas), with its forward-mode derivative alongside when asked: the one pass that the
selected inverse (`selinv.py`) and its derivative rule (`sandwich.py`) both run."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array

from .numeric import after, conj_transpose, const, mm
from .symbolic import Bucket, Symbolic


def fronts(sym: Symbolic, g, emit, dg=None):
    """Run the Takahashi recurrence on the factor blocks `g` (`Factor.g`); call
    `emit(b, z11, z21)` with each bucket's blocks Z[J, J] (b, K, K) and Z[I, J] (b, M, K)
    (None if M = 0).

    With `dg` (a tangent of `g`, same layout) the recurrence's forward-mode derivative runs
    alongside, and `emit(b, z11, z21, dz11, dz21)` also gets the tangent blocks.
    """
    pool = dpool = None  # blocks of the level above, flat (see `Bucket.z_offset`)
    for level in reversed(sym.levels):  # roots first
        parts, dparts = [], []
        for b in level:
            B = sym.buckets[b]
            K, M = B.K, B.M
            linv, gw = g[b][:, :K], g[b][:, K:]  # L11^-1, -W
            # Z[J,J] = L11^-H L11^-1 - W^H Z[I,J],  Z[I,J] = -Z[I,I] W
            z11 = mm(conj_transpose(linv), linv)
            z21 = z22 = None
            if M:
                assert pool is not None  # M > 0: not a root, the level above is done
                z22 = gather_zii(B, pool)
                z21 = mm(z22, gw)
                z11 = z11 + mm(conj_transpose(gw), z21)
            parts += [x.reshape(-1) for x in (z11, z21, z22) if x is not None]
            if dg is None:
                emit(b, z11, z21)
                continue
            dlinv, dgw = dg[b][:, :K], dg[b][:, K:]
            t = mm(conj_transpose(linv), dlinv)
            dz11 = t + conj_transpose(t)
            dz21 = dz22 = None
            if M:
                assert dpool is not None and z22 is not None and z21 is not None
                dz22 = gather_zii(B, dpool, token=pool)
                dz21 = mm(dz22, gw) + mm(z22, dgw)
                dz11 = dz11 + mm(conj_transpose(dgw), z21) + mm(conj_transpose(gw), dz21)
            dparts += [x.reshape(-1) for x in (dz11, dz21, dz22) if x is not None]
            emit(b, z11, z21, dz11, dz21)
        pool = jnp.concatenate(parts)
        if dg is not None:
            dpool = jnp.concatenate(dparts)


def gather_zii(B: Bucket, pool: Array, token: Array | None = None) -> Array:
    """Z[I, I] of every supernode of the bucket, read from its parent's blocks.

    The index is computed once `token` (default: `pool`) is; a tangent pool orders it by
    its primal pool, so that the index never depends on a tangent (a linear value: JAX
    could not transpose the gather then).

    The flat index of parent-front entry (r, c) is computed in-graph from O(b M) arrays
    (XLA fuses it into the gather), reading the lower triangle and mirroring the upper.
    """
    # computed once the parent level is (not at the start of the program, all kept alive)
    rel = after(B.up_rel, pool if token is None else token)
    r, c = rel[:, :, None], rel[:, None, :]
    hi, lo = jnp.maximum(r, c), jnp.minimum(r, c)
    K = const(B.up_K)[:, None, None]
    M = const(B.up_M)[:, None, None]
    b11 = const(B.up_b11)[:, None, None]
    b21 = const(B.up_b21)[:, None, None]
    b22 = const(B.up_b22)[:, None, None]
    src = jnp.where(
        lo < K,
        jnp.where(hi < K, b11 + hi * K + lo, b21 + (hi - K) * K + lo),
        b22 + (hi - K) * M + lo - K,
    )
    # Padding rows/columns (rel == -1) read zero: send them past the end of the pool.
    src = jnp.where(lo >= 0, src, pool.shape[0])
    z = pool.at[src].get(mode="fill", fill_value=0)
    if jnp.iscomplexobj(z):  # the upper triangle mirrors the lower: Z[r, c] = conj(Z[c, r])
        z = jnp.where(r < c, jnp.conj(z), z)
    return z
