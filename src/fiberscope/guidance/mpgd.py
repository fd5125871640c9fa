"""MPGD: manifold-preserving guided diffusion (He et al., ICLR 2024), without projection.

The gradient is taken with respect to the clean estimate only — never through the prior — so a
step costs one prior forward and a subject forward + backward (plus the decoder's for latent
priors):

    x0' = x̂0;  repeat ``iter_steps``:  x0' ← x0' − μ_t · ∇_{x0} ℓ(φ(decode(x0')), y)
    x_s = step(x_t + α_t(x0' − x̂0), x0', ε̂)           (DDIM: α_s·x0' + c1·ξ + c2·ε̂)

i.e. TFG with ρ = 0. μ_t follows a TFG schedule (``"increase"`` by default, mean μ over the grid).
The original steps ``x̂0 − (scale/√ᾱ_t)·∇‖y − A x̂0‖`` and then takes DDIM with η = 0.5.

Example:
    >>> from fiberscope import MPGD
    >>> MPGD(scale=2.0).needs_prior_backward
    False
"""

from __future__ import annotations

from dataclasses import dataclass

from ..priors.base import Prior
from .tfg import StepPlan, Table, TrainingFreeGuidance, check_schedule, strength_schedule

__all__ = ["MPGD"]


@dataclass
class MPGD(TrainingFreeGuidance):
    """x̂0-space guidance with no backpropagation through the prior.

    Args:
        steps: denoising steps.
        scale: μ, mean step size of the x0 gradient steps.
        iter_steps: gradient steps on x0 per denoising step.
        schedule: ``"increase"`` (TFG's default), ``"decrease"`` or ``"constant"``.
        sampler, eta, variance: the update rule (the original: DDIM, η = 0.5).
        clip: clip of x̂0 and of every x0 iterate (``"auto"``: the prior's range).
        output, init, strength: :class:`~fiberscope.guidance.base.SamplingSettings`.
        loss: the fiber loss ℓ (default unsquared ``"l2"``).
    """

    scale: float = 1.0
    iter_steps: int = 1
    schedule: str = "increase"
    eta: float = 0.5  # MPGD's default for the shared setting

    name = "mpgd"
    combine = "tfg"
    needs_prior_backward = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_schedule("schedule", self.schedule)

    def plan(self, prior: Prior, times: list[float], table: Table) -> list[StepPlan]:
        return [StepPlan(mu=self.scale * w) for w in strength_schedule(self.schedule, table)]
