"""Plain sampling from the prior through the same loop and update rules as every guided method."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..priors.base import Prior
from .base import FiberObjective, SampleNoise, SamplingSettings, StepCallback, Trajectory, check_finite

__all__ = ["Unguided"]


@dataclass
class Unguided(SamplingSettings):
    """Unguided sampling: what the prior draws when nothing steers it (the fiber loss's reference level).

    Its settings are exactly the shared :class:`~fiberscope.guidance.base.SamplingSettings` (steps,
    sampler, eta, variance, clip, output, init, strength); ``output="x0"`` and ``"state"`` are
    identical at the end of a full trajectory.

    Example:
        >>> from fiberscope import Unguided
        >>> Unguided(steps=50).config()["steps"]
        50
    """

    name = "unguided"
    needs_gradients = False
    needs_prior_backward = False

    def __post_init__(self) -> None:
        self.check_sampling()

    def run(
        self,
        prior: Prior,
        objective: FiberObjective,
        x_init: torch.Tensor,
        noise: SampleNoise,
        callback: StepCallback | None = None,
    ) -> Trajectory:
        times = self.times(prior)
        rule = self.rule
        table = rule.prepare(prior, times)
        clip = self.clip_range(prior)
        x = x_init.float()
        x0 = x
        with torch.no_grad():
            for i, t in enumerate(times):
                d = prior.denoise(x, t)
                x0 = d.x0 if clip is None else d.x0.clamp(*clip)
                x = rule.step(x, x0, d, table[i], table[i + 1], noise)
                check_finite(x, "the state", i, t)
                if callback is not None:
                    callback({"step": i, "t": t, "x": x, "x0": x0, "cost": None, "steps": len(times)})
        return Trajectory(sample=x0 if self.output == "x0" else x, x=x, x0=x0)
