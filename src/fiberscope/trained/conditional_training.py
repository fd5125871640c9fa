"""Training of the conditional fiber models: flow matching and coupling flows (INN, cINN) on a latent.

The paper's Approach B: a conditional generative model of an autoencoder's latent given φ(x),
trained with its own loss + λ·RMS fiber loss (:func:`fit_conditional`) on pairs (latent, φ) of the
training images (:func:`build_pairs`, cached under ``ROOT/_cache`` and shared by a λ grid). The
autoencoder is the zoo's colour-MNIST VAE, or one trained first (:func:`fit_autoencoder`, stage 1
of ``cinn-mnist-cnn``).

Example:
    >>> from fiberscope.trained.recipes import RECIPES
    >>> RECIPES["cfm-l10"]["model"], RECIPES["cinn-mnist-cnn"]["autoencoder"]
    ('cfm', 'train')
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from ..models import ConvVAE
from ..subjects.base import Subject
from ..training import TrainConfig, run_training, save_safetensors, vae_loss
from ..training.data import colour_batch, image_tensors, in_batches
from ..utils import jsonable
from .cfm import ConditionalFlowMatching
from .common import Codec, rms_fiber_loss
from .flows import ConditionalINN
from .training_common import (
    Log,
    claim_workdir,
    command_for,
    features,
    load_recipe_subject,
    recipe_hash,
    subject_record,
    write_model,
)

__all__ = [
    "LatentPairs",
    "build_pairs",
    "cached_pairs",
    "evaluate_conditional",
    "fit_autoencoder",
    "fit_conditional",
    "train_conditional",
]


# ---------------------------------------------------------------------------------------------------------------
# stage 1 of cinn-mnist-cnn: an autoencoder of its own


def fit_autoencoder(
    wd: Path,
    settings: dict[str, Any],
    images: torch.Tensor,
    *,
    seed: int = 0,
    threads: int | None = None,
    max_minutes: float | None = None,
    log: Log = print,
) -> tuple[Codec | None, dict[str, Any]]:
    """Train a :class:`~fiberscope.models.ConvVAE` on ``images`` (Gaussian ELBO with β·KL).

    Returns the frozen :class:`Codec` (latents normalised by their training mean and std) once the
    run is finished, else ``(None, meta)``.
    """
    torch.manual_seed(seed)
    vae = ConvVAE(latent_dim=settings["latent_dim"], width=settings["width"], channels=images.shape[1])
    loss = vae_loss(float(settings["beta_kl"]), images[0].numel())
    cfg = TrainConfig(**{"seed": seed, "threads": threads, **settings["train"]})
    ema, meta = run_training(wd, vae, loss, images, cfg, max_minutes=max_minutes, log=log)
    if meta["step"] < cfg.steps:
        return None, meta
    z = in_batches(ema.encode, images, 2000)
    codec = Codec(ema, z.mean(0), 1.0 / z.std(0).clamp_min(1e-6), source="trained:ae")
    return codec, meta


# ---------------------------------------------------------------------------------------------------------------
# conditional fiber models: flow matching and coupling flows on an autoencoder's latent


@dataclass
class LatentPairs:
    """Training and held-out data of a conditional latent model.

    Attributes:
        codec: the frozen autoencoder (normalised latents).
        subject: the frozen φ that makes the condition.
        z: normalised latents of the training images ``[N, d]``.
        c: conditions φ(x) of the same images ``[N, *cond_shape]``.
        eval_images: held-out images in [-1, 1].
        eval_c: their conditions.
        seconds: time spent building the pairs now; ``build_seconds``: building them from scratch.
    """

    codec: Codec
    subject: Subject
    z: torch.Tensor
    c: torch.Tensor
    eval_images: torch.Tensor
    eval_c: torch.Tensor
    seconds: float = 0.0
    build_seconds: float = 0.0


def _encode(codec: Codec, x: torch.Tensor) -> torch.Tensor:
    return in_batches(lambda b: codec.encode(b).float(), x)


def _coloured(grey: torch.Tensor, seed: int) -> torch.Tensor:
    """Grey digits in [-1, 1] recoloured with the colours of ``seed``."""
    return colour_batch((grey + 1) / 2, torch.Generator().manual_seed(seed))


def build_pairs(
    codec: Codec,
    subject: Subject,
    train_images: torch.Tensor,
    eval_images: torch.Tensor,
    *,
    colour: bool = False,
    colourings: int = 1,
) -> LatentPairs:
    """Encode the training images (``colourings`` random recolourings each for colour MNIST) and embed them.

    Args:
        codec, subject: frozen autoencoder and φ.
        train_images, eval_images: grey images in [-1, 1] (coloured here when ``colour``) or final images.
        colour: recolour the grey digits (seeds 10000 + k for colouring k, 1 for the held-out set).
        colourings: recolourings per training digit.
    """
    t0 = time.perf_counter()
    zs, cs = [], []
    for k in range(colourings if colour else 1):
        x = _coloured(train_images, 10_000 + k) if colour else train_images
        zs.append(_encode(codec, x))
        cs.append(features(subject, x))
    ev = _coloured(eval_images, 1) if colour else eval_images
    s = time.perf_counter() - t0
    return LatentPairs(codec, subject, torch.cat(zs), torch.cat(cs), ev, features(subject, ev), s, s)


def cached_pairs(
    recipe: dict[str, Any], codec: Codec, subject: Subject, root: Path, data_root: str | None, log: Log
) -> LatentPairs:
    """:func:`build_pairs` on the recipe's data set, cached under ``ROOT/_cache`` (shared by the λ grid)."""
    ident = {
        "codec": [codec.source, codec.digest],
        "subject": subject_record(subject, recipe["subject"], recipe.get("layer")),
        "dataset": recipe["dataset"],
        "colourings": recipe.get("colourings", 1),
        "eval_queries": recipe.get("eval_queries", 500),
        "v": 1,
    }
    key = hashlib.sha256(json.dumps(jsonable(ident), sort_keys=True).encode()).hexdigest()[:16]
    path = root / "_cache" / f"pairs-{key}.safetensors"
    if path.exists() and codec.digest is not None:
        t0 = time.perf_counter()
        with safe_open(str(path), "pt") as f:
            build = float((f.metadata() or {}).get("build_seconds", 0.0))
        t = load_file(str(path))
        log(f"latent pairs from {path}")
        return LatentPairs(
            codec, subject, t["z"], t["c"], t["eval_images"], t["eval_c"], time.perf_counter() - t0, build
        )
    log(f"encoding the {recipe['dataset']} training set with {codec.source} and embedding it with {subject.name}")
    train_x, _ = image_tensors(recipe["dataset"], "train", data_root)
    test_x, _ = image_tensors(recipe["dataset"], "test", data_root)
    pairs = build_pairs(
        codec,
        subject,
        train_x,
        test_x[: recipe.get("eval_queries", 500)],
        colour=recipe["dataset"] == "colormnist",
        colourings=int(recipe.get("colourings", 1)),
    )
    if codec.digest is not None:
        tensors = {"z": pairs.z, "c": pairs.c, "eval_images": pairs.eval_images, "eval_c": pairs.eval_c}
        save_safetensors(path, tensors, {"build_seconds": str(pairs.seconds)})
    return pairs


def _conditional_net(recipe: dict[str, Any], dim: int, cond_dim: int) -> tuple[nn.Module, str, dict[str, Any]]:
    arch = dict(recipe["arch"])
    if recipe["model"] == "cfm":
        kw = {"dim": dim, "cond_dim": cond_dim, **arch}
        return ConditionalFlowMatching(**kw), "ConditionalFlowMatching", kw
    if recipe["model"] == "inn":
        kw = {"dim": dim, "cond_dim": cond_dim, **arch}
        return ConditionalINN(**kw), "ConditionalINN", kw
    raise ValueError(f"model must be 'cfm' or 'inn', got {recipe['model']!r}")


def _generate(net: nn.Module, c: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    return net.generate(c, eps)  # type: ignore[operator]


def _codec_record(codec: Codec, out: Path) -> dict[str, Any]:
    """How a trained model records its autoencoder: the zoo's by name, its own in ``ae.safetensors`` beside it."""
    if codec.source.startswith("builtin:"):
        return {"source": codec.source, "digest": codec.digest}
    vae = codec.vae
    kwargs = {
        "latent_dim": int(getattr(vae, "latent_dim")),  # noqa: B009
        "width": int(getattr(vae, "w")),  # noqa: B009
        "channels": int(getattr(vae, "dec")[-1].out_channels),  # noqa: B009
    }
    save_safetensors(out / "ae.safetensors", codec.state_tensors())
    return {"source": codec.source, "file": "ae.safetensors", "vae_kwargs": kwargs, "digest": codec.digest}


def fit_conditional(
    name: str,
    recipe: dict[str, Any],
    cfg: TrainConfig,
    out: Path,
    pairs: LatentPairs,
    *,
    stages: dict[str, float] | None = None,
    max_minutes: float | None = None,
    log: Log = print,
    command: str | None = None,
) -> dict[str, Any]:
    """Train a conditional latent model with its own loss + λ·RMS fiber loss, and export it when finished.

    The fiber term draws ``fiber_batch`` codes ε ~ N(0, I), generates latents for the first
    ``fiber_batch`` conditions of the batch, decodes them with the frozen autoencoder and penalises
    ``RMS(c − φ(decoded))``; its gradient flows through generator, decoder and φ.

    Returns the training metadata (``"finished"``: whether the model was exported).
    """
    lam = float(recipe.get("lambda_fiber", 0.0))
    if lam < 0 or not math.isfinite(lam):
        raise ValueError(f"lambda_fiber must be a finite number ≥ 0, got {lam}")
    kf = int(recipe.get("fiber_batch", 64))
    if kf < 1:
        raise ValueError(f"fiber_batch must be ≥ 1, got {kf}")
    h = recipe_hash(recipe, cfg)
    wd = out / "train"
    claim_workdir(wd, h)
    torch.manual_seed(cfg.seed)
    d = pairs.z.shape[1]
    cond_shape = tuple(pairs.c.shape[1:])
    cond_dim = int(math.prod(cond_shape))
    net, cls, kwargs = _conditional_net(recipe, d, cond_dim)
    net.set_condition_stats(pairs.c)  # type: ignore[operator]
    data = torch.cat([pairs.z.float(), pairs.c.flatten(1).float()], 1)
    codec, subject = pairs.codec, pairs.subject

    def loss(m: Any, batch: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        z, c = batch[:, :d], batch[:, d:]
        total = m.loss(z, c, g)
        if lam > 0:
            cf = c[:kf]
            x = codec.decode(m.generate(cf, torch.randn(cf.shape[0], d, generator=g)))
            total = total + lam * rms_fiber_loss(subject(x, (-1.0, 1.0)), cf.view(-1, *cond_shape)).mean()
        return total

    ema, meta = run_training(wd, net, loss, data, cfg, max_minutes=max_minutes, log=log)
    meta["finished"] = False
    if meta["step"] < cfg.steps:
        return meta
    t0 = time.perf_counter()
    ev = evaluate_conditional(ema, pairs)
    log(f"{name}: held-out RMS fiber loss {ev['fiber_rms']:.4g} (autoencoder floor {ev['recon_fiber_rms']:.4g})")
    stages = {**(stages or {}), "evaluate": time.perf_counter() - t0}
    config = {
        "condition": "features",
        "output": "latent",
        "cond_shape": list(cond_shape),
        "latent_dim": d,
        "image_shape": list(pairs.eval_images.shape[1:]),
        "subject": subject_record(subject, recipe.get("subject"), recipe.get("layer")),
        "codec": _codec_record(codec, out),
        "lambda_fiber": lam,
        "sampling": {"steps": ema.ode_steps, "solver": ema.solver} if isinstance(ema, ConditionalFlowMatching) else {},
    }
    rec = write_model(name, recipe, cfg, out, ema, cls, kwargs, config, meta, stages, ev, command or command_for(name))
    return {**meta, "finished": True, "record": rec}


def evaluate_conditional(net: nn.Module, pairs: LatentPairs, seed: int = 1234) -> dict[str, Any]:
    """Held-out figures: RMS fiber loss of one sample per query, the autoencoder's floor, the test loss."""
    g = torch.Generator().manual_seed(seed)
    x, c = pairs.eval_images, pairs.eval_c
    out: dict[str, Any] = {"queries": len(x)}
    with torch.no_grad():
        z = _generate(net, c.flatten(1), torch.randn(len(x), pairs.z.shape[1], generator=g))
        feats = features(pairs.subject, pairs.codec.decode(z))
        out["fiber_rms"] = float(rms_fiber_loss(feats, c).mean())
        zq = _encode(pairs.codec, x)
        out["recon_fiber_rms"] = float(rms_fiber_loss(features(pairs.subject, pairs.codec.decode(zq)), c).mean())
        out["test_loss"] = float(net.loss(zq, c.flatten(1), g))  # type: ignore[operator]
    return out


def train_conditional(
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
    """A ``conditional`` recipe: its autoencoder (the zoo's, or trained first), φ, the latent pairs, the model."""
    stages: dict[str, float] = {}
    ae = recipe["autoencoder"]
    if ae == "train":
        x, _ = image_tensors(recipe["dataset"], "train", data_root)
        codec, ae_meta = fit_autoencoder(
            out / "train" / "ae",
            recipe["ae"],
            x,
            seed=cfg.seed,
            threads=cfg.threads,
            max_minutes=max_minutes,
            log=log,
        )
        if codec is None:
            return {**ae_meta, "finished": False}
        # a digest of the trained autoencoder, so its latent pairs can be cached like the zoo's
        codec.digest = hashlib.sha256(
            b"".join(v.numpy().tobytes() for v in codec.state_tensors().values())
        ).hexdigest()[:16]
        stages["autoencoder"] = float(ae_meta["wall_seconds"])
    elif isinstance(ae, str) and ae.startswith("builtin:"):
        codec = Codec.from_zoo(ae.removeprefix("builtin:"))
    else:
        raise ValueError(f"autoencoder must be 'builtin:NAME' or 'train', got {ae!r}")
    subject = load_recipe_subject(recipe)
    pairs = cached_pairs(recipe, codec, subject, root, data_root, log)
    # what building the training pairs costs a model trained alone (the λ grid shares one cached copy)
    stages["data"] = max(pairs.seconds, pairs.build_seconds)
    return fit_conditional(
        name, recipe, cfg, out, pairs, stages=stages, max_minutes=max_minutes, log=log, command=command
    )
