"""Training: one loop, one checkpoint format and the objectives and data helpers of every recipe.

The zoo's recipes (:mod:`fiberscope.zoo.recipes`: what to train for each built-in model) and the
trained models (:mod:`fiberscope.trained.recipes`) both train through :func:`run_training`:
AdamW with a warm-up + cosine learning rate (cool-downs and warm restarts extend a finished
schedule reproducibly), an EMA copy of the weights, and a resumable :class:`Checkpoint`
(safetensors + JSON, no pickle) every few hundred steps.

* :mod:`~fiberscope.training.loop`: :class:`TrainConfig`, :func:`run_training`, :func:`lr_at`, :func:`ema_update`;
* :mod:`~fiberscope.training.checkpoint`: :class:`Checkpoint`, :func:`save_safetensors`;
* :mod:`~fiberscope.training.objectives`: diffusion (ε, min-SNR), rectified-flow and VAE losses;
* :mod:`~fiberscope.training.data`: data sets as tensors, augmentations, batched evaluation.

Example:
    >>> from fiberscope.training import TrainConfig, lr_at
    >>> cfg = TrainConfig(steps=1000, lr=1e-3, warmup=100)
    >>> lr_at(49, cfg), lr_at(99, cfg)
    (0.0005, 0.001)
"""

from .checkpoint import Checkpoint, save_safetensors
from .loop import TrainConfig, batches, ema_update, hardware_string, loss_record, lr_at, run_training
from .objectives import Loss, diffusion_eps_loss, flow_velocity_loss, vae_loss, with_hflip

__all__ = [
    "Checkpoint",
    "Loss",
    "TrainConfig",
    "batches",
    "diffusion_eps_loss",
    "ema_update",
    "flow_velocity_loss",
    "hardware_string",
    "loss_record",
    "lr_at",
    "run_training",
    "save_safetensors",
    "vae_loss",
    "with_hflip",
]
