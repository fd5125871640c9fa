"""Pixel optimisation: metamers without a prior (Adam on the input, minimising the fiber loss).

The classic way to probe invariances (feature inversion, "model metamers"): start from noise or from
a perturbed query and descend the fiber loss by gradient on the input itself:

    x ← init;  repeat ``iterations``:  x ← Adam(x, ∇_x ℓ(φ(decode(x)), y))

inside the box ``clip`` (the pixel range): by default by clamping after every step
(``box="clamp"``), or through ``x = lo + (hi − lo)·(tanh(w) + 1)/2`` with Adam on ``w``
(``box="tanh"``, as in Carlini–Wagner attacks; slower when the target needs saturated pixels, as
a confident MNIST classifier's logits do).

Nothing pulls ``x`` towards natural images, so it hits the fiber closely and looks unnatural: the
baseline that realism metrics should punish. It optimises the prior's *state*: pixels for a pixel
prior, the latent for a latent prior (which then acts as a decoder-only image parameterisation);
the prior's denoiser is never called. Adam is element-wise and every loss per sample, so each
sample is optimised independently of its batch.

Example:
    >>> from fiberscope import PixelOptimization
    >>> m = PixelOptimization(iterations=100, lr=0.05, init="query", init_std=0.3)
    >>> m.config()["init"], len(m.times(None))
    ('query', 100)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..priors.base import Prior
from ..validation import check_method_settings
from .base import (
    AdamSettings,
    ClipSpec,
    FiberObjective,
    GuidanceMethod,
    LossSetting,
    SampleNoise,
    StepCallback,
    Trajectory,
    adam_step,
    check_clip,
    check_finite,
    clip_range,
)

__all__ = ["PixelOptimization"]


@dataclass
class PixelOptimization(LossSetting, AdamSettings, GuidanceMethod):
    """Adam on the input (pixels, or the latent of a latent prior); no prior.

    Args:
        iterations: Adam steps.
        lr: Adam learning rate (in state units; pixels span 2 in [-1, 1]).
        lr_schedule: ``"constant"`` or ``"cosine"`` (decays to 0 at the last iteration).
        init: ``"noise"`` (centre of the clip range + ``init_std``·ξ) or ``"query"`` (the query's
            state + ``init_std``·ξ).
        init_std: standard deviation of the initial noise.
        loss: the fiber loss minimised (default unsquared ``"l2"``; Adam makes the scale moot).
        clip: keep the state in this box (``"auto"``: the prior's clip range, i.e. the pixel range
            of a pixel prior and none for latents; None: unconstrained).
        box: how the box is kept: ``"clamp"`` (projected steps) or ``"tanh"`` (optimise an
            unconstrained ``w`` with ``x`` a scaled tanh of it).
        adam_betas, adam_eps: Adam settings (:class:`~fiberscope.guidance.base.AdamSettings`).
        track_loss: record the batch-mean fiber loss of every iteration.
    """

    iterations: int = 500
    lr: float = 0.1
    lr_schedule: str = "cosine"
    init: str = "noise"
    init_std: float = 0.5
    clip: ClipSpec = "auto"
    box: str = "clamp"
    track_loss: bool = True

    name = "pixel_opt"
    needs_prior_backward = False

    def __post_init__(self) -> None:
        check_method_settings(self)  # iterations, lr, init_std, adam_eps: types and bounds (one validation layer)
        self.check_loss()
        self.check_adam()
        check_clip(self.clip)
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.init not in ("noise", "query"):
            raise ValueError(f"init must be 'noise' or 'query', got {self.init!r}")
        if self.box not in ("tanh", "clamp"):
            raise ValueError(f"box must be 'tanh' or 'clamp', got {self.box!r}")

    def clip_range(self, prior: Prior) -> tuple[float, float] | None:
        """The box on ``prior`` (see :func:`~fiberscope.guidance.base.clip_range`)."""
        return clip_range(self.clip, prior)

    def times(self, prior: Any) -> list[float]:
        """One entry per Adam iteration (for progress bars; there is no diffusion time)."""
        return [float(k) for k in range(self.iterations)]

    def initial_state(self, prior: Prior, objective: FiberObjective, noise: SampleNoise) -> torch.Tensor:
        if self.init == "query":
            q = objective.query_state
            q = q.expand(len(noise), *q.shape[1:]) if q.shape[0] == 1 else q
            return q + self.init_std * noise.randn(q.shape[1:])
        clip = self.clip_range(prior)
        centre = 0.0 if clip is None else (clip[0] + clip[1]) / 2
        x = centre + self.init_std * noise.randn(prior.state_shape)
        return x if clip is None else x.clamp(*clip)

    def run(
        self,
        prior: Prior,
        objective: FiberObjective,
        x_init: torch.Tensor,
        noise: SampleNoise,
        callback: StepCallback | None = None,
    ) -> Trajectory:
        clip = self.clip_range(prior)
        tanh = clip is not None and self.box == "tanh"
        lo, hi = clip if clip is not None else (0.0, 1.0)

        def to_x(w: torch.Tensor) -> torch.Tensor:
            return lo + (hi - lo) * (torch.tanh(w) + 1) / 2 if tanh else w

        x = x_init.detach().float()
        if tanh:  # the unconstrained variable whose scaled tanh is x
            w = torch.atanh(((x.clamp(lo, hi) - lo) / (hi - lo) * 2 - 1).clamp(-0.999, 0.999))
        else:
            w = x.clone()
        m = torch.zeros_like(w)
        v = torch.zeros_like(w)
        history: list[float] = []
        n = self.iterations
        for k in range(1, n + 1):
            with torch.enable_grad():
                wg = w.requires_grad_(True)
                cost = objective.loss(to_x(wg))
                check_finite(cost, "the fiber loss", k - 1, float(k - 1))
                (g,) = torch.autograd.grad(cost.sum(), wg)
            w = w.detach()
            check_finite(g, "the input gradient", k - 1, float(k - 1))
            lr = self.lr if self.lr_schedule == "constant" else self.lr * 0.5 * (1 + math.cos(math.pi * (k - 1) / n))
            adam_step(w, g, m, v, k, lr, self.adam_betas, self.adam_eps)
            if clip is not None and not tanh:
                w.clamp_(*clip)
            with torch.no_grad():
                x = to_x(w)
            if self.track_loss:
                history.append(float(cost.detach().mean()))
            if callback is not None:
                callback(
                    {"step": k - 1, "t": float(k - 1), "x": x, "x0": x, "lr": lr, "cost": cost.detach(), "steps": n}
                )
        return Trajectory(sample=x, x=x, x0=x, loss_history=history)
