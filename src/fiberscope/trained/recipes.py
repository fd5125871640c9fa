"""Training recipes of the trained models: ``fiberscope trained train NAME`` (or ``all``).

:data:`RECIPES` says what to train. Every recipe trains resumably and deterministically with
:func:`fiberscope.training.run_training` (checkpoints in ``ROOT/NAME/train/``; run the command again
to continue after ``--max-minutes``) through the trainer of its family
(:mod:`~fiberscope.trained.conditional_training`, :mod:`~fiberscope.trained.featinv_training`,
:mod:`~fiberscope.trained.svae_training`), then writes ``model.safetensors``, ``config.json`` and
``training.json`` (wall time of every stage, hardware, command, loss curve, held-out figures) into
``ROOT/NAME/``. ``settings`` overrides recipe keys, ``overrides`` the optimisation settings.

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
    >>> from fiberscope.trained.recipes import RECIPES, TRAIN_ORDER
    >>> TRAIN_ORDER[:3]
    ['svae-mnist', 'cfm-l0', 'cfm-l1']
    >>> RECIPES["cflow-l10"]["lambda_fiber"]
    10.0
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from ..errors import NotTrainedError
from ..models import UNET_28
from ..training import TrainConfig
from ..utils import jsonable
from .common import model_dir, read_json, trained_root
from .conditional_training import LatentPairs, fit_autoencoder, fit_conditional, train_conditional
from .featinv_training import fit_featinv, train_featinv
from .svae_training import fit_svae, train_svae
from .training_common import Log, command_for, recipe_hash

__all__ = [
    "RECIPES",
    "TRAIN_ORDER",
    "LatentPairs",
    "fit_autoencoder",
    "fit_conditional",
    "fit_featinv",
    "fit_svae",
    "resolve_recipe",
    "train",
    "train_all",
]

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
    "pairs": [["builtin:mnist-ddpm", "trained:svae-mnist"], ["builtin:mnist-ddpm", "builtin:mnist-cnn@logits"]],
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

#: The order of ``fiberscope trained train all``: cheapest first, FeatInv (the longest) last.
TRAIN_ORDER = [
    "svae-mnist",
    *[f"cfm-l{lam}" for lam in (0, 1, 10, 100)],
    *[f"cflow-l{lam}" for lam in (0, 1, 10, 100)],
    "cinn-colorblind",
    "cinn-mnist-cnn",
    "featinv-mnist",
]


#: the trainer of each recipe ``kind``
TRAINERS: dict[str, Callable[..., dict[str, Any]]] = {
    "conditional": train_conditional,
    "featinv": train_featinv,
    "svae": train_svae,
}


def resolve_recipe(
    name: str, settings: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None
) -> tuple[dict[str, Any], TrainConfig]:
    """The recipe ``name`` with ``settings`` (recipe keys) and ``overrides`` (TrainConfig fields) applied."""
    if name not in RECIPES:
        raise ValueError(f"no recipe named {name!r}; known: {', '.join(TRAIN_ORDER)} (or 'all')")
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
    """Train (or continue training) model ``name`` and export it to ``ROOT/NAME`` when finished.

    Args:
        name: a key of :data:`RECIPES`, e.g. ``"cfm-l10"``.
        root: where trained models live (default ``$FIBERSCOPE_TRAINED_DIR`` or ``~/.cache/fiberscope/trained``).
        data_root: directory with the MNIST idx files (default: searched, as for the zoo).
        max_minutes: stop the training loop after this much wall time; a later call resumes.
        overrides: :class:`~fiberscope.training.TrainConfig` fields (``{"steps": 5}`` for a smoke test,
            ``{"threads": 1}``).
        settings: recipe settings to change (``{"init": "none"}``, ``{"lambda_fiber": 3.0}``).
        command: the command line recorded in ``training.json``.

    Returns:
        The training metadata; ``"finished"`` tells whether the model was exported. An already
        exported model with the same settings is not retrained (its record is returned).

    Example:
        >>> from fiberscope.trained import train
        >>> train("cfm-l10", overrides={"threads": 1}, max_minutes=30)                 # doctest: +SKIP
    """
    recipe, cfg = resolve_recipe(name, settings, overrides)
    if max_minutes is not None and max_minutes <= 0:
        raise ValueError(f"max_minutes must be positive, got {max_minutes}")
    out = model_dir(name, root)
    rec = read_json(out / "training.json")
    if rec is not None and rec.get("recipe_hash") == recipe_hash(recipe, cfg) and (out / "model.safetensors").exists():
        log(f"{name}: already trained ({rec.get('total_wall_seconds', 0) / 60:.1f} min); delete {out} to retrain")
        return {"step": rec.get("steps"), "wall_seconds": rec.get("wall_seconds"), "finished": True, "record": rec}
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.time()
    meta = TRAINERS[recipe["kind"]](
        name, recipe, cfg, out, trained_root(root), data_root, max_minutes, log, command or command_for(name)
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
    """Train several models in sequence (default :data:`TRAIN_ORDER`), skipping those whose inputs are missing.

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
                command="fiberscope trained train all",
            )  # fmt: skip
        except NotTrainedError as e:
            log(f"{name}: skipped: {e}")
            results[name] = {"skipped": str(e)}
    return results
