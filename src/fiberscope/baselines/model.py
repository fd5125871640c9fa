"""Moved to :mod:`fiberscope.trained.model` (kept until fiberscope 0.2, with a ``DeprecationWarning``)."""

from __future__ import annotations

from .._deprecated import moved

__getattr__ = moved(
    __name__,
    {
        "TrainedBaseline": "fiberscope.trained.model:TrainedMethod",
        "TrainedModel": "fiberscope.trained.model:TrainedModel",
        "load_baseline": "fiberscope.trained.model:load_trained",
        "load_baseline_subject": "fiberscope.trained.model:load_trained_subject",
    },
)
