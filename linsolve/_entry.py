"""Public entry points, jitted: `entry` wraps a public function in `eqx.filter_jit` (as
lineax's `linear_solve` is), so a call outside `jit` compiles once per input structure
and is replayed afterwards instead of dispatching every operation one at a time.

Some checks must see an argument as the user passed it, before the jit makes it a tracer
or a static (hashed) argument: operators are converted with `as_operator` first (a scipy
matrix or another non-operator then gets its own message, not an "unhashable" error), and
`checks` run on the concrete arguments (e.g. a tolerance given as a numpy scalar, which
the jit would trace)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import equinox as eqx

from ._operator import as_operator


_F = TypeVar("_F", bound=Callable[..., Any])


def entry(*operators: str, checks: Callable[..., None] | None = None) -> Callable[[_F], _F]:
    """Decorator: `fn` under `eqx.filter_jit`, with the arguments named in `operators`
    (when not None) made operators and `checks(**arguments)` run before the jit."""

    def wrap(fn: _F) -> _F:
        jitted = eqx.filter_jit(fn)
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def call(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            for name in operators:
                if bound.arguments.get(name) is not None:
                    bound.arguments[name] = as_operator(bound.arguments[name])
            if checks is not None:
                checks(**bound.arguments)
            return jitted(*bound.args, **bound.kwargs)

        return call  # type: ignore[return-value]

    return wrap
