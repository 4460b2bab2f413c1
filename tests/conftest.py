import os
import re

import jax
import pytest


jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")


# Tests that take long (big compiles, many parametrized cases, subprocesses), as node-id
# patterns ("*" matches anything; brackets are literal). Listed here rather than marked in
# the files, so that the list can change without touching them; a test may also carry
# `@pytest.mark.slow` itself. Skipped on a user's machine, run in CI (CI=true) or with
# --runslow. Chosen from per-test durations measured on a loaded 2-core machine.
_TRANSFORMS = "tests/test_solve_transforms.py::"
SLOW = (
    # The derivative tests of the central table, every row ...
    _TRANSFORMS + "test_check_grads_jit[*",
    _TRANSFORMS + "test_entrywise_fd_with_garbage[*",
    _TRANSFORMS + "test_nan_in_unread_entries[*",
    _TRANSFORMS + "test_vmap[*",
    _TRANSFORMS + "test_y0_and_adjoint_y0_have_zero_derivative[*",
    # LOBPCG derivatives against dense references, and every eigenpair test but the
    # input checks; the sparse Cholesky's derivative tests.
    "tests/test_lobpcg.py::*",
    "tests/test_sparse_cholesky.py::*gradients*",
    "tests/test_sparse_cholesky.py::*derivatives*",
    "tests/test_sparse_cholesky.py::test_vmap*",
    # Krylov recycling on a 2-D Poisson problem.
    "tests/test_iterative.py::test_exact_adjoint_y0_needs_at_most_two_steps_and_recycling_saves",
    "tests/test_iterative.py::test_recycle*",
    # Every solver under strict dtype promotion (values, gradients, JVPs, real and
    # complex), and Krylov recycling across solves: many compiles each.
    "tests/test_strict_promotion.py::*",
    "tests/test_recycle.py::*",
    # Subprocesses: a fresh JAX with 4 host devices, or a hang check with a timeout.
    "tests/test_sharding_krylov.py::*",
    "tests/test_sharding_lobpcg.py::*",
    "tests/test_vmap_lapack.py::test_vmapped_likelihood_with_two_factorizations_does_not_hang",
    "tests/test_vmap_lapack.py::test_vmapped_lobpcg*",
)
# ... except these, which keep a representative of each in the fast subset: a dense
# Cholesky row, a dense LU row, a Krylov row, a sparse row of the central table, and the
# LOBPCG input checks.
FAST = (
    _TRANSFORMS + "*[cholesky-psd-*]",
    _TRANSFORMS + "*[lu-float64]",
    _TRANSFORMS + "*[cg-preconditioned-*]",
    _TRANSFORMS + "*[sparse-cholesky-psd-*]",
    "tests/test_lobpcg.py::test_input_errors",
    "tests/test_strict_promotion.py::test_dense_and_krylov_solvers[cg-float64]",
    "tests/test_strict_promotion.py::test_operator_algebra[*",
    "tests/test_recycle.py::test_any_space_gives_the_same_solution[*",
    "tests/test_recycle.py::test_clear_errors",
)


def _matches(nodeid: str, patterns) -> bool:
    return any(re.fullmatch(re.escape(p).replace(r"\*", ".*"), nodeid) for p in patterns)


def is_slow(nodeid: str) -> bool:
    return _matches(nodeid, SLOW) and not _matches(nodeid, FAST)


def pytest_addoption(parser):
    parser.addoption(
        "--runslow",
        action="store_true",
        default=False,
        help="also run the tests marked slow (they run anyway when CI=true)",
    )


def run_slow(config) -> bool:
    ci = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
    return ci or config.getoption("--runslow")


# tryfirst: mark before pytest's own `-m` selection runs, so `-m slow` / `-m "not slow"`
# see the marks added here.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if is_slow(item.nodeid):
            item.add_marker(pytest.mark.slow)
    if run_slow(config):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow, or CI=true")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
