"""The interface every solver implements. A solver says how to factorize (`init`) and how
to solve and transpose-solve from that state; how to differentiate lives in `_solve.py`.
The abstract classes say, by kind, what else a solver can be asked for."""

import abc
import functools
from typing import Any, Generic, NoReturn, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._operator import AbstractOperator
from .._solution import RESULTS, result_code
from .._tags import negative_semidefinite_tag, positive_semidefinite_tag


_State = TypeVar("_State")


class AbstractSolver(eqx.Module, Generic[_State]):
    """Base class of linsolve's solvers.

    `init` runs once per `linear_solve` (a direct solver factorizes there); `solve` and
    `transpose_solve` reuse its state, so reverse mode never factorizes again. How a solve
    is differentiated is not a solver's business: `linear_solve` does it, once, for all.

    The abstract classes below say what else a solver can be asked for:
    [`linsolve.AbstractDirectSolver`][] (factorizes; the derivative's solves reuse the
    state as it is), its kinds with a log-determinant (`slogdet`) or least squares
    (`gram_solve`), and the Krylov solvers.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # lineax and optimistix call `solver.init(operator, options)`: a linsolve solver
        # handed to them directly would fail with an arity error that says nothing of the
        # fix. Every `init` is wrapped once, where it is defined, to say what to do.
        init = cls.__dict__.get("init")
        if init is None or getattr(init, "_checks_lineax_call", False):
            return

        @functools.wraps(init)
        def checked_init(self, operator, *args, **kwargs):
            if args or kwargs:
                _lineax_misuse(self, "init")
            return init(self, operator)

        # (A marker attribute on the wrapper: pyright knows no attributes of functions.)
        checked_init._checks_lineax_call = True  # pyright: ignore[reportAttributeAccessIssue]
        cls.init = checked_init

    def compute(self, *args, **kwargs):
        """Not a linsolve method: lineax's. Raises a `TypeError` naming
        [`linsolve.as_lineax_solver`][]."""
        _lineax_misuse(self, "compute")

    def assume_full_rank(self):
        """Not a linsolve method: lineax's. Raises a `TypeError` naming
        [`linsolve.as_lineax_solver`][]."""
        _lineax_misuse(self, "assume_full_rank")

    @abc.abstractmethod
    def init(self, operator: AbstractOperator) -> _State:
        """Check the operator (at trace time) and precompute what solves need."""

    @abc.abstractmethod
    def solve(self, state: _State, vector: Array, y0: Array | None) -> tuple[Array, Array, dict]:
        """Solve `A x = vector` (vector of shape `(m,)` or `(m, k)`), starting from `y0`
        where the solver is iterative. Returns `(x, result, stats)`."""

    @abc.abstractmethod
    def transpose_solve(
        self, state: _State, vector: Array, y0: Array | None
    ) -> tuple[Array, Array, dict]:
        """Solve `A.T x = vector` (plain transpose) from the same state."""

    @abc.abstractmethod
    def adjoint_state(self, state: _State, stats: dict) -> _State:
        """The state the tangent and transposed solves of a derivative start from, given
        the forward solve's `stats` (a Krylov solver may attach what its forward solve
        learned, e.g. a recycled subspace)."""

    @abc.abstractmethod
    def recycle_state(self, state: _State, space: Any, vector_shape: tuple) -> _State:
        """The state with a user's recycle space (`linear_solve(..., recycle=space)`)
        attached; solvers that do not recycle raise a `TypeError`."""


def does_not_recycle(solver: AbstractSolver) -> NoReturn:
    """The `recycle_state` of a solver that takes no recycle space."""
    raise TypeError(
        f"linear_solve: {type(solver).__name__} does not take a recycle space; "
        "linsolve.CG(recycle=m) and linsolve.MINRES(recycle=m) do."
    )


class AbstractReusingSolver(AbstractSolver[_State]):
    """A solver whose derivative's solves reuse the state of `init` as it is (nothing learned
    by the forward solve is passed on), and which takes no recycle space."""

    def adjoint_state(self, state: _State, stats: dict) -> _State:
        del stats
        return state

    def recycle_state(self, state: _State, space: Any, vector_shape: tuple) -> _State:
        del state, space, vector_shape
        does_not_recycle(self)


class AbstractDirectSolver(AbstractReusingSolver[_State]):
    """A solver that factorizes in `init`; the derivative's solves reuse the
    factorization."""


class AbstractDeterminantSolver(AbstractDirectSolver[_State]):
    """A direct solver whose factorization gives the determinant: `logdet` and `slogdet`
    use it ([`linsolve.Cholesky`][], [`linsolve.LU`][], [`linsolve.SparseCholesky`][],
    [`linsolve.Triangular`][], [`linsolve.Diagonal`][])."""

    @abc.abstractmethod
    def slogdet(self, operator: AbstractOperator) -> tuple[Array, Array, Array]:
        """`(sign, logabsdet, result)` of the square `operator`, differentiable in it: from
        one factorization, whose derivative rule (`d log det A = tr(A⁻¹ dA)`) reuses it.
        `result` names NaN/Inf input, a failed factorization or a broken symmetry promise;
        a singular operator is not a failure (`(0, −inf)` is its answer)."""

    @abc.abstractmethod
    def positive_definite(self, operator: AbstractOperator) -> bool:
        """Whether a successful factorization of `operator` proves it positive definite:
        its log-determinant is then `logabsdet` itself (real, for complex dtypes too)."""


class AbstractLeastSquaresSolver(AbstractDirectSolver[_State]):
    """A direct solver that also solves non-square systems (least squares for a tall
    operator, minimum norm for a wide one). `linear_solve` differentiates those through
    the normal equations, solved with the solver's factorization of the Gram matrix."""

    @abc.abstractmethod
    def gram_solve(self, state: _State, vector: Array) -> Array:
        """Solve with the Gram matrix `AᴴA` (tall `A`) or `AAᴴ` (wide) from the state."""


def hermitian_transpose_solve(solve, vector: Array, y0: Array | None):
    """`Aᵀ x = b` for a hermitian (real: symmetric) `A`, through its own solve: `Aᵀ =
    conj(A)`, so `x = conj(A⁻¹ conj(b))`. `solve(vector, y0)` returns `(x, result, stats)`."""
    if not jnp.iscomplexobj(vector):
        return solve(vector, y0)
    y0 = None if y0 is None else jnp.conj(y0)
    x, result, stats = solve(jnp.conj(vector), y0)
    return jnp.conj(x), result, stats


def check_square(operator: AbstractOperator, what: str) -> None:
    """Raise at trace time, naming the shape, if `operator` is not square."""
    if operator.shape[0] != operator.shape[1]:
        raise ValueError(f"{what} needs a square operator; got shape {operator.shape}.")


def _lineax_misuse(solver: "AbstractSolver", method: str):
    name = type(solver).__name__
    raise TypeError(
        f"linsolve.{name} is a linsolve solver, not a lineax one (lineax/optimistix called "
        f"its `{method}` with lineax's arguments). Wrap it: `linsolve.as_lineax_solver("
        f"linsolve.{name}(...))`, e.g. `lineax.linear_solve(op, b, "
        f"linsolve.as_lineax_solver(linsolve.{name}()))` or `optimistix.Newton(..., "
        f"linear_solver=linsolve.as_lineax_solver(linsolve.{name}()))`."
    )


def dense_input(operator: AbstractOperator) -> Array:
    """The dense matrix a direct solver factorizes. `as_matrix` already applies the
    structure convention (only the entries the tags say are read)."""
    return operator.as_matrix()


def input_check(operator: AbstractOperator, failed: Array, code) -> Array:
    """The result code of a factorization that `failed`: `nonfinite_input` if the matrix
    the operator defines holds NaN/Inf, else `code`. The matrix is read again only on
    failure (inside the `cond`), so on success the factorization is its only reader and
    XLA can factorize in the buffer the matrix is formed in."""

    def diagnose():
        finite = jnp.all(jnp.isfinite(dense_input(operator)))
        return jnp.where(finite, result_code(code), result_code(RESULTS.nonfinite_input))

    return jax.lax.cond(failed, diagnose, lambda: result_code(RESULTS.successful))


def tag_names(tags) -> str:
    return "{" + ", ".join(sorted(map(repr, tags))) + "}"


def numerically_singular(triangular_factor: Array) -> Array:
    """Whether a triangular factor (U of LU, R of QR) has a pivot that is zero up to
    rounding: `|u_kk| <= max(m, n) · eps · max_j |u_jj|`. Exactly singular input rarely gives an
    exact zero pivot after pivoted elimination, and solving with a rounding-error pivot
    would return a silently wrong, finite answer."""
    diag = jnp.abs(jnp.diagonal(triangular_factor))
    if diag.size == 0:  # n = 0: nothing to be singular
        return jnp.asarray(False)
    eps = jnp.finfo(triangular_factor.dtype).eps
    # The largest pivot stands in for max|U| (no O(n²) pass); NaN pivots count as failed.
    return ~jnp.all(diag > max(triangular_factor.shape) * eps * jnp.max(diag))


def is_negative_definite(operator: AbstractOperator, what: str, otherwise: str) -> bool:
    """For a solver of definite operators (`what`): whether `operator` is tagged negative
    (rather than positive) semidefinite. Tagged neither, it raises at trace time, naming
    the tags and what to use `otherwise`."""
    tags = operator.tags
    negative = negative_semidefinite_tag in tags
    if not (negative or positive_semidefinite_tag in tags):
        raise ValueError(
            f"{what} needs an operator tagged positive_semidefinite_tag or "
            f"negative_semidefinite_tag; got tags {tag_names(tags)}. {otherwise}"
        )
    return negative
