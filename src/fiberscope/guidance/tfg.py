"""TFG: training-free guidance in one update (Ye et al., NeurIPS 2024), and the loop DPS, FreeDoM,
UGD and MPGD share with it.

With ``log p(x0) = −ℓ(φ(decode(x0)), y)`` (the fiber loss, per sample) every method in this family
takes, at each step t → s and for each of ``R`` recurrences:

    Δ_t = ρ_t · ∇_{x_t} log p̃(x̂0(x_t))                  (through the prior; skipped when ρ_t = 0)
    x0' = x̂0;  repeat N_iter:  x0' ← x0' + μ_t · ∇_{x0} log p̃(x0')          (no prior backward)
    Δ_0 = x0' − x̂0
    x_s = step(x_t + Δ_t + α_t·Δ_0,  x̂0 + Δ_t/α_t + Δ_0,  ε̂)                 (``combine="tfg"``)
    if r < R: x_t ← α_t/α_s · x_s + √(σ_t² − (α_t/α_s)² σ_s²) · ξ           (time travel)

where ``step`` is the ordinary update rule (:class:`~fiberscope.guidance.base.StepRule`: DDIM,
ancestral or Euler). For DDIM this is exactly TFG's ``DDIM(x_t) + Δ_t/√α_t + √ᾱ_s·Δ_0``: shifting
``x_t`` by ``Δ_t`` with ε̂ held fixed moves ``x_s`` by ``α_s/α_t·Δ_t = Δ_t/√(ᾱ_t/ᾱ_s)``. The
Monte-Carlo smoothed ``log p̃(x0) = logsumexp_j log p(x0 + σ_t ξ_j) − log M`` replaces ``log p``
when ``σ_t > 0``. Strength schedules ``ρ_t = ρ · w_t · K / Σ w`` with ``w_t`` = ``ᾱ_t/ᾱ_s``
(``"increase"``, TFG's default), ``1 − ᾱ_t/ᾱ_s`` (``"decrease"``) or 1 (``"constant"``);
``σ_t = σ·√(1 − ᾱ_t)`` (``"decrease"``) or σ.

Every gradient is the gradient of a per-sample loss, so sample ``i``'s step never depends on the
other samples of the batch (DPS's original normalises by a batch-wide norm; fiberscope does not).
Every random draw (step noise, time-travel noise, smoothing noise) comes from the sample's own
generator.

Example:
    >>> from fiberscope import TFG
    >>> m = TFG(steps=50, rho=1.0, mu=0.5, sigma=0.01, recur_steps=2)
    >>> m.config()["method"], m.mc_samples
    ('tfg', 4)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..priors.base import Denoised, Prior
from ..priors.schedule import abar
from .base import (
    FiberObjective,
    LossSetting,
    SampleNoise,
    SamplingSettings,
    StepCallback,
    StepRule,
    Trajectory,
    check_finite,
)

__all__ = ["SCHEDULES", "TFG", "StepPlan", "TrainingFreeGuidance", "renoise", "strength_schedule"]

#: Strength schedules of TFG (``rho_schedule``, ``mu_schedule``).
SCHEDULES = ("increase", "decrease", "constant")
SIGMA_SCHEDULES = ("decrease", "constant")

Table = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class StepPlan:
    """What one denoising step does: x_t-gradient strength ρ, x0-gradient strength μ, smoothing σ, R."""

    rho: float = 0.0
    mu: float = 0.0
    sigma: float = 0.0
    recur: int = 1


def strength_schedule(kind: str, table: Table) -> list[float]:
    """Per-step weights ``w_t·K/Σw`` (mean 1) of a TFG schedule over a prepared ``(α, σ)`` table.

    ``table`` has K + 1 rows (the grid plus the clean end), as :meth:`StepRule.prepare` returns.

    Example:
        >>> from fiberscope.priors import VPSchedule
        >>> from fiberscope.guidance.base import StepRule
        >>> prior_sched = VPSchedule.linear()
        >>> table = [prior_sched.alpha_sigma(t) for t in prior_sched.grid(10)] + [prior_sched.alpha_sigma(None)]
        >>> w = strength_schedule("increase", table)
        >>> round(sum(w) / len(w), 6), w[-1] > w[0]
        (1.0, True)
    """
    if kind not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")
    k = len(table) - 1
    w = []
    for i in range(k):
        ab_t, ab_s = float(abar(*table[i])), float(abar(*table[i + 1]))
        ratio = ab_t / ab_s if ab_s > 0 else 0.0
        w.append(ratio if kind == "increase" else (1 - ratio if kind == "decrease" else 1.0))
    total = sum(w)
    return [v * k / total if total > 0 else 0.0 for v in w]


def renoise(
    x_s: torch.Tensor,
    ts: tuple[torch.Tensor, torch.Tensor],
    ss: tuple[torch.Tensor, torch.Tensor],
    noise: SampleNoise,
) -> torch.Tensor:
    """Noise a state at time s back up to time t (the forward transition q(x_t | x_s)): time travel.

    ``x_t = α_t/α_s · x_s + √(σ_t² − (α_t/α_s)²·σ_s²)·ξ``; for a VP schedule this is FreeDoM's
    ``√(ᾱ_t/ᾱ_s)·x_s + √(1 − ᾱ_t/ᾱ_s)·ξ``. Each sample draws ξ from its own generator.
    """
    (a_t, s_t), (a_s, s_s) = [tuple(v.to(x_s) for v in p) for p in (ts, ss)]
    k = a_t / a_s
    std = torch.sqrt(torch.clamp(s_t * s_t - k * k * s_s * s_s, min=0.0))
    return k * x_s + std * noise.randn_like(x_s)


def check_schedule(name: str, value: str, choices: tuple[str, ...] = SCHEDULES) -> None:
    """Raise a one-line ValueError unless ``value`` is one of the strength schedules ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


@dataclass
class TrainingFreeGuidance(LossSetting, SamplingSettings):
    """The loop shared by DPS, FreeDoM, UGD, MPGD and TFG (see the module docstring).

    Subclasses are dataclasses that add their own strengths, set :attr:`combine`, and implement
    :meth:`plan` (the per-step ρ, μ, σ and number of recurrences); the sampling settings and the
    loss are :class:`~fiberscope.guidance.base.SamplingSettings` and
    :class:`~fiberscope.guidance.base.LossSetting`. Optional fields read here: ``iter_steps``
    (x0-gradient steps, default 1) and ``mc_samples`` (smoothing samples, default 1).

    ``combine``: ``"tfg"`` (shift x_t and x̂0 with ε̂ fixed), ``"ugd"`` (fold both corrections into
    ε̂, Universal Guidance's forward/backward guidance), ``"dps"`` (add ``Δ_t`` to x_s after the
    step, as the DPS paper writes it).
    """

    combine: ClassVar[str] = "tfg"
    track_loss: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self.check_sampling()
        self.check_loss()

    def plan(self, prior: Prior, times: list[float], table: Table) -> list[StepPlan]:
        """ρ_t, μ_t, σ_t and R_t for every step of the grid (noisiest first)."""
        raise NotImplementedError

    # ---- pieces -------------------------------------------------------------------------------
    def _cost(self, objective: FiberObjective, x0: torch.Tensor, sigma: float, noise: SampleNoise) -> torch.Tensor:
        """Per-sample −log p̃(x0): the fiber loss, Monte-Carlo smoothed when σ > 0."""
        m = int(getattr(self, "mc_samples", 1))
        if sigma <= 0:
            return objective.loss(x0)
        xi = torch.stack([noise.randn_like(x0) for _ in range(m)])  # [M, B, ...], per-sample streams
        z = (x0.unsqueeze(0) + sigma * xi).flatten(0, 1)
        target = objective.target
        if target.shape[0] != 1:  # one target per sample: repeat it for every smoothing draw
            target = target.repeat(m, *([1] * (target.dim() - 1)))
        losses = objective.loss(z, target).view(m, -1)  # [M, B]
        return -(torch.logsumexp(-losses, dim=0) - math.log(m))

    def _x0_refine(
        self,
        objective: FiberObjective,
        x0: torch.Tensor,
        p: StepPlan,
        clip: tuple[float, float] | None,
        noise: SampleNoise,
        i: int,
        t: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``iter_steps`` gradient steps of size μ on x0 (no prior involved); returns (x0', first cost)."""
        z = x0.detach()
        first: torch.Tensor | None = None
        for _ in range(int(getattr(self, "iter_steps", 1))):
            with torch.enable_grad():
                zg = z.clone().requires_grad_(True)
                cost = self._cost(objective, zg, p.sigma, noise)
                check_finite(cost, f"the {self.name} cost", i, t)
                (g,) = torch.autograd.grad(cost.sum(), zg)
            check_finite(g, f"the {self.name} x0 gradient", i, t)
            z = z - p.mu * g
            if clip is not None:
                z = z.clamp(*clip)
            if first is None:
                first = cost.detach()
        assert first is not None
        return z, first

    def _guided_step(
        self,
        prior: Prior,
        objective: FiberObjective,
        rule: StepRule,
        x: torch.Tensor,
        t: float,
        ts: tuple[torch.Tensor, torch.Tensor],
        ss: tuple[torch.Tensor, torch.Tensor],
        p: StepPlan,
        clip: tuple[float, float] | None,
        noise: SampleNoise,
        i: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        a_t, s_t = (v.to(x) for v in ts)
        cost: torch.Tensor | None = None
        delta_t: torch.Tensor | None = None
        if p.rho != 0 and float(a_t) > 1e-6:  # at pure noise x̂0 carries no signal to steer
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                d = prior.denoise(xg, t)
                x0g = rule.tweedie(prior, d, xg, a_t, s_t)
                if clip is not None:
                    x0g = x0g.clamp(*clip)
                c = self._cost(objective, x0g, p.sigma, noise)
                check_finite(c, f"the {self.name} cost", i, t)
                (g,) = torch.autograd.grad(c.sum(), xg)
            check_finite(g, f"the {self.name} x_t gradient", i, t)
            cost = c.detach()
            delta_t = -p.rho * g
            d = Denoised(d.x0.detach(), d.eps.detach(), None if d.v is None else d.v.detach())
        else:
            with torch.no_grad():
                d = prior.denoise(x, t)
        with torch.no_grad():
            x0 = rule.tweedie(prior, d, x, a_t, s_t)
            if clip is not None:
                x0 = x0.clamp(*clip)
        delta_0: torch.Tensor | None = None
        if p.mu != 0:
            x0_new, c0 = self._x0_refine(objective, x0, p, clip, noise, i, t)
            delta_0 = x0_new - x0
            cost = c0 if cost is None else cost
        with torch.no_grad():
            dt = torch.zeros_like(x) if delta_t is None else delta_t
            d0 = torch.zeros_like(x) if delta_0 is None else delta_0
            if self.combine == "ugd":
                # forward guidance ε̂ − σ_t·ρ∇log p and backward guidance folded into ε̂: x_t stays put
                x0s = x0 + d0 + ((s_t * s_t / a_t) * dt if delta_t is not None else 0.0)
                eps = d.eps - s_t * dt - (a_t / s_t) * d0
                x_s = rule.step(x, x0s, Denoised(x0s, eps, d.v), ts, ss, noise)
            elif self.combine == "dps":
                x0s = x0 + d0
                x_s = rule.step(x, x0s, Denoised(x0s, d.eps, d.v), ts, ss, noise) + dt
                if delta_t is not None:  # the clean estimate the corrected x_s implies (= x_s at the end)
                    x0s = x0s + dt / a_t
            else:
                xs_in = x + dt + a_t * d0
                x0s = x0 + (dt / a_t if delta_t is not None else 0.0) + d0
                x_s = rule.step(xs_in, x0s, Denoised(x0s, d.eps, d.v), ts, ss, noise)
            if clip is not None:
                x0s = x0s.clamp(*clip)
        return x_s, x0s, cost

    # ---- the loop -----------------------------------------------------------------------------
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
        plans = self.plan(prior, times, table)
        clip = self.clip_range(prior)
        x = x_init.float()
        x0 = x
        history: list[float] = []
        for i, t in enumerate(times):
            ts, ss, p = table[i], table[i + 1], plans[i]
            cost: torch.Tensor | None = None
            for r in range(p.recur):
                x_s, x0, cost = self._guided_step(prior, objective, rule, x, t, ts, ss, p, clip, noise, i)
                check_finite(x_s, "the state", i, t)
                if r + 1 < p.recur:
                    with torch.no_grad():
                        x = renoise(x_s, ts, ss, noise)
            x = x_s
            if self.track_loss and cost is not None:
                history.append(float(cost.mean()))
            if callback is not None:
                callback(
                    {"step": i, "t": t, "x": x, "x0": x0, "rho": p.rho, "mu": p.mu, "cost": cost, "steps": len(times)}
                )
        return Trajectory(sample=x0 if self.output == "x0" else x, x=x, x0=x0, loss_history=history)


@dataclass
class TFG(TrainingFreeGuidance):
    """Training-free guidance, unified (Ye et al. 2024): ρ, μ, σ, recurrence and MC smoothing.

    The other baselines are special cases: DPS ≈ (ρ > 0, μ = 0, σ = 0, R = 1), MPGD ≈ (ρ = 0,
    μ > 0), FreeDoM ≈ (ρ > 0, R > 1), UGD ≈ (ρ > 0, μ > 0, R ≥ 1); each has its own class with
    its own defaults. Defaults here are TFG's code defaults (ρ = μ = 1, σ = 0.01, 4 smoothing
    samples, 1 x0 step, no recurrence, η = 1, 50 steps).

    Args:
        steps: denoising steps on the prior's uniform grid.
        rho: strength of the x_t gradient (backpropagates through the prior; 0 disables).
        mu: strength of the x0 gradient steps (no prior backward; 0 disables).
        sigma: Monte-Carlo smoothing std of the guidance (0: no smoothing).
        mc_samples: number of smoothing draws per gradient (TFG's ``eps_bsz``).
        iter_steps: x0 gradient steps per denoising step (``N_iter``).
        recur_steps: recurrences per step (``R``; time travel between them).
        rho_schedule, mu_schedule: ``"increase"`` (ᾱ_t/ᾱ_s), ``"decrease"`` or ``"constant"``.
        sigma_schedule: ``"decrease"`` (σ·√(1 − ᾱ_t)) or ``"constant"``.
        sampler, eta, variance, clip, output, init, strength: the sampling settings
            (:class:`~fiberscope.guidance.base.SamplingSettings`; TFG's defaults: 50 steps, η = 1).
        loss: the fiber loss ``ℓ`` in ``log p = −ℓ`` (default unsquared ``"l2"``, as in the paper).

    Example:
        >>> TFG(rho=0.0, mu=2.0).config()["mu"]
        2.0
    """

    rho: float = 1.0
    mu: float = 1.0
    sigma: float = 0.01
    mc_samples: int = 4
    iter_steps: int = 1
    recur_steps: int = 1
    rho_schedule: str = "increase"
    mu_schedule: str = "increase"
    sigma_schedule: str = "decrease"
    steps: int = 50  # TFG's defaults for the shared settings
    eta: float = 1.0

    name = "tfg"
    combine = "tfg"

    def __post_init__(self) -> None:
        super().__post_init__()  # ρ, μ, σ and the counts: their bounds are checked there (one validation layer)
        check_schedule("rho_schedule", self.rho_schedule)
        check_schedule("mu_schedule", self.mu_schedule)
        check_schedule("sigma_schedule", self.sigma_schedule, SIGMA_SCHEDULES)

    def plan(self, prior: Prior, times: list[float], table: Table) -> list[StepPlan]:
        wr = strength_schedule(self.rho_schedule, table)
        wm = strength_schedule(self.mu_schedule, table)
        out = []
        for i in range(len(times)):
            sig = self.sigma * (math.sqrt(1 - float(abar(*table[i]))) if self.sigma_schedule == "decrease" else 1.0)
            out.append(StepPlan(self.rho * wr[i], self.mu * wm[i], sig, self.recur_steps))
        return out
