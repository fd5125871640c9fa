"""Moved: the training loop and checkpoints live in :mod:`fiberscope.training` (the trained models use them too).

``from fiberscope.zoo.training import TrainConfig`` keeps working until fiberscope 0.2, with a
``DeprecationWarning``; import from :mod:`fiberscope.training` instead.
"""

from __future__ import annotations

from .._deprecated import moved

__getattr__ = moved(
    __name__,
    {
        name: f"fiberscope.training:{name}"
        for name in (
            "Checkpoint",
            "TrainConfig",
            "batches",
            "diffusion_eps_loss",
            "ema_update",
            "flow_velocity_loss",
            "hardware_string",
            "lr_at",
            "run_training",
            "save_safetensors",
        )
    },
)
