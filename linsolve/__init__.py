"""linsolve: differentiable linear algebra on structured operators, in JAX."""

from ._eig import Eigenpairs as Eigenpairs, eigh as eigh, lobpcg as lobpcg
from ._factor import cholesky as cholesky, lu as lu
from ._inverse import diag_inverse as diag_inverse, selected_inverse as selected_inverse
from ._lineax import (
    LineaxOperator as LineaxOperator,
    LinsolveLinearOperator as LinsolveLinearOperator,
    from_lineax as from_lineax,
    to_lineax as to_lineax,
)
from ._lineax_solver import LineaxSolver as LineaxSolver, as_lineax_solver as as_lineax_solver
from ._logdet import logdet as logdet, slogdet as slogdet
from ._operator import (
    AbstractOperator as AbstractOperator,
    AddOperator as AddOperator,
    ComposedOperator as ComposedOperator,
    DiagonalOperator as DiagonalOperator,
    FunctionOperator as FunctionOperator,
    IdentityOperator as IdentityOperator,
    MatrixOperator as MatrixOperator,
    ScaledOperator as ScaledOperator,
    TransposedOperator as TransposedOperator,
)
from ._recycle import RecycleSpace as RecycleSpace
from ._solution import RESULTS as RESULTS, Solution as Solution
from ._solve import linear_solve as linear_solve
from ._solver.abstract import (
    AbstractDeterminantSolver as AbstractDeterminantSolver,
    AbstractDirectSolver as AbstractDirectSolver,
    AbstractLeastSquaresSolver as AbstractLeastSquaresSolver,
    AbstractSolver as AbstractSolver,
)
from ._solver.auto import AutoSolver as AutoSolver
from ._solver.bicgstab import BiCGStab as BiCGStab
from ._solver.cg import CG as CG
from ._solver.cholesky import Cholesky as Cholesky
from ._solver.diagonal import Diagonal as Diagonal
from ._solver.gmres import GMRES as GMRES
from ._solver.lu import LU as LU
from ._solver.minres import MINRES as MINRES
from ._solver.qr import QR as QR
from ._solver.sparse_cholesky import SparseCholesky as SparseCholesky
from ._solver.triangular import Triangular as Triangular
from ._sparse.operator import SparseOperator as SparseOperator
from ._tags import (
    diagonal_tag as diagonal_tag,
    hermitian_tag as hermitian_tag,
    lower_triangular_tag as lower_triangular_tag,
    negative_semidefinite_tag as negative_semidefinite_tag,
    positive_semidefinite_tag as positive_semidefinite_tag,
    symmetric_tag as symmetric_tag,
    unit_diagonal_tag as unit_diagonal_tag,
    upper_triangular_tag as upper_triangular_tag,
)


__version__ = "0.1.0"
