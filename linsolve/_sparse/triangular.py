"""Sparse triangular solves by level scheduling.

Host side, once per (pattern, tags, direction): the unknowns are grouped into levels of
the dependency DAG (an unknown's level is one more than the deepest unknown it depends
on), and the entries each level needs are laid out in padded static index arrays.
JAX side: a `lax.scan` over levels; each level is a gather, a segment sum and a scatter,
so the work is O(nnz + n) and the sequential depth is the number of levels.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array


class Schedule:
    """Padded per-level index arrays for `x_i = (b_i − Σ_j v_ij x_j) / d_i`.

    Padding rows point at a dummy unknown `n`; padding entries at a dummy value slot
    whose value is 0.
    """

    def __init__(self, dep_i, dep_j, dep_v, n: int):
        levels = _levels(dep_i, dep_j, n)
        num_levels = int(levels.max()) + 1 if n else 0
        order = np.argsort(levels, kind="stable")
        counts = np.bincount(levels, minlength=num_levels)
        width = int(counts.max()) if n else 1
        rows = np.full((num_levels, width), n, np.int64)
        start = np.concatenate([[0], np.cumsum(counts)])
        local = np.empty(n, np.int64)
        for lvl in range(num_levels):
            members = order[start[lvl] : start[lvl + 1]]
            rows[lvl, : members.size] = members
            local[members] = np.arange(members.size)
        e_level = levels[dep_i]
        e_order = np.argsort(e_level, kind="stable")
        e_counts = np.bincount(e_level, minlength=num_levels)
        e_width = max(int(e_counts.max()) if dep_i.size else 0, 1)
        e_start = np.concatenate([[0], np.cumsum(e_counts)])
        ent_j = np.full((num_levels, e_width), n, np.int64)
        ent_local = np.zeros((num_levels, e_width), np.int64)
        ent_v = np.full((num_levels, e_width), -1, np.int64)  # -1: the dummy zero value
        for lvl in range(num_levels):
            sel = e_order[e_start[lvl] : e_start[lvl + 1]]
            ent_j[lvl, : sel.size] = dep_j[sel]
            ent_local[lvl, : sel.size] = local[dep_i[sel]]
            ent_v[lvl, : sel.size] = dep_v[sel]
        self.n = n
        self.rows, self.ent_j, self.ent_local, self.ent_v = rows, ent_j, ent_local, ent_v
        self.num_levels = num_levels

    def solve(self, off_values: Array, diagonal: Array | None, b: Array) -> Array:
        """Solve with the strict entries `off_values` (indexed by `dep_v`) and the
        `diagonal` (`None`: unit diagonal), for `b` of shape (n,) or (n, k)."""
        n = self.n
        pad = jnp.zeros((1,) + b.shape[1:], b.dtype)
        b_ext = jnp.concatenate([b, pad])
        vals = jnp.concatenate([off_values, jnp.zeros((1,), off_values.dtype)])
        if diagonal is not None:
            d_ext = jnp.concatenate([diagonal, jnp.ones((1,), diagonal.dtype)])
        width = self.rows.shape[1]
        expand = (slice(None),) + (None,) * (b.ndim - 1)

        def level(x, idx):
            rows, ent_j, ent_local, ent_v = idx
            contrib = vals[ent_v][expand] * x[ent_j]
            s = jax.ops.segment_sum(contrib, ent_local, num_segments=width)
            new = b_ext[rows] - s
            if diagonal is not None:
                new = new / d_ext[rows][expand]
            return x.at[rows].set(new, mode="drop"), None

        x0 = jnp.zeros((n + 1,) + b.shape[1:], jnp.result_type(b, off_values))
        arrays = tuple(jnp.asarray(a) for a in (self.rows, self.ent_j, self.ent_local, self.ent_v))
        x, _ = jax.lax.scan(level, x0, arrays)
        return x[:n]


def _levels(dep_i: np.ndarray, dep_j: np.ndarray, n: int) -> np.ndarray:
    """Level of each unknown in the DAG `i depends on j` (triangular: acyclic)."""
    levels = np.zeros(n, np.int64)
    if dep_i.size == 0:
        return levels
    lower = bool(np.all(dep_j < dep_i))
    order = np.argsort(dep_i, kind="stable")
    di, dj = dep_i[order], dep_j[order]
    ptr = np.concatenate([[0], np.cumsum(np.bincount(di, minlength=n))])
    rng = range(n) if lower else range(n - 1, -1, -1)
    for i in rng:
        deps = dj[ptr[i] : ptr[i + 1]]
        if deps.size:
            levels[i] = levels[deps].max() + 1
    return levels


@functools.lru_cache(maxsize=64)
def schedule(pattern, tags: frozenset, transpose: bool) -> tuple[Schedule, np.ndarray, np.ndarray]:
    """The schedule of a triangular `SparseOperator` (or of its transpose), with the
    positions of its read strict-triangle entries and diagonal entries in `values`."""
    off, diag = pattern.read(tags)
    r, c = pattern.rows[off], pattern.cols[off]
    dep_i, dep_j = (c, r) if transpose else (r, c)
    sched = Schedule(dep_i, dep_j, np.arange(off.size), pattern.shape[0])
    return sched, off, diag
