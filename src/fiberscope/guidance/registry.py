"""The NDTM preset registered for a prior spec (the zoo's ``builtin:`` priors).

The method registry itself, :func:`~fiberscope.methods.method_from_spec` (a spec → a guidance method,
trained models included), moved to :mod:`fiberscope.methods` (issue 22): it must know the trained
invariance models, which sit above the guidance methods in the layers. The old names here keep
working until fiberscope 0.2, with a ``DeprecationWarning``.

Example:
    >>> from fiberscope.guidance.registry import _default_preset
    >>> _default_preset("builtin:mnist-ddpm"), _default_preset("google/ddpm-cifar10-32")
    ('builtin-mnist', None)
"""

from __future__ import annotations

from .._deprecated import moved

__all__: list[str] = []


def _default_preset(prior_name: str | None) -> str | None:
    if not prior_name or not str(prior_name).startswith("builtin:"):
        return None
    from ..zoo.registry import ZOO

    entry = ZOO.get(str(prior_name).removeprefix("builtin:"))
    return entry.preset if entry is not None else None


__getattr__ = moved(
    __name__,
    {"method_from_spec": "fiberscope.methods:method_from_spec", "method_names": "fiberscope.methods:method_names"},
)
