"""Moved to :mod:`fiberscope.trained.common` (kept until fiberscope 0.2, with a ``DeprecationWarning``)."""

from __future__ import annotations

from .._deprecated import moved

__getattr__ = moved(
    __name__,
    {
        "BaselineNotTrainedError": "fiberscope.errors:NotTrainedError",
        "Codec": "fiberscope.trained.common:Codec",
        "baselines_root": "fiberscope.trained.common:trained_root",
        "file_digest": "fiberscope.trained.common:file_digest",
        "model_dir": "fiberscope.trained.common:model_dir",
        "read_json": "fiberscope.trained.common:read_json",
        "rms_fiber_loss": "fiberscope.trained.common:rms_fiber_loss",
    },
)
