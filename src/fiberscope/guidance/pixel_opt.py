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

from ..losses import LossFn
from ..priors.base import Prior
from ..validation import check_method_settings
from .base import FiberObjective, GuidanceMethod, SampleNoise, StepCallback, Trajectory, check_finite
from .tfg import _check_int, _check_number

__all__ = ["PixelOptimization"]


@dataclass
class PixelOptimization(GuidanceMethod):
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
        adam_betas, adam_eps: Adam settings.
    """

    iterations: int = 500
    lr: float = 0.1
    lr_schedule: str = "cosine"
    init: str = "noise"
    init_std: float = 0.5
    loss: str | LossFn = "l2"
    clip: tuple[float, float] | str | None = "auto"
    box: str = "clamp"
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    track_loss: bool = True

    name = "pixel_opt"

    def __post_init__(self) -> None:
        check_method_settings(self)
        _check_int("iterations", self.iterations, 1)
        _check_number("lr", self.lr, strict=True)
        _check_number("init_std", self.init_std)
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.init not in ("noise", "query"):
            raise ValueError(f"init must be 'noise' or 'query', got {self.init!r}")
        if not (isinstance(self.clip, str) and self.clip == "auto") and self.clip is not None:
            try:
                c = tuple(float(v) for v in self.clip)
            except (TypeError, ValueError):
                c = ()
            if len(c) != 2 or not c[0] < c[1]:
                raise ValueError(f"clip must be 'auto', None or (lo, hi) with lo < hi, got {self.clip!r}")
        if self.box not in ("tanh", "clamp"):
            raise ValueError(f"box must be 'tanh' or 'clamp', got {self.box!r}")
        b1, b2 = self.adam_betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")

    def clip_range(self, prior: Prior) -> tuple[float, float] | None:
        if isinstance(self.clip, str):
            return prior.clip_range
        return None if self.clip is None else (float(self.clip[0]), float(self.clip[1]))

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
        x = centre + self.init_std * noise.randn(prior.data_shape)
        return x if clip is None else x.clamp(*clip)

    def run(
        self,
        prior: Prior,
        objective: FiberObjective,
        x_init: torch.Tensor,
        generator: SampleNoise,
        callback: StepCallback | None = None,
    ) -> Trajectory:
        clip = self.clip_range(prior)
        tanh = clip is not None and self.box == "tanh"
        lo, hi = clip if clip is not None else (0.0, 1.0)

        def to_x(w: torch.Tensor) -> torch.Tensor:
            return lo + (hi - lo) * (torch.tanh(w) + 1) / 2 if tanh else w

        b1, b2 = self.adam_betas
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
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v / (1 - b2**k)).sqrt_().add_(self.adam_eps)
            w.addcdiv_(m, denom, value=-lr / (1 - b1**k))
            if clip is not None and not tanh:
                w.clamp_(*clip)
            with torch.no_grad():
                x = to_x(w)
            if self.track_loss:
                history.append(float(cost.detach().mean()))
            if callback is not None:
                callback(
                    {"step": k - 1, "t": float(k - 1), "x": x, "x0": x, "gamma": 0.0, "cost": cost.detach(), "steps": n}
                )
        return Trajectory(sample=x, x=x, x0=x, loss_history=history)
