"""Training recipes of the built-in zoo, one function per entry: ``fiberscope zoo train NAME``.

Each recipe trains (resumably, see :mod:`fiberscope.zoo.training`) in a work directory and then
exports the shipped files into the zoo's weights directory: diffusers layouts for the pixel priors
(so they load through the same code path as ``google/ddpm-cifar10-32``), safetensors + JSON config
for the rest. Settings live in :data:`RECIPES`; command-line overrides go through ``overrides``.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..utils import atomic_write_json
from .training import (
    Checkpoint,
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
        "train": TrainConfig(steps=9_000, batch_size=128, lr=5e-4, warmup=300, min_lr_ratio=1.0, ema=0.9995, seed=0),
    },
    "fashion-ddpm": {
        "kind": "pixel-ddpm",
        "dataset": "fashion-mnist",
        "channels": 1,
        "unet": UNET_28,
        "hflip": True,
        # Fine-tuned from the finished mnist-ddpm weights: denoising transfers, and a 2-core CPU
        # cannot afford to learn it from scratch a second time.
        "init_from": "mnist-ddpm",
        # Constant rate for 5,000 steps, then a linear cool-down to zero (added at step 4,750, so
        # the shipped run is exactly what this recipe does from scratch); extended at 7,000, 10,000 and
        # 15,000 by warm restarts at a lower rate, each with its own cool-down (each added when it began).
        "train": TrainConfig(
            steps=21_000,
            batch_size=128,
            lr=5e-4,
            warmup=300,
            min_lr_ratio=1.0,
            cooldown=2_000,
            restarts=(
                (7_000, {"lr": 3e-4, "warmup": 200, "cooldown": 1_500}),
                (10_000, {"lr": 3e-4, "warmup": 200, "cooldown": 2_000}),
                (15_000, {"lr": 3e-4, "warmup": 200, "cooldown": 2_500}),
            ),
            ema=0.9995,
            seed=0,
        ),
        # Stage 2 (added after stage 1's 21,000 steps): training continued from stage 1's EMA weights
        # with a fresh optimiser and new data order (seed 1): a constant rate, then a long linear
        # cool-down. Stage 1's optimiser state lived only in the checkpoint of the machine it ran on,
        # so a warm restart could not extend it; a second stage from its shipped weights can, and
        # `fiberscope zoo train fashion-ddpm` from scratch runs both (see `train_pixel_prior`).
        # (Planned as 22,000 steps with an 11,000-step cool-down; revised at step 8,500, while the
        # rate was still constant, to fit the CPU time left, so a run from scratch is the same.)
        "continue": TrainConfig(
            steps=14_000,
            batch_size=128,
            lr=3e-4,
            warmup=200,
            min_lr_ratio=1.0,
            cooldown=5_000,
            ema=0.9995,
            seed=1,
        ),
    },
    "mnist-cnn": {
        "kind": "classifier",
        "dataset": "mnist",
        "train": TrainConfig(steps=2_400, batch_size=128, lr=2e-3, warmup=100, weight_decay=1e-4, ema=0.998),
    },
    "fashion-cnn": {
        "kind": "classifier",
        "dataset": "fashion-mnist",
        "hflip": True,
        "note": (
            "the shipped weights' first 3,250 steps followed a 6,000-step cosine schedule, cut to 3,500 "
            "steps on time; this recipe (3,500 steps) reproduces them to within training noise"
        ),
        "train": TrainConfig(steps=3_500, batch_size=128, lr=2e-3, warmup=100, weight_decay=1e-4, ema=0.998),
    },
    "colorblind-mnist": {
        "kind": "colorblind",
        "dataset": "mnist",
        "dim": 48,
        "train": TrainConfig(steps=4_000, batch_size=128, lr=2e-3, warmup=100, ema=0.998),
    },
    "colormnist-latent": {
        "kind": "colormnist-latent",
        "dataset": "mnist",
        "latent_dim": 64,
        "beta_kl": 0.05,
        "colourings": 2,
        "denoiser": {"width": 512, "blocks": 6, "temb": 64},
        "train": TrainConfig(seed=0),
        "vae_train": {"steps": 6_000, "batch_size": 128, "lr": 1e-3, "warmup": 200, "ema": 0.999},
        # Stage 3 (added after 48,000 denoiser steps): the decoder retrained on noise-perturbed latents.
        # Constant 3e-4, then linear to zero over the last 1,500 steps.
        "decoder_finetune": {
            "steps": 6_000,
            "batch_size": 128,
            "lr": 3e-4,
            "warmup": 100,
            "min_lr_ratio": 1.0,
            "cooldown": 1_500,
            "ema": 0.995,
            "latent_noise": 0.2,
        },
        # Cosine from 1e-3 over 12,000 steps, then warm restarts at 3e-4 (added at 12,000 and 24,000).
        "denoiser_train": {
            "steps": 48_000,
            "batch_size": 512,
            "lr": 1e-3,
            "warmup": 200,
            "ema": 0.9995,
            "min_lr_ratio": 0.05,
            "restarts": ((12_000, {"lr": 3e-4, "warmup": 200}), (24_000, {"lr": 3e-4, "warmup": 200})),
        },
    },
    "mnist-flow": {
        "kind": "pixel-flow",
        "dataset": "mnist",
        "channels": 1,
        "unet": UNET_28,
        # Constant rate for 6,000 steps, then a linear cool-down to zero at 9,000 (added at step 5,500);
        # extended at 9,000 by a warm restart at a lower rate with its own cool-down (added at 9,000),
        # and again at 13,500 (added at 13,500).
        "train": TrainConfig(
            steps=19_500,
            batch_size=128,
            lr=5e-4,
            warmup=300,
            min_lr_ratio=1.0,
            cooldown=3_000,
            restarts=(
                (9_000, {"lr": 3e-4, "warmup": 200, "cooldown": 2_500}),
                (13_500, {"lr": 3e-4, "warmup": 200, "cooldown": 3_000}),
            ),
            ema=0.9995,
            seed=0,
        ),
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
    """A pixel DDPM or rectified flow; with a ``continue`` stage in the recipe, trained in two stages.

    Stage 1 trains ``recipe["train"]`` in ``workdir`` (from ``init_from``'s weights when given). A
    ``continue`` stage then trains on from stage 1's EMA weights with a fresh optimiser, in
    ``workdir/continue``. Stage 1's result is kept as a zoo-style directory in ``workdir/stage1``
    (weights + ``training.json``); when it is there, stage 2 starts from it without stage 1's
    checkpoint, so a stage-1 result can be carried to another machine by copying that directory.
    """
    torch.manual_seed(cfg.seed)
    unet, sched = _pixel_parts(recipe)
    model = _UNetEps(unet)
    x, _ = _dataset_tensor(recipe["dataset"], "train", data_root)
    if recipe["kind"] == "pixel-ddpm":
        loss = diffusion_eps_loss(sched.alphas_cumprod.float(), snr_gamma=5.0)
    else:
        loss = flow_velocity_loss(1000)
    loss = _with_hflip(loss, recipe.get("hflip", False))
    stage2 = recipe.get("continue")
    if stage2 is None:
        if not Checkpoint(workdir).exists():
            _init_from(unet, recipe, name, log)
        ema, meta = run_training(workdir, model, loss, x, cfg, max_minutes=max_minutes, log=log)
        if meta["step"] >= cfg.steps:
            _export_pixel(ema.unet, sched, recipe["_out"])
        return meta
    cfg2 = replace(stage2, **recipe.get("_overrides", {}))
    wd2, stage1_dir = workdir / "continue", workdir / "stage1"
    if not Checkpoint(wd2).exists():
        if not (stage1_dir / PIXEL_WEIGHTS).exists():
            if not Checkpoint(workdir).exists():
                _init_from(unet, recipe, name, log)
            ema1, meta1 = run_training(workdir, model, loss, x, cfg, max_minutes=max_minutes, log=log)
            if meta1["step"] < cfg.steps:
                return meta1
            _export_pixel(ema1.unet, sched, stage1_dir)
            _write_training_record(name, dict(recipe), meta1, stage1_dir, planned=cfg.steps)
        from safetensors.torch import load_file

        unet.load_state_dict(load_file(str(stage1_dir / PIXEL_WEIGHTS)))
        log(f"stage 2: starting from stage 1's EMA weights in {stage1_dir}")
    ema, meta = run_training(wd2, model, loss, x, cfg2, max_minutes=max_minutes, log=log)
    meta["stages"] = _stages(stage1_dir, cfg, meta)
    if meta["step"] >= cfg2.steps:
        _export_pixel(ema.unet, sched, recipe["_out"])
    return meta


PIXEL_WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"


def _init_from(unet: torch.nn.Module, recipe: dict[str, Any], name: str, log: Callable[[str], None]) -> None:
    if not recipe.get("init_from"):
        return
    from safetensors.torch import load_file

    src = WEIGHTS_DIR / recipe["init_from"] / PIXEL_WEIGHTS
    if not src.exists():
        raise FileNotFoundError(f"{name} starts from {recipe['init_from']}'s weights; train that first ({src})")
    unet.load_state_dict(load_file(str(src)))
    log(f"initialised from {recipe['init_from']}")


def _stages(stage1_dir: Path, cfg: TrainConfig, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """What a two-stage training record says of its stages (``meta``: the ``continue`` stage's state).

    Stage 1: its steps, wall time, hardware and weights' digest, from ``stage1_dir``.
    """
    from ..baselines.common import file_digest

    rec_path = stage1_dir / "training.json"
    rec = json.loads(rec_path.read_text()) if rec_path.exists() else {}
    stage2 = {"name": "continue", "steps": meta["step"], "wall_seconds": meta["wall_seconds"], "config": meta["config"]}
    return [
        {
            "name": "train",
            "steps": rec.get("steps"),
            "wall_seconds": rec.get("total_wall_seconds", rec.get("wall_seconds", 0.0)),
            "hardware": rec.get("hardware", []),
            "final_loss": rec.get("final_loss"),
            "weights_digest": file_digest(stage1_dir / PIXEL_WEIGHTS),  # first 16 hex digits of its SHA-256
            "config": rec.get("train_config", asdict(cfg)),
        },
        stage2,
    ]


def _pixel_parts(recipe: dict[str, Any]) -> tuple[torch.nn.Module, Any]:
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler, UNet2DModel

    c = recipe["channels"]
    unet = UNet2DModel(in_channels=c, out_channels=c, **recipe["unet"])
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
    else:
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    return unet, sched


def _export_pixel(unet: torch.nn.Module, sched: Any, out: Path) -> None:
    from diffusers import DDPMPipeline

    DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(str(out), safe_serialization=True)


def _workdir(name: str, workdir: str | os.PathLike[str] | None) -> Path:
    """Where the checkpoints of ``name``'s training live (default ``~/.cache/fiberscope/train/NAME``)."""
    return Path(workdir) if workdir else Path.home() / ".cache" / "fiberscope" / "train" / name


def export_checkpoint(
    name: str, workdir: str | os.PathLike[str] | None = None, out: str | os.PathLike[str] | None = None
) -> Path:
    """Export the EMA weights of a (possibly unfinished) pixel-prior training run as a zoo entry.

    Lets a long CPU training be inspected (``FIBERSCOPE_ZOO_DIR=DIR``) before it ends. With a
    ``continue`` stage under way, that stage's checkpoint is the one exported.
    """
    from safetensors.torch import load_file

    recipe = RECIPES[name]
    if not recipe["kind"].startswith("pixel-"):
        raise ValueError(f"export_checkpoint handles the pixel priors; {name!r} exports itself when trained")
    wd = _workdir(name, workdir)
    stage2 = recipe.get("continue") is not None and Checkpoint(wd / "continue").exists()
    src = wd / "continue" if stage2 else wd
    if not Checkpoint(src).exists():
        raise FileNotFoundError(
            f"no training checkpoint of {name} in {src}; start one with `fiberscope zoo train {name}`"
        )
    tensors = load_file(str(src / "state.safetensors"))
    unet, sched = _pixel_parts(recipe)
    unet.load_state_dict({k[len("ema.unet.") :]: v for k, v in tensors.items() if k.startswith("ema.unet.")})
    dest = Path(out) if out else WEIGHTS_DIR / name
    _export_pixel(unet, sched, dest)
    meta = json.loads((src / "state.json").read_text())
    meta["config"] = asdict(recipe["continue"] if stage2 else recipe["train"])
    if stage2:
        meta["stages"] = _stages(wd / "stage1", recipe["train"], meta)
    _write_training_record(name, dict(recipe), meta, dest)
    return dest


def _random_shift(x: torch.Tensor, g: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero padding in [-1, 1] units = -1)."""
    b, _, h, w = x.shape
    p = max_shift
    padded = F.pad(x, (p, p, p, p), value=-1.0)
    dx = torch.randint(0, 2 * p + 1, (b,), generator=g)
    dy = torch.randint(0, 2 * p + 1, (b,), generator=g)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int = 1000) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), bs):
            correct += int((model(x[i : i + bs]).argmax(1) == y[i : i + bs]).sum())
    return correct / len(x)


def train_classifier(
    name: str,
    workdir: Path,
    cfg: TrainConfig,
    recipe: dict[str, Any],
    data_root: str | None,
    max_minutes: float | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    from .models import SmallCNN

    torch.manual_seed(cfg.seed)
    x, y = _dataset_tensor(recipe["dataset"], "train", data_root)
    model = SmallCNN(in_channels=1, num_classes=10)
    data = torch.cat([x.flatten(1), y[:, None].float()], 1)  # labels ride along with the images
    hflip = recipe.get("hflip", False)

    def loss(m: Any, batch: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        xb = batch[:, :-1].view(-1, 1, 28, 28)
        yb = batch[:, -1].long()
        xb = _random_shift(xb, g, 2)
        if hflip:
            flip = torch.rand(xb.shape[0], generator=g) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
        return F.cross_entropy(m(xb), yb, label_smoothing=0.05)

    ema, meta = run_training(workdir, model, loss, data, cfg, max_minutes=max_minutes, log=log)
    if meta["step"] >= cfg.steps:
        xt, yt = _dataset_tensor(recipe["dataset"], "test", data_root)
        meta["test_accuracy"] = _accuracy(ema, xt, yt)
        log(f"test accuracy {meta['test_accuracy']:.4f}")
        out = recipe["_out"]
        save_safetensors(out / "model.safetensors", ema.state_dict())
        atomic_write_json(
            out / "config.json",
            {
                "class": "SmallCNN",
                "kwargs": {"in_channels": 1, "num_classes": 10},
                "input_range": [-1.0, 1.0],
                "layers": ["features", "penultimate", "logits"],
                "default_layer": "logits",
                "dataset": recipe["dataset"],
                "test_accuracy": meta["test_accuracy"],
            },
        )
    return meta


def train_colorblind(
    name: str,
    workdir: Path,
    cfg: TrainConfig,
    recipe: dict[str, Any],
    data_root: str | None,
    max_minutes: float | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """An autoencoder on grey MNIST ink; its encoder, after decolourising, is the colour-blind subject."""
    from .models import ColorblindEmbed, GrayDecoder, GrayEncoder

    torch.manual_seed(cfg.seed)
    x, _ = _dataset_tensor("mnist", "train", data_root)
    ink = (x + 1) / 2
    dim = recipe["dim"]
    enc, dec = GrayEncoder(dim), GrayDecoder(dim)
    ae = torch.nn.ModuleDict({"enc": enc, "dec": dec})

    def loss(m: Any, batch: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        z = m["enc"](batch)
        return F.binary_cross_entropy_with_logits(m["dec"](z), batch, reduction="sum") / batch.shape[0] / 784

    ema, meta = run_training(workdir, ae, loss, ink, cfg, max_minutes=max_minutes, log=log)
    if meta["step"] >= cfg.steps:
        xt, _ = _dataset_tensor("mnist", "test", data_root)
        with torch.no_grad():
            it = (xt[:2000] + 1) / 2
            rec = torch.sigmoid(ema["dec"](ema["enc"](it)))
            meta["test_recon_mse"] = float(((rec - it) ** 2).mean())
        subject = ColorblindEmbed(dim)
        subject.encoder.load_state_dict(ema["enc"].state_dict())
        out = recipe["_out"]
        save_safetensors(out / "model.safetensors", subject.state_dict(), half=True)
        save_safetensors(out / "decoder.safetensors", ema["dec"].state_dict(), half=True)
        atomic_write_json(
            out / "config.json",
            {
                "class": "ColorblindEmbed",
                "kwargs": {"dim": dim},
                "input_range": [-1.0, 1.0],
                "layers": ["encoder"],
                "default_layer": None,
                "dataset": "colormnist",
                "test_recon_mse": meta["test_recon_mse"],
            },
        )
    return meta


def _colour_batch(ink: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    from ..data.colormnist import colorize

    return colorize(ink, generator=g) * 2 - 1


def train_colormnist_latent(
    name: str,
    workdir: Path,
    cfg: TrainConfig,
    recipe: dict[str, Any],
    data_root: str | None,
    max_minutes: float | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Stage 1: a VAE on colour MNIST (fresh colours every batch). Stage 2: an ε-DDPM on its latents."""
    from diffusers import DDPMScheduler

    from .models import ConvVAE, LatentDenoiser

    torch.manual_seed(cfg.seed)
    x, _ = _dataset_tensor("mnist", "train", data_root)
    ink = (x + 1) / 2
    zdim = recipe["latent_dim"]
    vae = ConvVAE(latent_dim=zdim)
    beta_kl = recipe["beta_kl"]

    def vae_loss(m: Any, batch: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        xb = _colour_batch(batch, g)
        mu, logvar = m.encode_dist(xb)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=g)
        rec = m.decode(z)
        nll = ((rec - xb) ** 2).flatten(1).sum(1).mean()
        kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1).mean()
        return (nll + beta_kl * kl) / 784

    vae_cfg = replace(cfg, **{**recipe["vae_train"], **recipe.get("_overrides", {})})
    vae_ema, vae_meta = run_training(workdir / "vae", vae, vae_loss, ink, vae_cfg, max_minutes=max_minutes, log=log)
    if vae_meta["step"] < vae_cfg.steps:
        return vae_meta
    # encode the training digits under several random colourings: the latent data set
    with torch.no_grad():
        zs = []
        for rep in range(recipe["colourings"]):
            g = torch.Generator().manual_seed(10_000 + rep)
            for i in range(0, len(ink), 2000):
                zs.append(vae_ema.encode(_colour_batch(ink[i : i + 2000], g)))
        z = torch.cat(zs)
    shift, std = z.mean(0), z.std(0)
    zn = (z - shift) / std
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    den = LatentDenoiser(dim=zdim, **recipe["denoiser"])
    den_cfg = replace(cfg, **{**recipe["denoiser_train"], **recipe.get("_overrides", {})})
    loss = diffusion_eps_loss(sched.alphas_cumprod.float(), snr_gamma=None)
    den_ema, meta = run_training(workdir / "denoiser", den, loss, zn, den_cfg, max_minutes=max_minutes, log=log)
    meta["vae_wall_seconds"] = vae_meta["wall_seconds"]
    if meta["step"] < den_cfg.steps:
        return meta
    if recipe.get("decoder_finetune"):
        vae_ema, dec_meta = _finetune_decoder(workdir, vae_ema, ink, std, cfg, recipe, max_minutes, log)
        if dec_meta["step"] < dec_meta["config"]["steps"]:
            return dec_meta
        meta["decoder_wall_seconds"] = dec_meta["wall_seconds"]
        meta["decoder_steps"] = dec_meta["step"]
    xt, _ = _dataset_tensor("mnist", "test", data_root)
    with torch.no_grad():
        xb = _colour_batch((xt[:2000] + 1) / 2, torch.Generator().manual_seed(1))
        meta["vae_test_recon_mse"] = float(((vae_ema.decode(vae_ema.encode(xb)) - xb) ** 2).mean())
    out = recipe["_out"]
    save_safetensors(out / "vae.safetensors", vae_ema.state_dict(), half=True)
    save_safetensors(out / "denoiser.safetensors", den_ema.state_dict(), half=True)
    save_safetensors(out / "latent_stats.safetensors", {"shift": shift, "scale": 1.0 / std})
    sched.save_config(str(out / "scheduler"))
    atomic_write_json(
        out / "config.json",
        {
            "class": "LatentPrior",
            "vae": {"latent_dim": zdim},
            "denoiser": {"dim": zdim, **recipe["denoiser"]},
            "image_shape": [3, 28, 28],
            "data_range": [-1.0, 1.0],
            "parameterization": "eps",
            "vae_test_recon_mse": meta["vae_test_recon_mse"],
        },
    )
    return meta


def _finetune_decoder(
    workdir: Path,
    vae: torch.nn.Module,
    ink: torch.Tensor,
    latent_std: torch.Tensor,
    cfg: TrainConfig,
    recipe: dict[str, Any],
    max_minutes: float | None,
    log: Callable[[str], None],
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Stage 3: retrain the VAE's decoder (encoder frozen) on latents perturbed by Gaussian noise.

    The latent denoiser places its samples only to within a few hundredths of a latent standard
    deviation, and the decoder, trained on posterior samples alone, turns such errors into visibly
    worse digits. Noise of standard deviation ``U(0, latent_noise)`` (in units of each latent
    dimension's spread over the data) teaches it to decode near-misses into clean digits. The encoder,
    and so the latent space the denoiser was trained on, is unchanged.
    """
    settings = dict(recipe["decoder_finetune"])
    noise = float(settings.pop("latent_noise"))
    model = copy.deepcopy(vae).requires_grad_(False)
    for part in (model.dec_fc, model.dec):
        part.requires_grad_(True)

    def loss(m: Any, batch: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        xb = _colour_batch(batch, g)
        with torch.no_grad():
            mu, logvar = m.encode_dist(xb)
            z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=g)
            sd = noise * torch.rand(len(z), 1, generator=g)
            z = z + sd * latent_std * torch.randn(z.shape, generator=g)
        return ((m.decode(z) - xb) ** 2).flatten(1).sum(1).mean() / 784

    dec_cfg = replace(cfg, **{**settings, **recipe.get("_overrides", {})})
    return run_training(workdir / "decoder", model, loss, ink, dec_cfg, max_minutes=max_minutes, log=log)


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
    recipe = {**RECIPES[name], "_overrides": dict(overrides or {})}
    cfg: TrainConfig = replace(recipe["train"], **(overrides or {}))
    wd = _workdir(name, workdir)
    # Only the recipe's own run replaces the shipped weights; a run with changed optimisation settings
    # (a smoke test with steps=3, say) exports into its work directory instead.
    harmless = {"threads", "checkpoint_every", "log_every"}
    changed = sorted(k for k in (overrides or {}) if k not in harmless)
    recipe["_out"] = wd / "weights" if changed else WEIGHTS_DIR / name
    if changed:
        log(f"settings {changed} differ from the recipe: weights go to {recipe['_out']}, not into the zoo")
    t0 = time.time()
    meta = _TRAINERS[recipe["kind"]](name, wd, cfg, recipe, data_root, max_minutes, log)
    meta["session_seconds"] = time.time() - t0
    summary = {k: v for k, v in meta.items() if k != "optimizer"}
    atomic_write_json(wd / "summary.json", summary)
    out = recipe["_out"]
    if out.exists() and meta["step"] >= meta["config"]["steps"]:
        _write_training_record(name, recipe, meta, out)
    return meta


def _write_training_record(
    name: str, recipe: dict[str, Any], meta: dict[str, Any], out: Path, planned: int | None = None
) -> None:
    """``training.json`` beside the weights: what the card's "Training" section is written from.

    For a two-stage recipe ``train_config``, ``steps`` and ``loss_curve`` describe the last stage,
    ``stages`` lists both, and the wall time and hardware cover both.
    """
    losses = meta.get("losses", [])
    if planned is None:  # the steps of the schedule in effect (an export of an unfinished run is interim)
        planned = int(meta["config"]["steps"])
    interim = int(meta["step"]) < planned
    stages = meta.get("stages") or []
    earlier = [s for s in stages if s.get("name") != "continue"]
    hardware = list(meta.get("hardware", []))
    for s in earlier:
        hardware = [*(h for h in s.get("hardware", []) if h not in hardware), *hardware]
    record: dict[str, Any] = {
        "name": name,
        "command": f"fiberscope zoo train {name}",
        "recipe": {k: v for k, v in recipe.items() if k not in ("train", "continue", "_overrides", "_out")},
        "train_config": meta["config"],
        "steps": meta["step"],
        "planned_steps": planned,
        "interim": interim,
        "wall_seconds": meta["wall_seconds"],
        "total_wall_seconds": meta["wall_seconds"]
        + meta.get("vae_wall_seconds", 0.0)
        + meta.get("decoder_wall_seconds", 0.0)
        + sum(float(s.get("wall_seconds") or 0.0) for s in earlier),
        "hardware": hardware,
        "torch": torch.__version__,
        "finished": None if interim else time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "exported": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "final_loss": losses[-1][1] if losses else None,
        "loss_curve": losses[:: max(1, len(losses) // 40)],
        **{k: v for k, v in meta.items() if k.startswith(("test_", "vae_test"))},
    }
    if stages:
        record["stages"] = stages
    atomic_write_json(out / "training.json", record)


_TRAINERS: dict[str, Callable[..., dict[str, Any]]] = {
    "pixel-ddpm": train_pixel_prior,
    "pixel-flow": train_pixel_prior,
    "classifier": train_classifier,
    "colorblind": train_colorblind,
    "colormnist-latent": train_colormnist_latent,
}
