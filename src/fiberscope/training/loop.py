"""The training loop: AdamW, a warm-up + cosine learning rate with cool-downs and warm restarts, EMA.

Every training fiberscope does (the zoo's models, the trained models) runs through
:func:`run_training`: it trains from a seed, writes a checkpoint (:class:`~fiberscope.training.Checkpoint`,
safetensors + JSON) every few hundred steps, and picks up where it stopped when run again, so a long
CPU training can span several sessions and still follow exactly the path of an uninterrupted one.

Example:
    >>> import torch, tempfile
    >>> from fiberscope.training import TrainConfig, run_training
    >>> net = torch.nn.Linear(2, 1)
    >>> data = torch.randn(64, 3)
    >>> def loss(m, batch, g):
    ...     return ((m(batch[:, :2]) - batch[:, 2:]) ** 2).mean()
    >>> cfg = TrainConfig(steps=20, batch_size=16, warmup=5, log_every=10)
    >>> ema, meta = run_training(tempfile.mkdtemp(), net, loss, data, cfg, progress=False)
    >>> meta["step"], [step for step, _ in meta["losses"]]
    (20, [10, 20])
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from .checkpoint import Checkpoint

__all__ = ["TrainConfig", "batches", "ema_update", "hardware_string", "loss_record", "lr_at", "run_training"]


@dataclass
class TrainConfig:
    """Optimisation settings of one training run (every zoo recipe and trained model has one)."""

    steps: int = 10_000
    batch_size: int = 128
    lr: float = 5e-4
    warmup: int = 200
    min_lr_ratio: float = 0.1
    cooldown: int = 0
    # Warm restarts: ``((start_step, {"lr": ..., "warmup": ..., "cooldown": ...}), ...)``. At each start
    # the schedule begins again with those fields changed, running to the next start (or ``steps``).
    # This is how a run whose schedule has ended is extended while its recipe still reproduces it.
    restarts: tuple[tuple[int, dict[str, Any]], ...] = ()
    weight_decay: float = 0.0
    ema: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 250
    log_every: int = 50
    threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def hardware_string() -> str:
    """A one-line description of where training ran (recorded in model cards)."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA), torch {torch.__version__}"
    n = torch.get_num_threads()
    return f"CPU {platform.machine()}, {n} thread{'s' if n != 1 else ''}, torch {torch.__version__}"


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio · lr`` at ``cfg.steps``.

    With ``cooldown > 0`` the rate is further scaled linearly to zero over the last ``cooldown``
    steps. Because it touches only the tail, a run trained at a constant rate can be extended with
    a cool-down and still be reproduced exactly from scratch by the revised recipe. ``restarts``
    extend a run whose schedule has already ended: each starts the schedule again (from step 0 of
    its own segment, with its own ``lr``/``warmup``/``cooldown``/...) and leaves every earlier step
    as it was.
    """
    bounds = [0, *(int(s0) for s0, _ in cfg.restarts), cfg.steps]
    if any(b >= c for b, c in itertools.pairwise(bounds)):
        raise ValueError(f"restart steps must increase and lie inside (0, steps={cfg.steps}); got {bounds[1:-1]}")
    unknown = {k for _, changes in cfg.restarts for k in changes} - {"lr", "warmup", "min_lr_ratio", "cooldown"}
    if unknown:  # checked at every step, so a bad recipe fails at its first step, not hours later
        raise ValueError(f"a restart may change lr, warmup, min_lr_ratio and cooldown only; got {sorted(unknown)}")
    i = sum(step >= b for b in bounds[1:-1])
    seg = replace(cfg, **cfg.restarts[i - 1][1]) if i else cfg
    return _segment_lr(step - bounds[i], bounds[i + 1] - bounds[i], seg)


def _segment_lr(step: int, steps: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = min(1.0, (step - cfg.warmup) / max(1, steps - cfg.warmup))
    lr = cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))
    if cfg.cooldown > 0 and step >= steps - cfg.cooldown:
        lr *= max(0.0, (steps - step) / cfg.cooldown)
    return lr


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """Exponential moving average of parameters, with the usual (1 + n) / (10 + n) warm-up."""
    d = min(decay, (1 + step) / (10 + step))
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach(), 1 - d)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def batches(n: int, batch_size: int, seed: int, start_step: int) -> Iterator[torch.Tensor]:
    """Index batches from seeded per-epoch permutations, resumable at any step."""
    per_epoch = n // batch_size
    step = start_step
    while True:
        epoch, k = divmod(step, per_epoch)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        yield perm[k * batch_size : (k + 1) * batch_size]
        step += 1


def run_training(
    workdir: str | os.PathLike[str],
    model: nn.Module,
    loss_fn: Callable[[Any, torch.Tensor, torch.Generator], torch.Tensor],
    data: torch.Tensor,
    cfg: TrainConfig,
    *,
    extra_modules: dict[str, nn.Module] | None = None,
    max_minutes: float | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[Any, dict[str, Any]]:
    """Train ``model`` on ``data`` (a tensor indexed on dim 0) with AdamW, cosine LR and EMA.

    ``loss_fn(model, batch, generator)`` returns a scalar. The random stream of step ``k`` is
    seeded from ``(cfg.seed, k)``, so a resumed run follows exactly the same path as an
    uninterrupted one. Returns the EMA model (the one to ship) and the final metadata.
    Stops after ``max_minutes`` of wall time (the checkpoint then lets a later call continue).

    Raises:
        ValueError: ``cfg.steps`` below 1, or a batch larger than the data.
        FloatingPointError: the loss is not finite.
    """
    if cfg.steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {cfg.steps}")
    if len(data) < cfg.batch_size:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the training set ({len(data)} rows)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ckpt = Checkpoint(workdir)
    ema = copy.deepcopy(model).requires_grad_(False)
    modules = {"model": model, "ema": ema, **(extra_modules or {})}
    params = [p for m in [model, *(extra_modules or {}).values()] for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    meta: dict[str, Any] = {"step": 0, "wall_seconds": 0.0, "config": asdict(cfg), "losses": []}
    if ckpt.exists():
        meta = ckpt.load(modules, opt)
        meta["config"] = asdict(cfg)  # the recipe in effect (its step count may have been revised)
        log(f"resuming from step {meta['step']} ({meta['wall_seconds'] / 60:.1f} min so far)")
    meta.setdefault("hardware", [])
    hw = hardware_string()
    if hw not in meta["hardware"] and int(meta["step"]) < cfg.steps:  # record only where steps are run
        meta["hardware"].append(hw)
    step = int(meta["step"])
    t_start = time.time()
    t_seg = time.time()
    running = 0.0
    model.train()
    it = batches(len(data), cfg.batch_size, cfg.seed, step)
    while step < cfg.steps:
        idx = next(it)
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = loss_fn(model, data[idx], g)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {step}; lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        ema_update(ema, model, cfg.ema, step)
        step += 1
        running += loss.item()
        if step % cfg.log_every == 0:
            avg = running / cfg.log_every
            running = 0.0
            meta["losses"].append([step, round(avg, 6)])
            if progress:
                el = meta["wall_seconds"] + time.time() - t_seg
                log(f"step {step}/{cfg.steps} loss {avg:.5f} lr {lr_at(step, cfg):.2e} [{el / 60:.1f} min]")
        out_of_time = max_minutes is not None and time.time() - t_start > 60 * max_minutes
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or out_of_time:
            meta["wall_seconds"] += time.time() - t_seg
            t_seg = time.time()
            meta["step"] = step
            ckpt.save(modules, opt, meta)
        if out_of_time:
            log(f"stopping at step {step} after {max_minutes} min; run again to continue")
            break
    model.eval()
    ema.eval()
    return ema, meta


def loss_record(meta: dict[str, Any]) -> dict[str, Any]:
    """The last logged loss and a loss curve of about 40 points, for a finished run's ``training.json``.

    Example:
        >>> loss_record({"losses": [[50, 0.9], [100, 0.5]]})
        {'final_loss': 0.5, 'loss_curve': [[50, 0.9], [100, 0.5]]}
    """
    losses = meta.get("losses", [])
    return {"final_loss": losses[-1][1] if losses else None, "loss_curve": losses[:: max(1, len(losses) // 40)]}
