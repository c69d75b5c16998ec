"""Optional dependencies: a guard that names what to install (scvi's ``utils/_dependencies.py`` idea).

Usage::

    @dependencies("ray")
    def connect(address): import ray; ...

The check runs when the function is called, not when its module is imported, so an installation without
the extra can still import everything and only the call that needs it fails, with an install hint.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from typing import TypeVar

from .errors import LCDError

F = TypeVar("F", bound=Callable)

#: package -> what to install (the pin of requirements.txt, and the extra of pyproject.toml)
INSTALL_HINTS = {
    "ray": "pip install 'lcd-explorer[ray]' (or: pip install 'ray[default]==2.60.0')",
}


class MissingDependencyError(LCDError, ImportError):
    """An optional dependency a feature needs is not installed."""


def is_available(package: str) -> bool:
    """Whether ``package`` can be imported (without importing it)."""
    return importlib.util.find_spec(package) is not None


def require(*packages: str, feature: str | None = None) -> None:
    """Raise :class:`MissingDependencyError` naming the install command for each missing package."""
    missing = [p for p in packages if not is_available(p)]
    if missing:
        what = f" for {feature}" if feature else ""
        hints = "; ".join(INSTALL_HINTS.get(p, f"pip install {p}") for p in missing)
        raise MissingDependencyError(f"{', '.join(missing)} is needed{what} but not installed: {hints}")


def dependencies(*packages: str) -> Callable[[F], F]:
    """Decorator: check that ``packages`` are importable before calling the function."""

    def decorator(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            require(*packages, feature=f"{fn.__module__}.{fn.__qualname__}")
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator
