"""What the trained models' three training families share: the recipe hash that guards a work
directory, the subject a recipe names, and the files a finished model writes.

Each family (:mod:`~fiberscope.trained.conditional_training`, :mod:`~fiberscope.trained.featinv_training`,
:mod:`~fiberscope.trained.svae_training`) trains with :func:`fiberscope.training.run_training` in
``ROOT/NAME/train/`` and, when finished, calls :func:`write_model`.

Example:
    >>> from fiberscope.trained.recipes import RECIPES
    >>> from fiberscope.trained.training_common import recipe_hash
    >>> recipe_hash(RECIPES["svae-mnist"], RECIPES["svae-mnist"]["train"])
    '07b27917dd12ecd1'
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelNotAvailableError, NotTrainedError
from ..loading import cache_spelling, load_subject
from ..subjects.base import Subject
from ..training import TrainConfig, loss_record, save_safetensors
from ..training.data import in_batches
from ..utils import atomic_write_json, jsonable
from .common import file_digest, read_json

__all__ = [
    "Log",
    "claim_workdir",
    "command_for",
    "features",
    "load_recipe_subject",
    "recipe_hash",
    "subject_record",
    "write_model",
]

Log = Callable[[str], None]

#: TrainConfig fields that do not change a run's result (left out of the recipe hash)
NOT_HASHED = ("threads", "checkpoint_every", "log_every")


def command_for(name: str) -> str:
    """The command that trains model ``name`` (recorded in its ``training.json``)."""
    return f"fiberscope trained train {name}"


def recipe_hash(recipe: dict[str, Any], cfg: TrainConfig) -> str:
    """16 hex digits identifying a recipe's settings and training config (what its result depends on)."""
    c = {k: v for k, v in asdict(cfg).items() if k not in NOT_HASHED}
    for later in ("cooldown", "restarts"):  # fields added later: at their defaults they must not orphan earlier runs
        if not c.get(later):
            c.pop(later, None)
    r = {k: v for k, v in recipe.items() if k not in ("train", "summary")}
    if r.get("pairs"):  # specs spelled as when the hashes were first taken (trained:NAME was baseline:NAME)
        r["pairs"] = [[cache_spelling(str(spec)) for spec in pair] for pair in r["pairs"]]
    if isinstance(r.get("ae"), dict):  # the first stage's thread count does not change its result either
        r["ae"] = {**r["ae"], "train": {k: v for k, v in r["ae"].get("train", {}).items() if k not in NOT_HASHED}}
    return hashlib.sha256(json.dumps(jsonable({"recipe": r, "train": c}), sort_keys=True).encode()).hexdigest()[:16]


def claim_workdir(wd: Path, h: str) -> None:
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


def load_recipe_subject(recipe: dict[str, Any]) -> Subject:
    """The recipe's ``subject`` at its ``layer``; a model without weights is a :class:`NotTrainedError`."""
    try:
        return load_subject(recipe["subject"], recipe.get("layer"))
    except ModelNotAvailableError as e:
        raise NotTrainedError(str(e)) from None


def subject_record(subject: Subject, spec: str | None, layer: str | None) -> dict[str, Any]:
    """How a trained model records the φ it was trained with (spec, layer, name; a built-in's weights digest)."""
    rec: dict[str, Any] = {"spec": spec, "layer": subject.layer, "name": subject.name}
    if spec and spec.startswith("builtin:"):
        from ..zoo.registry import weights_dir

        f = weights_dir(spec.removeprefix("builtin:")) / "model.safetensors"
        if f.exists():
            rec["digest"] = file_digest(f)
    return rec


def features(subject: Subject, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """φ(x) of images in [-1, 1], in float32, a batch at a time without gradients."""
    return in_batches(lambda b: subject(b, (-1.0, 1.0)).float(), x, batch_size)


def write_model(
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
            "fiberscope_baseline": 1,  # the format marker of a trained model's config.json (named before the rename)
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
    stages = {**stages, "train": float(meta["wall_seconds"])}
    record = {
        "name": name,
        "command": command,
        "recipe": {k: v for k, v in recipe.items() if k != "train"},
        "recipe_hash": recipe_hash(recipe, cfg),
        "train_config": meta["config"],
        "steps": meta["step"],
        "wall_seconds": meta["wall_seconds"],
        "stage_seconds": stages,
        "total_wall_seconds": float(sum(stages.values())),
        "hardware": meta.get("hardware", []),
        "torch": torch.__version__,
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        **loss_record(meta),
        "eval": evaluation,
    }
    atomic_write_json(out / "training.json", record)
    return record
