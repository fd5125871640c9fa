"""Old import paths that keep working for one release, with a ``DeprecationWarning`` naming the new home.

A module whose names moved ends with ``__getattr__ = moved(__name__, {...})``: an attribute that is
not found the ordinary way is looked up in the table, the warning is issued, and the object from the
new home is returned (the same object, not a copy). The new home is named as a string and imported
on first use only, so a deprecated alias is never a dependency of the module that carries it (it is
not an import of the library's layered graph, and it cannot create an import cycle).

Example:
    >>> import warnings
    >>> import fiberscope.priors.base as base
    >>> with warnings.catch_warnings(record=True) as w:
    ...     warnings.simplefilter("always")
    ...     counter = base.CallCounter
    >>> counter.__module__, w[0].category.__name__
    ('fiberscope.counting', 'DeprecationWarning')
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["REMOVED_IN", "moved", "warn_deprecated"]

#: The release that removes every alias served by :func:`moved`.
REMOVED_IN = "0.2"

#: Every alias served so far, ``{"old.module.name": "new.module:name"}`` (for tests and docs).
ALIASES: dict[str, str] = {}


def moved(module: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving ``names`` (``{old_name: "new.module:new_name"}``) with a warning.

    Args:
        module: the module that carries the aliases (its ``__name__``).
        names: each old name and where it lives now, as ``"package.module:attribute"``.
    """
    table = dict(names)
    for old, new in table.items():
        ALIASES[f"{module}.{old}"] = new

    def __getattr__(name: str) -> Any:
        target = table.get(name)
        if target is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        home, _, attr = target.partition(":")
        warnings.warn(
            f"{module}.{name} has moved to {home}.{attr}: import it from there "
            f"({module}.{name} is removed in fiberscope {REMOVED_IN})",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(home), attr)

    return __getattr__


def warn_deprecated(message: str) -> None:
    """A ``DeprecationWarning`` attributed to the first caller outside fiberscope.

    For an old spelling met deep inside the library (a spec string, a settings key, an environment
    variable): the warning names the user's line, so Python's default filters show it to a script
    and it is shown once per place it comes from.
    """
    level, frame = 1, sys._getframe(0)
    while frame is not None and str(frame.f_globals.get("__name__", "")).split(".")[0] == "fiberscope":
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    warnings.warn(message, DeprecationWarning, stacklevel=level)
