"""Training recipes of the trained baselines: ``fiberscope baselines train NAME`` (or ``all``).

Every recipe trains resumably and deterministically with :func:`fiberscope.zoo.training.run_training`
(checkpoints in ``ROOT/NAME/train/``; run the command again to continue after ``--max-minutes``),
then writes ``model.safetensors``, ``config.json`` and ``training.json`` (wall time of every stage,
hardware, command, loss curve, held-out figures) into ``ROOT/NAME/``. Settings live in
:data:`RECIPES`; ``settings`` overrides recipe keys, ``overrides`` the optimisation settings.

==================  ============================================================================
recipe              what it trains (method.md §3.7–3.11)
==================  ============================================================================
``cfm-l{λ}``        conditional flow matching on the colour-MNIST VAE latent given φ =
                    ``builtin:colorblind-mnist`` + λ·RMS fiber loss, λ ∈ {0, 1, 10, 100}
``cflow-l{λ}``      conditional coupling flow (INN, exact likelihood), same data, same λ grid
``cinn-colorblind`` Rombach et al.'s cINN (embedder + 20 couplings, maximum likelihood only) on
                    the colour-MNIST latent given ``builtin:colorblind-mnist``
``cinn-mnist-cnn``  the same cINN on the latent of an MNIST autoencoder trained first (stage 1)
                    given ``builtin:mnist-cnn@penultimate``
``svae-mnist``      supervised VAE with nuisance dimensions (its own classifier head)
``featinv-mnist``   FeatInv-style UNet conditioned on ``builtin:mnist-cnn@features`` (7×7 map),
                    fine-tuned from ``builtin:mnist-ddpm``
==================  ============================================================================

Example:
    >>> from fiberscope.baselines.recipes import RECIPES, TRAIN_ORDER
    >>> TRAIN_ORDER[:3]
    ['svae-mnist', 'cfm-l0', 'cfm-l1']
    >>> RECIPES["cflow-l10"]["lambda_fiber"]
    10.0
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import BaselineNotTrainedError, ModelNotAvailableError
from ..loading import load_subject
from ..subjects.base import Subject
from ..utils import atomic_write_json, jsonable
from ..zoo.models import ConvVAE
from ..zoo.recipes import UNET_28
from ..zoo.training import TrainConfig, run_training, save_safetensors
from .cfm import ConditionalFlowMatching
from .common import Codec, baselines_root, file_digest, model_dir, read_json, rms_fiber_loss
from .featinv import FeatInvUNet
from .flows import ConditionalINN
from .svae import SupervisedVAE

__all__ = [
    "RECIPES",
    "TRAIN_ORDER",
    "LatentPairs",
    "fit_autoencoder",
    "fit_conditional",
    "fit_featinv",
    "fit_svae",
    "train",
    "train_all",
]

Log = Callable[[str], None]

COLOUR_PAIR = ["builtin:colormnist-latent", "builtin:colorblind-mnist"]
_COLOUR = {
    "dataset": "colormnist",
    "autoencoder": "builtin:colormnist-latent",
    "subject": "builtin:colorblind-mnist",
    "layer": None,
    "colourings": 2,  # random recolourings of each training digit (as the zoo's latent prior)
    "eval_queries": 500,
    "pairs": [COLOUR_PAIR],
}
_CFM_ARCH = {"width": 512, "blocks": 4, "emb": 128, "solver": "midpoint", "ode_steps": 8}
_NF_ARCH = {"blocks": 12, "width": 256, "depth": 2, "clamp": 2.0}
_CINN_ARCH = {"blocks": 20, "width": 256, "depth": 2, "clamp": 2.0, "embed": 64, "embed_width": 256}


def _cond_train(steps: int = 2500) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=256, lr=1e-3, warmup=100, min_lr_ratio=0.05, ema=0.999, seed=0)


RECIPES: dict[str, dict[str, Any]] = {}
for _lam in (0, 1, 10, 100):
    RECIPES[f"cfm-l{_lam}"] = {
        "kind": "conditional",
        "summary": f"conditional flow matching on the colour-MNIST latent | colorblind φ, λ_fiber = {_lam}",
        "model": "cfm",
        "arch": dict(_CFM_ARCH),
        "lambda_fiber": float(_lam),
        "fiber_batch": 32,  # samples per step that go through ODE → decoder → φ for the regulariser
        **_COLOUR,
        "train": _cond_train(),
    }
    RECIPES[f"cflow-l{_lam}"] = {
        "kind": "conditional",
        "summary": f"conditional coupling flow (INN) on the colour-MNIST latent | colorblind φ, λ_fiber = {_lam}",
        "model": "inn",
        "arch": dict(_NF_ARCH),
        "lambda_fiber": float(_lam),
        "fiber_batch": 32,
        **_COLOUR,
        "train": replace(_cond_train(), grad_clip=3.0),
    }
RECIPES["cinn-colorblind"] = {
    "kind": "conditional",
    "summary": "Rombach et al. cINN (embedder, maximum likelihood) on the colour-MNIST latent | colorblind φ",
    "model": "inn",
    "arch": dict(_CINN_ARCH),
    "lambda_fiber": 0.0,
    "fiber_batch": 32,
    **_COLOUR,
    "train": replace(_cond_train(), grad_clip=3.0),
}
RECIPES["cinn-mnist-cnn"] = {
    "kind": "conditional",
    "summary": "Rombach et al. cINN on an MNIST autoencoder's latent | mnist-cnn penultimate features",
    "model": "inn",
    "arch": dict(_CINN_ARCH),
    "lambda_fiber": 0.0,
    "fiber_batch": 32,
    "dataset": "mnist",
    "autoencoder": "train",  # stage 1 trains it (settings in "ae"), frozen afterwards
    "ae": {
        "latent_dim": 16,
        "width": 32,
        "beta_kl": 0.05,
        "train": {"steps": 2000, "batch_size": 128, "lr": 1e-3, "warmup": 200, "ema": 0.999},
    },
    "subject": "builtin:mnist-cnn",
    "layer": "penultimate",
    "colourings": 1,
    "eval_queries": 500,
    "pairs": [["builtin:mnist-ddpm", "builtin:mnist-cnn@penultimate"]],
    "train": replace(_cond_train(), grad_clip=3.0),
}
RECIPES["svae-mnist"] = {
    "kind": "svae",
    "summary": "supervised VAE with nuisance dimensions (Nguyen & Martínez 2020): invariances of its own head",
    "dataset": "mnist",
    "task_dims": 8,
    "nuisance_dims": 24,
    "width": 32,
    "beta": 1.0,  # KL weight (per pixel, with the summed Gaussian reconstruction)
    "alpha": 1.0,  # cross-entropy weight of the classifier head
    "eval_queries": 500,
    "pairs": [["builtin:mnist-ddpm", "baseline:svae-mnist"], ["builtin:mnist-ddpm", "builtin:mnist-cnn@logits"]],
    "train": TrainConfig(steps=2500, batch_size=128, lr=1e-3, warmup=200, min_lr_ratio=0.1, ema=0.999, seed=0),
}
RECIPES["featinv-mnist"] = {
    "kind": "featinv",
    "summary": "FeatInv-style UNet conditioned on mnist-cnn's 7×7 feature map, fine-tuned from builtin:mnist-ddpm",
    "dataset": "mnist",
    "subject": "builtin:mnist-cnn",
    "layer": "features",
    "init": "builtin:mnist-ddpm",  # a pretrained unconditional UNet (FeatInv starts from one); None: scratch
    "unet": dict(UNET_28),  # used only when init is None (else the pretrained UNet's settings)
    "hint_channels": 4,
    "hint_width": 64,
    "p_uncond": 0.15,
    "sampling": {"steps": 50, "guidance_scale": 1.0, "sampler": "ddim", "eta": 0.0},
    "eval_queries": 64,
    "pairs": [["builtin:mnist-ddpm", "builtin:mnist-cnn@features"]],
    # The budget that matters: ~1 s per step on one busy CPU core (UNet forward + backward at batch 64).
    "train": TrainConfig(steps=3000, batch_size=64, lr=2e-4, warmup=100, min_lr_ratio=0.1, ema=0.999, seed=0),
}

#: The order of ``fiberscope baselines train all``: cheapest first, FeatInv (the longest) last.
TRAIN_ORDER = [
    "svae-mnist",
    *[f"cfm-l{lam}" for lam in (0, 1, 10, 100)],
    *[f"cflow-l{lam}" for lam in (0, 1, 10, 100)],
    "cinn-colorblind",
    "cinn-mnist-cnn",
    "featinv-mnist",
]

_NOT_HASHED = ("threads", "checkpoint_every", "log_every")


# ---------------------------------------------------------------------------------------------------------------
# shared helpers


def _images(dataset: str, split: str, data_root: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey MNIST / Fashion-MNIST images in [-1, 1] ``[N, 1, 28, 28]`` and labels."""
    from ..data.mnist import load_dataset

    base = "mnist" if dataset == "colormnist" else dataset
    x, y = load_dataset(base, split, data_root)
    return torch.from_numpy(x).float().div(127.5).sub(1.0).unsqueeze(1), torch.from_numpy(y)


def _coloured(grey: torch.Tensor, seed: int) -> torch.Tensor:
    from ..data.colormnist import colorize

    return colorize((grey + 1) / 2, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _recipe_hash(recipe: dict[str, Any], cfg: TrainConfig) -> str:
    c = {k: v for k, v in asdict(cfg).items() if k not in _NOT_HASHED}
    for later in ("cooldown", "restarts"):  # fields added later: at their defaults they must not orphan earlier runs
        if not c.get(later):
            c.pop(later, None)
    r = {k: v for k, v in recipe.items() if k not in ("train", "summary")}
    if isinstance(r.get("ae"), dict):  # the first stage's thread count does not change its result either
        r["ae"] = {**r["ae"], "train": {k: v for k, v in r["ae"].get("train", {}).items() if k not in _NOT_HASHED}}
    return hashlib.sha256(json.dumps(jsonable({"recipe": r, "train": c}), sort_keys=True).encode()).hexdigest()[:16]


def _claim_workdir(wd: Path, h: str) -> None:
    """Refuse to resume a checkpoint that was trained with other settings."""
    wd.mkdir(parents=True, exist_ok=True)
    old = read_json(wd / "recipe.json")
    if old is not None and old.get("hash") != h:
        raise ValueError(
            f"{wd} holds a training run with other settings (hash {old.get('hash')} ≠ {h}); delete that directory "
            "to start over with these settings, or give another root"
        )
    if old is None:
        atomic_write_json(wd / "recipe.json", {"hash": h})


def _subject_record(subject: Subject, spec: str | None, layer: str | None) -> dict[str, Any]:
    rec: dict[str, Any] = {"spec": spec, "layer": subject.layer, "name": subject.name}
    if spec and spec.startswith("builtin:"):
        from ..zoo.registry import weights_dir

        f = weights_dir(spec.removeprefix("builtin:")) / "model.safetensors"
        if f.exists():
            rec["digest"] = file_digest(f)
    return rec


def _codec_record(codec: Codec, out: Path) -> dict[str, Any]:
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


def _load_subject(recipe: dict[str, Any]) -> Subject:
    try:
        return load_subject(recipe["subject"], recipe.get("layer"))
    except ModelNotAvailableError as e:
        raise BaselineNotTrainedError(str(e)) from None


def _finish(
    name: str,
    recipe: dict[str, Any],
    cfg: TrainConfig,
    out: Path,
    net: nn.Module,
    model_class: str,
    model_kwargs: dict[str, Any],
    config: dict[str, Any],
    meta: dict[str, Any],
    stages: dict[str, float],
    evaluation: dict[str, Any],
    command: str,
) -> dict[str, Any]:
    """Write ``model.safetensors``, ``config.json`` and (last: it marks the model finished) ``training.json``."""
    save_safetensors(out / "model.safetensors", net.state_dict())
    pairs = recipe.get("pairs") or []
    atomic_write_json(
        out / "config.json",
        {
            "fiberscope_baseline": 1,
            "name": name,
            "kind": recipe["kind"],
            "summary": recipe.get("summary"),
            "model": {"class": model_class, "kwargs": model_kwargs},
            "pair": pairs[0] if pairs else None,
            "pairs": pairs,
            "dataset": recipe.get("dataset"),
            "data_range": [-1.0, 1.0],
            **config,
        },
    )
    losses = meta.get("losses", [])
    stages = {**stages, "train": float(meta["wall_seconds"])}
    record = {
        "name": name,
        "command": command,
        "recipe": {k: v for k, v in recipe.items() if k != "train"},
        "recipe_hash": _recipe_hash(recipe, cfg),
        "train_config": meta["config"],
        "steps": meta["step"],
        "wall_seconds": meta["wall_seconds"],
        "stage_seconds": stages,
        "total_wall_seconds": float(sum(stages.values())),
        "hardware": meta.get("hardware", []),
        "torch": torch.__version__,
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "final_loss": losses[-1][1] if losses else None,
        "loss_curve": losses[:: max(1, len(losses) // 40)],
        "eval": evaluation,
    }
    atomic_write_json(out / "training.json", record)
    return record


def _run(
    wd: Path, net: nn.Module, loss: Callable[..., torch.Tensor], data: torch.Tensor, cfg: TrainConfig, **kw: Any
) -> tuple[nn.Module, dict[str, Any]]:
    if cfg.steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {cfg.steps}")
    if len(data) < cfg.batch_size:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the training set ({len(data)} rows)")
    return run_training(wd, net, loss, data, cfg, **kw)


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
    """Train a :class:`~fiberscope.zoo.models.ConvVAE` on ``images`` (Gaussian ELBO with β·KL).

    Returns the frozen :class:`Codec` (latents normalised by their training mean and std) once the
    run is finished, else ``(None, meta)``.
    """
    torch.manual_seed(seed)
    vae = ConvVAE(latent_dim=settings["latent_dim"], width=settings["width"], channels=images.shape[1])
    beta = float(settings["beta_kl"])
    npix = images[0].numel()

    def loss(m: Any, batch: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        mu, logvar = m.encode_dist(batch)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=g)
        nll = ((m.decode(z) - batch) ** 2).flatten(1).sum(1).mean()
        kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1).mean()
        return (nll + beta * kl) / npix

    cfg = TrainConfig(**{"seed": seed, "threads": threads, **settings["train"]})
    ema, meta = _run(wd, vae, loss, images, cfg, max_minutes=max_minutes, log=log)
    if meta["step"] < cfg.steps:
        return None, meta
    with torch.no_grad():
        z = torch.cat([ema.encode(images[i : i + 2000]) for i in range(0, len(images), 2000)])  # type: ignore[operator]
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


def _features(subject: Subject, x: torch.Tensor, bs: int = 1000) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([subject(x[i : i + bs], (-1.0, 1.0)).float() for i in range(0, len(x), bs)])


def _encode(codec: Codec, x: torch.Tensor, bs: int = 1000) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([codec.encode(x[i : i + bs]).float() for i in range(0, len(x), bs)])


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
        cs.append(_features(subject, x))
    ev = _coloured(eval_images, 1) if colour else eval_images
    s = time.perf_counter() - t0
    return LatentPairs(codec, subject, torch.cat(zs), torch.cat(cs), ev, _features(subject, ev), s, s)


def _cached_pairs(
    recipe: dict[str, Any], codec: Codec, subject: Subject, root: Path, data_root: str | None, log: Log
) -> LatentPairs:
    """:func:`build_pairs` on the recipe's data set, cached under ``ROOT/_cache`` (shared by the λ grid)."""
    ident = {
        "codec": [codec.source, codec.digest],
        "subject": _subject_record(subject, recipe["subject"], recipe.get("layer")),
        "dataset": recipe["dataset"],
        "colourings": recipe.get("colourings", 1),
        "eval_queries": recipe.get("eval_queries", 500),
        "v": 1,
    }
    key = hashlib.sha256(json.dumps(jsonable(ident), sort_keys=True).encode()).hexdigest()[:16]
    path = root / "_cache" / f"pairs-{key}.safetensors"
    if path.exists() and codec.digest is not None:
        t0 = time.perf_counter()
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            build = float((f.metadata() or {}).get("build_seconds", 0.0))
        t = load_file(str(path))
        log(f"latent pairs from {path}")
        return LatentPairs(
            codec, subject, t["z"], t["c"], t["eval_images"], t["eval_c"], time.perf_counter() - t0, build
        )
    log(f"encoding the {recipe['dataset']} training set with {codec.source} and embedding it with {subject.name}")
    train_x, _ = _images(recipe["dataset"], "train", data_root)
    test_x, _ = _images(recipe["dataset"], "test", data_root)
    pairs = build_pairs(
        codec,
        subject,
        train_x,
        test_x[: recipe.get("eval_queries", 500)],
        colour=recipe["dataset"] == "colormnist",
        colourings=int(recipe.get("colourings", 1)),
    )
    if codec.digest is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tensors = {"z": pairs.z, "c": pairs.c, "eval_images": pairs.eval_images, "eval_c": pairs.eval_c}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), {"build_seconds": str(pairs.seconds)})
        os.replace(tmp, path)
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
    h = _recipe_hash(recipe, cfg)
    wd = out / "train"
    _claim_workdir(wd, h)
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

    ema, meta = _run(wd, net, loss, data, cfg, max_minutes=max_minutes, log=log)
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
        "subject": _subject_record(subject, recipe.get("subject"), recipe.get("layer")),
        "codec": _codec_record(codec, out),
        "lambda_fiber": lam,
        "sampling": {"steps": ema.ode_steps, "solver": ema.solver} if isinstance(ema, ConditionalFlowMatching) else {},
    }
    rec = _finish(name, recipe, cfg, out, ema, cls, kwargs, config, meta, stages, ev, command or _cmd(name))
    return {**meta, "finished": True, "record": rec}


def evaluate_conditional(net: nn.Module, pairs: LatentPairs, seed: int = 1234) -> dict[str, Any]:
    """Held-out figures: RMS fiber loss of one sample per query, the autoencoder's floor, the test loss."""
    g = torch.Generator().manual_seed(seed)
    x, c = pairs.eval_images, pairs.eval_c
    out: dict[str, Any] = {"queries": len(x)}
    with torch.no_grad():
        z = _generate(net, c.flatten(1), torch.randn(len(x), pairs.z.shape[1], generator=g))
        feats = _features(pairs.subject, pairs.codec.decode(z))
        out["fiber_rms"] = float(rms_fiber_loss(feats, c).mean())
        zq = _encode(pairs.codec, x)
        out["recon_fiber_rms"] = float(rms_fiber_loss(_features(pairs.subject, pairs.codec.decode(zq)), c).mean())
        out["test_loss"] = float(net.loss(zq, c.flatten(1), g))  # type: ignore[operator]
    return out


def _train_conditional(
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
    stages: dict[str, float] = {}
    ae = recipe["autoencoder"]
    if ae == "train":
        x, _ = _images(recipe["dataset"], "train", data_root)
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
    subject = _load_subject(recipe)
    pairs = _cached_pairs(recipe, codec, subject, root, data_root, log)
    # what building the training pairs costs a model trained alone (the λ grid shares one cached copy)
    stages["data"] = max(pairs.seconds, pairs.build_seconds)
    return fit_conditional(
        name, recipe, cfg, out, pairs, stages=stages, max_minutes=max_minutes, log=log, command=command
    )


# ---------------------------------------------------------------------------------------------------------------
# FeatInv


def _feat_batches(subject: Subject, x: torch.Tensor) -> torch.Tensor:
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
    h = _recipe_hash(recipe, cfg)
    wd = out / "train"
    _claim_workdir(wd, h)
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

    ema, meta = _run(wd, net, loss, images, cfg, max_minutes=max_minutes, log=log)
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
        "subject": _subject_record(subject, recipe.get("subject"), recipe.get("layer")),
        "init": recipe.get("init"),
        "sampling": samp,
    }
    rec = _finish(name, recipe, cfg, out, ema, "FeatInvUNet", kwargs, config, meta, stages, ev, command or _cmd(name))
    return {**meta, "finished": True, "record": rec}


def evaluate_featinv(
    net: nn.Module, subject: Subject, images: torch.Tensor, steps: int = 25, sampling: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Held-out fiber loss (squared L2 and RMS) of one FeatInv sample per query."""
    from ..guidance.base import SampleNoise
    from ..losses import sq_l2

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
        raise BaselineNotTrainedError(
            f"featinv starts from the pretrained UNet {init}, which has no weights in {d}; train it first "
            "(`fiberscope zoo train mnist-ddpm`) or train from scratch with `--set init=none`"
        )
    # a ~1 M-parameter UNet: plain loading, and no "install accelerate" warning when it is absent
    return UNet2DModel.from_pretrained(str(d), low_cpu_mem_usage=False).eval()


def _train_featinv(
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
    init = _load_init_unet(recipe.get("init"))
    subject = _load_subject(recipe)
    t0 = time.perf_counter()
    x, _ = _images(recipe["dataset"], "train", data_root)
    xt, _ = _images(recipe["dataset"], "test", data_root)
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


# ---------------------------------------------------------------------------------------------------------------
# supervised VAE


def fit_svae(
    name: str,
    recipe: dict[str, Any],
    cfg: TrainConfig,
    out: Path,
    images: torch.Tensor,
    labels: torch.Tensor,
    eval_images: torch.Tensor,
    eval_labels: torch.Tensor,
    *,
    reference: Subject | None = None,
    stages: dict[str, float] | None = None,
    max_minutes: float | None = None,
    log: Log = print,
    command: str | None = None,
) -> dict[str, Any]:
    """Train the supervised VAE (ELBO + α·CE on the task dimensions) and export it when finished.

    Args:
        reference: a second classifier (``builtin:mnist-cnn``) under which the held-out fiber
            loss is also reported (the SVAE only models its own head's invariances).
    """
    h = _recipe_hash(recipe, cfg)
    wd = out / "train"
    _claim_workdir(wd, h)
    torch.manual_seed(cfg.seed)
    kwargs = {
        "task_dims": int(recipe["task_dims"]),
        "nuisance_dims": int(recipe["nuisance_dims"]),
        "width": int(recipe["width"]),
        "channels": int(images.shape[1]),
        "num_classes": int(recipe.get("num_classes", 10)),
    }
    net = SupervisedVAE(**kwargs)
    shape = tuple(images.shape[1:])
    data = torch.cat([images.flatten(1), labels[:, None].float()], 1)
    beta, alpha = float(recipe["beta"]), float(recipe["alpha"])

    def loss(m: Any, batch: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return m.loss(batch[:, :-1].view(-1, *shape), batch[:, -1].long(), g, beta, alpha)

    ema, meta = _run(wd, net, loss, data, cfg, max_minutes=max_minutes, log=log)
    meta["finished"] = False
    if meta["step"] < cfg.steps:
        return meta
    t0 = time.perf_counter()
    ev = evaluate_svae(ema, eval_images, eval_labels, reference)
    log(f"{name}: head accuracy {ev['head_accuracy']:.4f}, own-head RMS fiber loss {ev['fiber_rms_own_head']:.4g}")
    stages = {**(stages or {}), "evaluate": time.perf_counter() - t0}
    config = {
        "condition": "query",
        "output": "pixels",
        "cond_shape": list(shape),
        "image_shape": list(shape),
        "subject": None,
        "own_subject": f"baseline:{name}",
    }
    rec = _finish(name, recipe, cfg, out, ema, "SupervisedVAE", kwargs, config, meta, stages, ev, command or _cmd(name))
    return {**meta, "finished": True, "record": rec}


def evaluate_svae(
    net: nn.Module, images: torch.Tensor, labels: torch.Tensor, reference: Subject | None = None, seed: int = 1234
) -> dict[str, Any]:
    """Head accuracy, reconstruction error and the fiber loss of one sample per query (own head, reference)."""
    from ..losses import sq_l2

    g = torch.Generator().manual_seed(seed)
    m: Any = net
    with torch.no_grad():
        logits = m.classify(images)
        x = m.fiber(images, torch.randn(len(images), m.nuisance_dims, generator=g))
        own = m.classify(x)
        rec = m.vae.decode(m.vae.encode(images))
        out: dict[str, Any] = {
            "queries": len(images),
            "head_accuracy": float((logits.argmax(1) == labels).float().mean()),
            "recon_mse": float(((rec - images) ** 2).mean()),
            "fiber_rms_own_head": float(rms_fiber_loss(own, logits).mean()),
            "fiber_sq_l2_own_head": float(sq_l2(own, logits).mean()),
            "label_kept_own_head": float((own.argmax(1) == logits.argmax(1)).float().mean()),
        }
        if reference is not None:
            fr, fq = _features(reference, x), _features(reference, images)
            out["fiber_rms_reference"] = float(rms_fiber_loss(fr, fq).mean())
            out["fiber_sq_l2_reference"] = float(sq_l2(fr, fq).mean())
            out["reference"] = reference.name + (f"@{reference.layer}" if reference.layer else "")
    return out


def _train_svae(
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
    t0 = time.perf_counter()
    x, y = _images(recipe["dataset"], "train", data_root)
    xt, yt = _images(recipe["dataset"], "test", data_root)
    stages = {"data": time.perf_counter() - t0}
    n = int(recipe.get("eval_queries", 500))
    try:
        reference: Subject | None = load_subject("builtin:mnist-cnn", "logits")
    except Exception:  # the reference figure is extra; the model trains without it
        reference = None
    return fit_svae(
        name,
        recipe,
        cfg,
        out,
        x,
        y,
        xt[:n],
        yt[:n],
        reference=reference,
        stages=stages,
        max_minutes=max_minutes,
        log=log,
        command=command,
    )


# ---------------------------------------------------------------------------------------------------------------
# entry points

_TRAINERS: dict[str, Callable[..., dict[str, Any]]] = {
    "conditional": _train_conditional,
    "featinv": _train_featinv,
    "svae": _train_svae,
}


def _cmd(name: str) -> str:
    return f"fiberscope baselines train {name}"


def resolve_recipe(
    name: str, settings: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None
) -> tuple[dict[str, Any], TrainConfig]:
    """The recipe ``name`` with ``settings`` (recipe keys) and ``overrides`` (TrainConfig fields) applied."""
    if name not in RECIPES:
        raise ValueError(f"no baseline recipe named {name!r}; known: {', '.join(TRAIN_ORDER)} (or 'all')")
    recipe = json.loads(json.dumps(jsonable({k: v for k, v in RECIPES[name].items() if k != "train"})))
    for k, v in (settings or {}).items():
        if k in ("kind", "train"):
            raise ValueError(f"setting {k!r} cannot be changed; pick another recipe or use overrides for training")
        if k not in recipe:
            raise ValueError(f"recipe {name!r} has no setting {k!r}; its settings: {sorted(recipe)}")
        if isinstance(recipe.get(k), dict) and isinstance(v, dict):
            recipe[k] = {**recipe[k], **v}
        else:
            recipe[k] = v
    fields = set(TrainConfig.__dataclass_fields__)
    bad = sorted(set(overrides or {}) - fields)
    if bad:
        raise ValueError(f"unknown training override(s) {bad}; known: {sorted(fields)}")
    cfg = replace(RECIPES[name]["train"], **(overrides or {}))
    recipe["train"] = cfg
    if "ae" in recipe:  # a first stage (own autoencoder) takes the same optimisation overrides
        recipe["ae"]["train"] = {**recipe["ae"]["train"], **(overrides or {})}
    return recipe, cfg


def train(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    data_root: str | None = None,
    max_minutes: float | None = None,
    overrides: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
    log: Log = print,
    command: str | None = None,
) -> dict[str, Any]:
    """Train (or continue training) baseline ``name`` and export it to ``ROOT/NAME`` when finished.

    Args:
        name: a key of :data:`RECIPES`, e.g. ``"cfm-l10"``.
        root: where baselines live (default ``$FIBERSCOPE_BASELINES_DIR`` or ``~/.cache/fiberscope/baselines``).
        data_root: directory with the MNIST idx files (default: searched, as for the zoo).
        max_minutes: stop the training loop after this much wall time; a later call resumes.
        overrides: :class:`~fiberscope.zoo.training.TrainConfig` fields (``{"steps": 5}`` for a smoke test,
            ``{"threads": 1}``).
        settings: recipe settings to change (``{"init": "none"}``, ``{"lambda_fiber": 3.0}``).
        command: the command line recorded in ``training.json``.

    Returns:
        The training metadata; ``"finished"`` tells whether the model was exported. An already
        exported model with the same settings is not retrained (its record is returned).

    Example:
        >>> from fiberscope.baselines import train
        >>> train("cfm-l10", overrides={"threads": 1}, max_minutes=30)                 # doctest: +SKIP
    """
    recipe, cfg = resolve_recipe(name, settings, overrides)
    if max_minutes is not None and max_minutes <= 0:
        raise ValueError(f"max_minutes must be positive, got {max_minutes}")
    out = model_dir(name, root)
    rec = read_json(out / "training.json")
    if rec is not None and rec.get("recipe_hash") == _recipe_hash(recipe, cfg) and (out / "model.safetensors").exists():
        log(f"{name}: already trained ({rec.get('total_wall_seconds', 0) / 60:.1f} min); delete {out} to retrain")
        return {"step": rec.get("steps"), "wall_seconds": rec.get("wall_seconds"), "finished": True, "record": rec}
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.time()
    meta = _TRAINERS[recipe["kind"]](
        name, recipe, cfg, out, baselines_root(root), data_root, max_minutes, log, command or _cmd(name)
    )
    meta["session_seconds"] = time.time() - t0
    return meta


def train_all(
    names: list[str] | None = None,
    *,
    root: str | os.PathLike[str] | None = None,
    data_root: str | None = None,
    max_minutes: float | None = None,
    overrides: dict[str, Any] | None = None,
    log: Log = print,
) -> dict[str, dict[str, Any]]:
    """Train several baselines in sequence (default :data:`TRAIN_ORDER`), skipping those whose inputs are missing.

    ``max_minutes`` is the budget of the whole sequence: each model gets what is left, and a later
    call resumes where this one stopped. A model whose zoo dependency is not trained yet (e.g. the
    colour-MNIST VAE) is reported as ``{"skipped": reason}`` and the others go on.
    """
    t_end = None if max_minutes is None else time.time() + 60 * max_minutes
    results: dict[str, dict[str, Any]] = {}
    for name in names or TRAIN_ORDER:
        left = None if t_end is None else (t_end - time.time()) / 60
        if left is not None and left <= 0:
            results[name] = {"skipped": "out of time (run again to continue)"}
            continue
        try:
            results[name] = train(
                name, root=root, data_root=data_root, max_minutes=left, overrides=overrides, log=log,
                command="fiberscope baselines train all",
            )  # fmt: skip
        except BaselineNotTrainedError as e:
            log(f"{name}: skipped: {e}")
            results[name] = {"skipped": str(e)}
    return results
