"""Block LOBPCG for a few extreme eigenpairs of a symmetric pencil `(A, B)`.

The iteration (Knyazev 2001) in the robust form of Hetmaniuk & Lehoucq (2006) and
Duersch, Shao, Yang & Gu (2018). Each step works in the basis `S = [X, P, W]`: the
current Ritz vectors, the previous search directions and the preconditioned residuals,
`m` rows each (`m` the block size). `S` is kept `B`-orthonormal, so Rayleigh–Ritz is an
ordinary symmetric eigenproblem of size `3m` and nothing is ever factorized with
Cholesky: an ill-conditioned (even rank-deficient) block degrades a step instead of
breaking it. Dropped directions keep their slot (shapes are static under `jit`) as zero
rows that the Rayleigh–Ritz step never selects.

- `X` and `P` come out of the previous step `B`-orthonormal and mutually `B`-orthogonal
  *by construction*: orthonormal coefficient vectors in an orthonormal basis.
- `W` is `B`-orthogonalised against `[X, P]` (classical Gram–Schmidt), rows that
  cancel to rounding are dropped, and the rest is orthonormalised by SVQB (scale the
  Gram matrix's diagonal to one, eigendecompose, drop what is dependent to rounding).
  When a row lost most of its norm to `[X, P]` (so that rounding of `[X, P]` is left in
  it), or SVQB met an ill-conditioned block, a second pass follows ("twice is
  enough"). Without it the loss of orthogonality compounds from step to step once
  residuals reach rounding level.
- The new directions (Hetmaniuk–Lehoucq) satisfy `span[X_new, P_new] = span[X_new,
  X_old]` and `P_new ⟂_B X_new`, computed in the small space as an orthonormal basis
  in the span of the non-selected Ritz vectors.
- The projected matrix needs `[X, P, W]ᵀ A W` and `Pᵀ A P` from the large space;
  `Xᵀ A X = Θ` and `Xᵀ A P = 0` hold by construction.
- Products: the operators are applied to `W` only (`A W`, and `B W`); `A [X, P]` (and
  `B [X, P]`) are updated from the Rayleigh–Ritz coefficients, which is cheaper than
  applying all but the cheapest operators again. Convergence is always confirmed on
  recomputed products (an outer loop around the iteration).
- Soft locking: a wanted row whose residual has converged contributes no residual
  direction but stays in the basis. The guard rows beyond `k` always contribute.
- The first step takes the initial block as its `W` with `X` and `P` empty, so the
  same code orthonormalises it.

Large blocks are stored as rows, `(m, n)`: XLA's CPU matrix products of the Gram shapes
(`V Wᵀ`, contracting the long axis) are markedly faster in that layout. Operators see
`(n, m)` blocks.

The largest eigenvalues are the smallest of `-A`. Derivatives are in `adjoint.py`; the
iteration itself is never differentiated.
"""

from typing import Any

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .. import _lapack
from .._dtype import check_same_dtype
from .._operator import AbstractOperator, as_operator
from .._solution import RESULTS, first_failure
from .._solver.cg import CG
from .._solver.krylov import AbstractKrylovSolver
from .._tags import is_self_adjoint
from .adjoint import eigenpair_tangents


class Eigenpairs(eqx.Module):
    """What [`linsolve.lobpcg`][] and [`linsolve.eigh`][] return.

    **Attributes:**

    - `eigenvalues`: `(k,)`; ascending for the smallest, descending (largest first) for
      `largest=True`.
    - `eigenvectors`: `(n, k)`, `B`-orthonormal (`Vᵀ B V = I`; orthonormal without `B`);
      column `i` belongs to `eigenvalues[i]`. The sign of each column is arbitrary.
    - `result`: an int32 array, one of `linsolve.RESULTS` (`successful`,
      `max_steps_reached`, `nonfinite_input`).
    - `stats`: a dict. `lobpcg` reports `num_steps` (iterations), `residual_norm`
      (`‖A vᵢ − λᵢ B vᵢ‖₂`, shape `(k,)`), `backward_error` (the residual relative to
      `(‖A‖ + |λᵢ| ‖B‖) ‖vᵢ‖`, the quantity compared with `tol`) and `block_size`.
    """

    eigenvalues: Array
    eigenvectors: Array
    result: Int[Array, ""]
    stats: dict[str, Any]


class _Config(eqx.Module):
    """Static configuration of one LOBPCG run (it parametrises compilation)."""

    k: int = eqx.field(static=True)
    block_size: int = eqx.field(static=True)
    largest: bool = eqx.field(static=True)
    verbose: bool = eqx.field(static=True, default=False)


def _sym(m):
    return 0.5 * (m + m.T)


def _row_norms(x):
    return jnp.sqrt(jnp.sum(x * x, axis=1))


def _norm_ratio(out, x, current):
    """Running lower bound of an operator norm from `out = Op x` (rows are vectors; zero
    rows skipped)."""
    xn = _row_norms(x)
    ok = xn > 0
    return jnp.maximum(current, jnp.max(jnp.where(ok, _row_norms(out) / jnp.where(ok, xn, 1), 0)))


def _svqb(gram: Array, drop: float | Array) -> tuple[Array, Array, Array, Array]:
    """SVQB (Stathopoulos & Wu 2002): a transform `t` with `tᵀ gram t` the identity on the
    kept columns and zero columns for directions dependent to rounding (scaled-Gram
    eigenvalues below `drop` times the largest; exactly zero columns always go).
    Returns `(t, keep, smallest kept scaled eigenvalue, smallest / largest scaled
    eigenvalue)`; the last is negative beyond rounding only for an indefinite Gram matrix."""
    c = gram.shape[0]
    gram = _sym(gram)
    d = jnp.diagonal(gram)
    nonzero = d > jnp.finfo(gram.dtype).tiny * c
    scale = jnp.where(nonzero, 1 / jnp.sqrt(jnp.where(nonzero, d, 1)), 0)
    sig, vec = _lapack.eigh(gram * scale[:, None] * scale[None, :])
    keep = sig > drop * jnp.max(sig)
    t = (scale[:, None] * vec) * jnp.where(keep, 1 / jnp.sqrt(jnp.where(keep, sig, 1)), 0)
    smallest = jnp.min(jnp.where(keep, sig, jnp.inf))
    return t, keep, smallest, jnp.min(sig) / jnp.maximum(jnp.max(sig), jnp.finfo(sig.dtype).tiny)


def _ritz(proj: Array, valid: Array) -> tuple[Array, Array]:
    """Eigenpairs of `proj` (symmetric, in an orthonormal basis) whose rows/columns
    `~valid` (dropped, zero basis directions) get a sentinel above every genuine Ritz
    value, so that they sort last and stay decoupled. Ascending."""
    proj = jnp.where(valid[:, None] & valid[None, :], _sym(proj), 0)
    sentinel = 2 * jnp.sqrt(jnp.sum(proj * proj)) + 1
    return _lapack.eigh(proj + jnp.diag(jnp.where(valid, 0, sentinel)))


class _State(eqx.Module):
    xp: Array  # [X; P], (2m, n): Ritz vectors and search directions, B-orthonormal rows
    axp: Array  # (A [X, P])ᵀ (of the possibly negated operator)
    bxp: Array | None  # (B [X, P])ᵀ; None without B
    pvalid: Array  # which rows of P are genuine (the others are zero)
    theta: Array  # Ritz values of X
    eta: Array  # backward errors of the rows of X
    anorm: Array  # running lower bounds of ‖A‖₂ and ‖B‖₂
    bnorm: Array
    steps: Array
    b_indefinite: Array  # a direction with vᵀ B v <= 0 (to rounding) was met: B is not PD


def _backward_errors(x, ax, bx, theta, anorm, bnorm):
    rnorm = _row_norms(ax - theta[:, None] * bx)
    xnorm = _row_norms(x)
    denom = (anorm + jnp.abs(theta) * bnorm) * xnorm
    # A zero row (a rank-deficient initial block left nothing for it) never converges.
    eta = jnp.where(xnorm > 0, rnorm / jnp.maximum(denom, jnp.finfo(x.dtype).tiny), jnp.inf)
    return rnorm, eta


def _refresh(amv, bmv, s: _State, m: int) -> _State:
    """Recompute `A [X, P]`, `B [X, P]` (updated products drift), the Rayleigh quotients
    and the backward errors. `X` itself is left as it is: it is B-orthonormal by
    construction, and a Ritz basis up to that drift."""
    axp = amv(s.xp)
    bxp = None if bmv is None else bmv(s.xp)
    x, ax = s.xp[:m], axp[:m]
    bx = x if bxp is None else bxp[:m]
    anorm = _norm_ratio(ax, x, s.anorm)
    bnorm = s.bnorm if bmv is None else _norm_ratio(bx, x, s.bnorm)
    xbx = jnp.sum(x * bx, axis=1)
    theta = jnp.sum(x * ax, axis=1) / jnp.where(xbx > 0, xbx, 1)
    _, eta = _backward_errors(x, ax, bx, theta, anorm, bnorm)
    return _State(s.xp, axp, bxp, s.pvalid, theta, eta, anorm, bnorm, s.steps, s.b_indefinite)


def _step(amv, bmv, pre, cfg: _Config, tol, s: _State) -> _State:
    m, k = cfg.block_size, cfg.k
    eps = jnp.finfo(s.xp.dtype).eps
    # The first step starts from the initial block in place of X: it enters as the
    # residual directions W, and X and P are empty. So the first Rayleigh–Ritz step
    # orthonormalises it (robustly, even if rank-deficient) and no other code is needed.
    # (The products of the initial state are zero, P is zero, and X is kept out of the
    # Gram–Schmidt step and the Rayleigh–Ritz basis by `later` and `valid`.)
    first = s.steps == 0
    later = (~first).astype(s.xp.dtype)
    xp, axp = s.xp, s.axp
    bxp_ = xp if s.bxp is None else s.bxp  # B [X, P], or [X, P] without B
    r = axp[:m] - s.theta[:, None] * bxp_[:m]
    # Soft locking: converged wanted rows contribute no residual direction, and neither
    # does any row whose residual is at rounding level (`tol` may be unreachable): its
    # direction would be noise, which only degrades the basis.
    floor = 8 * eps
    active = ((s.eta > floor) & ((s.eta > tol) | (jnp.arange(m) >= k))) | first
    r = jnp.where(active[:, None], r, 0)
    # (A `cond`, not a `where`: the preconditioner may be the most expensive product.)
    w = jax.lax.cond(first, lambda: xp[:m], lambda: r if pre is None else pre(r))
    wn = _row_norms(w)
    w = w / jnp.where(wn > 0, wn, 1)[:, None]

    def orthonormalise(carry):
        # Classical Gram–Schmidt against [X, P], then SVQB. Returns whether another pass
        # is needed.
        w, _, _, _, _, passes, indefinite = carry
        # B W by a product in every pass: updated by linearity through an SVQB that
        # amplified rounding, it would no longer match W.
        bw = None if bmv is None else bmv(w)
        before = _row_norms(w)
        c = later * (w @ bxp_.T)
        w = w - c @ xp
        # What survived of each row. A row that cancelled to rounding level lies in
        # span[X, P]: what is left is noise, which SVQB's scaling would blow up into a
        # spurious direction. In the second pass a genuine direction is left intact (its
        # components along [X, P] are at rounding level after the first), so a second
        # large cancellation means the row was noise too (the criterion of Daniel,
        # Gragg, Kaufman & Stewart).
        left = _row_norms(w) / jnp.where(before > 0, before, 1)
        dependent = left <= jnp.where(passes == 0, 10 * xp.shape[0] * eps, 0.5)
        w = jnp.where(dependent[:, None], 0, w)
        if bw is not None:
            bw = jnp.where(dependent[:, None], 0, bw - c @ bxp_)
        # The first SVQB drops only what is dependent to rounding. Its result is
        # orthonormal to about eps / (smallest kept eigenvalue); when that is poor, the
        # second pass sees a Gram matrix far from the identity only in such amplified
        # rounding directions, and drops them.
        drop = jnp.where(passes == 0, 300 * m * eps, 1e-2)
        gram = w @ (w if bw is None else bw).T
        if bw is not None:
            # A nonzero row with wᵀ B w <= 0 up to rounding, or a B-Gram matrix with a
            # negative eigenvalue beyond rounding: B is not positive definite.
            wn2 = _row_norms(w)
            flat = jnp.diagonal(gram) <= 10 * eps * wn2 * _row_norms(bw)
            indefinite = indefinite | jnp.any((wn2 > 0) & flat)
        t, keep, smallest, ratio = _svqb(gram, drop)
        if bmv is not None:
            indefinite = indefinite | (ratio < -300 * m * eps)
        w = t.T @ w
        bw = jnp.zeros((), w.dtype) if bw is None else t.T @ bw
        # Gram–Schmidt leaves components along [X, P] of the order of the rounding of
        # the subtracted part, i.e. eps / left relative to what is left: a row that lost
        # more than a factor 100 of its norm gets a second pass ("twice is enough"), as
        # does a block that SVQB found ill-conditioned. (Measuring what is left instead
        # costs a product as large as the Gram–Schmidt step itself, every step.)
        poor = jnp.any(~dependent & (left < 1e-2)) | (smallest < 1e-8)
        return w, bw, poor, keep, smallest, passes + 1, indefinite

    def again(carry):
        *_, poor, _, _, passes, _ = carry
        return (passes == 0) | ((passes == 1) & poor)

    # One pass, and a second one where the first one's result is poor. Without it the
    # loss of orthogonality accumulates from step to step once the residuals are at
    # rounding level. A loop rather than a `cond` keeps one copy of the code.
    bw = jnp.zeros((), w.dtype) if bmv is None else w  # B W is formed in the loop
    one = jnp.ones((), eps.dtype)
    carry = (w, bw, jnp.asarray(False), jnp.zeros((m,), bool), one, jnp.asarray(0), s.b_indefinite)
    w, bw, _, wvalid, smallest, _, b_indefinite = jax.lax.while_loop(again, orthonormalise, carry)
    if bmv is None:
        bw = w

    def svqb_again(w, bw):
        # W is B-orthogonal to [X, P] but its own SVQB was ill-conditioned: once more,
        # now from a nearly orthonormal block. (Cheap, and needed for the last digits:
        # the Rayleigh–Ritz step assumes an orthonormal basis.)
        t, keep, _, _ = _svqb(w @ bw.T, 1e-2)
        w = t.T @ w
        return w, w if bmv is None else t.T @ bw, keep

    w, bw, wvalid = jax.lax.cond(smallest < 1e-2, svqb_again, lambda w, bw: (w, bw, wvalid), w, bw)
    aw = amv(w)
    anorm = _norm_ratio(aw, w, s.anorm)
    bnorm = s.bnorm if bmv is None else _norm_ratio(bw, w, s.bnorm)

    # Rayleigh–Ritz in the orthonormal basis [X, P, W]. X and P come from the same
    # Rayleigh–Ritz step, so Xᵀ A X = Θ and Xᵀ A P = 0. Pᵀ A P is computed: its
    # small-space value from that step (Θ₂ in P's coordinates) drifts from the true one
    # step after step at convergence, and the iteration would lose the accuracy it had.
    g = jnp.concatenate([xp @ aw.T, w @ aw.T], axis=0)
    c = 3 * m
    zero = jnp.zeros((m, m), w.dtype)
    xax = jnp.diag(s.theta)
    pap = xp[m:] @ axp[m:].T
    gx, gp, gw = g[:m], g[m : 2 * m], g[2 * m :]
    proj = jnp.block([[xax, zero, gx], [zero, pap, gp], [gx.T, gp.T, gw]])
    valid = jnp.concatenate([jnp.full((m,), ~first), s.pvalid, wvalid])
    theta, q = _ritz(proj, valid)
    # New directions (Hetmaniuk–Lehoucq): X_old has coordinates [I; 0; 0]; its
    # component orthogonal to the new X lies in the span of the other Ritz vectors q2,
    # with coordinates given by q2's first m rows. An orthonormal basis of those keeps
    # P exactly orthonormal and orthogonal to the new X.
    # (An SVD rather than an eigendecomposition of e eᵀ: its singular vectors for small
    # singular values, i.e. rows that barely moved, are accurate to eps / σ, not eps / σ².)
    # Only genuine Ritz vectors may enter: the sentinel ones (q2's last columns) are
    # dropped, zero basis directions.
    q2 = q[:, m:]
    genuine = jnp.arange(c - m) < jnp.sum(valid) - m
    v, sv, _ = _lapack.svd(jnp.where(genuine[:, None], q2[:m, :].T, 0))
    pvalid = sv > 10 * c * eps
    v = jnp.where(genuine[:, None] & pvalid[None, :], v, 0)
    coef = jnp.concatenate([q[:, :m], q2 @ v], axis=1).T
    # (Products of the two blocks rather than of their concatenation: no copy of it.)
    xp = coef[:, : 2 * m] @ xp + coef[:, 2 * m :] @ w
    # The products are updated, not recomputed: 3m·n multiply-adds per row in one dense
    # product, cheaper than all but the cheapest operators (even a 5-point stencil is
    # hardly faster to apply on CPU, and a sparse or graph operator's gather and scatter
    # is much slower). They drift from the true ones; `_refresh` recomputes them.
    axp = coef[:, : 2 * m] @ axp + coef[:, 2 * m :] @ aw
    bxp = None if s.bxp is None else coef[:, : 2 * m] @ bxp_ + coef[:, 2 * m :] @ bw
    theta = theta[:m]
    xp, axp, bxp, pvalid, theta = _guard_orthonormality(xp, axp, bxp, pvalid, theta, m)
    bx = xp[:m] if bxp is None else bxp[:m]
    _, eta = _backward_errors(xp[:m], axp[:m], bx, theta, anorm, bnorm)
    return _State(xp, axp, bxp, pvalid, theta, eta, anorm, bnorm, s.steps + 1, b_indefinite)


def _guard_orthonormality(xp, axp, bxp, pvalid, theta, m):
    """The Rayleigh–Ritz step assumes `[X, P]` B-orthonormal. Once the residuals are at
    rounding level, the basis can lose it (noise directions that no test catches), and
    the loss then grows geometrically from step to step until the Ritz values are
    garbage. Measured here on the B-Gram matrix of `[X, P]` (`4m²n` flops); when lost,
    the step restarts without `P` (as scipy's LOBPCG does when its Gram matrix is not
    positive definite): `X` re-orthonormalised (SVQB) and re-diagonalised (Rayleigh–Ritz
    in its own span), `P` dropped."""
    eps = jnp.finfo(xp.dtype).eps
    n = xp.shape[1]
    bxp_ = xp if bxp is None else bxp
    gram = _sym(xp @ bxp_.T)
    valid = jnp.concatenate([jnp.ones((m,), bool), pvalid])
    both = valid[:, None] & valid[None, :]
    lost = jnp.max(jnp.where(both, jnp.abs(gram - jnp.eye(2 * m, dtype=gram.dtype)), 0))
    limit = 100 * eps * (2 * m * n) ** 0.5  # the rounding of an orthonormal basis, generously

    def restart(xp, axp, bxp):
        t, keep, _, _ = _svqb(gram[:m, :m], 300 * m * eps)
        x, ax = t.T @ xp[:m], t.T @ axp[:m]
        # Rayleigh–Ritz in span X: X A Xᵀ diagonal again, as the next step assumes.
        theta, q = _ritz(x @ ax.T, keep)
        q = jnp.where(keep[:, None], q, 0)  # (sentinel pairs sort last: zero rows)
        x, ax = q.T @ x, q.T @ ax
        zero = jnp.zeros_like(x)
        out_b = None if bxp is None else jnp.concatenate([q.T @ (t.T @ bxp[:m]), zero], axis=0)
        theta = jnp.where(jnp.sort(keep)[::-1], theta, 0)
        return (
            jnp.concatenate([x, zero], axis=0),
            jnp.concatenate([ax, zero], axis=0),
            out_b,
            jnp.zeros_like(pvalid),
            theta,
        )

    return jax.lax.cond(
        lost > limit, restart, lambda xp, axp, bxp: (xp, axp, bxp, pvalid, theta), xp, axp, bxp
    )


def run_lobpcg(op: AbstractOperator, B, pre, x0: Array, tol, max_steps, cfg: _Config):
    """The iteration. Returns `(eigenvalues (k,), eigenvectors (n, k), result, stats,
    scale)`, `scale` an estimate of the spectral radius; not differentiated. `tol` and
    `max_steps` may be traced."""
    m, k = cfg.block_size, cfg.k
    dtype = x0.dtype

    def amv(v):  # rows in, rows out
        out = op.mv(v.T).T
        return -out if cfg.largest else out

    bmv = None if B is None else (lambda v: B.mv(v.T).T)
    pmv = None if pre is None else (lambda v: pre.mv(v.T).T)
    zero = jnp.zeros((), dtype)
    x0 = x0.T
    xp = jnp.concatenate([x0, jnp.zeros_like(x0)], axis=0)
    state = _State(
        xp,
        jnp.zeros_like(xp),
        None if B is None else jnp.zeros_like(xp),
        jnp.zeros((m,), bool),
        jnp.zeros((m,), dtype),
        jnp.full((m,), jnp.inf, dtype),
        zero,
        zero + 1 if B is None else zero,
        jnp.zeros((), jnp.int32),
        jnp.asarray(False),
    )

    def wanted_converged(s):
        # At least one step: the initial block is not orthonormalised before it.
        return jnp.all(s.eta[:k] <= tol) & (s.steps > 0)

    def done(s):
        return wanted_converged(s) | (s.steps >= max_steps) | s.b_indefinite

    def worst(s):  # what "best" means: the largest wanted backward error
        return jnp.where(s.steps > 0, jnp.max(s.eta[:k]), jnp.inf)

    def keep_best(best, s):
        better = worst(s) < worst(best)
        return jax.tree_util.tree_map(lambda a, b: jnp.where(better, a, b), s, best)

    def inner_body(c):
        s, best = c
        s = _step(amv, bmv, pmv, cfg, tol, s)
        if cfg.verbose:
            jax.debug.print(
                "LOBPCG: step {step}, largest backward error {e:.3e} (tol {t:.3e}), "
                "eigenvalues {v}",
                step=s.steps,
                e=worst(s),
                t=tol,
                v=(-1 if cfg.largest else 1) * s.theta[:k],
            )
        return s, keep_best(best, s)

    def outer_body(carry):
        s, best, _ = carry
        s, best = jax.lax.while_loop(lambda c: ~done(c[0]), inner_body, (s, best))
        # The products were updated: recompute them and test convergence on the true
        # residuals.
        s = _refresh(amv, bmv, s, m)
        return s, best, done(s)

    carry = (state, state, jnp.asarray(False))
    state, best, _ = jax.lax.while_loop(lambda c: ~c[2], outer_body, carry)

    # Iterating longer must never make the answer worse: without convergence, the best
    # block seen (by its backward errors, recomputed from fresh products) is returned.
    def pick_best():
        fresh = _refresh(amv, bmv, best, m)
        fresh = _State(
            fresh.xp,
            fresh.axp,
            fresh.bxp,
            fresh.pvalid,
            fresh.theta,
            fresh.eta,
            fresh.anorm,
            fresh.bnorm,
            state.steps,
            state.b_indefinite,
        )
        better = worst(fresh) < worst(state)
        return jax.tree_util.tree_map(lambda a, b: jnp.where(better, a, b), fresh, state)

    state = jax.lax.cond(wanted_converged(state), lambda: state, pick_best)
    converged = wanted_converged(state)
    x = state.xp[:m]
    bx = x if B is None else state.bxp[:m]
    rnorm, eta = _backward_errors(x, state.axp[:m], bx, state.theta, state.anorm, state.bnorm)
    sign = -1 if cfg.largest else 1
    values = sign * state.theta[:k]
    vectors = x[:k].T
    finite = jnp.all(jnp.isfinite(values)) & jnp.all(jnp.isfinite(vectors))
    result = first_failure(
        (~finite, RESULTS.nonfinite_input),
        (state.b_indefinite, RESULTS.not_positive_definite),
        (~converged, RESULTS.max_steps_reached),
    )
    stats = {
        "num_steps": state.steps,
        "residual_norm": rnorm[:k],
        "backward_error": eta[:k],
        "block_size": jnp.asarray(m, jnp.int32),
    }
    # The scale of "equal" eigenvalues for the derivative's degeneracy mask.
    scale = jnp.maximum(
        state.anorm / jnp.maximum(state.bnorm, jnp.finfo(dtype).tiny), jnp.max(jnp.abs(values))
    )
    return values, vectors, result, stats, scale


# --------------------------------------------------------------------------------------
# Differentiation and the public function.


@eqx.filter_custom_jvp
def _lobpcg(op, B, pre, x0, limits, adjoint_solver, *, cfg, threshold_rtol, throw):
    del adjoint_solver, threshold_rtol, throw
    tol, max_steps = limits
    return run_lobpcg(op, B, pre, x0, tol, max_steps, cfg)


@_lobpcg.def_jvp
def _lobpcg_jvp(primals, tangents, *, cfg, threshold_rtol, throw):
    op, B, pre, x0, limits, adjoint_solver = primals
    # The preconditioner, X0, the limits and the solver have zero derivative.
    t_op, t_B = tangents[:2]
    out = _lobpcg(
        op, B, pre, x0, limits, adjoint_solver, cfg=cfg, threshold_rtol=threshold_rtol, throw=throw
    )
    values, vectors, _, stats, scale = out
    t_values, t_vectors = eigenpair_tangents(
        op,
        B,
        t_op,
        t_B,
        values,
        vectors,
        largest=cfg.largest,
        threshold=threshold_rtol * scale,
        solver=adjoint_solver,
        preconditioner=pre,
        throw=throw,
    )
    t_stats = jax.tree_util.tree_map(
        lambda v: jnp.zeros_like(v) if eqx.is_inexact_array(v) else None, stats
    )
    return out, (t_values, t_vectors, None, t_stats, jnp.zeros_like(scale))


_LOBPCG_ERRORS = tuple(
    {
        RESULTS.max_steps_reached: (
            "linsolve.lobpcg did not converge within `max_steps` iterations; increase "
            "`max_steps`, loosen `tol`, use a preconditioner, or pass throw=False and check "
            "`result` (the best pairs seen are returned)."
        ),
        RESULTS.nonfinite_input: "linsolve.lobpcg met NaN/Inf: check the operator, `B`, `X0` and the preconditioner.",
        RESULTS.not_positive_definite: (
            "linsolve.lobpcg: `B` is not positive definite (a vector v with vᵀ B v <= 0, to "
            "rounding, was met): the pencil (A, B) needs a symmetric positive definite B."
        ),
    }.get(code, RESULTS.message(code))
    for code in RESULTS
)


def _check_tolerance(tol) -> None:
    """Reject a concrete negative, NaN or infinite `tol` (a traced one cannot be checked)."""
    if tol is None or isinstance(tol, jax.core.Tracer):
        return
    try:
        value = float(tol)
    except TypeError:
        return
    if not 0 <= value < float("inf"):
        raise ValueError(f"lobpcg: `tol` must be finite and >= 0, got {tol}.")


def check_operator(op, name: str) -> AbstractOperator:
    op = as_operator(op)
    if op.shape[0] != op.shape[1]:
        raise ValueError(f"lobpcg: `{name}` must be square, got shape {op.shape}.")
    if not jnp.issubdtype(op.dtype, jnp.floating):
        raise TypeError(
            f"lobpcg: `{name}` must have a real floating dtype, got {op.dtype} (complex "
            "hermitian problems are not supported yet)."
        )
    if not is_self_adjoint(op.tags):
        raise ValueError(
            f"lobpcg: `{name}` must be symmetric: tag it with `symmetric_tag` (or a "
            f"semidefinite tag); got tags {sorted(map(repr, op.tags))}. A tagged dense "
            "matrix is read by its lower triangle."
        )
    return op


def _hashed_block(n: int, m: int, dtype) -> Array:
    """A fixed pseudo-random `(n, m)` block with entries in (-1, 1): the "lowbias32"
    integer hash of each entry's index (a few fused integer operations)."""
    x = jax.lax.iota(jnp.uint32, n * m) + jnp.uint32(0x9E3779B9)
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    x = x ^ (x >> 16)
    u = x.astype(dtype) / dtype.type(2.0**32)
    return (2 * u - 1).reshape(n, m)


def default_block_size(k: int, n: int) -> int:
    """`k` plus a few guard vectors: `k + max(2, k // 4)` (capped at `n`). The guard
    columns are iterated but not tested for convergence; they make the convergence
    rate of the k-th eigenpair depend on the gap to the (m+1)-th eigenvalue instead of
    the (k+1)-th."""
    return min(n, k + max(2, k // 4))


def lobpcg(
    operator: Any,
    k: int,
    *,
    B: Any = None,
    X0: Float[Array, "n c"] | None = None,
    largest: bool = False,
    tol: float | None = None,
    max_steps: int | None = None,
    preconditioner: Any = None,
    key: PRNGKeyArray | None = None,
    block_size: int | None = None,
    adjoint_solver: Any = None,
    degeneracy_rtol: float | None = None,
    throw: bool = True,
    verbose: bool = False,
) -> Eigenpairs:
    """The `k` smallest (or largest) eigenpairs of `A v = λ B v`, by block LOBPCG;
    differentiable w.r.t. the arrays inside `A` and `B`.

    **Arguments:**

    - `operator`: `A`, symmetric (tagged `symmetric_tag` or semidefinite): a linsolve
      operator (dense, sparse, matrix-free) or a lineax operator. Real dtypes.
    - `k`: how many eigenpairs.
    - `B`: symmetric positive definite operator of the same kinds, or `None` (identity).
    - `X0`: `(n, c)` initial block, `k <= c`, linearly independent columns; its
      derivative is zero. Padded with pseudo-random columns up to the block size (a
      larger `c` sets the block size).
    - `largest`: the largest eigenvalues instead of the smallest.
    - `tol`: stop when every wanted pair has backward error
      `‖A v − λ B v‖₂ / ((‖A‖₂ + |λ| ‖B‖₂) ‖v‖₂) <= tol` (norms estimated during the
      iteration). Default `eps**0.75` (about 1.8e-12 in float64, 6.5e-6 in float32).
    - `max_steps`: the most iterations (default 1000). Not converging in time gives
      `RESULTS.max_steps_reached`.
    - `preconditioner`: an SPD operator approximating `(A − σB)⁻¹` for a shift `σ` below
      the wanted eigenvalues (for `largest=True`, `(σB − A)⁻¹` for `σ` above them),
      applied to the residuals. It is also used, projected, by the derivative's solves.
      No derivative flows into it.
    - `key`: PRNG key of the random initial columns (`jax.random.normal`). Without
      one they come from a fixed integer hash of the entry's position: as generic, and
      much cheaper to compile than JAX's generator.
    - `block_size`: columns iterated, `>= k` (default `k + max(2, k // 4)`, at most `n`).
    - `adjoint_solver`: the Krylov solver of the derivative's projected solves (default
      `linsolve.CG(rtol=tol)`, `tol` if given as a number, else CG's default `eps**0.75`:
      the projected operators are semidefinite; `linsolve.MINRES()` also works). If it
      has no preconditioner, the projected `preconditioner` is used.
    - `degeneracy_rtol`: eigenvalues closer than `degeneracy_rtol` times the spectral
      scale are treated as one eigenspace by the derivative (default `sqrt(eps)`).
    - `throw`: if `True`, non-convergence raises (also under `jit`), and so does a failed
      projected solve of a derivative; if `False`, check `result`.
    - `verbose`: print the largest wanted backward error and the current eigenvalues at
      every step (`jax.debug.print`, works under `jit`).

    Iterating past convergence never makes the answer worse: rows whose residual is at
    rounding level are locked (they add no search direction), a basis that lost its
    orthonormality restarts without the previous search directions, and when the
    iteration stops without meeting `tol`, the best block seen (by backward error) is
    returned. A `B` met with `vᵀ B v <= 0` (to rounding) for some `v` gives
    `RESULTS.not_positive_definite`.

    **Returns:**

    An [`linsolve.Eigenpairs`][]: `eigenvalues` `(k,)` (ascending, or descending for
    `largest=True`), `B`-orthonormal `eigenvectors` `(n, k)`, `result` and `stats`.

    Derivatives (forward and reverse mode) are those of the exact k extreme eigenpairs,
    from k projected linear solves with `adjoint_solver`, never from the full
    eigenbasis. They need a gap between the k-th and (k+1)-th eigenvalue. Within a
    degenerate eigenspace among the k, only basis-independent quantities (sums of its
    eigenvalues, its projector) have derivatives; see the docs page on eigenpairs.
    """
    op = check_operator(operator, "operator")
    n = op.shape[0]
    if B is not None:
        B = check_operator(B, "B")
        if B.shape != op.shape:
            raise ValueError(f"lobpcg: `B` has shape {B.shape}, the operator {op.shape}.")
        check_same_dtype(op.dtype, B.dtype, "the operator", "lobpcg: `B`")
    if preconditioner is not None:
        preconditioner = as_operator(preconditioner)
        if preconditioner.shape != op.shape:
            raise ValueError(
                f"lobpcg: the preconditioner has shape {preconditioner.shape}, the operator "
                f"{op.shape}."
            )
        check_same_dtype(
            op.dtype, preconditioner.dtype, "the operator", "lobpcg: the preconditioner"
        )
    k = int(k)
    if not 1 <= k <= n:
        raise ValueError(f"lobpcg: need 1 <= k <= n = {n}, got k = {k}.")
    dtype = op.dtype
    eps = float(jnp.finfo(dtype).eps)
    m = default_block_size(k, n) if block_size is None else int(block_size)
    if X0 is not None:
        if isinstance(X0, (jax.Array, np.ndarray)) and jnp.issubdtype(X0.dtype, jnp.inexact):
            check_same_dtype(dtype, X0.dtype, "the operator", "lobpcg: X0")
        X0 = jnp.asarray(X0, dtype)
        if X0.ndim == 1:
            X0 = X0[:, None]
        if X0.ndim != 2 or X0.shape[0] != n or X0.shape[1] < k:
            raise ValueError(
                f"lobpcg: `X0` must have shape ({n}, c) with c >= k = {k}; got {X0.shape}."
            )
        m = max(m, X0.shape[1])
    if not k <= m <= n:
        raise ValueError(f"lobpcg: need k <= block_size <= n, got block_size = {m}.")
    if isinstance(max_steps, int) and max_steps < 1:
        raise ValueError(f"lobpcg: `max_steps` must be >= 1, got {max_steps}.")
    _check_tolerance(tol)
    if key is None:
        x0 = _hashed_block(n, m, dtype)
    else:
        x0 = jax.random.normal(key, (n, m), dtype)
    if X0 is not None:
        x0 = x0.at[:, : X0.shape[1]].set(X0)
    x0 = jax.lax.stop_gradient(x0)
    # Traced limits: changing them does not recompile.
    limits = (
        jax.lax.stop_gradient(jnp.asarray(eps**0.75 if tol is None else tol, dtype)),
        jax.lax.stop_gradient(jnp.asarray(1000 if max_steps is None else max_steps, jnp.int32)),
    )
    cfg = _Config(
        k=k,
        block_size=m,
        largest=bool(largest),
        verbose=bool(verbose),
    )
    if adjoint_solver is None:
        # The projected solves to the accuracy the eigenpairs were computed to: the
        # derivative's error is then of the same order from both sources.
        static_tol = tol if isinstance(tol, (int, float)) else None
        adjoint_solver = CG(rtol=None if static_tol is None else max(float(static_tol), eps**0.75))
    elif not isinstance(adjoint_solver, AbstractKrylovSolver):
        raise TypeError(
            "lobpcg: `adjoint_solver` must be a Krylov solver (linsolve.CG, MINRES, ...): "
            "the projected operators are singular and matrix-free."
        )
    rtol = eps**0.5 if degeneracy_rtol is None else float(degeneracy_rtol)
    pre = preconditioner  # its tangent is ignored by the derivative rule
    values, vectors, result, stats, _ = _lobpcg(
        op, B, pre, x0, limits, adjoint_solver, cfg=cfg, threshold_rtol=rtol, throw=bool(throw)
    )
    if throw:
        # On both outputs, so that the check survives when only one of them is used.
        values, vectors = eqx.branched_error_if(
            (values, vectors), result != RESULTS.successful, result, _LOBPCG_ERRORS
        )
    return Eigenpairs(values, vectors, result, stats)
