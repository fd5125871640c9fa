"""How the zoo trains each kind of model: one function per kind, driven by :func:`fiberscope.zoo.recipes.train`.

Every trainer takes ``(name, workdir, cfg, recipe, data_root, max_minutes, log)``, trains
resumably with :func:`fiberscope.training.run_training` in ``workdir`` and, once the run is
finished, exports the shipped files into ``recipe["_out"]``: diffusers layouts for the pixel priors
(so they load through the same code path as ``google/ddpm-cifar10-32``), safetensors + JSON config
for the rest. :data:`TRAINERS` maps a recipe's ``kind`` to its trainer.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ..models import ColorblindEmbed, ConvVAE, GrayDecoder, GrayEncoder, LatentDenoiser, SmallCNN
from ..training import (
    Checkpoint,
    TrainConfig,
    diffusion_eps_loss,
    flow_velocity_loss,
    loss_record,
    run_training,
    save_safetensors,
    vae_loss,
    with_hflip,
)
from ..training.data import (
    accuracy,
    colour_batch,
    image_tensors,
    random_hflip,
    random_shift,
    split_labels,
    with_labels,
)
from ..utils import atomic_write_json, file_sha256

__all__ = [
    "PIXEL_WEIGHTS",
    "TRAINERS",
    "WEIGHTS_DIR",
    "train_classifier",
    "train_colorblind",
    "train_colormnist_latent",
    "train_pixel_prior",
    "write_training_record",
]

#: where the zoo's shipped weights live (a finished recipe's run exports there)
WEIGHTS_DIR = Path(__file__).parent / "weights"

#: the UNet weights file of a pixel prior's diffusers layout
PIXEL_WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"

Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------------------------
# pixel priors: DDPM and rectified flow, diffusers layouts


class UNetEps(torch.nn.Module):
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
    log: Log,
) -> dict[str, Any]:
    """A pixel DDPM or rectified flow; with a ``continue`` stage in the recipe, trained in two stages.

    Stage 1 trains ``recipe["train"]`` in ``workdir`` (from ``init_from``'s weights when given). A
    ``continue`` stage then trains on from stage 1's EMA weights with a fresh optimiser, in
    ``workdir/continue``. Stage 1's result is kept as a zoo-style directory in ``workdir/stage1``
    (weights + ``training.json``); when it is there, stage 2 starts from it without stage 1's
    checkpoint, so a stage-1 result can be carried to another machine by copying that directory.
    """
    torch.manual_seed(cfg.seed)
    unet, sched = pixel_parts(recipe)
    model = UNetEps(unet)
    x, _ = image_tensors(recipe["dataset"], "train", data_root)
    if recipe["kind"] == "pixel-ddpm":
        loss = diffusion_eps_loss(sched.alphas_cumprod.float(), snr_gamma=5.0)
    else:
        loss = flow_velocity_loss(1000)
    loss = with_hflip(loss, recipe.get("hflip", False))
    stage2 = recipe.get("continue")
    if stage2 is None:
        if not Checkpoint(workdir).exists():
            _init_from(unet, recipe, name, log)
        ema, meta = run_training(workdir, model, loss, x, cfg, max_minutes=max_minutes, log=log)
        if meta["step"] >= cfg.steps:
            export_pixel(ema.unet, sched, recipe["_out"])
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
            export_pixel(ema1.unet, sched, stage1_dir)
            write_training_record(name, dict(recipe), meta1, stage1_dir, planned=cfg.steps)
        unet.load_state_dict(load_file(str(stage1_dir / PIXEL_WEIGHTS)))
        log(f"stage 2: starting from stage 1's EMA weights in {stage1_dir}")
    ema, meta = run_training(wd2, model, loss, x, cfg2, max_minutes=max_minutes, log=log)
    meta["stages"] = stage_records(stage1_dir, cfg, meta)
    if meta["step"] >= cfg2.steps:
        export_pixel(ema.unet, sched, recipe["_out"])
    return meta


def _init_from(unet: torch.nn.Module, recipe: dict[str, Any], name: str, log: Log) -> None:
    if not recipe.get("init_from"):
        return
    src = WEIGHTS_DIR / recipe["init_from"] / PIXEL_WEIGHTS
    if not src.exists():
        raise FileNotFoundError(f"{name} starts from {recipe['init_from']}'s weights; train that first ({src})")
    unet.load_state_dict(load_file(str(src)))
    log(f"initialised from {recipe['init_from']}")


def stage_records(stage1_dir: Path, cfg: TrainConfig, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """What a two-stage training record says of its stages (``meta``: the ``continue`` stage's state).

    Stage 1: its steps, wall time, hardware and weights' digest, from ``stage1_dir``.
    """
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
            "weights_digest": file_sha256(stage1_dir / PIXEL_WEIGHTS)[:16],
            "config": rec.get("train_config", asdict(cfg)),
        },
        stage2,
    ]


def pixel_parts(recipe: dict[str, Any]) -> tuple[torch.nn.Module, Any]:
    """A fresh ``UNet2DModel`` of the recipe's settings and its diffusers scheduler (DDPM or flow matching)."""
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


def export_pixel(unet: torch.nn.Module, sched: Any, out: Path) -> None:
    """Write ``unet`` and ``sched`` to ``out`` as a diffusers pipeline (the layout ``fs.load_prior`` reads)."""
    from diffusers import DDPMPipeline

    DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(str(out), safe_serialization=True)


# ---------------------------------------------------------------------------------------------------------------
# subjects: the classifiers and the colour-blind embedding


def train_classifier(
    name: str,
    workdir: Path,
    cfg: TrainConfig,
    recipe: dict[str, Any],
    data_root: str | None,
    max_minutes: float | None,
    log: Log,
) -> dict[str, Any]:
    """A :class:`~fiberscope.models.SmallCNN` (label smoothing, random shifts and flips) and its test accuracy."""
    torch.manual_seed(cfg.seed)
    x, y = image_tensors(recipe["dataset"], "train", data_root)
    model = SmallCNN(in_channels=1, num_classes=10)
    data = with_labels(x, y)
    hflip = recipe.get("hflip", False)

    def loss(m: Any, batch: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        xb, yb = split_labels(batch, (1, 28, 28))
        xb = random_shift(xb, g, 2)
        if hflip:
            xb = random_hflip(xb, g)
        return F.cross_entropy(m(xb), yb, label_smoothing=0.05)

    ema, meta = run_training(workdir, model, loss, data, cfg, max_minutes=max_minutes, log=log)
    if meta["step"] >= cfg.steps:
        xt, yt = image_tensors(recipe["dataset"], "test", data_root)
        meta["test_accuracy"] = accuracy(ema, xt, yt)
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
    log: Log,
) -> dict[str, Any]:
    """An autoencoder on grey MNIST ink; its encoder, after decolourising, is the colour-blind subject."""
    torch.manual_seed(cfg.seed)
    x, _ = image_tensors("mnist", "train", data_root)
    ink = (x + 1) / 2
    dim = recipe["dim"]
    enc, dec = GrayEncoder(dim), GrayDecoder(dim)
    ae = torch.nn.ModuleDict({"enc": enc, "dec": dec})

    def loss(m: Any, batch: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        z = m["enc"](batch)
        return F.binary_cross_entropy_with_logits(m["dec"](z), batch, reduction="sum") / batch.shape[0] / 784

    ema, meta = run_training(workdir, ae, loss, ink, cfg, max_minutes=max_minutes, log=log)
    if meta["step"] >= cfg.steps:
        xt, _ = image_tensors("mnist", "test", data_root)
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


# ---------------------------------------------------------------------------------------------------------------
# the colour-MNIST latent prior: VAE, latent denoiser, decoder fine-tuning


def train_colormnist_latent(
    name: str,
    workdir: Path,
    cfg: TrainConfig,
    recipe: dict[str, Any],
    data_root: str | None,
    max_minutes: float | None,
    log: Log,
) -> dict[str, Any]:
    """Stage 1: a VAE on colour MNIST (fresh colours every batch). Stage 2: an ε-DDPM on its latents."""
    from diffusers import DDPMScheduler

    torch.manual_seed(cfg.seed)
    x, _ = image_tensors("mnist", "train", data_root)
    ink = (x + 1) / 2
    zdim = recipe["latent_dim"]
    vae = ConvVAE(latent_dim=zdim)
    elbo = vae_loss(recipe["beta_kl"], 784)

    def coloured_elbo(m: Any, batch: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return elbo(m, colour_batch(batch, g), g)  # fresh colours every batch

    vae_cfg = replace(cfg, **{**recipe["vae_train"], **recipe.get("_overrides", {})})
    vae_ema, vae_meta = run_training(
        workdir / "vae", vae, coloured_elbo, ink, vae_cfg, max_minutes=max_minutes, log=log
    )
    if vae_meta["step"] < vae_cfg.steps:
        return vae_meta
    # encode the training digits under several random colourings: the latent data set
    with torch.no_grad():
        zs = []
        for rep in range(recipe["colourings"]):
            g = torch.Generator().manual_seed(10_000 + rep)
            for i in range(0, len(ink), 2000):
                zs.append(vae_ema.encode(colour_batch(ink[i : i + 2000], g)))
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
    xt, _ = image_tensors("mnist", "test", data_root)
    with torch.no_grad():
        xb = colour_batch((xt[:2000] + 1) / 2, torch.Generator().manual_seed(1))
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
    log: Log,
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
        xb = colour_batch(batch, g)
        with torch.no_grad():
            mu, logvar = m.encode_dist(xb)
            z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=g)
            sd = noise * torch.rand(len(z), 1, generator=g)
            z = z + sd * latent_std * torch.randn(z.shape, generator=g)
        return ((m.decode(z) - xb) ** 2).flatten(1).sum(1).mean() / 784

    dec_cfg = replace(cfg, **{**settings, **recipe.get("_overrides", {})})
    return run_training(workdir / "decoder", model, loss, ink, dec_cfg, max_minutes=max_minutes, log=log)


# ---------------------------------------------------------------------------------------------------------------
# the training record


def write_training_record(
    name: str, recipe: dict[str, Any], meta: dict[str, Any], out: Path, planned: int | None = None
) -> None:
    """``training.json`` beside the weights: what the card's "Training" section is written from.

    For a two-stage recipe ``train_config``, ``steps`` and ``loss_curve`` describe the last stage,
    ``stages`` lists both, and the wall time and hardware cover both.
    """
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
        **loss_record(meta),
        **{k: v for k, v in meta.items() if k.startswith(("test_", "vae_test"))},
    }
    if stages:
        record["stages"] = stages
    atomic_write_json(out / "training.json", record)


TRAINERS: dict[str, Callable[..., dict[str, Any]]] = {
    "pixel-ddpm": train_pixel_prior,
    "pixel-flow": train_pixel_prior,
    "classifier": train_classifier,
    "colorblind": train_colorblind,
    "colormnist-latent": train_colormnist_latent,
}
