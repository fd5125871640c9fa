"""Moved to :mod:`fiberscope.trained.featinv_training` (kept until fiberscope 0.2, with a ``DeprecationWarning``)."""

from __future__ import annotations

from .._deprecated import moved

__getattr__ = moved(
    __name__,
    {
        "evaluate_featinv": "fiberscope.trained.featinv_training:evaluate_featinv",
        "fit_featinv": "fiberscope.trained.featinv_training:fit_featinv",
        "train_featinv": "fiberscope.trained.featinv_training:train_featinv",
    },
)
