"""Restarted GMRES (Saad & Schultz 1986) with right preconditioning, for any square operator."""

from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jax import lax

from .. import _lapack
from .._solution import RESULTS, result_code
from .abstract import AbstractReusingSolver
from .krylov import (
    AbstractKrylovSolver,
    KrylovState,
    map_columns,
    matvec,
    norm,
    precondition,
    real_dtype,
    report,
    stats,
    transposed,
    true_residual_loop,
)


class GMRES(AbstractKrylovSolver, AbstractReusingSolver[KrylovState]):
    """Restarted GMRES(`restart`) with right preconditioning, for any square operator
    (real or complex, no structure needed). One matrix-vector product per iteration, plus
    one per restart for the true residual. The monitored residual is the true,
    unpreconditioned one (right preconditioning does not change it).

    **Arguments:**

    - `rtol`, `atol`, `max_steps`, `preconditioner`, `verbose`: as for [`linsolve.CG`][];
      `max_steps` counts inner iterations over all restarts.
    - `restart`: the Krylov dimension before a restart (memory: `restart + 1` vectors).

    `sol.stats` has `num_steps` (inner iterations), `num_restarts` (cycles after the
    first) and `residual_norm`.
    """

    rtol: float | None = eqx.field(static=True, default=None)
    atol: float | None = eqx.field(static=True, default=None)
    max_steps: int | None = eqx.field(static=True, default=None)
    preconditioner: Any = None
    verbose: bool = eqx.field(static=True, default=False)
    restart: int = eqx.field(static=True, default=20)

    def __check_init__(self):
        if self.restart < 1:
            raise ValueError(f"GMRES: `restart` must be >= 1, got {self.restart}.")

    def init(self, operator) -> KrylovState:
        return self._make_state(operator)

    def solve(self, state, vector, y0):
        return map_columns(lambda b, x0, _: self._gmres(state, b, x0, "GMRES"), vector, y0)

    def transpose_solve(self, state, vector, y0):
        state = transposed(state)
        return map_columns(
            lambda b, x0, _: self._gmres(state, b, x0, "GMRES (transposed)"), vector, y0
        )

    def _gmres(self, state: KrylovState, b, y0, label):
        # (At least 1: an n = 0 system still traces, and returns at once.)
        return _gmres(state, b, y0, max(1, min(self.restart, b.shape[0])), self.verbose, label)


def _givens(a, b):
    """The 2×2 unitary `[[c, s], [−s̄, c]]`, c real, that maps `[a, b]` to `[ρ, 0]`."""
    abs_a = jnp.abs(a)
    rho = jnp.hypot(abs_a, jnp.abs(b))
    phase = jnp.where(abs_a == 0, 1, a / jnp.where(abs_a == 0, 1, abs_a))
    safe_rho = jnp.where(rho == 0, 1, rho)
    c = jnp.where(rho == 0, 1, abs_a / safe_rho)
    s = phase * jnp.conj(b) / safe_rho
    return jnp.stack([jnp.stack([c, s]), jnp.stack([-jnp.conj(s), c])]).astype(jnp.result_type(a))


@eqx.filter_jit  # eager calls (and repeated traces) reuse one compiled loop
def _gmres(state: KrylovState, b, y0, restart: int, verbose: bool, label: str):
    mv = matvec(state)
    pre = precondition(state)
    rdt = real_dtype(b.dtype)
    dtype = b.dtype
    n = b.shape[0]

    def cycle(k, x, r, r_norm, goal, code, _):
        report(verbose, label, k, r_norm, goal)
        # One basis vector per row (contiguous writes); rows beyond j stay zero, so the
        # products with the whole basis below need no masking.
        basis = jnp.zeros((restart + 1, n), dtype).at[0].set(r / jnp.where(r_norm == 0, 1, r_norm))
        hess = jnp.zeros((restart + 1, restart), dtype)
        g = jnp.zeros(restart + 1, dtype).at[0].set(r_norm)
        rot = jnp.eye(restart + 1, dtype=dtype)

        def inner_cond(c):
            j, kk, _, _, _, _, est = c
            return (j < restart) & (kk < state.max_steps) & (est > goal)

        def inner_body(c):
            j, kk, basis, hess, g, rot, _ = c
            w = mv(pre(lax.dynamic_index_in_dim(basis, j, keepdims=False)))
            # Classical Gram–Schmidt twice: as stable as modified Gram–Schmidt, and two
            # products with the basis instead of j dot products.
            h = jnp.conj(basis) @ w
            w = w - h @ basis
            h2 = jnp.conj(basis) @ w
            w = w - h2 @ basis
            h = h + h2
            h_next = norm(w).astype(rdt)
            # A (numerically) zero h_next is the lucky breakdown: the Krylov space is
            # invariant and the least-squares solution below is exact.
            basis = lax.dynamic_update_index_in_dim(
                basis, w / jnp.where(h_next == 0, 1, h_next), j + 1, 0
            )
            h = lax.dynamic_update_index_in_dim(h, h_next.astype(dtype), j + 1, 0)
            # `rot` is the product of the Givens rotations so far, kept as a small dense
            # unitary matrix: one (restart+1)² product brings the new column to
            # triangular form without a sequential loop over the previous rotations.
            h = rot @ h
            pair = lax.dynamic_slice_in_dim(h, j, 2)
            givens = _givens(pair[0], pair[1])
            h = lax.dynamic_update_slice_in_dim(
                h, jnp.stack([(givens @ pair)[0], jnp.zeros((), dtype)]), j, 0
            )
            rot = lax.dynamic_update_slice_in_dim(
                rot, givens @ lax.dynamic_slice_in_dim(rot, j, 2), j, 0
            )
            g_pair = givens @ lax.dynamic_slice_in_dim(g, j, 2)
            g = lax.dynamic_update_slice_in_dim(g, g_pair, j, 0)
            est = jnp.abs(g_pair[1]).astype(rdt)
            report(verbose, label, kk + 1, est, goal)
            return j + 1, kk + 1, basis, lax.dynamic_update_index_in_dim(hess, h, j, 1), g, rot, est

        init = (jnp.asarray(0, jnp.int32), k, basis, hess, g, rot, r_norm)
        j, k, basis, hess, g, _, est = lax.while_loop(inner_cond, inner_body, init)
        # Least squares in the Krylov space: the rotated Hessenberg matrix is upper
        # triangular on its first j columns; pad the rest with the identity.
        used = jnp.arange(restart, dtype=j.dtype) < j  # strict promotion: one int type
        tri = jnp.where(used[:, None] & used[None, :], hess[:restart], 0)
        bad_diag = used & (jnp.diagonal(tri) == 0)
        tri = tri + jnp.diag(jnp.where(used & ~bad_diag, 0, 1).astype(dtype))
        coef = _lapack.solve_triangular(tri, jnp.where(used, g[:restart], 0), lower=False)
        x = x + pre(coef @ basis[:restart])
        # No progress in a whole cycle (e.g. a singular operator): stop rather than spin
        # (unless the true residual, checked next, has converged after all).
        stalled = (j > 0) & jnp.any(bad_diag)
        code = jnp.where(stalled, result_code(RESULTS.breakdown), code)
        code = jnp.where(jnp.isfinite(est), code, result_code(RESULTS.nonfinite_input))
        return k, x, code, est <= goal, None

    x, result, k, r_norm, cycles, _ = true_residual_loop(
        state, b, y0, cycle, verbose=verbose, label=label
    )
    return x, result, stats(k, r_norm, num_restarts=jnp.maximum(cycles - 1, 0))
