"""Interop with lineax: any `lineax.AbstractLinearOperator` is accepted as an operator."""

from typing import Any

import jax
import jax.numpy as jnp
import lineax as lx

from ._operator import AbstractOperator
from ._tags import (
    diagonal_tag,
    hermitian_tag,
    lower_triangular_tag,
    negative_semidefinite_tag,
    positive_semidefinite_tag,
    symmetric_tag,
    unit_diagonal_tag,
    upper_triangular_tag,
)

_FROM_LINEAX = {
    lx.symmetric_tag: symmetric_tag,
    lx.positive_semidefinite_tag: positive_semidefinite_tag,
    lx.negative_semidefinite_tag: negative_semidefinite_tag,
    lx.lower_triangular_tag: lower_triangular_tag,
    lx.upper_triangular_tag: upper_triangular_tag,
    lx.diagonal_tag: diagonal_tag,
    lx.unit_diagonal_tag: unit_diagonal_tag,
}
if hasattr(lx, "hermitian_tag"):
    _FROM_LINEAX[lx.hermitian_tag] = hermitian_tag


def is_lineax_operator(op: Any) -> bool:
    return isinstance(op, lx.AbstractLinearOperator)


def _check_flat(structure, what):
    if not isinstance(structure, jax.ShapeDtypeStruct) or len(structure.shape) != 1:
        raise ValueError(
            f"linsolve accepts lineax operators on 1-D vectors; this one has {what} "
            f"structure {structure}."
        )


class LineaxOperator(AbstractOperator):
    """A lineax operator seen through linsolve's interface. Its lineax tags are mapped to
    linsolve's; note that linsolve then reads a tagged matrix by its lower triangle."""

    operator: lx.AbstractLinearOperator

    def __check_init__(self):
        _check_flat(self.operator.in_structure(), "input")
        _check_flat(self.operator.out_structure(), "output")

    def _mv(self, x):
        return self.operator.mv(x)

    def as_matrix(self):
        return self.operator.as_matrix()

    def transpose(self):
        return LineaxOperator(self.operator.T)

    @property
    def shape(self):
        return (self.operator.out_size(), self.operator.in_size())

    @property
    def dtype(self):
        return jnp.result_type(self.operator.in_structure().dtype, self.operator.out_structure().dtype)

    @property
    def tags(self):
        tags = _lineax_tags(self.operator) | frozenset(getattr(self.operator, "tags", ()))
        return frozenset(_FROM_LINEAX[t] for t in tags if t in _FROM_LINEAX)


def _lineax_tags(op) -> frozenset:
    # lineax exposes structure through predicate functions rather than a tags attribute
    # on every operator.
    checks = [
        (lx.is_symmetric, lx.symmetric_tag),
        (lx.is_positive_semidefinite, lx.positive_semidefinite_tag),
        (lx.is_negative_semidefinite, lx.negative_semidefinite_tag),
        (lx.is_lower_triangular, lx.lower_triangular_tag),
        (lx.is_upper_triangular, lx.upper_triangular_tag),
        (lx.is_diagonal, lx.diagonal_tag),
    ]
    return frozenset(tag for check, tag in checks if check(op))


def from_lineax(op: lx.AbstractLinearOperator) -> AbstractOperator:
    """Convert a lineax operator. Dense, diagonal and identity operators become their
    linsolve counterparts (so `mv` follows the structure convention too); anything else is
    wrapped and applied through its own `mv`."""
    from ._operator import DiagonalOperator, IdentityOperator, MatrixOperator

    if isinstance(op, lx.TaggedLinearOperator):
        inner = from_lineax(op.operator)
        if isinstance(inner, MatrixOperator):
            return MatrixOperator(inner.matrix, inner.tags | LineaxOperator(op).tags)
        return LineaxOperator(op)
    if isinstance(op, lx.MatrixLinearOperator):
        return MatrixOperator(op.matrix, LineaxOperator(op).tags)
    if isinstance(op, lx.DiagonalLinearOperator):
        return DiagonalOperator(op.diagonal)
    if isinstance(op, lx.IdentityLinearOperator):
        structure = op.in_structure()
        _check_flat(structure, "input")
        return IdentityOperator(structure.shape[0], structure.dtype)
    return LineaxOperator(op)
