"""Training recipes of the built-in zoo, one function per entry: ``fiberscope zoo train NAME``.

Each recipe trains (resumably, see :mod:`fiberscope.zoo.training`) in a work directory and then
exports the shipped files into the zoo's weights directory: diffusers layouts for the pixel priors
(so they load through the same code path as ``google/ddpm-cifar10-32``), safetensors + JSON config
for the rest. Settings live in :data:`RECIPES`; command-line overrides go through ``overrides``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..utils import atomic_write_json
from .training import (
    TrainConfig,
    diffusion_eps_loss,
    flow_velocity_loss,
    run_training,
    save_safetensors,
)

__all__ = ["RECIPES", "WEIGHTS_DIR", "train"]

WEIGHTS_DIR = Path(__file__).parent / "weights"

UNET_28 = dict(
    sample_size=28,
    block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    layers_per_block=1,
    norm_num_groups=8,
    attention_head_dim=32,
)

RECIPES: dict[str, dict[str, Any]] = {
    "mnist-ddpm": {
        "kind": "pixel-ddpm",
        "dataset": "mnist",
        "channels": 1,
        "unet": UNET_28,
        "train": TrainConfig(steps=16_000, batch_size=128, lr=5e-4, warmup=300, min_lr_ratio=1.0, ema=0.9995, seed=0),
    },
    "fashion-ddpm": {
        "kind": "pixel-ddpm",
        "dataset": "fashion-mnist",
        "channels": 1,
        "unet": UNET_28,
        "hflip": True,
        "train": TrainConfig(steps=16_000, batch_size=128, lr=5e-4, warmup=300, min_lr_ratio=1.0, ema=0.9995, seed=0),
    },
    "mnist-flow": {
        "kind": "pixel-flow",
        "dataset": "mnist",
        "channels": 1,
        "unet": UNET_28,
        "train": TrainConfig(steps=16_000, batch_size=128, lr=5e-4, warmup=300, min_lr_ratio=1.0, ema=0.9995, seed=0),
    },
}


def _dataset_tensor(name: str, split: str = "train", root: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    from ..data.mnist import load_dataset

    images, labels = load_dataset(name, split, root)
    x = torch.from_numpy(images).float().div(127.5).sub(1.0).unsqueeze(1)
    return x, torch.from_numpy(labels)


def _with_hflip(loss: Callable, enabled: bool) -> Callable:
    if not enabled:
        return loss

    def wrapped(model, x, g):
        flip = torch.rand(x.shape[0], generator=g) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return loss(model, x, g)

    return wrapped


class _UNetEps(torch.nn.Module):
    """``UNet2DModel`` with a plain tensor output (what the training loss expects)."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample


def train_pixel_prior(
    name: str,
    workdir: Path,
    cfg: TrainConfig,
    recipe: dict[str, Any],
    data_root: str | None,
    max_minutes: float | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    from diffusers import DDPMPipeline, DDPMScheduler, FlowMatchEulerDiscreteScheduler, UNet2DModel

    torch.manual_seed(cfg.seed)
    c = recipe["channels"]
    unet = UNet2DModel(in_channels=c, out_channels=c, **recipe["unet"])
    model = _UNetEps(unet)
    x, _ = _dataset_tensor(recipe["dataset"], "train", data_root)
    if recipe["kind"] == "pixel-ddpm":
        sched: Any = DDPMScheduler(
            num_train_timesteps=1000,
            beta_schedule="linear",
            beta_start=1e-4,
            beta_end=0.02,
            prediction_type="epsilon",
            variance_type="fixed_small",
            clip_sample=True,
        )
        loss = diffusion_eps_loss(sched.alphas_cumprod.float(), snr_gamma=5.0)
    else:
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
        loss = flow_velocity_loss(1000)
    ema, meta = run_training(
        workdir, model, _with_hflip(loss, recipe.get("hflip", False)), x, cfg, max_minutes=max_minutes, log=log
    )
    if meta["step"] >= cfg.steps:
        out = WEIGHTS_DIR / name
        DDPMPipeline(unet=ema.unet, scheduler=sched).save_pretrained(str(out), safe_serialization=True)
    return meta


def train(
    name: str,
    *,
    workdir: str | os.PathLike[str] | None = None,
    data_root: str | None = None,
    max_minutes: float | None = None,
    overrides: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train (or continue training) zoo entry ``name`` and export its weights when finished.

    Args:
        name: a key of :data:`RECIPES`, e.g. ``"mnist-ddpm"``.
        workdir: where checkpoints go (default ``~/.cache/fiberscope/train/NAME``).
        data_root: directory with the training split's idx files (default: searched).
        max_minutes: stop after this much wall time; a later call resumes.
        overrides: TrainConfig fields to change (e.g. ``{"steps": 200}`` for a smoke test).
    """
    if name not in RECIPES:
        raise ValueError(f"no training recipe named {name!r}; known: {sorted(RECIPES)}")
    recipe = RECIPES[name]
    cfg: TrainConfig = replace(recipe["train"], **(overrides or {}))
    wd = Path(workdir) if workdir else Path.home() / ".cache" / "fiberscope" / "train" / name
    t0 = time.time()
    meta = _TRAINERS[recipe["kind"]](name, wd, cfg, recipe, data_root, max_minutes, log)
    meta["session_seconds"] = time.time() - t0
    atomic_write_json(wd / "summary.json", {k: v for k, v in meta.items() if k != "optimizer"})
    return meta


_TRAINERS: dict[str, Callable[..., dict[str, Any]]] = {
    "pixel-ddpm": train_pixel_prior,
    "pixel-flow": train_pixel_prior,
}

# silence "imported but unused" for helpers used by later recipes
_ = (F, json, save_safetensors)
