"""Deprecated: ``load_prior`` moved to :mod:`fiberscope.loading`, the offline-hub helpers to
:mod:`fiberscope.hub`, the loader errors to :mod:`fiberscope.errors` (every old name still works, with a
``DeprecationWarning``, until 0.2)."""

from __future__ import annotations

from .._deprecated import moved

__getattr__ = moved(
    __name__,
    {
        "load_prior": "fiberscope.loading:load_prior",
        "CHECKPOINT_SUFFIXES": "fiberscope.loading:CHECKPOINT_SUFFIXES",
        "PICKLE_SUFFIXES": "fiberscope.hub:PICKLE_SUFFIXES",
        "check_weights": "fiberscope.hub:check_weights",
        "offline_hub": "fiberscope.hub:offline_hub",
        "resolve_hub_dir": "fiberscope.hub:resolve_hub_dir",
        "CheckpointError": "fiberscope.errors:CheckpointError",
        "ModelNotAvailableError": "fiberscope.errors:ModelNotAvailableError",
        "ParameterError": "fiberscope.errors:ParameterError",
        "PickleRefusedError": "fiberscope.errors:PickleRefusedError",
        "WeightsError": "fiberscope.errors:WeightsError",
    },
)
