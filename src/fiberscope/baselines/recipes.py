"""Moved to :mod:`fiberscope.trained.recipes` (kept until fiberscope 0.2, with a ``DeprecationWarning``)."""

from __future__ import annotations

from .._deprecated import moved

__getattr__ = moved(
    __name__,
    {
        "LatentPairs": "fiberscope.trained.recipes:LatentPairs",
        "RECIPES": "fiberscope.trained.recipes:RECIPES",
        "TRAIN_ORDER": "fiberscope.trained.recipes:TRAIN_ORDER",
        "build_pairs": "fiberscope.trained.conditional_training:build_pairs",
        "evaluate_conditional": "fiberscope.trained.conditional_training:evaluate_conditional",
        "evaluate_featinv": "fiberscope.trained.featinv_training:evaluate_featinv",
        "evaluate_svae": "fiberscope.trained.svae_training:evaluate_svae",
        "fit_autoencoder": "fiberscope.trained.recipes:fit_autoencoder",
        "fit_conditional": "fiberscope.trained.recipes:fit_conditional",
        "fit_featinv": "fiberscope.trained.recipes:fit_featinv",
        "fit_svae": "fiberscope.trained.recipes:fit_svae",
        "resolve_recipe": "fiberscope.trained.recipes:resolve_recipe",
        "train": "fiberscope.trained.recipes:train",
        "train_all": "fiberscope.trained.recipes:train_all",
    },
)
