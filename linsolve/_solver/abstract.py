"""The interface every solver implements. A solver says how to factorize (`init`) and how
to solve and transpose-solve from that state; how to differentiate lives in `_solve.py`."""

import abc
import functools
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._operator import AbstractOperator


class AbstractSolver(eqx.Module):
    """Base class of linsolve's solvers.

    `init` runs once per `linear_solve` (a direct solver factorizes there); `solve` and
    `transpose_solve` reuse its state, so reverse mode never factorizes again.
    """

    #: Whether the solver accepts non-square operators (least squares / minimum norm).
    supports_nonsquare: ClassVar[bool] = False

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

        checked_init._checks_lineax_call = True
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
    def init(self, operator: AbstractOperator) -> Any:
        """Check the operator (at trace time) and precompute what solves need."""

    @abc.abstractmethod
    def solve(self, state: Any, vector: Array, y0: Array | None) -> tuple[Array, Array, dict]:
        """Solve `A x = vector` (vector of shape `(m,)` or `(m, k)`), starting from `y0`
        where the solver is iterative. Returns `(x, result, stats)`."""

    @abc.abstractmethod
    def transpose_solve(
        self, state: Any, vector: Array, y0: Array | None
    ) -> tuple[Array, Array, dict]:
        """Solve `A.T x = vector` (plain transpose) from the same state."""

    def adjoint_state(self, state: Any, stats: dict) -> Any:
        """The state the tangent and transposed solves of a derivative start from, given
        the forward solve's `stats`. Direct solvers reuse `state`; a Krylov solver may
        attach what its forward solve learned (e.g. a recycled subspace)."""
        del stats
        return state

    def recycle_state(self, state: Any, space: Any, vector_shape: tuple) -> Any:
        """The state with a user's recycle space (`linear_solve(..., recycle=space)`)
        attached; only Krylov solvers that recycle (CG, MINRES) take one."""
        del state, space, vector_shape
        raise TypeError(
            f"linear_solve: {type(self).__name__} does not take a recycle space; "
            "linsolve.CG(recycle=m) and linsolve.MINRES(recycle=m) do."
        )


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
    from .._solution import RESULTS, result_code

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
