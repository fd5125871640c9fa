"""Moved to :mod:`fiberscope.trained.svae` (kept until fiberscope 0.2, with a ``DeprecationWarning``)."""

from __future__ import annotations

from .._deprecated import moved

__getattr__ = moved(
    __name__,
    {
        "SVAEHead": "fiberscope.trained.svae:SVAEHead",
        "SupervisedVAE": "fiberscope.trained.svae:SupervisedVAE",
    },
)
