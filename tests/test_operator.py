"""Operators: mv / as_matrix / transpose / composition and tag propagation, under jit,
vmap and grad; lineax operators accepted."""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
from helpers import assert_grad_matches_fd

import linsolve as ls


PSD, NSD = ls.positive_semidefinite_tag, ls.negative_semidefinite_tag
LOWER, UPPER = ls.lower_triangular_tag, ls.upper_triangular_tag
SYM, HERM, UNIT, DIAG = ls.symmetric_tag, ls.hermitian_tag, ls.unit_diagonal_tag, ls.diagonal_tag

rng = np.random.default_rng(0)
A = rng.standard_normal((4, 4))
B = rng.standard_normal((4, 4))
X = rng.standard_normal(4)


def dense_effective(a, tags):
    if DIAG in tags:
        return np.diag(np.diagonal(a))
    if tags & {SYM, HERM, PSD, NSD}:
        low = np.tril(a, -1)
        herm = np.iscomplexobj(a) and tags & {HERM, PSD, NSD}
        d = np.diagonal(a).real if herm else np.diagonal(a)
        return low + (low.conj().T if herm else low.T) + np.diag(d)
    out = np.tril(a) if LOWER in tags else np.triu(a) if UPPER in tags else a.copy()
    if UNIT in tags:
        np.fill_diagonal(out, 1)
    return out


OPERATORS = {
    "dense": lambda: (ls.MatrixOperator(A), A),
    "psd": lambda: (ls.MatrixOperator(A, PSD), dense_effective(A, {PSD})),
    "hermitian": lambda: (ls.MatrixOperator(A + 1j * B, HERM), dense_effective(A + 1j * B, {HERM})),
    "complex-symmetric": lambda: (
        ls.MatrixOperator(A + 1j * B, SYM),
        dense_effective(A + 1j * B, {SYM}),
    ),
    "lower-unit": lambda: (ls.MatrixOperator(A, (LOWER, UNIT)), dense_effective(A, {LOWER, UNIT})),
    "upper": lambda: (ls.MatrixOperator(A, UPPER), np.triu(A)),
    "diagonal": lambda: (ls.DiagonalOperator(X), np.diag(X)),
    "identity": lambda: (ls.IdentityOperator(4), np.eye(4)),
    "function": lambda: (ls.FunctionOperator(lambda v: jnp.asarray(A) @ v, jnp.zeros(4)), A),
    "sum": lambda: (
        ls.MatrixOperator(A) + ls.MatrixOperator(B, PSD),
        A + dense_effective(B, {PSD}),
    ),
    "difference": lambda: (ls.MatrixOperator(A) - ls.DiagonalOperator(X), A - np.diag(X)),
    "product": lambda: (ls.MatrixOperator(A) @ ls.MatrixOperator(B, LOWER), A @ np.tril(B)),
    "scaled": lambda: (2.5 * ls.MatrixOperator(A), 2.5 * A),
    "negated": lambda: (-ls.MatrixOperator(A, PSD), -dense_effective(A, {PSD})),
    "transposed": lambda: (ls.MatrixOperator(A).T, A.T),
    "gram": lambda: ((lambda o: o.T @ o)(ls.MatrixOperator(A)), A.T @ A),
    "lineax": lambda: (ls._operator.as_operator(lx.MatrixLinearOperator(jnp.asarray(A))), A),
    "lineax-function": lambda: (
        ls._operator.as_operator(
            lx.FunctionLinearOperator(
                lambda v: jnp.asarray(A) @ v, jax.ShapeDtypeStruct((4,), jnp.float64)
            )
        ),
        A,
    ),
}


@pytest.mark.parametrize("name", list(OPERATORS))
def test_mv_as_matrix_transpose(name):
    op, dense = OPERATORS[name]()
    x = X.astype(np.result_type(dense.dtype, np.float64))
    np.testing.assert_allclose(op.as_matrix(), dense, atol=1e-12)
    np.testing.assert_allclose(op.mv(x), dense @ x, atol=1e-12)
    np.testing.assert_allclose(
        op.mv(np.stack([x, 2 * x], 1)), dense @ np.stack([x, 2 * x], 1), atol=1e-12
    )
    np.testing.assert_allclose(op.T.as_matrix(), dense.T, atol=1e-12)
    np.testing.assert_allclose(op.T.mv(x), dense.T @ x, atol=1e-12)
    np.testing.assert_allclose(op.rmv(x), dense.T @ x, atol=1e-12)
    np.testing.assert_allclose(op.T.T.mv(x), dense @ x, atol=1e-12)
    # Operators are pytrees: through (filter_)jit and vmap.
    np.testing.assert_allclose(eqx.filter_jit(lambda o, v: o.mv(v))(op, x), dense @ x, atol=1e-12)
    xs = np.stack([x, -x, 3 * x])
    np.testing.assert_allclose(jax.vmap(op.mv)(xs), xs @ dense.T, atol=1e-12)
    assert op.shape == dense.shape


def test_function_operator_with_matrix_shaped_input():
    m = jnp.asarray(rng.standard_normal((3, 3)))
    op = ls.FunctionOperator(lambda v: m @ v @ m.T, jnp.zeros((3, 3)))
    v = rng.standard_normal(9)
    assert op.shape == (9, 9)
    np.testing.assert_allclose(op.mv(v), (m @ v.reshape(3, 3) @ m.T).reshape(-1), atol=1e-12)
    np.testing.assert_allclose(op.as_matrix(), np.kron(m, m), atol=1e-12)
    np.testing.assert_allclose(op.T.as_matrix(), np.kron(m, m).T, atol=1e-12)


def test_function_operator_closes_over_tracers():
    def loss(s):
        op = ls.FunctionOperator(lambda v: s * jnp.asarray(A) @ v + 5 * v, jnp.zeros(4))
        return ls.linear_solve(op, jnp.ones(4)).value.sum()

    expected = jax.grad(lambda s: jnp.linalg.solve(s * A + 5 * np.eye(4), np.ones(4)).sum())(0.3)
    np.testing.assert_allclose(jax.grad(loss)(0.3), expected, rtol=1e-10)
    np.testing.assert_allclose(jax.jit(jax.grad(loss))(0.3), expected, rtol=1e-10)
    np.testing.assert_allclose(
        jax.vmap(jax.grad(loss))(jnp.array([0.3, 0.3]))[0], expected, rtol=1e-10
    )


@pytest.mark.parametrize("tags", [(PSD,), (SYM,), (HERM,), (LOWER, UNIT), (UPPER,), (DIAG,)])
def test_mv_gradient_follows_structure_convention(tags):
    a = A + 1j * B if HERM in tags else A
    x = jnp.asarray(X + 0.5j * X if HERM in tags else X)

    def f(a):
        y = ls.MatrixOperator(a, tags).mv(x)
        return jnp.sum(jnp.sin(y.real)) + jnp.sum(jnp.cos(y.imag))

    g = assert_grad_matches_fd(f, a)
    unread = np.abs(dense_effective(np.ones((4, 4)) * 1.0, set(tags)) - 0) == 0
    if tags[0] in (PSD, SYM, HERM):
        unread = np.triu(np.ones((4, 4), bool), 1)
    assert np.all(g[unread] == 0)


def test_tag_propagation():
    psd = ls.MatrixOperator(A, PSD)
    sym = ls.MatrixOperator(A, SYM)
    low = ls.MatrixOperator(A, (LOWER, UNIT))
    assert PSD in (psd + psd).tags
    assert SYM in (psd + sym).tags and PSD not in (psd + sym).tags
    assert NSD in (-psd).tags and PSD not in (-psd).tags
    assert PSD in (2.0 * psd).tags and NSD in (-3 * psd).tags
    assert UPPER in low.T.tags and UNIT in low.T.tags and LOWER not in low.T.tags
    assert {LOWER, UNIT} <= (low @ low).tags
    assert UNIT not in (low + low).tags and LOWER in (low + low).tags
    op = ls.MatrixOperator(A)
    assert PSD in (op.T @ op).tags and PSD in (op @ op.T).tags
    assert PSD not in (ls.MatrixOperator(A) @ ls.MatrixOperator(A)).tags
    assert ls.MatrixOperator(A, LOWER).T.T.tags == ls.MatrixOperator(A, LOWER).tags

    def traced_scale(s):
        out = s * psd
        assert PSD not in out.tags and SYM in out.tags
        return out.mv(jnp.ones(4)).sum()

    jax.jit(traced_scale)(2.0)
    herm = ls.MatrixOperator(A + 1j * B, HERM)
    assert HERM not in (1j * herm).tags and HERM in (2.0 * herm).tags
    assert ls.diagonal_tag in ls.DiagonalOperator(X).tags
    assert ls.positive_semidefinite_tag in ls.IdentityOperator(3).tags


def test_gram_operator_solves_with_cholesky():
    op = ls.MatrixOperator(A)
    op = op.T @ op
    assert isinstance(ls.AutoSolver().select(op), ls.Cholesky)
    np.testing.assert_allclose(ls.linear_solve(op, X).value, np.linalg.solve(A.T @ A, X), rtol=1e-8)

    def loss(a):
        o = ls.MatrixOperator(a)
        return ls.linear_solve(o.T @ o, jnp.asarray(X)).value.sum()

    assert_grad_matches_fd(loss, A, rtol=1e-5, atol=1e-6)


def test_lineax_operators_are_accepted():
    op = lx.MatrixLinearOperator(jnp.asarray(A @ A.T + 4 * np.eye(4)), lx.positive_semidefinite_tag)
    sol = ls.linear_solve(op, jnp.asarray(X))
    np.testing.assert_allclose(sol.value, np.linalg.solve(A @ A.T + 4 * np.eye(4), X), rtol=1e-10)
    assert isinstance(ls.AutoSolver().select(ls._operator.as_operator(op)), ls.Cholesky)
    tagged = lx.TaggedLinearOperator(
        lx.MatrixLinearOperator(jnp.asarray(np.tril(A) + 4 * np.eye(4))), lx.lower_triangular_tag
    )
    assert LOWER in ls._operator.as_operator(tagged).tags
    with pytest.raises(TypeError, match="lineax"):
        ls.linear_solve(np.eye(2), np.ones(2))


@pytest.mark.parametrize(
    "tags", [frozenset({SYM}), frozenset({HERM}), frozenset({PSD}), frozenset({NSD})]
)
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
@pytest.mark.parametrize("k", [None, 3])
def test_self_adjoint_matvec_derivatives(tags, dtype, k):
    """`mv` of a self-adjoint MatrixOperator has its own JVP rule (the tangent as two
    masked products, for a lean reverse-mode fold): it must equal the derivative of
    `dense_effective(a) @ x`, in both arguments, forward and reverse, at second order."""
    from jax.test_util import check_grads

    def draw(shape):
        out = rng.standard_normal(shape)
        return out + 1j * rng.standard_normal(shape) if dtype == np.complex128 else out

    a, ta = jnp.asarray(draw((4, 4))), jnp.asarray(draw((4, 4)))
    x, tx = (jnp.asarray(draw((4,) if k is None else (4, k))) for _ in range(2))

    def mv(a, x):
        return ls.MatrixOperator(a, tags).mv(x)

    def reference(a, x):
        low, diag = jnp.tril(a, -1), jnp.diagonal(a)
        if np.iscomplexobj(a) and tags & {HERM, PSD, NSD}:
            return (low + jnp.conj(low).T + jnp.diag(jnp.real(diag).astype(a.dtype))) @ x
        return (low + low.T + jnp.diag(diag)) @ x

    out, tangent = jax.jvp(mv, (a, x), (ta, tx))
    ref_out, ref_tangent = jax.jvp(reference, (a, x), (ta, tx))
    np.testing.assert_allclose(out, ref_out, rtol=1e-13)
    np.testing.assert_allclose(tangent, ref_tangent, rtol=1e-13)
    ct = jnp.asarray(draw(out.shape))
    got = jax.vjp(mv, a, x)[1](ct)
    want = jax.vjp(reference, a, x)[1](ct)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-13, atol=1e-14)
    if k is None:  # (second order once per tag and dtype: compile-bound)
        check_grads(jax.jit(mv), (a, x), order=2, modes=["fwd", "rev"])
