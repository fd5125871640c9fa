"""FreeDoM: training-free energy-guided sampling with time travel (Yu et al., ICCV 2023).

Each step moves x_s along the x_t gradient of the fiber loss (through the prior), and inside the
time-travel window the step is repeated: the result is noised back to t and denoised again, so the
guidance has more chances to act without leaving the data manifold:

    for r = 1 … R_t:
        x_s = step(x_t, x̂0, ε̂) − ρ_t · α_s/α_t · ∇_{x_t} ℓ(φ(decode(x̂0(x_t))), y)
        if r < R_t:  x_t ← q(x_t | x_s)          (fresh noise from the sample's own generator)

``R_t = recur_steps`` for ``t`` in ``recur_window`` and 1 elsewhere; no guidance at ``t < t_stop``.
ρ_t follows a TFG schedule (``"increase"`` by default). The original uses ρ_t = √ᾱ_t·scale,
guidance only while t > 100, and repeats 10 times for 500 ≤ t ≤ 800 on ImageNet. TFG form:
(ρ > 0, μ = 0, R > 1).

Example:
    >>> from fiberscope import FreeDoM
    >>> m = FreeDoM(recur_steps=3, recur_window=(400, 800))
    >>> m.recurrences(600), m.recurrences(200)
    (3, 1)
"""

from __future__ import annotations

from dataclasses import dataclass

from ..priors.base import Prior
from .tfg import StepPlan, Table, TrainingFreeGuidance, check_schedule, strength_schedule

__all__ = ["FreeDoM"]


@dataclass
class FreeDoM(TrainingFreeGuidance):
    """x_t-gradient guidance with time travel (recurrence) in a window of noise levels.

    Args:
        steps: denoising steps.
        scale: ρ, mean strength of the x_t gradient over the grid.
        schedule: ``"increase"`` (TFG's default), ``"decrease"`` or ``"constant"``.
        recur_steps: repetitions of a step inside ``recur_window`` (1: no time travel).
        recur_window: ``(t_lo, t_hi)`` in the prior's native time where steps are repeated.
        t_stop: no guidance at ``t < t_stop`` (default 0: guidance at every step; the original stops
            below t = 100 of 1000).
        sampler, eta, variance: the update rule (the original: DDIM, η = 0.5).
        clip, output, loss, init, strength: as for :class:`~fiberscope.TFG`.
    """

    scale: float = 1.0
    schedule: str = "increase"
    recur_steps: int = 2
    recur_window: tuple[float, float] = (300.0, 800.0)
    t_stop: float = 0.0
    eta: float = 0.5  # FreeDoM's default for the shared setting

    name = "freedom"
    combine = "tfg"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_schedule("schedule", self.schedule)
        try:
            lo, hi = (float(v) for v in self.recur_window)
        except (TypeError, ValueError):
            lo, hi = 1.0, 0.0
        if not lo <= hi:
            raise ValueError(f"recur_window must be (t_lo, t_hi) with t_lo ≤ t_hi, got {self.recur_window!r}")

    def recurrences(self, t: float) -> int:
        """R_t: how many times the step at time ``t`` is taken."""
        lo, hi = self.recur_window
        return self.recur_steps if lo <= t <= hi else 1

    def plan(self, prior: Prior, times: list[float], table: Table) -> list[StepPlan]:
        w = strength_schedule(self.schedule, table)
        return [
            StepPlan(rho=self.scale * w[i] if t >= self.t_stop else 0.0, recur=self.recurrences(t))
            for i, t in enumerate(times)
        ]
