"""Training of the supervised VAE with nuisance dimensions (Nguyen & Martínez 2020).

:func:`fit_svae` trains the ELBO plus α · cross-entropy of a classifier head on the task
dimensions; the fiber of its own head is then sampled by redrawing the nuisance dimensions.
:func:`evaluate_svae` measures the head's accuracy and the fiber loss of one sample per query,
under its own head and (optionally) a reference classifier.

Example:
    >>> from fiberscope.trained.recipes import RECIPES
    >>> RECIPES["svae-mnist"]["task_dims"], RECIPES["svae-mnist"]["nuisance_dims"]
    (8, 24)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..loading import load_subject
from ..losses import sq_l2
from ..subjects.base import Subject
from ..training import TrainConfig, run_training
from ..training.data import image_tensors, split_labels, with_labels
from .common import rms_fiber_loss
from .svae import SupervisedVAE
from .training_common import Log, claim_workdir, command_for, features, recipe_hash, write_model

__all__ = ["evaluate_svae", "fit_svae", "train_svae"]


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
    h = recipe_hash(recipe, cfg)
    wd = out / "train"
    claim_workdir(wd, h)
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
    data = with_labels(images, labels)
    beta, alpha = float(recipe["beta"]), float(recipe["alpha"])

    def loss(m: Any, batch: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return m.loss(*split_labels(batch, shape), g, beta, alpha)

    ema, meta = run_training(wd, net, loss, data, cfg, max_minutes=max_minutes, log=log)
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
        "own_subject": f"trained:{name}",
    }
    rec = write_model(
        name, recipe, cfg, out, ema, "SupervisedVAE", kwargs, config, meta, stages, ev, command or command_for(name)
    )
    return {**meta, "finished": True, "record": rec}


def evaluate_svae(
    net: nn.Module, images: torch.Tensor, labels: torch.Tensor, reference: Subject | None = None, seed: int = 1234
) -> dict[str, Any]:
    """Head accuracy, reconstruction error and the fiber loss of one sample per query (own head, reference)."""
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
            fr, fq = features(reference, x), features(reference, images)
            out["fiber_rms_reference"] = float(rms_fiber_loss(fr, fq).mean())
            out["fiber_sq_l2_reference"] = float(sq_l2(fr, fq).mean())
            out["reference"] = reference.name + (f"@{reference.layer}" if reference.layer else "")
    return out


def train_svae(
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
    """An ``svae`` recipe: the data, a reference classifier when one is available, then :func:`fit_svae`."""
    t0 = time.perf_counter()
    x, y = image_tensors(recipe["dataset"], "train", data_root)
    xt, yt = image_tensors(recipe["dataset"], "test", data_root)
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
