"""LOBPCG on arrays sharded over several devices (JAX's own SPMD partitioner).

A matrix-free generalized problem `(A + diag(c)) v = λ M v` (1-D stencils) whose data
`c` lives row-sharded over 4 CPU devices: the eigenvalues and the gradient w.r.t. `c`
equal the single-device ones, the eigenvectors and the gradient keep the row sharding,
and no loop of the compiled forward + backward program (LOBPCG's iteration, its
orthonormalisation, the derivative's CG solves) moves a full-length vector between
devices: inside loops only reductions of small Gram blocks and the stencils' halo
exchanges remain.

The device count is fixed when JAX starts, so the checks run in a fresh interpreter
with `XLA_FLAGS=--xla_force_host_platform_device_count=4`.
"""

import sys

from sharding_hlo import DEVICES, SKIP, check_hlo, loop_collectives, run_worker


N, K = 96, 3  # 24 rows per device; block size k + 2 = 5


def _main():
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    import linsolve as ls

    if jax.device_count() < DEVICES:
        print(f"only {jax.device_count()} devices")
        sys.exit(SKIP)
    mesh = Mesh(np.array(jax.devices()[:DEVICES]), ("rows",))
    rows = NamedSharding(mesh, P("rows"))
    block = NamedSharding(mesh, P("rows", None))
    example = jax.ShapeDtypeStruct((N,), jnp.float64)

    def stiffness(c):
        def apply(x):
            p = jnp.pad(x, 1)
            return 2 * x - p[:-2] - p[2:] + c * x

        return ls.FunctionOperator(apply, example, ls.symmetric_tag)

    def mass(x):
        p = jnp.pad(x, 1)
        return (4 * x + p[:-2] + p[2:]) / 6

    def loss(c, g):
        out = ls.lobpcg(
            stiffness(c),
            K,
            B=ls.FunctionOperator(mass, example, ls.positive_semidefinite_tag),
            tol=1e-12,
        )
        value = jnp.sum(out.eigenvalues) + jnp.sum((g @ out.eigenvectors) ** 2)
        return value, out

    value_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
    rng = np.random.default_rng(0)
    c = jnp.asarray(rng.uniform(0, 1, N))
    g = jnp.asarray(rng.standard_normal(N))

    (v1, out1), grad1 = value_and_grad(c, g)
    cs, gs = jax.device_put(c, rows), jax.device_put(g, rows)
    compiled = value_and_grad.lower(cs, gs).compile()
    (v2, out2), grad2 = compiled(cs, gs)

    assert out1.result == ls.RESULTS.successful and out2.result == ls.RESULTS.successful
    np.testing.assert_allclose(out2.eigenvalues, out1.eigenvalues, rtol=1e-12)
    np.testing.assert_allclose(v2, v1, rtol=1e-11)
    signs = np.sign(np.sum(np.asarray(out1.eigenvectors) * np.asarray(out2.eigenvectors), axis=0))
    np.testing.assert_allclose(np.asarray(out2.eigenvectors) * signs, out1.eigenvectors, atol=1e-10)
    np.testing.assert_allclose(grad2, grad1, rtol=1e-9, atol=1e-11)
    # The dense reference (generalized, through the Cholesky transform).
    a = np.diag(2 + np.asarray(c)) - np.eye(N, k=1) - np.eye(N, k=-1)
    m = (4 * np.eye(N) + np.eye(N, k=1) + np.eye(N, k=-1)) / 6
    import scipy.linalg

    np.testing.assert_allclose(
        out2.eigenvalues, scipy.linalg.eigh(a, m, eigvals_only=True)[:K], rtol=1e-11
    )

    # Outputs keep the row sharding; nothing was gathered onto one device.
    assert out2.eigenvectors.sharding.is_equivalent_to(block, 2), out2.eigenvectors.sharding
    assert grad2.sharding.is_equivalent_to(rows, 1), grad2.sharding

    hlo = compiled.as_text()
    # No all-gather / all-to-all of a full-length array in a loop, no loop carrying one.
    check_hlo(hlo, N, "lobpcg")
    # Nor any other collective moving long arrays (an all-reduce can gather too).
    collectives = loop_collectives(hlo)
    # The loops were found, and their Gram-block reductions with them.
    assert any(kind == "all-reduce" for kind, _ in collectives), collectives
    full = [(kind, shape) for kind, shape in collectives if any(d >= N // 2 for d in shape)]
    assert not full, f"collectives moving long vectors inside loops: {full}"
    print("ok", sorted(set(collectives)))


def test_sharded_lobpcg_matches_single_device_without_gathers():
    out = run_worker(__file__)
    assert out.startswith("ok"), out


if __name__ == "__main__":
    _main()
