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


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


# The releases whose CPU kernels block on the thread pool for batched calls.
AFFECTED = (0, 10, 0) <= _version(jaxlib.__version__) < (0, 11, 2)  # pyright: ignore[reportPrivateImportUsage]


def _sequential_vmap(fn: Callable, num_matrices: int) -> Callable:
    """`fn(*arrays)`, batched under `vmap` by a loop on CPU when any of its first
    `num_matrices` arguments (the matrices) is batched."""

    @jax.custom_batching.custom_vmap
    def wrapped(*args):
        return fn(*args)

    @wrapped.def_vmap
    def _rule(axis_size, in_batched, *args):
        del axis_size
        loop = jax.default_backend() == "cpu" and any(in_batched[:num_matrices])
        if not loop:
            # JAX's own rule (e.g. more right-hand-side columns in one call), wrapped
            # again so that an enclosing `vmap` over the matrices still loops.
            in_axes = tuple(0 if b else None for b in in_batched)
            out = _sequential_vmap(jax.vmap(fn, in_axes=in_axes), num_matrices)(*args)
        else:
            batched = [a for a, b in zip(args, in_batched) if b]

            def one(xs):
                it = iter(xs)
                # `wrapped` again, not `fn`: an enclosing `vmap` batches this loop body.
                return wrapped(*(next(it) if b else a for a, b in zip(args, in_batched)))

            out = jax.lax.map(one, batched)
        return out, jax.tree_util.tree_map(lambda _: True, out)

    return wrapped


def unbatched_on_cpu(num_matrices: int):
    """Decorator: `fn(*arrays)`, whose first `num_matrices` arguments are matrices, loops
    over a batch of matrices under `vmap` on CPU (with an affected jaxlib). Only for
    code that is not differentiated (no reverse-mode rule)."""

    def decorate(fn):
        return _sequential_vmap(fn, num_matrices) if AFFECTED else fn

    return decorate


@unbatched_on_cpu(1)
def cholesky(matrix):
    """Lower Cholesky factor; reads the lower triangle only (NaN where not definite)."""
    return jax.lax.linalg.cholesky(matrix, symmetrize_input=False)


@unbatched_on_cpu(1)
def lu(matrix):
    """`(lu, pivots, permutation)` of partial-pivoting LU: `matrix[permutation] = L U`."""
    return jax.lax.linalg.lu(matrix)


@unbatched_on_cpu(1)
def qr(matrix):
    """Reduced Householder QR `(q, r)`."""
    return jnp.linalg.qr(matrix, mode="reduced")


@unbatched_on_cpu(1)
def eigh(matrix):
    """`(eigenvalues, eigenvectors)` of a symmetric/hermitian matrix (lower triangle)."""
    return jnp.linalg.eigh(matrix)


@unbatched_on_cpu(1)
def eigvalsh_lower(matrix):
    """Eigenvalues of the hermitian matrix whose lower triangle is that of `matrix` (the
    upper triangle is not read)."""
    return jax.lax.linalg.eigh(matrix, lower=True, symmetrize_input=False)[1]


@unbatched_on_cpu(1)
def svd(matrix):
    """Reduced SVD `(u, s, vh)`."""
    return jnp.linalg.svd(matrix, full_matrices=False)


@unbatched_on_cpu(1)
def cho_solve(factor, vector):
    """`A⁻¹ b` from the lower Cholesky factor of `A`."""
    return jsl.cho_solve((factor, True), vector)


@functools.cache
def _lu_solve(trans: int):
    @unbatched_on_cpu(2)
    def solve(lu_, pivots, vector):
        return jsl.lu_solve((lu_, pivots), vector, trans=trans)

    return solve


def lu_solve(lu_, pivots, vector, trans: int = 0):
    """`A⁻¹ b` (`trans=1`: `A⁻ᵀ b`, `2`: `A⁻ᴴ b`) from `lu`'s output."""
    return _lu_solve(trans)(lu_, pivots, vector)


@functools.cache
def _triangular(trans, lower: bool, unit: bool):
    @unbatched_on_cpu(1)
    def solve(matrix, vector):
        return jsl.solve_triangular(matrix, vector, trans=trans, lower=lower, unit_diagonal=unit)

    return solve


def solve_triangular(
    matrix, vector, *, trans: int | str = 0, lower: bool, unit_diagonal: bool = False
):
    """`jax.scipy.linalg.solve_triangular`, reading one triangle of `matrix`."""
    return _triangular(trans, lower, unit_diagonal)(matrix, vector)
