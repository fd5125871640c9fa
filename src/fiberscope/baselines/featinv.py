"""Moved to :mod:`fiberscope.trained.featinv` (kept until fiberscope 0.2, with a ``DeprecationWarning``)."""

from __future__ import annotations

from .._deprecated import moved

__getattr__ = moved(
    __name__,
    {
        "FeatInvUNet": "fiberscope.trained.featinv:FeatInvUNet",
    },
)
