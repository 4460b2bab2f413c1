"""Packaging checks: declared dependencies match the imports, one version, the files a
user of the wheel relies on (LICENSE, py.typed), the README's commands, the `slow`
marker. Static (AST and pyproject), except the marker test, which runs pytest on a
temporary file."""

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
EXTRAS = PROJECT["optional-dependencies"]

# Import name -> distribution that provides it (where they differ or one comes with another).
PROVIDED_BY = {"jaxlib": "jax"}  # jax depends on jaxlib
LOCAL = {"linsolve", "helpers", "cases", "sharding_hlo", "conftest", "_timing", "_needs"}


def dist_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def names(requirements) -> set[str]:
    return {dist_name(r) for r in requirements}


def imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    """Third-party top-level module names imported by a file (at module level only, or
    anywhere)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return {
        PROVIDED_BY.get(name, name).lower()
        for name in found
        if name not in sys.stdlib_module_names and name not in LOCAL
    }


def py_files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_library_imports_are_declared_dependencies():
    core = names(PROJECT["dependencies"])
    optional = set().union(*(names(reqs) for reqs in EXTRAS.values()))
    for path in py_files("linsolve"):
        # Module-level imports run on `import linsolve`: they must be hard dependencies.
        undeclared = imports(path, top_level_only=True) - core
        assert not undeclared, f"{path.relative_to(ROOT)} imports {undeclared} at module level"
        # Imports inside functions may be optional, but must be declared somewhere.
        undeclared = imports(path) - core - optional
        assert not undeclared, f"{path.relative_to(ROOT)} imports undeclared {undeclared}"


def test_no_unused_hard_dependency():
    used = set().union(*(imports(p) for p in py_files("linsolve")))
    assert names(PROJECT["dependencies"]) - used == set()
    assert "optimistix" not in names(PROJECT["dependencies"])


@pytest.mark.parametrize(("folder", "extra"), [("examples", "examples"), ("tests", "test")])
def test_scripts_imports_are_declared(folder, extra):
    allowed = names(PROJECT["dependencies"]) | names(EXTRAS[extra])
    for path in py_files(folder):
        undeclared = imports(path) - allowed
        assert not undeclared, f"{path.relative_to(ROOT)} needs {undeclared}: add to [{extra}]"


def test_version_is_single_sourced():
    assert "version" not in PROJECT and "version" in PROJECT["dynamic"]
    assert PYPROJECT["tool"]["hatch"]["version"]["path"] == "linsolve/__init__.py"
    source = (ROOT / "linsolve" / "__init__.py").read_text(encoding="utf-8")
    assert len(re.findall(r"^__version__ = \"\d+\.\d+\.\d+\S*\"$", source, re.M)) == 1
    # No second copy to drift: CITATION.cff names no version.
    assert not re.search(r"^version:", (ROOT / "CITATION.cff").read_text(encoding="utf-8"), re.M)


def test_license_typed_marker_and_project_files_exist():
    assert PROJECT["license"] == "Apache-2.0" and PROJECT["license-files"] == ["LICENSE"]
    assert "Apache License" in (ROOT / "LICENSE").read_text(encoding="utf-8")
    for name in ("linsolve/py.typed", "CHANGELOG.md", "CITATION.cff"):
        assert (ROOT / name).is_file(), name


def test_installed_wheel_ships_py_typed_and_license():
    """Where linsolve is installed from a wheel (`pip install .`, as in CI), its file list
    has the typing marker and the licence, and its version is `linsolve.__version__`."""
    try:
        dist = importlib.metadata.distribution("linsolve")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("linsolve is not installed")
    files = {str(f).replace(os.sep, "/") for f in dist.files or ()}
    if "linsolve/__init__.py" not in files:
        pytest.skip("editable install: no wheel file list")
    assert "linsolve/py.typed" in files
    assert any(f.endswith("licenses/LICENSE") for f in files), sorted(files)
    source = (ROOT / "linsolve" / "__init__.py").read_text(encoding="utf-8")
    assert f'__version__ = "{dist.version}"' in source


def test_readme_commands_and_extras():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```bash\n(.*?)^```", readme, re.M | re.S)
    assert len(blocks) == 2, "`.ci/run` runs exactly two ```bash blocks of the README"
    assert "examples/quickstart.py" in blocks[0] and "pytest" in blocks[1]
    for extra in re.findall(r'"\.\[([\w,-]+)\]"', readme):
        for name in extra.split(","):
            assert name in EXTRAS, f"README installs the unknown extra {name!r}"


def test_examples_write_next_to_themselves():
    """Output paths are built from the script's location, never from the working
    directory (a run from inside examples/ must not fail at the end)."""
    for path in py_files("examples"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"[\"']examples/[^\"']*\.png[\"']", text), path.name
        if "savefig" in text:
            assert "Path(__file__)" in text, path.name


def test_slow_marker(tmp_path):
    """`slow` tests are skipped by default, run with --runslow or CI=true."""
    (tmp_path / "conftest.py").write_text(
        (ROOT / "tests" / "conftest.py").read_text(encoding="utf-8"), encoding="utf-8"
    )
    (tmp_path / "test_it.py").write_text(
        textwrap.dedent(
            """
            import pytest

            @pytest.mark.slow
            def test_slow():
                pass

            def test_fast():
                pass
            """
        ),
        encoding="utf-8",
    )
    assert "slow" in " ".join(PYPROJECT["tool"]["pytest"]["ini_options"]["markers"])

    def run(*args, ci=None):
        env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
        if ci is not None:
            env["CI"] = ci
        out = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        return out.stdout

    assert "1 passed, 1 skipped" in run()
    assert "2 passed" in run("--runslow")
    assert "2 passed" in run(ci="true")
    assert "1 passed, 1 deselected" in run("-m", "not slow", ci="true")
