"""Block LOBPCG for a few extreme eigenpairs of a symmetric pencil `(A, B)`.

The iteration (Knyazev 2001) in the robust form of Hetmaniuk & Lehoucq (2006) and
Duersch, Shao, Yang & Gu (2018):

- Every Rayleigh–Ritz step works in the basis `S = [X, W, P]` (Ritz vectors, preconditioned
  residuals, previous directions) of `3m` columns, `m` the block size. Its `B`-Gram matrix
  is computed in full and orthonormalised by SVQB: the diagonal is scaled to one, an
  eigendecomposition of the scaled Gram matrix drops the directions that are dependent to
  rounding, and the reduced eigenproblem is solved in what is left. Nothing is ever
  factorized with Cholesky, so an ill-conditioned (even rank-deficient) block degrades the
  step instead of breaking it. Dropped directions keep their slot (shapes are static under
  `jit`) with a zero coefficient column and are never selected.
- `W` is orthogonalised against `X` and `P` (classical Gram–Schmidt with the stored `BX`,
  `BP`) before its products with `A` and `B` are taken, so the Gram matrix is nearly the
  identity and SVQB loses no accuracy.
- The new directions `P` are chosen in the small space (Hetmaniuk–Lehoucq): the `W`/`P`
  part of the Ritz coefficients, made `B`-orthonormal and `B`-orthogonal to the new `X`.
  `AX`, `BX`, `AP`, `BP` are updated from the coefficients, so an iteration applies `A`
  and `B` to the `m` columns of `W` only.
- Soft locking: a wanted column whose residual has converged contributes no residual
  direction (its `W` column is zero and dropped), but stays in the Rayleigh–Ritz basis.
- The implicitly updated products drift by rounding; when every wanted column looks
  converged, `AX` and `BX` are recomputed from `X`, `X` is re-orthonormalised, and the
  test is repeated on the true residuals (an outer loop around the iteration).

The largest eigenvalues are found as the smallest of `-A`. Derivatives are defined in
`adjoint.py`; the iteration itself is never differentiated.
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .._operator import AbstractOperator, as_operator
from .._solution import RESULTS, first_failure
from .._tags import is_self_adjoint


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
    """Static configuration of one LOBPCG run (hashable: it parametrises compilation)."""

    k: int = eqx.field(static=True)
    block_size: int = eqx.field(static=True)
    largest: bool = eqx.field(static=True)
    tol: float = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    drop: float = eqx.field(static=True)


def _sym(m):
    return 0.5 * (m + m.T)


def _bmv(B, x):
    return x if B is None else B.mv(x)


def _col_norms(x):
    return jnp.sqrt(jnp.sum(x * x, axis=0))


def rayleigh_ritz(gram: Array, proj: Array, drop: float):
    """Robust Rayleigh–Ritz for the pencil `(proj, gram)` (both `c × c` symmetric, `gram`
    positive semidefinite, possibly singular).

    The basis is orthonormalised in the `gram` metric by SVQB: scale the diagonal to one,
    eigendecompose, drop eigenvalues below `drop` times the largest (zero columns always
    go). Returns `(theta, coef, valid)`: the Ritz values ascending, the coefficient
    vectors (columns, `gram`-orthonormal) and which of them are genuine. Dropped
    directions come last, with zero coefficient columns."""
    c = gram.shape[0]
    gram = _sym(gram)
    proj = _sym(proj)
    d = jnp.diagonal(gram)
    tiny = jnp.finfo(gram.dtype).tiny
    nonzero = d > tiny * c  # exactly zero (masked) columns
    scale = jnp.where(nonzero, 1 / jnp.sqrt(jnp.where(nonzero, d, 1)), 0)
    sig, vec = jnp.linalg.eigh(gram * scale[:, None] * scale[None, :])
    keep = sig > drop * jnp.max(sig)
    z = (scale[:, None] * vec) * jnp.where(keep, 1 / jnp.sqrt(jnp.where(keep, sig, 1)), 0)
    reduced = _sym(z.T @ proj @ z)
    # Dropped directions are zero rows and columns of `reduced`: give them a diagonal
    # sentinel above every genuine Ritz value so that they sort last and decouple.
    sentinel = 2 * jnp.sqrt(jnp.sum(reduced * reduced)) + 1
    reduced = reduced + jnp.diag(jnp.where(keep, 0, sentinel))
    theta, q = jnp.linalg.eigh(reduced)
    valid = jnp.arange(c) < jnp.sum(keep)
    return theta, z @ q, valid


def _orthonormal_columns(coef: Array, gram: Array, drop: float) -> Array:
    """SVQB of coefficient columns in the `gram` metric; dependent columns become zero."""
    g = _sym(coef.T @ gram @ coef)
    d = jnp.diagonal(g)
    nonzero = d > jnp.finfo(g.dtype).tiny * g.shape[0]
    scale = jnp.where(nonzero, 1 / jnp.sqrt(jnp.where(nonzero, d, 1)), 0)
    sig, vec = jnp.linalg.eigh(g * scale[:, None] * scale[None, :])
    keep = sig > drop * jnp.max(sig)
    t = (scale[:, None] * vec) * jnp.where(keep, 1 / jnp.sqrt(jnp.where(keep, sig, 1)), 0)
    return coef @ t


class _State(eqx.Module):
    x: Array
    ax: Array
    bx: Array
    p: Array
    ap: Array
    bp: Array
    theta: Array  # Ritz values of x, of the (possibly negated) operator
    eta: Array  # backward errors of the columns of x
    anorm: Array  # running estimates of ‖A‖₂ and ‖B‖₂ (lower bounds)
    bnorm: Array
    steps: Array


def _backward_errors(x, ax, bx, theta, anorm, bnorm):
    r = ax - bx * theta[None, :]
    rnorm = _col_norms(r)
    denom = (anorm + jnp.abs(theta) * bnorm) * _col_norms(x)
    tiny = jnp.finfo(x.dtype).tiny
    return rnorm, rnorm / jnp.maximum(denom, tiny)


def _refresh(amv, B, x, anorm, bnorm, cfg: _Config):
    """Re-orthonormalise `x`, recompute `AX`, `BX` from it (no drift), and rotate to Ritz
    vectors of span(x)."""
    ax = amv(x)
    bx = _bmv(B, x)
    xn = _col_norms(x)
    ok = xn > 0
    safe = jnp.where(ok, xn, 1)
    anorm = jnp.maximum(anorm, jnp.max(jnp.where(ok, _col_norms(ax) / safe, 0)))
    if B is not None:
        bnorm = jnp.maximum(bnorm, jnp.max(jnp.where(ok, _col_norms(bx) / safe, 0)))
    theta, coef, _ = rayleigh_ritz(x.T @ bx, x.T @ ax, cfg.drop)
    x, ax, bx = x @ coef, ax @ coef, bx @ coef
    _, eta = _backward_errors(x, ax, bx, theta, anorm, bnorm)
    return x, ax, bx, theta, eta, anorm, bnorm


def _step(amv, B, pre, cfg: _Config, s: _State) -> _State:
    m, k = cfg.block_size, cfg.k
    r = s.ax - s.bx * s.theta[None, :]
    # Soft locking: converged wanted columns contribute no residual direction; the
    # guard columns beyond k always do.
    active = (s.eta > cfg.tol) | (jnp.arange(m) >= k)
    w = r if pre is None else pre.mv(r)
    w = jnp.where(active[None, :], w, 0)
    wn = _col_norms(w)
    w = w / jnp.where(wn > 0, wn, 1)[None, :]
    # B-orthogonalise against X and P (both B-orthonormal, mutually B-orthogonal).
    w = w - s.x @ (s.bx.T @ w) - s.p @ (s.bp.T @ w)
    aw = amv(w)
    bw = _bmv(B, w)
    wn = _col_norms(w)
    ok = wn > 0
    safe = jnp.where(ok, wn, 1)
    anorm = jnp.maximum(s.anorm, jnp.max(jnp.where(ok, _col_norms(aw) / safe, 0)))
    bnorm = s.bnorm
    if B is not None:
        bnorm = jnp.maximum(bnorm, jnp.max(jnp.where(ok, _col_norms(bw) / safe, 0)))

    basis = jnp.concatenate([s.x, w, s.p], axis=1)
    abasis = jnp.concatenate([s.ax, aw, s.ap], axis=1)
    bbasis = basis if B is None else jnp.concatenate([s.bx, bw, s.bp], axis=1)
    gram = basis.T @ bbasis
    proj = basis.T @ abasis
    theta, coef, _ = rayleigh_ritz(gram, proj, cfg.drop)
    cx = coef[:, :m]
    # New directions (Hetmaniuk–Lehoucq): the W/P part of the new Ritz coefficients,
    # B-orthogonalised against them and B-orthonormalised, all in the small space.
    cp = cx.at[:m].set(0)
    cp = cp - cx @ (cx.T @ gram @ cp)
    cp = _orthonormal_columns(cp, gram, cfg.drop)
    both = jnp.concatenate([cx, cp], axis=1)
    new = basis @ both
    anew = abasis @ both
    bnew = new if B is None else bbasis @ both
    x, p = new[:, :m], new[:, m:]
    ax, ap = anew[:, :m], anew[:, m:]
    bx, bp = bnew[:, :m], bnew[:, m:]
    theta = theta[:m]
    _, eta = _backward_errors(x, ax, bx, theta, anorm, bnorm)
    return _State(x, ax, bx, p, ap, bp, theta, eta, anorm, bnorm, s.steps + 1)


def run_lobpcg(op: AbstractOperator, B, pre, x0: Array, cfg: _Config):
    """The iteration. Returns `(eigenvalues (k,), eigenvectors (n, k), result, stats)`;
    not differentiated (see `adjoint.py`)."""
    sign = -1 if cfg.largest else 1

    def amv(v):
        out = op.mv(v)
        return -out if cfg.largest else out

    m, k = cfg.block_size, cfg.k
    dtype = x0.dtype
    zero = jnp.zeros((), dtype)
    zeros = jnp.zeros_like(x0)
    inf = jnp.full((m,), jnp.inf, dtype)
    # The state starts unrefreshed: the first outer step computes AX, BX from X0.
    state = _State(x0, zeros, zeros, zeros, zeros, zeros, zeros[0], inf, zero,
                   zero + 1 if B is None else zero, jnp.zeros((), jnp.int32))

    def wanted_converged(s):
        return jnp.all(s.eta[:k] <= cfg.tol)

    def inner_cond(s):
        return ~wanted_converged(s) & (s.steps < cfg.max_steps)

    def inner_body(s):
        return _step(amv, B, pre, cfg, s)

    def outer_cond(carry):
        return ~carry[1]

    def outer_body(carry):
        s, _ = carry
        # AX, BX were updated implicitly (or not at all, at the start): recompute them,
        # and test convergence on the true residuals.
        x, ax, bx, theta, eta, anorm, bnorm = _refresh(amv, B, s.x, s.anorm, s.bnorm, cfg)
        s = _State(x, ax, bx, s.p, s.ap, s.bp, theta, eta, anorm, bnorm, s.steps)
        done = wanted_converged(s) | (s.steps >= cfg.max_steps)
        # A no-op when done: its condition fails at once.
        s = jax.lax.while_loop(inner_cond, inner_body, s)
        return s, done

    state, _ = jax.lax.while_loop(outer_cond, outer_body, (state, jnp.asarray(False)))
    converged = wanted_converged(state)
    vectors = state.x[:, :k]
    values = sign * state.theta[:k]
    rnorm, eta = _backward_errors(
        state.x, state.ax, state.bx, state.theta, state.anorm, state.bnorm
    )
    finite = jnp.all(jnp.isfinite(values)) & jnp.all(jnp.isfinite(vectors))
    result = first_failure(
        (~finite, RESULTS.nonfinite_input),
        (~converged, RESULTS.max_steps_reached),
    )
    stats = {
        "num_steps": state.steps,
        "residual_norm": rnorm[:k],
        "backward_error": eta[:k],
        "block_size": jnp.asarray(m, jnp.int32),
    }
    # The spectral-radius estimate sets the scale of "equal" eigenvalues for the
    # derivative's degeneracy mask.
    scale = jnp.maximum(state.anorm / jnp.maximum(state.bnorm, jnp.finfo(dtype).tiny),
                        jnp.max(jnp.abs(values)))
    return values, vectors, result, stats, scale


# --------------------------------------------------------------------------------------
# Differentiation and the public function.


@eqx.filter_custom_jvp
def _lobpcg(op, B, pre, x0, adjoint_solver, *, cfg, threshold_rtol, throw):
    del adjoint_solver, threshold_rtol, throw
    return run_lobpcg(op, B, pre, x0, cfg)


@_lobpcg.def_jvp
def _lobpcg_jvp(primals, tangents, *, cfg, threshold_rtol, throw):
    from .adjoint import eigenpair_tangents

    op, B, pre, x0, adjoint_solver = primals
    t_op, t_B, _, _, _ = tangents  # preconditioner, X0 and solver: zero derivative
    out = _lobpcg(op, B, pre, x0, adjoint_solver, cfg=cfg, threshold_rtol=threshold_rtol,
                  throw=throw)
    values, vectors, _, stats, scale = out
    t_values, t_vectors = eigenpair_tangents(
        op, B, t_op, t_B, values, vectors, largest=cfg.largest,
        threshold=threshold_rtol * scale, solver=adjoint_solver, preconditioner=pre,
        throw=throw,
    )
    t_stats = jax.tree_util.tree_map(
        lambda v: jnp.zeros_like(v) if eqx.is_inexact_array(v) else None, stats
    )
    return out, (t_values, t_vectors, None, t_stats, jnp.zeros_like(scale))


def _check_operator(op, name: str) -> AbstractOperator:
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
) -> Eigenpairs:
    """The `k` smallest (or largest) eigenpairs of `A v = λ B v`, by block LOBPCG;
    differentiable w.r.t. the arrays inside `A` and `B`.

    **Arguments:**

    - `operator`: `A`, symmetric (tagged `symmetric_tag` or semidefinite): a linsolve
      operator (dense, sparse, matrix-free) or a lineax operator. Real dtypes.
    - `k`: how many eigenpairs.
    - `B`: symmetric positive definite operator of the same kinds, or `None` (identity).
    - `X0`: `(n, c)` initial block, `k <= c`; its derivative is zero. Padded with random
      columns up to the block size (a larger `c` sets the block size).
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
    - `key`: PRNG key of the random initial columns (default `PRNGKey(0)`).
    - `block_size`: columns iterated, `>= k` (default `k + max(2, k // 4)`, at most `n`).
    - `adjoint_solver`: the Krylov solver of the derivative's projected solves (default
      `linsolve.CG()`: the projected operators are semidefinite; `linsolve.MINRES()`
      also works). If it has no preconditioner, the projected `preconditioner` is used.
    - `degeneracy_rtol`: eigenvalues closer than `degeneracy_rtol` times the spectral
      scale are treated as one eigenspace by the derivative (default `sqrt(eps)`).
    - `throw`: if `True`, non-convergence raises (also under `jit`), and so does a failed
      projected solve of a derivative; if `False`, check `result`.

    **Returns:**

    An [`linsolve.Eigenpairs`][]: `eigenvalues` `(k,)` (ascending, or descending for
    `largest=True`), `B`-orthonormal `eigenvectors` `(n, k)`, `result` and `stats`.

    Derivatives (forward and reverse mode) are those of the exact k extreme eigenpairs,
    from k projected linear solves with `adjoint_solver`, never from the full
    eigenbasis. They need a gap between the k-th and (k+1)-th eigenvalue. Within a
    degenerate eigenspace among the k, only basis-independent quantities (sums of its
    eigenvalues, its projector) have derivatives; see the docs page on eigenpairs.
    """
    from .._solver.cg import CG
    from .._solver.krylov import AbstractKrylovSolver

    op = _check_operator(operator, "operator")
    n = op.shape[0]
    if B is not None:
        B = _check_operator(B, "B")
        if B.shape != op.shape:
            raise ValueError(f"lobpcg: `B` has shape {B.shape}, the operator {op.shape}.")
    if preconditioner is not None:
        preconditioner = as_operator(preconditioner)
        if preconditioner.shape != op.shape:
            raise ValueError(
                f"lobpcg: the preconditioner has shape {preconditioner.shape}, the operator "
                f"{op.shape}."
            )
    k = int(k)
    if not 1 <= k <= n:
        raise ValueError(f"lobpcg: need 1 <= k <= n = {n}, got k = {k}.")
    dtype = op.dtype if B is None else jnp.result_type(op.dtype, B.dtype)
    eps = float(jnp.finfo(dtype).eps)
    m = default_block_size(k, n) if block_size is None else int(block_size)
    if X0 is not None:
        X0 = jnp.asarray(X0, dtype)
        if X0.ndim == 1:
            X0 = X0[:, None]
        if X0.ndim != 2 or X0.shape[0] != n or X0.shape[1] < k:
            raise ValueError(f"lobpcg: `X0` must have shape ({n}, c) with c >= k = {k}; got {X0.shape}.")
        m = max(m, X0.shape[1])
    if not k <= m <= n:
        raise ValueError(f"lobpcg: need k <= block_size <= n, got block_size = {m}.")
    if key is None:
        key = jax.random.PRNGKey(0)
    x0 = jax.random.normal(key, (n, m), dtype)
    if X0 is not None:
        x0 = x0.at[:, : X0.shape[1]].set(X0)
    x0 = jax.lax.stop_gradient(x0)
    cfg = _Config(
        k=k,
        block_size=m,
        largest=bool(largest),
        tol=eps**0.75 if tol is None else float(tol),
        max_steps=1000 if max_steps is None else int(max_steps),
        drop=float(eps),
    )
    if adjoint_solver is None:
        adjoint_solver = CG()
    elif not isinstance(adjoint_solver, AbstractKrylovSolver):
        raise TypeError(
            "lobpcg: `adjoint_solver` must be a Krylov solver (linsolve.CG, MINRES, ...): "
            "the projected operators are singular and matrix-free."
        )
    rtol = eps**0.5 if degeneracy_rtol is None else float(degeneracy_rtol)
    pre = preconditioner  # its tangent is ignored by the derivative rule
    values, vectors, result, stats, _ = _lobpcg(
        op, B, pre, x0, adjoint_solver, cfg=cfg, threshold_rtol=rtol, throw=bool(throw)
    )
    if throw:
        vectors = eqx.error_if(
            vectors,
            result != RESULTS.successful,
            "linsolve.lobpcg did not converge within `max_steps` iterations (or met "
            "NaN/Inf); increase `max_steps`, loosen `tol`, use a preconditioner, or pass "
            "throw=False and check `result`.",
        )
    return Eigenpairs(values, vectors, result, stats)
