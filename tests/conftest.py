import os

import jax
import pytest


jax.config.update("jax_enable_x64", True)


# Tests that take long (big compiles, many parametrized cases, subprocesses), by node-id
# prefix ("tests/test_x.py" for a whole file, "tests/test_x.py::test_y" for one test and
# all its parameters). Listed here rather than marked in the files, so that the list can
# change without touching them; a test may also carry `@pytest.mark.slow` itself.
# They are skipped on a user's machine and run in CI (CI=true) or with --runslow.
SLOW = ()


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
        if item.nodeid.startswith(SLOW):
            item.add_marker(pytest.mark.slow)
    if run_slow(config):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow, or CI=true")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
