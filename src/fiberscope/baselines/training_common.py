"""Moved to :mod:`fiberscope.trained.training_common` (kept until fiberscope 0.2, with a ``DeprecationWarning``)."""

from __future__ import annotations

from .._deprecated import moved

__getattr__ = moved(
    __name__,
    {
        "Log": "fiberscope.trained.training_common:Log",
        "claim_workdir": "fiberscope.trained.training_common:claim_workdir",
        "command_for": "fiberscope.trained.training_common:command_for",
        "features": "fiberscope.trained.training_common:features",
        "load_recipe_subject": "fiberscope.trained.training_common:load_recipe_subject",
        "recipe_hash": "fiberscope.trained.training_common:recipe_hash",
        "subject_record": "fiberscope.trained.training_common:subject_record",
        "write_model": "fiberscope.trained.training_common:write_model",
    },
)
