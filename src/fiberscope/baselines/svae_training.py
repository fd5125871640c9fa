"""Moved to :mod:`fiberscope.trained.svae_training` (kept until fiberscope 0.2, with a ``DeprecationWarning``)."""

from __future__ import annotations

from .._deprecated import moved

__getattr__ = moved(
    __name__,
    {
        "evaluate_svae": "fiberscope.trained.svae_training:evaluate_svae",
        "fit_svae": "fiberscope.trained.svae_training:fit_svae",
        "train_svae": "fiberscope.trained.svae_training:train_svae",
    },
)
