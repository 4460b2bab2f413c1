"""Dense factorizations and solves of a batch of small real matrices, in plain XLA ops.

A `vmap`ped factorization of many small matrices (3 × 3 to 32 × 32) is dominated by the
per-call overhead of LAPACK, and on CPU with jaxlib 0.10 a batched LAPACK call can
deadlock (see `_lapack`), so a batch is otherwise factorized matrix by matrix. These
kernels instead take the batch as the *last* axis — every "entry" below is a vector over
the batch, so XLA's fused elementwise loops vectorize across matrices — and unroll the
`n` steps of elimination in Python (static shapes that shrink step by step: no masking,
no gather). They never call LAPACK, so they cannot deadlock.

They follow LAPACK's conventions, so the solvers cannot tell them apart from
`jax.lax.linalg`: Cholesky reads the lower triangle and returns NaN everywhere for a
matrix that is not positive definite (a non-positive or NaN pivot, as `xPOTRF` with
`info > 0`); LU pivots on the first entry of largest magnitude (`IxAMAX`) and, like
`xGETF2`, does not scale a column whose pivot is exactly zero (that column of `L` stays
zero). Only used on values that are not differentiated (see `_lapack`); real dtypes only.
"""

import jax.numpy as jnp
from jaxtyping import Array


def _lower_to_symmetric(a: Array) -> Array:
    """The symmetric matrix whose lower triangle is that of `a` (n × n × batch); the
    strict upper triangle is never read, not even its NaN (a select, not arithmetic)."""
    n = a.shape[0]
    below = (jnp.arange(n)[:, None] >= jnp.arange(n)[None, :])[:, :, None]
    return jnp.where(below, a, jnp.swapaxes(a, 0, 1))


def cholesky(a: Array) -> Array:
    """Lower Cholesky factor of each `a[:, :, i]` from its lower triangle (`n × n × batch`),
    zero above the diagonal; where the factorization fails, NaN on and below it (as
    `jax.lax.linalg.cholesky`)."""
    n = a.shape[0]
    trailing = _lower_to_symmetric(a)
    columns = []
    ok = jnp.ones(a.shape[2:], bool)
    for j in range(n):
        pivot = trailing[0, 0]
        ok = ok & (pivot > 0)  # NaN compares false
        d = jnp.sqrt(jnp.where(pivot > 0, pivot, 1))
        col = trailing[1:, 0] / d
        columns.append(jnp.concatenate([jnp.zeros((j,) + d.shape, a.dtype), d[None], col]))
        # Right-looking: the trailing matrix loses the rank-one part of column j.
        trailing = trailing[1:, 1:] - col[:, None] * col[None, :]
    if not n:
        return a
    factor = jnp.stack(columns, axis=1)
    below = (jnp.arange(n)[:, None] >= jnp.arange(n)[None, :])[:, :, None]
    return jnp.where(ok | ~below, factor, jnp.nan)


def _member_rows(x: Array, rows: Array) -> Array:
    """`x[rows[i], ..., i]` for each batch member `i` (`x` of shape `r × ... × batch`,
    `rows` of shape `batch`): a gather, far cheaper than a masked sum over the rows."""
    members = jnp.arange(rows.shape[0])
    return jnp.moveaxis(x[rows, ..., members], 0, -1)


def lu(a: Array) -> tuple[Array, Array, Array]:
    """`(lu, pivots, permutation)` of partial-pivoting LU of each square `a[:, :, i]`, as
    `jax.lax.linalg.lu` returns them (batch last): `a[permutation] = L U`."""
    n = a.shape[0]
    batch = a.shape[2:]
    if not n:
        return a, jnp.zeros((0,) + batch, jnp.int32), jnp.zeros((0,) + batch, jnp.int32)
    rows = a  # the rows not yet pivoted, full width (L multipliers left of column j)
    order = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[:, None], (n,) + batch)
    out_rows, pivots, perm = [], [], []
    for j in range(n):
        r = n - j
        # The first row of largest magnitude in column j (ties: the first, as IxAMAX).
        p = jnp.argmax(jnp.abs(rows[:, j]), axis=0).astype(jnp.int32)
        prow = _member_rows(rows, p)
        porder = _member_rows(order, p)
        # Swap: the pivot row leaves, row j takes its place.
        pick = jnp.arange(r, dtype=jnp.int32)[:, None] == p[None]  # r × batch
        rows = jnp.where(pick[:, None], rows[0][None], rows)[1:]
        order = jnp.where(pick, order[0][None], order)[1:]
        pivot = prow[j]
        # A zero pivot means a zero column: left unscaled (xGETF2), no division by zero.
        mult = rows[:, j] / jnp.where(pivot == 0, 1, pivot)
        update = rows[:, j + 1 :] - mult[:, None] * prow[None, j + 1 :]
        rows = jnp.concatenate([rows[:, :j], mult[:, None], update], axis=1)
        out_rows.append(prow)
        pivots.append(p + j)
        perm.append(porder)
    return jnp.stack(out_rows), jnp.stack(pivots), jnp.stack(perm)


def solve_triangular(a: Array, b: Array, *, trans: int, lower: bool, unit: bool) -> Array:
    """`op(a)⁻¹ b` for the triangle of `a` that `lower` names (the other is not read),
    `op` the identity (`trans=0`) or the transpose (`1`, `2`: real input); `a` of shape
    `n × n × batch`, `b` of `n × batch` or `n × k × batch`.

    Column-oriented substitution: each solved unknown's contribution leaves the
    right-hand side at once, so the shapes shrink and nothing is gathered; the
    multipliers are read from `a` where they lie (a column or a row of the triangle), so
    `op(a)` is never formed."""
    vector = b.ndim == a.ndim - 1
    if vector:
        b = b[:, None]
    n = a.shape[0]
    forward = lower != bool(trans)  # op(a) lower: forward substitution
    xs = []
    for step in range(n):
        i = step if forward else n - 1 - step
        # The entries of op(a) in column i that are still to be eliminated.
        if forward:
            mult = a[i + 1 :, i] if not trans else a[i, i + 1 :]
        else:
            mult = a[:i, i] if not trans else a[i, :i]
        rhs, rest = (b[0], b[1:]) if forward else (b[-1], b[:-1])
        x = rhs if unit else rhs / a[i, i][None]
        xs.append(x)
        b = rest - mult[:, None] * x[None]
    x = jnp.stack(xs if forward else xs[::-1]) if n else b
    return x[:, 0] if vector else x


def cho_solve(factor: Array, b: Array) -> Array:
    """`A⁻¹ b` from the lower Cholesky factor of `A` (batch last)."""
    y = solve_triangular(factor, b, trans=0, lower=True, unit=False)
    return solve_triangular(factor, y, trans=1, lower=True, unit=False)


def _permutation(pivots: Array) -> Array:
    """The row permutation of LAPACK-style sequential row swaps `pivots` (`n × batch`)."""
    n = pivots.shape[0]
    perm = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[:, None], pivots.shape)
    members = jnp.arange(pivots.shape[1])
    for j in range(n):
        p = pivots[j]
        moved = _member_rows(perm, p)
        perm = perm.at[p, members].set(perm[j]).at[j].set(moved)
    return perm


def _permute_rows(b: Array, perm: Array, inverse: bool) -> Array:
    """`b[perm]` (or, with `inverse`, the `x` with `x[perm] = b`) per batch member, for
    `b` of shape `n × k × batch` and `perm` of `n × batch`."""
    if inverse:
        members = jnp.arange(perm.shape[1])
        rows = jnp.arange(perm.shape[0], dtype=perm.dtype)[:, None]
        perm = jnp.zeros_like(perm).at[perm, members[None]].set(rows)
    return jnp.take_along_axis(b, jnp.broadcast_to(perm[:, None], b.shape), axis=0)


def lu_solve(lu_: Array, pivots: Array, b: Array, trans: int) -> Array:
    """`A⁻¹ b` (`trans=0`) or `A⁻ᵀ b` (`1`, `2`: real input) from `lu`'s output."""
    vector = b.ndim == lu_.ndim - 1
    if vector:
        b = b[:, None]
    perm = _permutation(pivots)
    if trans == 0:
        y = _permute_rows(b, perm, inverse=False)
        y = solve_triangular(lu_, y, trans=0, lower=True, unit=True)
        x = solve_triangular(lu_, y, trans=0, lower=False, unit=False)
    else:
        y = solve_triangular(lu_, b, trans=1, lower=False, unit=False)
        y = solve_triangular(lu_, y, trans=1, lower=True, unit=True)
        x = _permute_rows(y, perm, inverse=True)
    return x[:, 0] if vector else x
