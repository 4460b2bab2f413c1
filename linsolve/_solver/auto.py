"""AutoSolver: picks a solver from the operator's tags and kind."""

import equinox as eqx
import jax.numpy as jnp

from .._operator import is_matrix_free, is_sparse
from .._tags import (
    diagonal_tag,
    is_hermitian,
    is_self_adjoint,
    lower_triangular_tag,
    negative_semidefinite_tag,
    positive_semidefinite_tag,
    upper_triangular_tag,
)
from .abstract import AbstractSolver
from .cg import CG
from .cholesky import Cholesky
from .diagonal import Diagonal
from .gmres import GMRES
from .lu import LU
from .minres import MINRES
from .qr import QR
from .sparse_cholesky import SparseCholesky
from .triangular import Triangular


class AutoSolver(AbstractSolver[tuple]):
    """Chooses a solver from the operator's tags and kind:

    | operator | solver |
    | --- | --- |
    | tagged diagonal | [`linsolve.Diagonal`][] |
    | tagged lower / upper triangular | [`linsolve.Triangular`][] |
    | matrix-free (see below), tagged positive / negative semidefinite | [`linsolve.CG`][] |
    | matrix-free, self-adjoint (symmetric; hermitian if complex) | [`linsolve.MINRES`][] |
    | matrix-free, otherwise | [`linsolve.GMRES`][] |
    | tagged positive / negative semidefinite | [`linsolve.Cholesky`][] |
    | not square | [`linsolve.QR`][] (least squares / minimum norm) |
    | otherwise | [`linsolve.LU`][] |

    "Matrix-free" means a `FunctionOperator` or a lineax operator that is not a matrix
    one (or a sum / product / transpose involving one) of size at least
    `materialize_below`; the Krylov solvers then use their default tolerances
    (`rtol = eps**0.75`). Smaller matrix-free operators are materialized with `as_matrix`
    (n products, cheaper than an iterative solve at that size, and exact) and solved by the
    dense solvers, as are matrix-free operators tagged diagonal or triangular.

    **Arguments:**

    - `materialize_below`: matrix-free operators with fewer rows than this are solved
      densely (default 64; 0 always picks a Krylov solver for them).
    """

    materialize_below: int = eqx.field(static=True, default=64)

    def select(self, operator, *, direct: bool = False) -> AbstractSolver:
        """The solver this `AutoSolver` uses for `operator`; with `direct=True` never a
        Krylov one (what `logdet` needs: a factorization)."""
        tags = operator.tags
        if operator.shape[0] != operator.shape[1]:
            return QR()
        if diagonal_tag in tags:
            return Diagonal()
        if tags & {lower_triangular_tag, upper_triangular_tag}:
            return Triangular()
        semidefinite = tags & {positive_semidefinite_tag, negative_semidefinite_tag}
        if is_sparse(operator) and positive_semidefinite_tag in tags:
            return SparseCholesky()
        if not direct and operator.shape[0] >= self.materialize_below and is_matrix_free(operator):
            if semidefinite:
                return CG()
            cplx = jnp.issubdtype(operator.dtype, jnp.complexfloating)
            if is_hermitian(tags, cplx) if cplx else is_self_adjoint(tags):
                return MINRES()
            return GMRES()
        if semidefinite:
            return Cholesky()
        return LU()

    def init(self, operator):
        solver = self.select(operator)
        return solver, solver.init(operator)

    def solve(self, state, vector, y0):
        solver, inner = state
        return solver.solve(inner, vector, y0)

    def transpose_solve(self, state, vector, y0):
        solver, inner = state
        return solver.transpose_solve(inner, vector, y0)

    def adjoint_state(self, state, stats):
        solver, inner = state
        return solver, solver.adjoint_state(inner, stats)

    def recycle_state(self, state, space, vector_shape):
        solver, inner = state
        return solver, solver.recycle_state(inner, space, vector_shape)
