"""AutoSolver: picks a solver from the operator's tags and kind."""


from .._tags import (
    diagonal_tag,
    lower_triangular_tag,
    negative_semidefinite_tag,
    positive_semidefinite_tag,
    upper_triangular_tag,
)
from .abstract import AbstractSolver


class AutoSolver(AbstractSolver):
    """Chooses a solver from the operator's tags and kind:

    | operator | solver |
    | --- | --- |
    | tagged diagonal | [`linsolve.Diagonal`][] |
    | tagged lower / upper triangular | [`linsolve.Triangular`][] |
    | tagged positive / negative semidefinite | [`linsolve.Cholesky`][] |
    | not square | [`linsolve.QR`][] (least squares / minimum norm) |
    | otherwise | [`linsolve.LU`][] |

    Matrix-free operators are materialized with `as_matrix` by the dense solvers.
    """

    def select(self, operator) -> AbstractSolver:
        """The solver this `AutoSolver` uses for `operator`."""
        from .cholesky import Cholesky
        from .diagonal import Diagonal
        from .lu import LU
        from .qr import QR
        from .triangular import Triangular

        tags = operator.tags
        if operator.shape[0] != operator.shape[1]:
            return QR()
        if diagonal_tag in tags:
            return Diagonal()
        if tags & {lower_triangular_tag, upper_triangular_tag}:
            return Triangular()
        if tags & {positive_semidefinite_tag, negative_semidefinite_tag}:
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
