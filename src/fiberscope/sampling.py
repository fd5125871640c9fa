"""The one batch driver: rows of (query, seed) through a guidance method, in batches of one fixed shape.

:func:`fiberscope.sample_fiber` (one query, ``n`` seeds), the bench (several queries × ``n`` seeds
in each batch, :func:`fiberscope.bench.sample_queries`) and the audit (through ``sample_fiber``)
all draw their samples with :func:`draw_rows`. A row is one sample: the objective of its query
(its target φ(query), computed once per query) and its seed. Rows are cut into batches of
``batch_size``; a last partial batch is padded with repeats of its own rows, whose results are
dropped (from the images, the features, the step callback, the call counts and the loss history).
Every row's arithmetic is its own (per-sample losses, noise and Adam state; see DESIGN.md, "Fiber
loss"), so a row drawn again in any batch of the same shape, with other rows or alone, is
bit-identical on the same device.

Example:
    >>> import torch, fiberscope as fs
    >>> prior, subject = fs.GaussianPrior(dim=4), fs.load_subject(lambda x: x[:, :2])
    >>> a, b = (fs.FiberObjective(prior, subject, torch.full((1, 4), v)) for v in (0.5, -0.5))
    >>> out = draw_rows(prior, fs.DPS(steps=5), [a, a, b], seeds=[1, 2, 3], batch_size=2)
    >>> out.images.shape, len(out.loss_history), out.calls[2]["prior_backwards"]   # 2 batches, the last padded
    (torch.Size([3, 4]), 2, 5.0)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .acceptance import redraw_seed
from .counting import CallCounter
from .guidance.auto import unguided_reference
from .guidance.base import FiberObjective, GuidanceMethod, SampleNoise
from .losses import LOSSES
from .priors.base import Prior

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "Draws",
    "Redraws",
    "draw_rows",
    "pad_seeds",
    "real_rows",
    "redraw_misses",
    "sample_seeds",
    "sum_calls",
]

#: Samples per guidance batch unless ``batch_size`` says otherwise. It does not depend on ``n``, so a
#: sample drawn again alone from its seed runs through the same kernels (see :func:`~fiberscope.sample_fiber`).
DEFAULT_BATCH_SIZE = 8


def sample_seeds(seed: int, n: int) -> list[int]:
    """Per-sample seeds derived from one run seed (independent streams, no overlaps between runs)."""
    out = []
    for i in range(n):
        a, b = np.random.SeedSequence([int(seed), i]).generate_state(2, np.uint32)
        out.append(int((int(a) << 31) ^ int(b)) & ((1 << 62) - 1))
    return out


def pad_seeds(seeds: Sequence[int], size: int) -> list[int]:
    """``seeds`` repeated cyclically to ``size`` entries (the padding rows of a last partial batch)."""
    seeds = list(seeds)
    return [seeds[i % len(seeds)] for i in range(max(size, len(seeds)))]


def real_rows(info: dict[str, Any], real: int, size: int) -> dict[str, Any]:
    """A step callback's dict with every per-sample tensor cut to the ``real`` rows of a padded batch."""
    if real >= size:
        return info
    return {
        k: v[:real] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == size else v
        for k, v in info.items()
    }


def sum_calls(calls: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Network calls of many rows (or batches) added up, key by key."""
    out: dict[str, float] = {}
    for c in calls:
        for k, v in c.items():
            out[k] = out.get(k, 0.0) + v
    return out


@dataclass
class Draws:
    """What :func:`draw_rows` drew: one entry per requested row, in order, the padding dropped.

    Attributes:
        states: ``[R, ...]`` the method's outputs (latents for latent priors), on the prior's device.
        images: ``[R, C, H, W]`` float32, the decoded states in the prior's data range.
        features: ``[R, ...]`` float32, φ of the images (computed in the batch that drew them).
        calls: per row, its share of its batch's network calls (every row of a batch costs the same):
            the guidance loop, the final decoding and φ of the result; not the padding, not φ(query).
        loss_history: per batch, the mean over its real rows of the cost after each step.
        reference: ``[R, ...]`` φ of the short unguided chain from each row's noise (``reference=True``).
        reference_calls: per row, the network calls of that reference chain.
    """

    states: torch.Tensor
    images: torch.Tensor
    features: torch.Tensor
    calls: list[dict[str, float]]
    loss_history: list[list[float]]
    reference: torch.Tensor | None = None
    reference_calls: list[dict[str, float]] = field(default_factory=list)


def _share(counter: CallCounter, size: int) -> dict[str, float]:
    return {k: v / size for k, v in counter.as_dict().items()}


def draw_rows(
    prior: Prior,
    method: GuidanceMethod,
    objectives: Sequence[FiberObjective],
    seeds: Sequence[int],
    batch_size: int,
    callback: Callable[[dict[str, Any]], Any] | None = None,
    *,
    device: torch.device | str | None = None,
    reference: bool = False,
    first_batch: int = 0,
) -> Draws:
    """Draw one sample per row: row ``i`` steers ``seeds[i]``'s noise towards ``objectives[i]``'s target.

    Args:
        prior: the prior every row samples.
        method: the guidance method (the same settings for every row).
        objectives: per row, the objective of its query; rows of one query share one object (its
            target is computed once), rows of other queries may sit in the same batch.
        seeds: per row, the seed of its noise stream.
        batch_size: rows per guidance batch; the last batch is padded to this size.
        callback: called after every step with the method's dict (see :mod:`fiberscope.guidance.base`)
            cut to the batch's real rows, plus ``batch`` (its index, from ``first_batch``).
        device: where the noise goes (default: the prior's device).
        reference: also run the short unguided chain from each row's noise
            (:func:`~fiberscope.guidance.auto.unguided_reference`), counted apart.
        first_batch: the index of the first batch in the callback (a redraw continues a run's count).

    Returns:
        :class:`Draws`.
    """
    if len(objectives) != len(seeds):
        raise ValueError(f"one objective per row: {len(objectives)} objectives for {len(seeds)} seeds")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    dev = torch.device(device) if device is not None else prior.device
    subject = objectives[0].subject if objectives else None
    saved = prior.counter, getattr(subject, "counter", None)
    states: list[torch.Tensor] = []
    images: list[torch.Tensor] = []
    features: list[torch.Tensor] = []
    refs: list[torch.Tensor] = []
    calls: list[dict[str, float]] = []
    ref_calls: list[dict[str, float]] = []
    histories: list[list[float]] = []

    def attach(counter: CallCounter) -> None:
        prior.counter = counter
        if subject is not None:
            subject.counter = counter

    try:
        for b, start in enumerate(range(0, len(seeds), batch_size)):
            rows = pad_seeds(range(start, min(start + batch_size, len(seeds))), batch_size)  # row indices, padded
            real = min(batch_size, len(seeds) - start)
            objective = FiberObjective.rows([objectives[i] for i in rows])
            noise = SampleNoise([seeds[i] for i in rows], dev)
            costs: list[float] = []

            def cb(info: dict[str, Any], _b: int = first_batch + b, _real: int = real, _c: list[float] = costs) -> None:
                info = real_rows(info, _real, batch_size)
                if isinstance(info.get("cost"), torch.Tensor):
                    _c.append(float(info["cost"].mean()))
                if callback is not None:
                    callback({**info, "batch": _b})

            counter = CallCounter()
            attach(counter)
            x_init = method.initial_state(prior, objective, noise)
            if reference:
                rc = CallCounter()
                attach(rc)  # its cost is reported on its own
                refs.append(unguided_reference(prior, objective, x_init)[:real].cpu())
                ref_calls += [_share(rc, batch_size) for _ in range(real)]
                attach(counter)
            traj = method.run(prior, objective, x_init, noise, cb)
            sample = traj.sample.detach()
            with torch.no_grad():  # the final decoding and φ are counted, as always
                imgs = prior.decode(sample).float()
                feats = objective.features_of_data(imgs).float()
            states.append(sample[:real])
            images.append(imgs[:real])
            features.append(feats[:real])
            calls += [_share(counter, batch_size) for _ in range(real)]
            # the method's own history is a mean over the padded batch: the real rows' means instead
            padded = real < batch_size and len(costs) == len(traj.loss_history)
            histories.append(costs if padded else traj.loss_history)
    finally:
        prior.counter = saved[0]
        if subject is not None:
            subject.counter = saved[1]
    return Draws(
        states=torch.cat(states),
        images=torch.cat(images),
        features=torch.cat(features),
        calls=calls,
        loss_history=histories,
        reference=torch.cat(refs) if refs else None,
        reference_calls=ref_calls,
    )


@dataclass
class Redraws:
    """What :func:`redraw_misses` did.

    Attributes:
        in_fiber: ``[R]`` bool, per row after the redraws: loss ≤ tolerance.
        rounds: rounds run (≤ the rounds allowed; fewer when every row got in).
        redrawn: samples drawn again, over all rounds.
        calls: network calls of every redraw, added up.
        loss_history: per batch of the redraws, as :attr:`Draws.loss_history`.
    """

    in_fiber: torch.Tensor
    rounds: int
    redrawn: int
    calls: dict[str, float]
    loss_history: list[list[float]]


def redraw_misses(
    prior: Prior,
    method: GuidanceMethod,
    objectives: Sequence[FiberObjective],
    seeds: list[int],
    batch_size: int,
    drawn: Draws,
    losses: torch.Tensor,
    tolerance: float | torch.Tensor,
    rounds: int,
    metric: str,
    callback: Callable[[dict[str, Any]], Any] | None = None,
    *,
    device: torch.device | str | None = None,
    first_batch: int = 0,
) -> Redraws:
    """Draw the rows outside the fiber again with new seeds, up to ``rounds`` times; keep the better of each pair.

    A row misses when its ``losses`` entry (fiber loss in ``metric``) is above ``tolerance`` (a
    number, or one per row). Its redraw gets :func:`~fiberscope.acceptance.redraw_seed` of its seed
    and the round, and replaces it, in ``drawn``, ``losses`` and ``seeds`` (all updated in place),
    when its loss is lower.
    """
    in_fiber = losses <= tolerance
    spent: list[dict[str, float]] = []
    histories: list[list[float]] = []
    done, redrawn = 0, 0
    for r in range(1, rounds + 1):
        miss = (~in_fiber).nonzero().flatten().tolist()
        if not miss:
            break
        done = r
        redrawn += len(miss)
        rows = [objectives[i] for i in miss]
        new_seeds = [redraw_seed(seeds[i], r) for i in miss]
        first = first_batch + len(histories)
        again = draw_rows(prior, method, rows, new_seeds, batch_size, callback, device=device, first_batch=first)
        spent += again.calls
        histories += again.loss_history
        target = torch.cat([o.target for o in rows]).float()
        new_losses = LOSSES[metric](again.features, target).cpu()
        for j, i in enumerate(miss):  # a redraw replaces the miss only when it is better
            if new_losses[j] < losses[i]:
                drawn.states[i], drawn.images[i] = again.states[j], again.images[j]
                drawn.features[i] = again.features[j]
                losses[i] = new_losses[j]
                seeds[i] = new_seeds[j]
        in_fiber = losses <= tolerance
    return Redraws(in_fiber=in_fiber, rounds=done, redrawn=redrawn, calls=sum_calls(spent), loss_history=histories)
