"""Training loops for the built-in zoo: resumable, deterministic, CPU-friendly.

Every recipe trains from a seed, writes a checkpoint (safetensors + JSON, atomically) every few
hundred steps into its work directory, and picks up where it stopped when run again, so a long
CPU training can span several sessions. ``fiberscope zoo train NAME`` drives these functions with
the settings recorded in each model card (:mod:`fiberscope.zoo.recipes`).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..utils import atomic_write_json, atomic_writer

__all__ = ["Checkpoint", "TrainConfig", "batches", "ema_update", "hardware_string", "lr_at", "run_training"]


@dataclass
class TrainConfig:
    """Optimisation settings shared by every zoo recipe."""

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


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"param_groups": sd["param_groups"], "state": {}}
    for pid, st in sd["state"].items():
        meta["state"][str(pid)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v.contiguous()
                meta["state"][str(pid)][k] = "tensor"
            else:
                meta["state"][str(pid)][k] = v
    return tensors, meta


def _unflatten_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state = {}
    for pid, st in meta["state"].items():
        state[int(pid)] = {k: (tensors[f"opt.{pid}.{k}"] if v == "tensor" else v) for k, v in st.items()}
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


class Checkpoint:
    """Atomic, resumable training state in ``workdir``: ``state.safetensors`` + ``state.json``.

    Holds named modules (model, EMA copy, ...), one optimiser, the step count, the wall time
    spent so far and a free-form log. No pickle is involved anywhere.
    """

    def __init__(self, workdir: str | os.PathLike[str]):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tensors_path = self.dir / "state.safetensors"
        self.meta_path = self.dir / "state.json"

    def exists(self) -> bool:
        return self.meta_path.exists() and self.tensors_path.exists()

    def save(self, modules: dict[str, nn.Module], opt: torch.optim.Optimizer | None, meta: dict[str, Any]) -> None:
        tensors: dict[str, torch.Tensor] = {}
        for name, m in modules.items():
            for k, v in m.state_dict().items():
                tensors[f"{name}.{k}"] = v.detach().contiguous().cpu()
        meta = dict(meta)
        if opt is not None:
            ot, om = _flatten_optimizer(opt)
            tensors.update(ot)
            meta["optimizer"] = om
        with atomic_writer(self.tensors_path, "wb") as f:
            f.write(_safetensors_bytes(tensors))
        atomic_write_json(self.meta_path, meta)

    def load(self, modules: dict[str, nn.Module], opt: torch.optim.Optimizer | None) -> dict[str, Any]:
        meta = json.loads(self.meta_path.read_text())
        tensors = load_file(str(self.tensors_path))
        for name, m in modules.items():
            prefix = f"{name}."
            m.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
        if opt is not None and "optimizer" in meta:
            _unflatten_optimizer(opt, tensors, meta["optimizer"])
        return meta


def _safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save(tensors)


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
    """
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


def diffusion_eps_loss(alphas_cumprod: torch.Tensor, snr_gamma: float | None = 5.0):
    """ε-prediction loss with min-SNR-γ weighting (Hang et al. 2023), for ``model(x_t, t) -> ε``."""

    def loss(model: nn.Module, x0: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b = x0.shape[0]
        t = torch.randint(0, len(alphas_cumprod), (b,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        a = alphas_cumprod[t].view(-1, *([1] * (x0.dim() - 1)))
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        pred = model(xt, t)
        err = (pred - eps).pow(2).flatten(1).mean(1)
        if snr_gamma is not None:
            snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
            err = err * torch.clamp(snr, max=snr_gamma) / snr
        return err.mean()

    return loss


def flow_velocity_loss(num_train_timesteps: int = 1000):
    """Rectified-flow loss, diffusers convention: x_σ = (1−σ)x0 + σε, target v = ε − x0, t = 1000σ.

    σ is drawn logit-normally (as in Stable Diffusion 3), which spends training on mid noise levels.
    """

    def loss(model: nn.Module, x0: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b = x0.shape[0]
        sigma = torch.sigmoid(torch.randn(b, generator=g))
        eps = torch.randn(x0.shape, generator=g)
        s = sigma.view(-1, *([1] * (x0.dim() - 1)))
        xt = (1 - s) * x0 + s * eps
        pred = model(xt, sigma * num_train_timesteps)
        return F.mse_loss(pred, eps - x0)

    return loss


def save_safetensors(
    path: str | os.PathLike[str],
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
    half: bool = False,
) -> None:
    """Write ``tensors`` to ``path`` atomically (contiguous CPU tensors).

    ``half=True`` stores floating-point tensors as float16 (loading casts them back into the
    module's dtype); the zoo uses it for its largest entries to stay within its size budget.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")

    def prep(v: torch.Tensor) -> torch.Tensor:
        v = v.detach().contiguous().cpu()
        return v.half() if half and v.is_floating_point() else v

    save_file({k: prep(v) for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)
