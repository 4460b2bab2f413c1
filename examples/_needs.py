"""`require`: stop an example at once, with the install command, when a package it needs
(beyond linsolve's own dependencies) is missing, instead of failing after the work."""

import importlib.util
import sys
from pathlib import Path


def require(*modules: str) -> None:
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        script = Path(sys.argv[0]).name
        raise SystemExit(
            f"{script} needs {' and '.join(missing)}, not installed. From the "
            'repository root: pip install ".[examples]"   (or: pip install '
            f"{' '.join(missing)})"
        )
