"""Any linsolve solver as a `lineax.AbstractLinearSolver`: `as_lineax_solver`.

lineax differentiates `lineax.linear_solve` itself (its `linear_solve_p` primitive has
its own JVP and transpose rules); a solver only says how to factorize (`init`), solve
(`compute`) and give the state of the transposed and conjugated systems (`transpose`,
`conj`). So through lineax:

- the solves of the derivative reuse the forward factorization: `transpose` and `conj`
  only flip flags on the state, and `compute` then calls the linsolve solver's
  `transpose_solve` (resp. conjugates around the solve) — nothing is factorized twice;
- the derivative w.r.t. the operator is lineax's `Ȧ x`, the JVP of the lineax operator's
  own `mv`. For an operator made with `linsolve.to_lineax` that `mv` is linsolve's, so the
  structure convention holds (unread entries get exactly zero gradient). For a raw lineax
  `MatrixLinearOperator` tagged symmetric, linsolve's solver reads the lower triangle
  while lineax's tangent uses the full matrix: lineax's semantics, the same as with
  lineax's own solvers;
- initial guesses come through `options` (`"y0"`, `"adjoint_y0"`), which lineax forbids
  differentiating, and lineax passes the same options to the derivative's tangent solves.
"""

import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, PyTree

from ._lineax import flat_structure, from_lineax, ravel, unravel
from ._solution import lineax_result
from ._solver.abstract import AbstractLeastSquaresSolver, AbstractSolver
from ._solver.auto import AutoSolver


_OPTIONS = frozenset({"y0", "adjoint_y0"})


def _flat_tree(structure) -> tuple:
    # A hashable form of a PyTree of ShapeDtypeStructs, for a static field.
    leaves, treedef = jax.tree_util.tree_flatten(structure)
    return treedef, tuple(leaves)


def _tree(flat: tuple):
    treedef, leaves = flat
    return jax.tree_util.tree_unflatten(treedef, leaves)


class _State(eqx.Module):
    inner: Any  # the linsolve solver's state (its factorization)
    solution_structure: tuple = eqx.field(static=True)  # of x, for the current system
    vector_structure: tuple = eqx.field(static=True)  # of b
    transposed: bool = eqx.field(static=True)
    conjugated: bool = eqx.field(static=True)


class LineaxSolver(lx.AbstractLinearSolver):
    """A linsolve solver as a `lineax.AbstractLinearSolver`. Make one with
    [`linsolve.as_lineax_solver`][]."""

    solver: AbstractSolver

    def _check_options(self, options: dict[str, Any]):
        unknown = set(options) - _OPTIONS
        if unknown:
            raise ValueError(
                f"as_lineax_solver({type(self.solver).__name__}()) accepts the options "
                f"{sorted(_OPTIONS)}; got {sorted(unknown)}. Configure the solver itself "
                "instead (e.g. `linsolve.CG(preconditioner=...)`)."
            )

    def init(self, operator: lx.AbstractLinearOperator, options: dict[str, Any]) -> _State:
        self._check_options(options)
        op = from_lineax(operator)
        chosen = self.solver.select(op) if isinstance(self.solver, AutoSolver) else self.solver
        if op.shape[0] != op.shape[1] and not isinstance(chosen, AbstractLeastSquaresSolver):
            raise ValueError(
                f"{type(chosen).__name__} needs a square operator; got shape {op.shape}. "
                "Use linsolve.QR() for least-squares / minimum-norm solves."
            )
        return _State(
            inner=self.solver.init(op),
            solution_structure=_flat_tree(operator.in_structure()),
            vector_structure=_flat_tree(operator.out_structure()),
            transposed=False,
            conjugated=False,
        )

    def compute(
        self, state: _State, vector: PyTree[Array], options: dict[str, Any]
    ) -> tuple[PyTree[Array], lx.RESULTS, dict[str, Any]]:
        self._check_options(options)
        _, dtype = flat_structure(_tree(state.vector_structure), "output")
        b = ravel(vector).astype(dtype)
        y0 = options.get("y0")
        y0 = None if y0 is None else ravel(y0).astype(dtype)
        if state.conjugated:  # conj(A) x = b  ⇔  A conj(x) = conj(b)
            b = jnp.conj(b)
            y0 = None if y0 is None else jnp.conj(y0)
        solve = self.solver.transpose_solve if state.transposed else self.solver.solve
        x, result, stats = solve(state.inner, b, y0)
        if state.conjugated:
            x = jnp.conj(x)
        return unravel(x, _tree(state.solution_structure)), lineax_result(result), stats

    def transpose(self, state: _State, options: dict[str, Any]) -> tuple[_State, dict[str, Any]]:
        self._check_options(options)
        # Aᵀ maps the other way: the two structures swap.
        flipped = dataclasses.replace(
            state,
            solution_structure=state.vector_structure,
            vector_structure=state.solution_structure,
            transposed=not state.transposed,
        )
        # The transposed system's initial guess is the adjoint one, and back.
        swapped = {"y0": options.get("adjoint_y0"), "adjoint_y0": options.get("y0")}
        return flipped, {k: v for k, v in swapped.items() if v is not None}

    def conj(self, state: _State, options: dict[str, Any]) -> tuple[_State, dict[str, Any]]:
        self._check_options(options)
        flipped = dataclasses.replace(state, conjugated=not state.conjugated)
        conj_options = {k: jax.tree_util.tree_map(jnp.conj, v) for k, v in options.items()}
        return flipped, conj_options

    def assume_full_rank(self) -> bool:
        # linsolve's solvers solve nonsingular systems, and QR full-rank least squares /
        # minimum norm: lineax's cheaper derivative for full-rank operators is exact.
        return True


def as_lineax_solver(solver: AbstractSolver) -> LineaxSolver:
    """Turn a linsolve solver into a `lineax.AbstractLinearSolver`, for
    `lineax.linear_solve` and for optimistix (`optimistix.Newton(...,
    linear_solver=...)`, `optimistix.ImplicitAdjoint(linear_solver=...)`, …).

    ```python
    sol = lx.linear_solve(ls.to_lineax(op), b, ls.as_lineax_solver(ls.Cholesky()))
    ```

    The operator lineax passes in is converted with [`linsolve.from_lineax`][] (an
    operator made with [`linsolve.to_lineax`][] is unwrapped, so a `SparseOperator` reaches
    `linsolve.SparseCholesky` as it is); operators on PyTrees are solved on the flattened
    vector and the solution is returned in the operator's input structure.

    How derivatives work through `lineax.linear_solve` (lineax owns the rule; the solver
    only solves):

    - The derivative's solves (tangent and transposed) reuse the forward factorization,
      as in [`linsolve.linear_solve`][]: `transpose` and `conj` give the state of `Aᵀ`
      and `conj(A)` without factorizing again.
    - The derivative w.r.t. the operator is lineax's: `Ȧ x` with `Ȧ` the JVP of the lineax
      operator's `mv`. With an operator from `to_lineax` that is linsolve's `mv`, so the
      structure convention holds and unread entries get exactly zero gradient — the same
      gradients as `linsolve.linear_solve`. A raw lineax `MatrixLinearOperator` tagged
      symmetric is still *solved* from its lower triangle, but lineax differentiates its
      full-matrix `mv` (lineax's convention: only symmetric perturbations are meaningful).
    - `options={"y0": ..., "adjoint_y0": ...}` set the initial guesses of the iterative
      solvers (the transposed solve of reverse mode starts from `adjoint_y0`). lineax
      raises if they are differentiated (wrap them in `jax.lax.stop_gradient`), and lineax
      also starts the forward-mode tangent solve from `y0`.
    - `throw` is lineax's: the derivative's solves always raise on failure.

    Result codes map to `lineax.RESULTS` (`not_positive_definite` becomes `singular`,
    lineax having no such code); `stats` are the linsolve solver's.

    **Arguments:**

    - `solver`: any linsolve solver, e.g. `linsolve.Cholesky()`, `linsolve.CG(rtol=1e-8)`,
      `linsolve.SparseCholesky()` or `linsolve.AutoSolver()`.

    **Returns:**

    A `lineax.AbstractLinearSolver` (a [`linsolve.LineaxSolver`][]) that assumes full
    rank (`assume_full_rank() is True`).
    """
    if isinstance(solver, LineaxSolver):
        return solver
    if not isinstance(solver, AbstractSolver):
        raise TypeError(f"as_lineax_solver needs a linsolve solver, got {type(solver).__name__}.")
    return LineaxSolver(solver)
