"""Matrix-free Krylov solves on vectors sharded over several devices (jax.sharding).

CG, MINRES and GMRES through `linear_solve` on right-hand sides and operator data sharded
over a 1-D mesh of 4 (host CPU) devices: solutions and gradients (w.r.t. `b` and w.r.t. an
array inside the operator) equal the single-device ones, keep their sharding, and the
compiled program never gathers a full vector inside a solve loop — the loops carry only
per-device shards, and their collectives are the halo exchanges of the stencil and
all-reduces of scalars (dot products).

The device count of a JAX process is fixed when JAX starts, so the checks run in a
subprocess started with `XLA_FLAGS=--xla_force_host_platform_device_count=4`: this file
is its own worker (`python tests/test_sharding_krylov.py SOLVER... [--throw] [--recycle]`).
"""

import sys

from sharding_hlo import DEVICES, SKIP, check_hlo, run_worker


# -- the parent (pytest) -------------------------------------------------------------------


def test_sharded_solves_and_gradients():
    # One subprocess for the three solvers: starting JAX costs more than a case.
    out = run_worker(__file__, "cg", "minres", "gmres")
    for solver in ("cg", "minres", "gmres"):
        assert f"{solver}: ok" in out, out


def test_sharded_with_throw_and_recycling():
    """The default `throw=True`: the error check of the solve (a host callback behind a
    `lax.cond`) must not pull the solution onto one device. With `CG(recycle=4)`: the
    window of Lanczos vectors, the recycled basis `W` and `AW` are sharded like vectors."""
    out = run_worker(__file__, "cg", "--throw", "--recycle")
    assert "cg: ok" in out, out


# -- the worker (subprocess) ---------------------------------------------------------------


def _worker(which: str, throw: bool, recycle: int) -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    try:
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    except ImportError as error:
        print(f"no jax.sharding here: {error}")
        sys.exit(SKIP)
    if jax.device_count() < DEVICES:
        print(f"only {jax.device_count()} devices (XLA_FLAGS not honoured)")
        sys.exit(SKIP)
    import jax.numpy as jnp
    import numpy as np

    import linsolve as ls

    mesh = Mesh(np.array(jax.devices()[:DEVICES]), ("x",))
    sharded = NamedSharding(mesh, P("x"))
    single = jax.devices()[0]
    rng = np.random.default_rng(0)
    tol = dict(rtol=1e-12, atol=0.0)

    if which == "cg":
        # -∇·∇u + c u on a 32 × 32 grid (5-point stencil), the grid split by rows: each
        # product exchanges one halo row with the neighbouring devices.
        side = 32
        n = side * side

        def operator(c):
            def apply(u):
                grid = u.reshape(side, side)
                p = jnp.pad(grid, 1)
                lap = 4 * grid - p[:-2, 1:-1] - p[2:, 1:-1] - p[1:-1, :-2] - p[1:-1, 2:]
                return lap.reshape(-1) + c * u

            return ls.FunctionOperator(apply, jnp.zeros(n), ls.positive_semidefinite_tag)

        solver = ls.CG(**tol, recycle=recycle)
        param = rng.uniform(0.1, 1.0, n)
    elif which == "minres":
        # A 1-D variable-coefficient stencil shifted to be indefinite.
        n = 512

        def operator(c):
            def apply(u):
                p = jnp.pad(u, 1)
                return c * u + 2 * u - p[:-2] - p[2:] - 0.05 * u

            return ls.FunctionOperator(apply, jnp.zeros(n), ls.symmetric_tag)

        solver = ls.MINRES(**tol)
        param = rng.uniform(-0.5, 0.5, n) * 0.02
    else:
        # Non-symmetric: a diagonal plus a rank-2 term plus upwind advection.
        n = 512
        u_low = jnp.asarray(rng.standard_normal((n, 2)) / np.sqrt(n))
        v_low = jnp.asarray(rng.standard_normal((n, 2)) / np.sqrt(n))

        def operator(d):
            def apply(x):
                advect = x - jnp.pad(x, (1, 0))[:-1]
                return d * x + u_low @ (v_low.T @ x) + 0.5 * advect

            return ls.FunctionOperator(apply, jnp.zeros(n), ())

        solver = ls.GMRES(**tol, restart=10)
        param = rng.uniform(1.0, 2.0, n)

    weights = jnp.asarray(rng.standard_normal(n))

    def solve(param, b):
        return ls.linear_solve(operator(param), b, solver, throw=throw).value

    def loss(param, b):
        return jnp.sum(weights * jnp.sin(solve(param, b)))

    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    forward = jax.jit(solve)
    b = rng.standard_normal(n)

    outs = {}
    for where, placement in (("single", single), ("sharded", sharded)):
        args = [jax.device_put(jnp.asarray(a), placement) for a in (param, b)]
        compiled_forward = forward.lower(*args).compile()
        compiled_grad = value_and_grad.lower(*args).compile()
        x = compiled_forward(*args)
        value, (g_param, g_b) = compiled_grad(*args)
        outs[where] = (x, value, g_param, g_b)
        if where == "sharded":
            for name, out in (("x", x), ("grad param", g_param), ("grad b", g_b)):
                assert out.sharding.is_equivalent_to(sharded, 1), (which, name, out.sharding)
            check_hlo(compiled_forward.as_text(), n, f"{which} forward")
            check_hlo(compiled_grad.as_text(), n, f"{which} grad")

    for name, got, expected in zip(
        ("x", "loss", "grad param", "grad b"), outs["sharded"], outs["single"]
    ):
        np.testing.assert_allclose(
            np.asarray(got), np.asarray(expected), rtol=1e-9, atol=1e-11, err_msg=f"{which}: {name}"
        )
    # And the single-device solution solves the system (not just agrees with itself).
    x = np.asarray(outs["single"][0])
    residual = np.asarray(operator(jnp.asarray(param)).mv(jnp.asarray(x))) - b
    assert np.linalg.norm(residual) <= 1e-10 * np.linalg.norm(b), which
    print(f"{which}: ok")


if __name__ == "__main__":
    flags = [a for a in sys.argv[1:] if a.startswith("--")]
    for name in (a for a in sys.argv[1:] if not a.startswith("--")):
        _worker(name, throw="--throw" in flags, recycle=4 if "--recycle" in flags else 0)
