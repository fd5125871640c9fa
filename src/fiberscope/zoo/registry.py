"""The built-in zoo as a table: small pretrained priors and subjects that ship with fiberscope.

Each entry names a model's kind, data set, default layer or sampling settings, and (priors) the NDTM
preset tuned for it; :func:`weights_dir` says where its weights are. The table imports nothing from
fiberscope: ``builtin:NAME`` in :func:`fiberscope.load_prior` / :func:`fiberscope.load_subject` is
loaded by :mod:`fiberscope.loading`, which consults it. Weights are safetensors files (diffusers
layouts for the pixel priors) under ``zoo/weights/NAME`` (or ``$FIBERSCOPE_ZOO_DIR/NAME``); each
entry has a model card under ``zoo/cards/NAME.md`` and a recipe in :mod:`fiberscope.zoo.recipes`
(``fiberscope zoo train NAME``).

Example:
    >>> from fiberscope.zoo import ZOO
    >>> sorted(ZOO)[:3]
    ['colorblind-mnist', 'colormnist-latent', 'fashion-cnn']
    >>> ZOO["mnist-ddpm"].preset
    'builtin-mnist'
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._deprecated import moved

__all__ = ["ZOO", "ZooEntry", "card_path", "weights_dir"]

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


__getattr__ = moved(
    __name__,
    {
        "load_builtin_prior": "fiberscope.loading:load_builtin_prior",
        "load_builtin_subject": "fiberscope.loading:load_builtin_subject",
        "ModelNotAvailableError": "fiberscope.errors:ModelNotAvailableError",
    },
)
