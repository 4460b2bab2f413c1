"""Dense LAPACK calls that stay unbatched under `vmap` on CPU.

jaxlib 0.10's CPU LAPACK kernels split a batched call (a `vmap`ped factorization or
triangular solve) into chunks on XLA's intra-op thread pool and block that pool thread
until the chunks are done. Two such calls that XLA runs at the same time — e.g. the
Cholesky of `logdet(K)` and the one of `linear_solve(K, y)` in a `vmap`ped Gaussian
process likelihood — can take every pool thread and wait for each other forever (seen on
2 cores; jaxlib 0.11.2 builds without that path). So on CPU, with an affected jaxlib, a
batch of *matrices* is factorized or solved with one after the other (`lax.map`), which
never enters that path. A batch of right-hand sides for one matrix is left to JAX's own
rule (one call with more columns), and other backends keep their batched kernels.

Every function here is called on values that are not differentiated (the solver state
is `stop_gradient`-ed; solves run inside `custom_linear_solve` / custom JVP rules, which
never differentiate them): `custom_vmap` functions have no reverse-mode rule.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import jaxlib

from . import _small_dense


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


# The releases whose CPU kernels block on the thread pool for batched calls.
AFFECTED = (0, 10, 0) <= _version(jaxlib.__version__) < (0, 11, 2)  # pyright: ignore[reportPrivateImportUsage]


# Largest n for which a batch of n × n matrices is factorized and solved by the plain-XLA
# kernels of `_small_dense` rather than one LAPACK call per matrix (measured with
# `benchmarks/dense.py --vmap`: see docs/benchmarks.md).
SMALL_N = 16


def _small_applies(args, in_batched, num_matrices: int) -> bool:
    """Whether the matrices (the first `num_matrices` arguments, integer pivots aside) are
    real, square, of size at most `SMALL_N`, one per batch member."""
    for a, b in zip(args[:num_matrices], in_batched):
        shape = a.shape[1:] if b else a.shape
        if jnp.issubdtype(a.dtype, jnp.integer):
            continue
        if a.dtype not in (jnp.float32, jnp.float64) or len(shape) != 2:
            return False
        if shape[0] != shape[1] or shape[0] > SMALL_N:
            return False
    return True


def _sequential_vmap(fn: Callable, num_matrices: int, small: Callable | None) -> Callable:
    """`fn(*arrays)`, batched under `vmap` on CPU when any of its first `num_matrices`
    arguments (the matrices) is batched: by `small` (the same computation in plain XLA
    ops, on arrays with the batch as their last axis) for small real matrices, else by a
    loop over the batch."""

    @jax.custom_batching.custom_vmap
    def wrapped(*args):
        return fn(*args)

    @wrapped.def_vmap
    def _rule(axis_size, in_batched, *args):
        loop = jax.default_backend() == "cpu" and any(in_batched[:num_matrices])
        if not loop:
            # JAX's own rule (e.g. more right-hand-side columns in one call), wrapped
            # again so that an enclosing `vmap` over the matrices still loops (or runs
            # the small kernel, vmapped alike over this level's axis, which it keeps
            # in front of the enclosing level's batch axis).
            in_axes = tuple(0 if b else None for b in in_batched)
            small_v = None if small is None else jax.vmap(small, in_axes=in_axes)
            out = _sequential_vmap(jax.vmap(fn, in_axes=in_axes), num_matrices, small_v)(*args)
        elif small is not None and _small_applies(args, in_batched, num_matrices):
            moved = [
                jnp.moveaxis(a, 0, -1)
                if b
                else jnp.broadcast_to(a[..., None], a.shape + (axis_size,))
                for a, b in zip(args, in_batched)
            ]
            out = jax.tree_util.tree_map(lambda x: jnp.moveaxis(x, -1, 0), small(*moved))
        else:
            batched = [a for a, b in zip(args, in_batched) if b]

            def one(xs):
                it = iter(xs)
                # `wrapped` again, not `fn`: an enclosing `vmap` batches this loop body.
                return wrapped(*(next(it) if b else a for a, b in zip(args, in_batched)))

            out = jax.lax.map(one, batched)
        return out, jax.tree_util.tree_map(lambda _: True, out)

    return wrapped


def unbatched_on_cpu(num_matrices: int, small: Callable | None = None):
    """Decorator: `fn(*arrays)`, whose first `num_matrices` arguments are matrices, makes
    no batched LAPACK call under `vmap` on CPU (with an affected jaxlib): a batch of small
    real matrices goes to `small` (`fn` in plain XLA ops, batch as the last axis of every
    argument and output), any other batch of matrices is looped over. Only for code that
    is not differentiated (no reverse-mode rule)."""

    def decorate(fn):
        return _sequential_vmap(fn, num_matrices, small) if AFFECTED else fn

    return decorate


def whole_on_cpu(num_matrices: int):
    """Decorator: `fn(*arrays)`, a computation of several dense calls on one matrix (the
    first `num_matrices` arguments; e.g. a condition estimate's sequence of solves with
    a factor), batched under `vmap` on CPU (with an affected jaxlib) as a whole: small
    real matrices by `fn` itself, vmapped, so that each of its calls runs `_small_dense`'s
    kernel; larger ones by *one* loop over the batch whose body runs all of `fn`'s calls
    for one member, instead of one loop per call. Only for code that is not
    differentiated (no reverse-mode rule)."""

    def decorate(fn):
        if not AFFECTED:
            return fn

        def small(*args):  # batch last, as `_sequential_vmap` hands it over
            return jax.vmap(fn, in_axes=-1, out_axes=-1)(*args)

        return _sequential_vmap(fn, num_matrices, small)

    return decorate


def diagnosis_on_cpu(num_matrices: int, when_ok: Callable):
    """Decorator for `fn(failed, *arrays)` (the first `num_matrices` arrays matrices), a diagnosis that runs LAPACK only where
    `failed` (inside a `cond`) and otherwise returns `when_ok()`: under `vmap` on CPU
    (with an affected jaxlib) the batch is looped over member by member — no batched
    LAPACK call — and only if some member failed, so that a batch of good matrices
    pays one `any` for it rather than a loop."""

    def decorate(fn):
        if not AFFECTED:
            return fn
        looped = _sequential_vmap(fn, num_matrices + 1, None)

        @jax.custom_batching.custom_vmap
        def wrapped(failed, *args):
            return fn(failed, *args)

        @wrapped.def_vmap
        def _rule(axis_size, in_batched, failed, *args):
            def loop():
                axes = tuple(0 if b else None for b in in_batched)
                return jax.vmap(looped, in_axes=axes)(failed, *args)

            def ok():
                out = when_ok()
                return jax.tree_util.tree_map(
                    lambda x: jnp.broadcast_to(x, (axis_size,) + x.shape), out
                )

            out = jax.lax.cond(jnp.any(failed), loop, ok)
            return out, jax.tree_util.tree_map(lambda _: True, out)

        return wrapped

    return decorate


@unbatched_on_cpu(1, _small_dense.cholesky)
def cholesky(matrix):
    """Lower Cholesky factor; reads the lower triangle only (NaN where not definite)."""
    return jax.lax.linalg.cholesky(matrix, symmetrize_input=False)


@unbatched_on_cpu(1, _small_dense.lu)
def lu(matrix):
    """`(lu, pivots, permutation)` of partial-pivoting LU: `matrix[permutation] = L U`."""
    return tuple(jax.lax.linalg.lu(matrix))


@unbatched_on_cpu(1)
def qr(matrix):
    """Reduced Householder QR `(q, r)`."""
    return jnp.linalg.qr(matrix, mode="reduced")


@unbatched_on_cpu(1)
def eigh(matrix):
    """`(eigenvalues, eigenvectors)` of a symmetric/hermitian matrix (lower triangle)."""
    return jnp.linalg.eigh(matrix)


@unbatched_on_cpu(1)
def eigvalsh_upper(matrix):
    """Eigenvalues of the hermitian matrix whose upper triangle is that of `matrix` (the
    lower triangle is not read)."""
    return jax.lax.linalg.eigh(matrix, lower=False, symmetrize_input=False)[1]


@unbatched_on_cpu(1)
def svd(matrix):
    """Reduced SVD `(u, s, vh)`."""
    return jnp.linalg.svd(matrix, full_matrices=False)


@unbatched_on_cpu(1, _small_dense.cho_solve)
def cho_solve(factor, vector):
    """`A⁻¹ b` from the lower Cholesky factor of `A`."""
    return jsl.cho_solve((factor, True), vector)


@functools.cache
def _lu_solve(trans: int):
    @unbatched_on_cpu(2, functools.partial(_small_dense.lu_solve, trans=trans))
    def solve(lu_, pivots, vector):
        return jsl.lu_solve((lu_, pivots), vector, trans=trans)

    return solve


def lu_solve(lu_, pivots, vector, trans: int = 0):
    """`A⁻¹ b` (`trans=1`: `A⁻ᵀ b`, `2`: `A⁻ᴴ b`) from `lu`'s output."""
    return _lu_solve(trans)(lu_, pivots, vector)


@functools.cache
def _triangular(trans, lower: bool, unit: bool):
    small = functools.partial(
        _small_dense.solve_triangular, trans={0: 0, "N": 0}.get(trans, 1), lower=lower, unit=unit
    )

    @unbatched_on_cpu(1, small)
    def solve(matrix, vector):
        return jsl.solve_triangular(matrix, vector, trans=trans, lower=lower, unit_diagonal=unit)

    return solve


def solve_triangular(
    matrix, vector, *, trans: int | str = 0, lower: bool, unit_diagonal: bool = False
):
    """`jax.scipy.linalg.solve_triangular`, reading one triangle of `matrix`."""
    return _triangular(trans, lower, unit_diagonal)(matrix, vector)
