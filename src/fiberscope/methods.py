"""The method registry: what a user wrote (a name, a mapping of settings) → a guidance method.

The one place that turns ``--method dps --steps 50``, a manifest's ``"method": {"name": "unguided",
"steps": 20}`` or a bench file's ``methods:`` entry into a
:class:`~fiberscope.guidance.GuidanceMethod`: the methods of :mod:`fiberscope.guidance`
(:data:`~fiberscope.guidance.METHODS`), NDTM's presets (:data:`~fiberscope.guidance.PRESETS`) and the
trained invariance models (``{"name": "trained", "model": "cfm-l10"}``, :mod:`fiberscope.trained`).
It sits above the trained models in the layers, which :mod:`fiberscope.guidance` may not import.
Every setting is checked by the method's own validation (:mod:`fiberscope.validation`), and a
setting the method does not have is refused, for every method, with the list of the valid ones.

A mapping may also hold ``per_prior: {prior spec: {settings}}`` (settings, or another ``name``, for
one prior: the bench's per-prior samplers) and ``pairs`` (where the bench runs the method,
:func:`fiberscope.bench.method_applies`; ignored here).

Example:
    >>> from fiberscope.methods import method_from_spec
    >>> method_from_spec({"name": "unguided", "steps": 20}).steps
    20
    >>> spec = {"name": "builtin-mnist", "per_prior": {"builtin:mnist-flow": {"name": "builtin-mnist-flow"}}}
    >>> method_from_spec(spec, prior_name="builtin:mnist-flow").sampler
    'euler'
    >>> method_from_spec("unguided", {"inner_steps": 3})
    Traceback (most recent call last):
    ...
    fiberscope.errors.ParameterError: method 'unguided': unknown setting(s) ['inner_steps']; valid: [...]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from .errors import FiberscopeError, ParameterError, ParameterTypeError
from .guidance import METHODS, NDTM, PRESETS, GuidanceMethod
from .validation import check_keys

__all__ = ["TRAINED", "method_from_spec", "method_names"]

#: The name of a trained invariance model as a method: ``{"name": "trained", "model": NAME}``.
TRAINED = "trained"

#: Settings given as lists in YAML/JSON that the methods hold as tuples.
_TUPLES = ("clip", "adam_betas")


def method_names() -> list[str]:
    """Every name :func:`method_from_spec` accepts: the methods, ``trained``, then the NDTM presets."""
    return [*METHODS, TRAINED, *sorted(PRESETS)]


def _settings_for_prior(name: str, spec: dict[str, Any], prior_name: str | None) -> tuple[str, dict[str, Any]]:
    """The name and settings of a mapping spec, with its ``per_prior`` entry for ``prior_name`` applied."""
    spec.pop("pairs", None)  # where the bench runs it, not a setting
    per_prior = spec.pop("per_prior", None) or {}
    if not isinstance(per_prior, Mapping):
        raise ParameterTypeError(
            f"method {name!r}: per_prior must map prior specs to settings, got {per_prior!r}"[:300], "per_prior"
        )
    if prior_name is None or prior_name not in per_prior:
        return name, spec
    extra = per_prior[prior_name]
    if not isinstance(extra, Mapping):
        raise ParameterTypeError(
            f"method {name!r}: per_prior[{prior_name!r}] must be a mapping of settings, got {extra!r}"[:300],
            "per_prior",
        )
    spec = {**spec, **extra}
    name = spec.pop("name", name)
    if not isinstance(name, str) or not name.strip():
        raise ParameterError(f"method per_prior[{prior_name!r}]: 'name' must be a method name, got {name!r}", "method")
    return name, spec


def method_from_spec(spec: Any, overrides: Mapping[str, Any] | None = None, prior_name: str | None = None) -> Any:
    """A guidance method from a name or ``{"name": ..., **settings}``, with ``overrides`` applied.

    Args:
        spec: ``"ndtm"``, ``"unguided"``, a training-free baseline (``"dps"``, ``"tfg"``, ...), an NDTM preset name,
            ``{"name": ..., **settings}`` (with ``per_prior`` and ``pairs``, see the module),
            ``{"name": "trained", "model": NAME}``, a :class:`GuidanceMethod` (returned as is), or
            None (``NDTM()`` with the settings not in ``overrides`` left open, which
            :func:`~fiberscope.guidance.ndtm.resolve_method` turns into the default when sampling:
            the scale-free :class:`~fiberscope.guidance.auto.AutoNDTM`, or the prior's registered
            NDTM preset for settings only NDTM has).
        overrides: settings that win over the spec's (e.g. from command-line flags).
        prior_name: the prior's spec: picks its ``per_prior`` settings.

    Raises:
        ParameterError: an unknown method or setting, or a setting of the wrong type or out of bounds.
        ModelNotAvailableError: a trained model that is not trained yet.
    """
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
                f"method object {spec} needs a 'name' (ndtm, unguided, a training-free baseline or a preset)"[:300],
                "method",
            )
        name, settings = _settings_for_prior(name, spec, prior_name)
        overrides = {**settings, **overrides}
        spec = name
    if spec is not None and not isinstance(spec, str):
        raise ParameterTypeError(f"method must be a name or an object with a 'name', got {spec!r}"[:300], "method")
    name = spec.strip().lower() if spec else "ndtm"  # settings left open: resolve_method picks the default
    bad_key = next((k for k in overrides if not isinstance(k, str)), None)
    if bad_key is not None:
        raise ParameterTypeError(f"method {name!r}: setting names must be strings, got {bad_key!r}", "method")
    if name in PRESETS:
        cls: type[GuidanceMethod] = NDTM
    elif name in METHODS:
        cls = METHODS[name]
    elif name == TRAINED:
        from .trained.model import TrainedMethod  # the trained models' code, loaded when one is asked for

        cls = TrainedMethod
    else:
        raise ParameterError(
            f"unknown method {spec!r}: use one of {', '.join(METHODS)}, {TRAINED} (a trained model) or an NDTM "
            f"preset ({', '.join(sorted(PRESETS))})",
            "method",
        )
    check_keys(overrides, [f.name for f in fields(cls)], f"method {name!r}")  # type: ignore[arg-type]
    for k in _TUPLES:
        if isinstance(overrides.get(k), list):
            overrides[k] = tuple(overrides[k])
    try:
        return NDTM.preset(name, **overrides) if name in PRESETS else cls(**overrides)
    except FiberscopeError:  # ours already say what is wrong (a bound, a model not trained yet)
        raise
    except (TypeError, ValueError) as e:
        raise ParameterError(f"method {name!r}: {e}"[:400], "method") from None
