"""Training of the FeatInv-style trained model: a diffusion UNet conditioned on a subject's feature map.

:func:`fit_featinv` fine-tunes a pretrained unconditional UNet (``builtin:mnist-ddpm``; or trains
one from scratch, :data:`~fiberscope.models.UNET_28`) to denoise given φ(x) (conditions computed per
batch, dropped with probability ``p_uncond`` for classifier-free guidance), then measures the held-out
fiber loss of one sample per query (:func:`evaluate_featinv`).

Example:
    >>> from fiberscope.trained.recipes import RECIPES
    >>> RECIPES["featinv-mnist"]["init"], RECIPES["featinv-mnist"]["layer"]
    ('builtin:mnist-ddpm', 'features')
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import NotTrainedError
from ..guidance.base import SampleNoise
from ..losses import sq_l2
from ..subjects.base import Subject
from ..training import TrainConfig, run_training
from ..training.data import image_tensors
from .common import rms_fiber_loss
from .featinv import FeatInvUNet
from .training_common import (
    Log,
    claim_workdir,
    command_for,
    load_recipe_subject,
    recipe_hash,
    subject_record,
    write_model,
)

__all__ = ["evaluate_featinv", "fit_featinv", "train_featinv"]


def _feat_batches(subject: Subject, x: torch.Tensor) -> torch.Tensor:
    """φ(x) of one batch, float32, without gradients (the condition of the UNet)."""
    with torch.no_grad():
        return subject(x, (-1.0, 1.0)).float()


def fit_featinv(
    name: str,
    recipe: dict[str, Any],
    cfg: TrainConfig,
    out: Path,
    subject: Subject,
    images: torch.Tensor,
    eval_images: torch.Tensor,
    *,
    init_unet: nn.Module | None = None,
    stages: dict[str, float] | None = None,
    max_minutes: float | None = None,
    log: Log = print,
    command: str | None = None,
) -> dict[str, Any]:
    """Train the feature-conditioned UNet on ``images`` with conditions φ(x) computed per batch.

    Args:
        init_unet: a pretrained unconditional ``UNet2DModel`` to start from (its settings replace
            ``recipe["unet"]``); None trains from scratch.
    """
    h = recipe_hash(recipe, cfg)
    wd = out / "train"
    claim_workdir(wd, h)
    torch.manual_seed(cfg.seed)
    feat_shape = tuple(_feat_batches(subject, images[:1]).shape[1:])
    unet_cfg: dict[str, Any] = dict(getattr(init_unet, "config")) if init_unet is not None else dict(recipe["unet"])  # noqa: B009
    kwargs = {
        "unet_config": {k: v for k, v in unet_cfg.items() if not str(k).startswith("_")},
        "feat_shape": list(feat_shape),
        "image_shape": list(images.shape[1:]),
        "hint_channels": int(recipe["hint_channels"]),
        "hint_width": int(recipe["hint_width"]),
    }
    net = FeatInvUNet(**kwargs)  # type: ignore[arg-type]
    kwargs["unet_config"] = net.unet_config()
    if init_unet is not None:
        net.load_unconditional(init_unet)
    p_uncond = float(recipe.get("p_uncond", 0.15))
    if not 0 <= p_uncond < 1:
        raise ValueError(f"p_uncond must be in [0, 1), got {p_uncond}")

    def loss(m: Any, batch: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return m.loss(batch, _feat_batches(subject, batch), g, p_uncond)

    ema, meta = run_training(wd, net, loss, images, cfg, max_minutes=max_minutes, log=log)
    meta["finished"] = False
    if meta["step"] < cfg.steps:
        return meta
    t0 = time.perf_counter()
    samp = dict(recipe.get("sampling", {}))
    ev = evaluate_featinv(ema, subject, eval_images, steps=min(25, int(samp.get("steps", 50))), sampling=samp)
    log(f"{name}: held-out fiber loss sq_l2 {ev['fiber_sq_l2']:.4g} (rms {ev['fiber_rms']:.4g})")
    stages = {**(stages or {}), "evaluate": time.perf_counter() - t0}
    config = {
        "condition": "features",
        "output": "pixels",
        "cond_shape": list(feat_shape),
        "image_shape": list(images.shape[1:]),
        "subject": subject_record(subject, recipe.get("subject"), recipe.get("layer")),
        "init": recipe.get("init"),
        "sampling": samp,
    }
    rec = write_model(
        name, recipe, cfg, out, ema, "FeatInvUNet", kwargs, config, meta, stages, ev, command or command_for(name)
    )
    return {**meta, "finished": True, "record": rec}


def evaluate_featinv(
    net: nn.Module, subject: Subject, images: torch.Tensor, steps: int = 25, sampling: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Held-out fiber loss (squared L2 and RMS) of one FeatInv sample per query."""
    s = dict(sampling or {})
    c = _feat_batches(subject, images)
    x = net.sample(  # type: ignore[operator]
        c, SampleNoise(range(len(images))), steps, float(s.get("guidance_scale", 1.0)), s.get("sampler", "ddim"),
        float(s.get("eta", 0.0)),
    )  # fmt: skip
    f = _feat_batches(subject, x)
    return {
        "queries": len(images),
        "steps": steps,
        "fiber_sq_l2": float(sq_l2(f, c).mean()),
        "fiber_rms": float(rms_fiber_loss(f, c).mean()),
    }


def _load_init_unet(init: str | None) -> nn.Module | None:
    """The unconditional ``UNet2DModel`` FeatInv starts from (``builtin:NAME`` or a directory), None for scratch."""
    if init in (None, "none", "None"):
        return None
    from diffusers import UNet2DModel

    assert init is not None
    if init.startswith("builtin:"):
        from ..zoo.registry import weights_dir

        d = weights_dir(init.removeprefix("builtin:")) / "unet"
    else:
        d = Path(init).expanduser()
        d = d / "unet" if (d / "unet").is_dir() else d
    if not (d / "config.json").exists():
        raise NotTrainedError(
            f"featinv starts from the pretrained UNet {init}, which has no weights in {d}; train it first "
            "(`fiberscope zoo train mnist-ddpm`) or train from scratch with `--set init=none`"
        )
    # a ~1 M-parameter UNet: plain loading, and no "install accelerate" warning when it is absent
    return UNet2DModel.from_pretrained(str(d), low_cpu_mem_usage=False).eval()


def train_featinv(
    name: str,
    recipe: dict[str, Any],
    cfg: TrainConfig,
    out: Path,
    root: Path,
    data_root: str | None,
    max_minutes: float | None,
    log: Log,
    command: str,
) -> dict[str, Any]:
    """A ``featinv`` recipe: the pretrained UNet it starts from, φ, the data, then :func:`fit_featinv`."""
    init = _load_init_unet(recipe.get("init"))
    subject = load_recipe_subject(recipe)
    t0 = time.perf_counter()
    x, _ = image_tensors(recipe["dataset"], "train", data_root)
    xt, _ = image_tensors(recipe["dataset"], "test", data_root)
    stages = {"data": time.perf_counter() - t0}
    return fit_featinv(
        name,
        recipe,
        cfg,
        out,
        subject,
        x,
        xt[: recipe.get("eval_queries", 64)],
        init_unet=init,
        stages=stages,
        max_minutes=max_minutes,
        log=log,
        command=command,
    )
