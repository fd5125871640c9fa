"""The built-in zoo: small pretrained priors and subjects that ship with fiberscope.

``builtin:NAME`` in :func:`fiberscope.load_prior` / :func:`fiberscope.load_subject` resolves here.
Weights are safetensors files (diffusers layouts for the pixel priors) under ``zoo/weights/NAME``
(or ``$FIBERSCOPE_ZOO_DIR/NAME``); each entry has a model card under ``zoo/cards/NAME.md`` and a
recipe in :mod:`fiberscope.zoo.recipes` (``fiberscope zoo train NAME``).

Example:
    >>> from fiberscope.zoo import ZOO
    >>> sorted(ZOO)[:3]
    ['colorblind-mnist', 'colormnist-latent', 'fashion-cnn']
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from ..priors.base import Prior
from ..priors.loading import ModelNotAvailableError
from ..subjects.base import Subject

__all__ = ["ZOO", "ZooEntry", "card_path", "load_builtin_prior", "load_builtin_subject", "weights_dir"]

PACKAGE_WEIGHTS = Path(__file__).parent / "weights"
CARDS_DIR = Path(__file__).parent / "cards"


@dataclass(frozen=True)
class ZooEntry:
    """One built-in model.

    Attributes:
        kind: ``"prior"`` or ``"subject"``.
        dataset: ``mnist``, ``fashion-mnist`` or ``colormnist``.
        summary: one line for ``fiberscope zoo list``.
        layers: selectable layers (subjects).
        default_layer: the layer used when none is given (None: the model output).
        sampling: default unguided sampling settings (priors).
        judge: the subject whose logits measure the prior's sample quality (priors).
        preset: the NDTM preset tuned for this prior (priors; ``fiberscope presets``).
    """

    name: str
    kind: str
    dataset: str
    summary: str
    layers: tuple[str, ...] = ()
    default_layer: str | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    judge: str | None = None
    preset: str | None = None


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry(
            "mnist-ddpm",
            "prior",
            "mnist",
            "pixel ε-prediction DDPM on MNIST (diffusers UNet2DModel, 28×28)",
            sampling={"steps": 100, "sampler": "ddim", "eta": 1.0},
            judge="mnist-cnn",
            preset="builtin-mnist",
        ),
        ZooEntry(
            "mnist-flow",
            "prior",
            "mnist",
            "rectified-flow (velocity) UNet on MNIST (FlowMatch scheduler)",
            sampling={"steps": 50, "sampler": "euler"},
            judge="mnist-cnn",
            preset="builtin-mnist-flow",
        ),
        ZooEntry(
            "fashion-ddpm",
            "prior",
            "fashion-mnist",
            "pixel ε-prediction DDPM on Fashion-MNIST (28×28)",
            sampling={"steps": 100, "sampler": "ddim", "eta": 1.0},
            judge="fashion-cnn",
            preset="builtin-fashion",
        ),
        ZooEntry(
            "colormnist-latent",
            "prior",
            "colormnist",
            "VAE on colour MNIST + ε-DDPM (residual MLP) on its 64-d latents (the paper's set-up)",
            sampling={"steps": 200, "sampler": "ancestral"},
            judge="mnist-cnn",
            preset="builtin-colormnist",
        ),
        ZooEntry(
            "mnist-cnn",
            "subject",
            "mnist",
            "MNIST classifier (small CNN)",
            layers=("features", "penultimate", "logits"),
            default_layer="logits",
        ),
        ZooEntry(
            "fashion-cnn",
            "subject",
            "fashion-mnist",
            "Fashion-MNIST classifier (small CNN)",
            layers=("features", "penultimate", "logits"),
            default_layer="logits",
        ),
        ZooEntry(
            "colorblind-mnist",
            "subject",
            "colormnist",
            "48-d autoencoder embedding of the decolourised digit: exactly colour-invariant",
            layers=("encoder",),
            default_layer=None,
        ),
    ]
}


def weights_dir(name: str) -> Path:
    """Directory of ``name``'s weights (``$FIBERSCOPE_ZOO_DIR/NAME`` wins over the packaged one)."""
    env = os.environ.get("FIBERSCOPE_ZOO_DIR")
    if env and (Path(env) / name).is_dir():
        return Path(env) / name
    return PACKAGE_WEIGHTS / name


def card_path(name: str) -> Path:
    return CARDS_DIR / f"{name}.md"


def _entry(name: str, kind: str) -> ZooEntry:
    if name not in ZOO or ZOO[name].kind != kind:
        known = sorted(n for n, e in ZOO.items() if e.kind == kind)
        raise ModelNotAvailableError(
            f"no built-in {kind} named {name!r}; built-in {kind}s: "
            f"{', '.join('builtin:' + k for k in known)} (see `fiberscope zoo list`)"
        )
    d = weights_dir(name)
    if not (d / "config.json").exists() and not (d / "model_index.json").exists():
        raise ModelNotAvailableError(
            f"builtin:{name} has no weights in {d}; train them with "
            f"`fiberscope zoo train {name}` (or reinstall fiberscope)"
        )
    return ZOO[name]


def _load_into(module: nn.Module, path: Path) -> nn.Module:
    module.load_state_dict(load_file(str(path)))
    return module.eval().requires_grad_(False)


class _VAEDecode(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z)  # type: ignore[operator]


class _VAEEncode(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(x)  # type: ignore[operator]


def load_builtin_prior(name: str, dtype: torch.dtype | None = None) -> Prior:
    """Load ``builtin:NAME`` as a :class:`~fiberscope.priors.Prior`."""
    _entry(name, "prior")
    d = weights_dir(name)
    if (d / "model_index.json").exists():
        from ..priors.diffusers import load_diffusers_prior

        return load_diffusers_prior(d, dtype=dtype, name=f"builtin:{name}")
    cfg = json.loads((d / "config.json").read_text())
    if cfg["class"] == "LatentPrior":
        from ..models import ConvVAE, LatentDenoiser
        from ..priors.diffusers import schedule_from_scheduler_config
        from ..priors.latent import LatentPrior

        vae = _load_into(ConvVAE(**cfg["vae"]), d / "vae.safetensors")
        den = _load_into(LatentDenoiser(**cfg["denoiser"]), d / "denoiser.safetensors")
        stats = load_file(str(d / "latent_stats.safetensors"))
        sched_cfg = json.loads((d / "scheduler" / "scheduler_config.json").read_text())
        schedule, _ = schedule_from_scheduler_config(sched_cfg)
        prior = LatentPrior(
            den,
            schedule,
            cfg.get("parameterization", "eps"),
            latent_shape=(cfg["vae"]["latent_dim"],),
            decoder=_VAEDecode(vae),
            encoder=_VAEEncode(vae),
            image_shape=tuple(cfg["image_shape"]),
            data_range=tuple(cfg["data_range"]),
            shift=stats["shift"],
            scale=stats["scale"],
            name=f"builtin:{name}",
        )
        if dtype is not None:
            prior.denoiser.to(dtype)
            prior.compute_dtype = dtype
        return prior
    raise ModelNotAvailableError(f"builtin:{name}: unknown prior class {cfg['class']!r} in {d / 'config.json'}")


def load_builtin_subject(name: str, layer: Any = None) -> Subject:
    """Load ``builtin:NAME`` as a :class:`~fiberscope.subjects.Subject` (``layer`` picks a named layer)."""
    from .. import models
    from ..subjects.hooks import LayerExtractor

    entry = _entry(name, "subject")
    d = weights_dir(name)
    cfg = json.loads((d / "config.json").read_text())
    model = _load_into(getattr(models, cfg["class"])(**cfg["kwargs"]), d / "model.safetensors")
    if layer is None:
        layer = entry.default_layer
    if isinstance(layer, str) and layer in ("logits", "output") and cfg["class"] == "SmallCNN":
        fn: nn.Module = model  # the classifier's output: no hook needed
        layer = "logits"
    elif layer is None:
        fn = model
    elif isinstance(layer, str):
        fn = LayerExtractor(model, [layer])
    elif isinstance(layer, dict):
        fn = LayerExtractor(model, list(layer), list(layer.values()))
    else:
        fn = LayerExtractor(model, list(layer))
    return Subject(fn, input_range=tuple(cfg["input_range"]), name=f"builtin:{name}", layer=layer)
