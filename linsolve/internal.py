"""Names for people writing their own operators and solvers (as `lineax.internal`): the
operator queries every module dispatches on, and the helpers linsolve's own solvers use.
Not part of the stable public API."""

from ._operator import (
    as_operator as as_operator,
    check_square_for as check_square_for,
    is_complex as is_complex,
    is_matrix_free as is_matrix_free,
    is_sparse as is_sparse,
    lower_matrix as lower_matrix,
    with_tags as with_tags,
)
from ._solution import raise_on_failure as raise_on_failure
from ._solve import adjoint_mv as adjoint_mv
from ._solver.abstract import (
    check_square as check_square,
    dense_input as dense_input,
    does_not_recycle as does_not_recycle,
    hermitian_transpose_solve as hermitian_transpose_solve,
)
from ._tangent import is_zero_tangent as is_zero_tangent, tangent_mv as tangent_mv
