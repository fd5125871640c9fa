"""Plain sampling from the prior through the same loop and update rules as every guided method."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..priors.base import Prior
from ..validation import check_method_settings
from .base import FiberObjective, GuidanceMethod, SampleNoise, StepCallback, StepRule, Trajectory, check_finite

__all__ = ["Unguided"]


@dataclass
class Unguided(GuidanceMethod):
    """Unguided sampling: what the prior draws when nothing steers it (the fiber loss baseline).

    Args:
        steps: denoising steps on the prior's uniform grid.
        sampler: ``"ddim"``, ``"ancestral"`` or ``"euler"``.
        eta: DDIM stochasticity.
        variance: ``"small"``, ``"large"`` or ``"learned_range"``.
        clip: clip x̂0 to the prior's range (``"auto"``), to ``(lo, hi)``, or not at all (None).
        output: ``"x0"`` or ``"state"`` (identical at the end of a full trajectory).
        init, strength: ``"noise"``, or ``"sdedit"`` from the query noised to ``strength``.

    Example:
        >>> from fiberscope import Unguided
        >>> Unguided(steps=50).config()["steps"]
        50
    """

    steps: int = 100
    sampler: str = "ddim"
    eta: float = 0.0
    variance: str = "small"
    clip: tuple[float, float] | str | None = "auto"
    output: str = "x0"
    init: str = "noise"
    strength: float = 1.0

    name = "unguided"
    needs_gradients = False

    def __post_init__(self) -> None:
        check_method_settings(self)
        if self.init not in ("noise", "sdedit") or not 0 < self.strength <= 1:
            raise ValueError("init must be 'noise' or 'sdedit' and strength in (0, 1]")
        StepRule(self.sampler, self.eta, self.variance).validate()

    def run(
        self,
        prior: Prior,
        objective: FiberObjective,
        x_init: torch.Tensor,
        generator: SampleNoise,
        callback: StepCallback | None = None,
    ) -> Trajectory:
        times = self.times(prior)
        rule = StepRule(self.sampler, self.eta, self.variance)
        table = rule.prepare(prior, times)
        clip = prior.clip_range if isinstance(self.clip, str) else self.clip
        x = x_init.float()
        x0 = x
        with torch.no_grad():
            for i, t in enumerate(times):
                d = prior.denoise(x, t)
                x0 = d.x0 if clip is None else d.x0.clamp(*clip)
                x = rule.step(x, x0, d, table[i], table[i + 1], generator)
                check_finite(x, "the state", i, t)
                if callback is not None:
                    callback({"step": i, "t": t, "x": x, "x0": x0, "gamma": 0.0, "cost": None, "steps": len(times)})
        return Trajectory(sample=x0 if self.output == "x0" else x, x=x, x0=x0)
