"""Bad input gets a clear error or a result code: non-PD, singular, NaN/Inf, shapes, dtypes."""

import re

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import linsolve as ls


PSD = ls.positive_semidefinite_tag
SETTINGS = settings(max_examples=15, deadline=None)


def _solve_code(op, b, solver):
    return int(ls.linear_solve(op, b, solver, throw=False).result)


@st.composite
def indefinite_symmetric(draw, n=4):
    eigs = draw(hnp.arrays(np.float64, n, elements=st.floats(0.1, 10)))
    k = draw(st.integers(0, n - 1))
    eigs[k] = -draw(st.floats(0.1, 10))
    q, _ = np.linalg.qr(
        draw(hnp.arrays(np.float64, (n, n), elements=st.floats(-1, 1))) + 3 * np.eye(n)
    )
    return (q * eigs) @ q.T


@st.composite
def singular_square(draw, n=4):
    a = draw(hnp.arrays(np.float64, (n, n), elements=st.integers(-5, 5).map(float)))
    i, j = draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=2, unique=True))
    a[j] = a[i]  # duplicated rows stay exactly equal under elimination: an exact zero pivot
    return a


@given(indefinite_symmetric())
@SETTINGS
def test_cholesky_not_positive_definite(a):
    op = ls.MatrixOperator(a, PSD)
    b = jnp.ones(4)
    assert _solve_code(op, b, ls.Cholesky()) == ls.RESULTS.not_positive_definite
    with pytest.raises(Exception, match="not positive definite"):
        jax.jit(lambda a: ls.linear_solve(ls.MatrixOperator(a, PSD), b).value)(
            a
        ).block_until_ready()


@given(singular_square())
@SETTINGS
def test_lu_singular(a):
    b = jnp.ones(4)
    assert _solve_code(ls.MatrixOperator(a), b, ls.LU()) == ls.RESULTS.singular
    with pytest.raises(Exception, match="singular"):
        jax.jit(lambda a: ls.linear_solve(ls.MatrixOperator(a), b, ls.LU()).value)(
            a
        ).block_until_ready()


@given(
    hnp.arrays(np.float64, (4, 4), elements=st.floats(-3, 3)),
    st.integers(0, 3),
)
@SETTINGS
def test_triangular_and_diagonal_zero_pivot(a, k):
    a = a.copy()
    a[k, k] = 0.0
    b = jnp.ones(4)
    lower = ls.MatrixOperator(a, ls.lower_triangular_tag)
    assert _solve_code(lower, b, ls.Triangular()) == ls.RESULTS.singular
    assert _solve_code(ls.DiagonalOperator(np.diagonal(a)), b, ls.Diagonal()) == ls.RESULTS.singular
    # The unit-diagonal solve does not read the zero.
    unit = ls.MatrixOperator(a, (ls.lower_triangular_tag, ls.unit_diagonal_tag))
    assert _solve_code(unit, b, ls.Triangular()) == ls.RESULTS.successful


@given(st.sampled_from([np.nan, np.inf, -np.inf]), st.integers(0, 3), st.integers(0, 3))
@SETTINGS
def test_nonfinite_operator_and_rhs(bad, i, j):
    i, j = max(i, j), min(i, j)  # a read (lower) entry
    a = np.eye(4) * 4 + 0.1
    a[i, j] = bad
    b = jnp.ones(4)
    for solver, tags in [
        (ls.LU(), ()),
        (ls.Cholesky(), PSD),
        (ls.QR(), ()),
        (ls.Triangular(), ls.lower_triangular_tag),
    ]:
        code = _solve_code(ls.MatrixOperator(a, tags), b, solver)
        assert code == ls.RESULTS.nonfinite_input, (solver, code)
    clean = ls.MatrixOperator(np.eye(4) * 4 + 0.1)
    assert _solve_code(clean, b.at[i].set(bad), ls.LU()) == ls.RESULTS.nonfinite_input
    with pytest.raises(Exception, match="NaN or Inf"):
        jax.jit(lambda b: ls.linear_solve(clean, b).value)(b.at[i].set(bad)).block_until_ready()


def test_throw_false_gradient_does_not_raise_and_throw_true_does():
    a = -np.eye(3)
    b = jnp.ones(3)

    def loss(a, throw):
        return ls.linear_solve(ls.MatrixOperator(a, PSD), b, throw=throw).value.sum()

    g = jax.grad(loss)(jnp.asarray(a), False)
    assert g.shape == (3, 3)  # NaN, but the user asked not to raise and can read sol.result
    with pytest.raises(Exception, match="not positive definite"):
        jax.jit(jax.grad(loss), static_argnums=1)(jnp.asarray(a), True).block_until_ready()


def test_shape_errors_name_the_shapes():
    op = ls.MatrixOperator(jnp.eye(3))
    with pytest.raises(ValueError, match=re.escape("(3, 3)") + ".*" + re.escape("(4,)")):
        ls.linear_solve(op, jnp.ones(4))
    with pytest.raises(ValueError, match="y0"):
        ls.linear_solve(op, jnp.ones(3), ls.LU(), y0=jnp.ones(2))
    with pytest.raises(ValueError, match="adjoint_y0"):
        ls.linear_solve(op, jnp.ones(3), adjoint_y0=jnp.ones((3, 2)))
    with pytest.raises(ValueError, match=re.escape("(3, 2)")):
        ls.linear_solve(ls.MatrixOperator(jnp.ones((3, 2))), jnp.ones(3), ls.LU())
    with pytest.raises(ValueError, match="positive_semidefinite_tag"):
        ls.linear_solve(op, jnp.ones(3), ls.Cholesky())
    with pytest.raises(ValueError, match="lower_triangular_tag"):
        ls.linear_solve(op, jnp.ones(3), ls.Triangular())
    with pytest.raises(ValueError, match="diagonal_tag"):
        ls.linear_solve(op, jnp.ones(3), ls.Diagonal())
    with pytest.raises(ValueError, match=re.escape("(2, 3, 3)")):
        ls.MatrixOperator(jnp.ones((2, 3, 3)))
    with pytest.raises(ValueError, match="square"):
        ls.MatrixOperator(jnp.ones((3, 2)), PSD)
    with pytest.raises(ValueError, match=re.escape("(3, 3)") + ".*" + re.escape("(2, 2)")):
        ls.MatrixOperator(jnp.eye(3)) + ls.MatrixOperator(jnp.eye(2))
    with pytest.raises(ValueError, match=re.escape("(3, 3) @ (2, 2)")):
        ls.MatrixOperator(jnp.eye(3)) @ ls.MatrixOperator(jnp.eye(2))
    with pytest.raises(ValueError, match=re.escape("(5,)")):
        op.mv(jnp.ones(5))


def test_shape_errors_are_raised_at_trace_time():
    traced = []

    @jax.jit
    def f(a, b):
        traced.append(True)
        return ls.linear_solve(ls.MatrixOperator(a), b).value

    with pytest.raises(ValueError):
        jax.make_jaxpr(f)(jnp.eye(3), jnp.ones(2))


def test_dtype_mismatch():
    op = ls.MatrixOperator(jnp.eye(3, dtype=jnp.float32))
    with pytest.raises(TypeError, match="float64.*float32"):
        ls.linear_solve(op, jnp.ones(3, dtype=jnp.float64))
    # Python lists and integer arrays take the operator's dtype.
    assert ls.linear_solve(op, [1, 2, 3]).value.dtype == jnp.float32
    assert ls.linear_solve(op, jnp.arange(3)).value.dtype == jnp.float32


def test_result_messages():
    for code in ls.RESULTS:
        assert ls.RESULTS.message(code)
    sol = ls.linear_solve(ls.MatrixOperator(jnp.eye(2)), jnp.ones(2))
    assert sol.result == ls.RESULTS.successful


def test_unknown_tag_and_contradictory_tags():
    # A tag may be given by name (issue 13); a misspelt name is refused.
    assert ls.MatrixOperator(jnp.eye(2), "symmetric").tags == {ls.symmetric_tag}
    with pytest.raises(ValueError, match="Unknown tag name"):
        ls.MatrixOperator(jnp.eye(2), "symetric")
    with pytest.raises(ValueError):
        ls.MatrixOperator(jnp.eye(2), (PSD, ls.negative_semidefinite_tag))
