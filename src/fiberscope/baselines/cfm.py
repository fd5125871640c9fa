"""Moved to :mod:`fiberscope.trained.cfm` (kept until fiberscope 0.2, with a ``DeprecationWarning``)."""

from __future__ import annotations

from .._deprecated import moved

__getattr__ = moved(
    __name__,
    {
        "ConditionalFlowMatching": "fiberscope.trained.cfm:ConditionalFlowMatching",
        "ConditionalVelocity": "fiberscope.trained.cfm:ConditionalVelocity",
        "SOLVERS": "fiberscope.trained.cfm:SOLVERS",
    },
)
