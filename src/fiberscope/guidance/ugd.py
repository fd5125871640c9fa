"""UGD: universal guidance (Bansal et al., 2023): forward + backward guidance + recurrence.

Forward guidance is classifier guidance on ε̂ with the fiber loss as the classifier
(``ε̂ ← ε̂ + σ_t·s·∇_{x_t} ℓ``, through the prior). Backward guidance optimises the clean estimate
directly (``x0' = x̂0 − s_b·∇_{x0} ℓ`` for ``backward_steps`` steps, no prior backward) and folds the
change into ε̂ (``ε̂ ← ε̂ − α_t/σ_t·(x0' − x̂0)``). The step then runs from the unchanged x_t with
the guided ε̂, and is repeated ``recur_steps`` times with time travel in between (self-recurrence):

    for r = 1 … R:
        ε̂' = ε̂ + σ_t·s_t·∇_{x_t}ℓ − α_t/σ_t·Δ_0;   x̂0' = (x_t − σ_t ε̂')/α_t
        x_s = step(x_t, x̂0', ε̂');   if r < R: x_t ← q(x_t | x_s)

Strengths follow a TFG schedule (``"increase"`` by default). TFG form: (ρ > 0, μ > 0, R ≥ 1).

Example:
    >>> from fiberscope import UGD
    >>> UGD(scale=1.0, backward_scale=0.5, backward_steps=2, recur_steps=3).config()["recur_steps"]
    3
"""

from __future__ import annotations

from dataclasses import dataclass

from ..priors.base import Prior
from .tfg import StepPlan, Table, TrainingFreeGuidance, check_schedule, strength_schedule

__all__ = ["UGD"]


@dataclass
class UGD(TrainingFreeGuidance):
    """Universal guidance: forward (ε̂) and backward (x0) guidance with self-recurrence.

    Args:
        steps: denoising steps.
        scale: s, forward-guidance strength (through the prior; 0 disables it).
        backward_scale: step size of the backward-guidance x0 steps (0 disables them).
        backward_steps: x0 gradient steps of backward guidance per denoising step.
        recur_steps: self-recurrences per step (the original: 2–10).
        schedule: ``"increase"`` (TFG's default), ``"decrease"`` or ``"constant"``.
        sampler, eta, variance: the update rule.
        clip, output, loss, init, strength: as for :class:`~fiberscope.TFG`.
    """

    scale: float = 1.0
    backward_scale: float = 0.1
    backward_steps: int = 1
    recur_steps: int = 2
    schedule: str = "increase"
    eta: float = 1.0  # UGD's default for the shared setting

    name = "ugd"
    combine = "ugd"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_schedule("schedule", self.schedule)

    @property
    def iter_steps(self) -> int:
        return self.backward_steps

    def plan(self, prior: Prior, times: list[float], table: Table) -> list[StepPlan]:
        w = strength_schedule(self.schedule, table)
        return [StepPlan(rho=self.scale * v, mu=self.backward_scale * v, recur=self.recur_steps) for v in w]
