"""DPS: diffusion posterior sampling (Chung et al., ICLR 2023), per sample.

Each step takes the ordinary update from x_t and then moves the result against the gradient of the
fiber loss of the prior's clean estimate, backpropagated through the prior:

    x_s = step(x_t, x̂0(x_t), ε̂) − ζ · ∇_{x_t} ℓ(φ(decode(x̂0(x_t))), y)

With the default unsquared ``ℓ = ‖φ − y‖`` this is the original's ``ζ·∇‖y − A(x̂0)‖`` — except that
the norm is each sample's own: the original takes the norm of the *whole batch* tensor, which
couples the samples of a batch (sample i's step size would depend on the others). In TFG's
unified form DPS is (ρ = ζ, μ = 0, σ = 0, R = 1). Cost per step: 1 prior forward + 1 backward,
1 subject forward + 1 backward.

Example:
    >>> from fiberscope import DPS
    >>> DPS(steps=100, scale=0.5).config()["scale"]
    0.5
"""

from __future__ import annotations

from dataclasses import dataclass

from ..priors.base import Prior
from .tfg import StepPlan, Table, TrainingFreeGuidance

__all__ = ["DPS"]


@dataclass
class DPS(TrainingFreeGuidance):
    """Diffusion posterior sampling with per-sample losses and step sizes.

    Args:
        steps: denoising steps (the original uses 1000 ancestral steps; ζ grows as steps shrink).
        scale: ζ, the step size on ``∇_{x_t} ℓ`` (the original ships 0.3 for its image tasks).
        sampler, eta, variance: the update rule; the default DDIM with η = 1 is DDPM-like.
        clip, output, init, strength: :class:`~fiberscope.guidance.base.SamplingSettings`.
        loss: the fiber loss ℓ (default unsquared ``"l2"``, the original's norm).
    """

    scale: float = 1.0
    eta: float = 1.0  # DPS's default for the shared setting

    name = "dps"
    combine = "dps"

    def plan(self, prior: Prior, times: list[float], table: Table) -> list[StepPlan]:
        return [StepPlan(rho=self.scale) for _ in times]
