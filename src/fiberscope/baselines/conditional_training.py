"""Moved to :mod:`fiberscope.trained.conditional_training` (kept until fiberscope 0.2, with a warning)."""

from __future__ import annotations

from .._deprecated import moved

__getattr__ = moved(
    __name__,
    {
        "LatentPairs": "fiberscope.trained.conditional_training:LatentPairs",
        "build_pairs": "fiberscope.trained.conditional_training:build_pairs",
        "cached_pairs": "fiberscope.trained.conditional_training:cached_pairs",
        "evaluate_conditional": "fiberscope.trained.conditional_training:evaluate_conditional",
        "fit_autoencoder": "fiberscope.trained.conditional_training:fit_autoencoder",
        "fit_conditional": "fiberscope.trained.conditional_training:fit_conditional",
        "train_conditional": "fiberscope.trained.conditional_training:train_conditional",
    },
)
