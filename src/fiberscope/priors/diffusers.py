"""Priors from Hugging Face diffusers: a model plus the *schedule* of its scheduler, never its ``step()``.

:class:`DiffusersPrior` wraps a ``UNet2DModel`` (or any diffusers model whose forward returns
``.sample``) with the schedule and parameterisation read from the scheduler config:

* DDPM/DDIM-family configs (``alphas_cumprod`` from ``beta_schedule``/``trained_betas``) → VP,
  with ``prediction_type`` ε / ``sample`` / ``v_prediction`` and ``variance_type`` ``learned_range``
  when the UNet has twice the input channels;
* ``FlowMatchEulerDiscreteScheduler`` configs → rectified flow (velocity), with ``shift``.

:func:`load_diffusers_prior` reads a directory written by ``DDPMPipeline.save_pretrained`` (the
layout of ``google/ddpm-cifar10-32``) or a hub id already in the local cache.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .base import Prior, _check_param
from .schedule import FlowSchedule, Schedule, VPSchedule

__all__ = ["DiffusersPrior", "load_diffusers_prior", "schedule_from_scheduler_config"]

_PRED = {"epsilon": "eps", "sample": "x0", "v_prediction": "v", "flow_prediction": "velocity"}


def schedule_from_scheduler_config(cfg: dict[str, Any]) -> tuple[Schedule, str | None]:
    """Build the schedule (and, if the config says, the parameterisation) from a scheduler config."""
    cls = cfg.get("_class_name", "")
    if "FlowMatch" in cls:
        return FlowSchedule(cfg.get("num_train_timesteps", 1000), cfg.get("shift", 1.0)), "velocity"
    from diffusers import DDPMScheduler

    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
    kw = {k: cfg[k] for k in keys if k in cfg and cfg[k] is not None}
    sched = DDPMScheduler(**kw)
    return VPSchedule(sched.alphas_cumprod), _PRED.get(cfg.get("prediction_type", "epsilon"), "eps")


class DiffusersPrior(Prior):
    model: torch.nn.Module
    """A diffusers denoiser as a fiberscope prior.

    Args:
        model: e.g. ``UNet2DModel``; called as ``model(x_t, t).sample``.
        scheduler_config: the scheduler's config dict (``scheduler.config``).
        parameterization: override what the config says (``eps``, ``x0``, ``v``, ``velocity``).
        data_range: range of the images (diffusers pixel models use [-1, 1]).
        dtype: run the network in this dtype (guidance arithmetic stays in float32).
        gradient_checkpointing: trade compute for memory when backpropagating through the model.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        scheduler_config: dict[str, Any],
        *,
        parameterization: str | None = None,
        data_range: tuple[float, float] = (-1.0, 1.0),
        dtype: torch.dtype | None = None,
        gradient_checkpointing: bool = False,
        name: str = "diffusers",
    ):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.schedule, param = schedule_from_scheduler_config(dict(scheduler_config))
        self.parameterization = parameterization or param or "eps"
        _check_param(self.parameterization, self.schedule)
        cfg = getattr(model, "config", {})
        in_ch = int(cfg.get("in_channels", 0) or 0)
        out_ch = int(cfg.get("out_channels", in_ch) or in_ch)
        size = cfg.get("sample_size", None)
        self.learned_variance = bool(in_ch and out_ch == 2 * in_ch) or (
            scheduler_config.get("variance_type") in ("learned", "learned_range") and out_ch == 2 * in_ch
        )
        if size is not None:
            hw = (size, size) if isinstance(size, int) else tuple(size)
            self.data_shape = (in_ch, *hw)
        self.data_range = data_range
        self.clip_range = data_range
        self.scheduler_config = dict(scheduler_config)
        self.name = name
        if dtype is not None:
            self.model.to(dtype)
            self.compute_dtype = dtype
        if gradient_checkpointing:
            if not hasattr(self.model, "enable_gradient_checkpointing"):
                raise ValueError(f"{type(model).__name__} does not support gradient checkpointing")
            self.model.enable_gradient_checkpointing()  # type: ignore[operator]

    def network(self, x_t: torch.Tensor, t_model: torch.Tensor) -> torch.Tensor:
        out = self.model(x_t, t_model.to(x_t.dtype) if self.schedule.kind == "flow" else t_model.round().long())
        return out.sample if hasattr(out, "sample") else out[0]

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["scheduler_class"] = self.scheduler_config.get("_class_name")
        d["parameters"] = sum(p.numel() for p in self.model.parameters())
        return d


def _read_json(p: Path) -> dict[str, Any]:
    return json.loads(p.read_text())


def load_diffusers_prior(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    gradient_checkpointing: bool = False,
    name: str | None = None,
) -> DiffusersPrior:
    """Load a pixel prior from a diffusers pipeline directory (``DDPMPipeline.save_pretrained``).

    The directory holds ``unet/`` (config + safetensors weights) and ``scheduler/scheduler_config.json``.
    """
    from diffusers import UNet2DModel

    root = Path(path)
    unet_dir = root / "unet"
    sched_file = root / "scheduler" / "scheduler_config.json"
    if not unet_dir.is_dir() or not sched_file.is_file():
        raise ValueError(
            f"{root} is not a diffusers pixel-pipeline directory: expected unet/ and scheduler/scheduler_config.json "
            "(the layout DDPMPipeline.save_pretrained writes)"
        )
    if not any(unet_dir.glob("*.safetensors")):
        raise ValueError(
            f"{unet_dir} has no .safetensors weights; fiberscope does not unpickle .bin files. Convert with "
            "UNet2DModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True) in a trusted environment"
        )
    unet = UNet2DModel.from_pretrained(str(unet_dir), use_safetensors=True, low_cpu_mem_usage=False)
    prior = DiffusersPrior(
        unet, _read_json(sched_file), dtype=dtype, gradient_checkpointing=gradient_checkpointing, name=name or str(path)
    )
    if device is not None:
        prior.to(device)
    return prior
