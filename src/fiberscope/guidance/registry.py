"""A guidance method from a spec: a name (``ndtm``, ``unguided``, a baseline, an NDTM preset) or an object.

The one place that turns what a user wrote (``--method dps --steps 50``, a manifest's
``"method": {"name": "unguided", "steps": 20}``) into a :class:`~fiberscope.guidance.GuidanceMethod`.
Every setting is checked by the method's own validation (:mod:`fiberscope.validation`), and a
setting the method does not have is refused, for every method, with the list of the valid ones.

Example:
    >>> from fiberscope.guidance.registry import method_from_spec
    >>> method_from_spec({"name": "unguided", "steps": 20}).steps
    20
    >>> method_from_spec("unguided", {"inner_steps": 3})
    Traceback (most recent call last):
    ...
    fiberscope.errors.ParameterError: method 'unguided': unknown setting(s) ['inner_steps']; valid: [...]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from ..errors import ParameterError, ParameterTypeError
from ..validation import check_keys
from .base import GuidanceMethod

__all__ = ["method_from_spec", "method_names"]


def method_names() -> list[str]:
    """Every name :func:`method_from_spec` accepts: the methods, then the NDTM presets."""
    from . import METHODS, PRESETS

    return [*METHODS, *sorted(PRESETS)]


def _default_preset(prior_name: str | None) -> str | None:
    if not prior_name or not str(prior_name).startswith("builtin:"):
        return None
    from ..zoo.registry import ZOO

    entry = ZOO.get(str(prior_name).removeprefix("builtin:"))
    return entry.preset if entry is not None else None


def method_from_spec(spec: Any, overrides: Mapping[str, Any] | None = None, prior_name: str | None = None) -> Any:
    """A guidance method from a name or ``{"name": ..., **settings}``, with ``overrides`` applied.

    Args:
        spec: ``"ndtm"``, ``"unguided"``, a baseline (``"dps"``, ``"tfg"``, ...), an NDTM preset name,
            ``{"name": ..., **settings}``, a :class:`GuidanceMethod` (returned as is), or None (the
            zoo's tuned preset for a ``builtin:`` prior, else ``NDTM()`` with its settings left open,
            which :func:`~fiberscope.guidance.auto.resolve_method` turns into the scale-free
            :class:`~fiberscope.guidance.auto.AutoNDTM` when sampling).
        overrides: settings that win over the spec's (e.g. from command-line flags).
        prior_name: the prior's spec, for the default.

    Raises:
        ParameterError: an unknown method or setting, or a setting of the wrong type or out of bounds.
    """
    from . import METHODS, PRESETS
    from .ndtm import NDTM

    overrides = dict(overrides or {})
    if isinstance(spec, GuidanceMethod):
        if overrides:
            raise ParameterError(f"settings {sorted(overrides)} cannot be applied to an already built {spec.name}")
        return spec
    if isinstance(spec, Mapping):
        spec = dict(spec)
        name = spec.pop("name", None)
        if not isinstance(name, str) or not name.strip():
            raise ParameterError(
                f"method object {spec} needs a 'name' (ndtm, unguided, a baseline or a preset)"[:300], "method"
            )
        overrides = {**spec, **overrides}
        spec = name
    if spec is not None and not isinstance(spec, str):
        raise ParameterTypeError(f"method must be a name or an object with a 'name', got {spec!r}"[:300], "method")
    name = spec.strip().lower() if spec else (_default_preset(prior_name) or "ndtm")
    bad_key = next((k for k in overrides if not isinstance(k, str)), None)
    if bad_key is not None:
        raise ParameterTypeError(f"method {name!r}: setting names must be strings, got {bad_key!r}", "method")
    if name in PRESETS:
        cls: type[GuidanceMethod] = NDTM
    elif name in METHODS:
        cls = METHODS[name]
    else:
        raise ParameterError(
            f"unknown method {spec!r}: use one of {', '.join(METHODS)} or an NDTM preset "
            f"({', '.join(sorted(PRESETS))})",
            "method",
        )
    check_keys(overrides, [f.name for f in fields(cls)], f"method {name!r}")  # type: ignore[arg-type]
    try:
        return NDTM.preset(name, **overrides) if name in PRESETS else cls(**overrides)
    except ParameterError:
        raise
    except (TypeError, ValueError) as e:
        raise ParameterError(f"method {name!r}: {e}"[:400], "method") from None
