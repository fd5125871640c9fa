"""A scale-free fiber sampler: Polyak control steps, so nothing needs tuning per prior or subject.

NDTM's learning rate and γ are absolute numbers: the paper's 2e-3 and γ ∈ [0.5, 10] were tuned on
ADM-256 and leave a 28×28 prior unguided (issue 21). :class:`AutoNDTM` keeps NDTM's structure —
at each denoising step t → s the state is moved by a control δ before the prior's step is taken from
``x + δ`` — but computes δ with a *Polyak step* on the fiber loss L of the Tweedie estimate,

    δ ← δ − ρ · L / ‖∇L‖² · ∇L,      ∇L = ∂ ℓ(φ(decode(clip(x̂0(x + δ)))), y) / ∂x

per sample, its RMS capped at ``max_step`` × the RMS of the state. Every factor is relative:
scaling the data by c scales ∇L by 1/c and δ by c; scaling φ's features by c scales L and ∇L alike;
the step is the same in any dimension; and because each step aims at the remaining loss itself, the
number of denoising steps only sets how often it is corrected, not how far the state moves in total.
With the unsquared ``l2`` cost and a locally linear φ∘x̂0, ρ = 1 is the step that would reach the
fiber along the gradient; ρ < 1 spreads the correction over the trajectory so the prior can keep the
sample natural.

The run has three phases, in the prior's own time (so they mean the same on DDPMs, latent priors
and flows, with T its largest time):

* t > ``start``·T: unguided prior steps (the layout is still noise);
* ``polish_start``·T < t ≤ ``start``·T: ``inner_steps`` damped steps (ρ) per denoising step;
* t ≤ ``polish_start``·T: ``polish_steps`` full steps (ρ = 1) per denoising step, which close the
  last gap at low noise, where the denoiser still smooths what the steps change.

The update rule defaults to DDIM with η = 1 (the DDPM posterior's noise level) on every prior: the
fresh noise of each step lets the prior pull a guided state back towards natural images, which kept
the class of the query more often and reached lower fiber losses than η = 0.5 at the same cost
(``docs/efficiency.md``). Flow priors get it too — the DDIM step is written for any interpolant
x_t = α_t·x0 + σ_t·ε and keeps the marginal variance — rather than the deterministic Euler step of
their ODE: on the zoo's rectified flow, η = 1 kept the class in 95 % of 60 samples against 88 %
with Euler, as realistic as the tuned preset (FD 39 against 55), at the same cost (with the two
damped steps per denoising step the default had then; ``docs/defaults.md``).

One damped step per denoising step (``inner_steps`` = 1) and 10 projection steps are the default
because two damped steps made the samples of a pair no preset was tuned on (a clothing classifier
on MNIST digits) 1.59× less realistic than the tuned preset, one made them 1.15×, at 148
forward-equivalents less per sample; 68 of those pay for the 4 extra projection steps that the
bench's hardest query needed (``docs/defaults.md``, ``docs/benchmarks.md``).

Example:
    >>> from fiberscope.guidance.auto import AutoNDTM
    >>> m = AutoNDTM(steps=20)
    >>> m.plan(900.0, 1000.0), m.plan(500.0, 1000.0), m.plan(100.0, 1000.0)   # (steps, ρ) per phase
    ((0, 0.5), (1, 0.5), (1, 1.0))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .._deprecated import moved
from ..priors.base import Prior
from .base import (
    FiberObjective,
    GuidanceMethod,
    LossSetting,
    SampleNoise,
    SamplingSettings,
    StepCallback,
    Trajectory,
    check_finite,
)
from .projection import project_to_fiber

__all__ = [
    "AutoNDTM",
    "NotGuidedWarning",
    "polyak_step",
    "registered_preset",
    "scale_free_default",
    "strength_hint",
    "unguided_reference",
]


def polyak_step(
    loss: torch.Tensor, grad: torch.Tensor, scale: torch.Tensor, rho: float, max_step: float
) -> torch.Tensor:
    """The per-sample Polyak step ``−ρ·L/‖g‖²·g``, its RMS capped at ``max_step·scale``.

    Args:
        loss: ``[B]`` the loss L of each sample (it aims at L = 0).
        grad: ``[B, ...]`` ∇L.
        scale: ``[B]`` the RMS of each sample's state (the step's unit).
        rho: damping (1: the full step to L = 0 of a linear model).
        max_step: cap on the step's RMS, in units of ``scale``.

    Example:
        >>> import torch
        >>> x = torch.tensor([[3.0, 4.0]])          # L = ‖x‖ = 5, ∇L = x/5: the full step lands on 0
        >>> polyak_step(x.norm(dim=1), x / 5, torch.ones(1), 1.0, 10.0)
        tensor([[-3., -4.]])
    """
    b = grad.shape[0]
    g = grad.flatten(1)
    size = rho * loss.clamp_min(0) / g.pow(2).sum(1).clamp_min(1e-30)  # [B]
    step = -size[:, None] * g
    rms = step.pow(2).mean(1).sqrt()
    cap = max_step * scale
    factor = torch.where(rms > cap, cap / rms.clamp_min(1e-30), torch.ones_like(rms))
    return (step * factor[:, None]).view(b, *grad.shape[1:])


@dataclass
class AutoNDTM(LossSetting, SamplingSettings):
    """NDTM with scale-free Polyak control steps: fiberscope's default fiber sampler.

    Args:
        steps: K denoising steps on the prior's uniform grid.
        inner_steps: damped Polyak steps per denoising step while ``polish_start``·T < t ≤ ``start``·T.
        rho: damping of those steps (0 < ρ ≤ 1).
        max_step: cap on one step's RMS, in units of the state's RMS.
        start: guidance runs where t ≤ start × the schedule's largest time T.
        polish_steps: full Polyak steps (ρ = 1) per denoising step where t ≤ ``polish_start``·T
            (0: the damped steps continue to the end).
        polish_start: where the polish begins, as a fraction of T.
        eta: DDIM stochasticity, default 1 (see the module's docstring; no effect with Euler).
        project_steps: Gauss-Newton steps that move the finished sample onto the fiber on the subject
            alone (:func:`~fiberscope.guidance.projection.project_to_fiber`; 0: none).
        project_cg: conjugate-gradient iterations per projection step.
        loss: the cost L (default ``"l2"``, the unsquared norm: Polyak steps aim at its zero).
        sampler, variance, clip, output, init, strength: as for every method
            (:class:`~fiberscope.guidance.base.SamplingSettings`).
        track_loss: record the batch-mean loss of every guided step.
    """

    steps: int = 50
    inner_steps: int = 1
    rho: float = 0.5
    max_step: float = 0.5
    start: float = 0.7
    polish_steps: int = 1
    polish_start: float = 0.2
    eta: float = 1.0
    project_steps: int = 10
    project_cg: int = 5
    track_loss: bool = True

    name = "auto"

    def __post_init__(self) -> None:
        self.check_sampling()
        self.check_loss()
        for nm, lo, hi, zero_ok in (
            ("rho", 0.0, 1.0, False),
            ("max_step", 0.0, 100.0, False),
            ("start", 0.0, 1.0, False),
            ("polish_start", 0.0, 1.0, True),
        ):
            v = getattr(self, nm)
            ok = (
                isinstance(v, (int, float)) and not isinstance(v, bool) and (lo <= v if zero_ok else lo < v) and v <= hi
            )
            if not ok:
                raise ValueError(f"{nm} must be a number in {'[' if zero_ok else '('}{lo:g}, {hi:g}], got {v!r}")
        for nm in ("inner_steps", "polish_steps", "project_steps", "project_cg"):
            v = getattr(self, nm)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 1000:
                raise ValueError(f"{nm} must be an integer in [0, 1000], got {v!r}")

    def plan(self, t: float, t_max: float) -> tuple[int, float]:
        """``(Polyak steps, ρ)`` at time ``t`` of a schedule whose largest time is ``t_max`` (0 steps: unguided)."""
        if t > self.start * t_max + 1e-9:
            return 0, self.rho
        if self.polish_steps > 0 and t <= self.polish_start * t_max + 1e-9:
            return self.polish_steps, 1.0
        return self.inner_steps, self.rho

    def run(
        self,
        prior: Prior,
        objective: FiberObjective,
        x_init: torch.Tensor,
        noise: SampleNoise,
        callback: StepCallback | None = None,
    ) -> Trajectory:
        times = self.times(prior)
        K = len(times)
        rule = self.rule
        table = rule.prepare(prior, times)
        clip = self.clip_range(prior)
        t_max = float(prior.schedule.num_train_timesteps)
        x = x_init.float()
        x0 = x
        history: list[float] = []
        for i, t in enumerate(times):
            a_t, s_t = table[i]
            n_inner, rho = self.plan(t, t_max)
            last: torch.Tensor | None = None
            xc = x
            if n_inner:
                scale = x.flatten(1).pow(2).mean(1).sqrt()
                for _ in range(n_inner):
                    with torch.enable_grad():
                        xg = xc.detach().requires_grad_(True)
                        d = prior.denoise(xg, t)
                        x0h = rule.tweedie(prior, d, xg, a_t, s_t)
                        if clip is not None:
                            x0h = x0h.clamp(*clip)
                        cost = objective.loss(x0h)
                        check_finite(cost, "the fiber loss", i, t)
                        (grad,) = torch.autograd.grad(cost.sum(), xg)
                    check_finite(grad, "the control gradient", i, t)
                    last = cost.detach()
                    xc = xc + polyak_step(last, grad, scale, rho, self.max_step)
            with torch.no_grad():
                d = prior.denoise(xc, t)
                x0 = rule.tweedie(prior, d, xc, a_t, s_t)
                if clip is not None:
                    x0 = x0.clamp(*clip)
                x = rule.step(xc, x0, d, table[i], table[i + 1], noise)
            check_finite(x, "the state", i, t)
            if self.track_loss and last is not None:
                history.append(float(last.mean()))
            if callback is not None:
                callback(
                    {"step": i, "t": t, "x": x, "x0": x0, "cost": last, "steps": K, "polyak_steps": n_inner, "rho": rho}
                )
        sample = x0 if self.output == "x0" else x
        info: dict[str, Any] = {}
        if self.project_steps and self.project_cg:
            sample, proj = project_to_fiber(objective, sample, self.project_steps, self.project_cg, self.max_step, clip)
            info["projection"] = proj
        return Trajectory(sample=sample, x=x, x0=x0, loss_history=history, info=info)


# ---- defaults per prior ------------------------------------------------------------------------


class NotGuidedWarning(UserWarning):
    """Guided samples ended with a fiber loss above half the unguided level: the guidance barely steered them."""


def registered_preset(prior: Any) -> str | None:
    """The NDTM preset registered for ``prior`` (a spec or a Prior; the zoo's ``builtin:`` priors), or None."""
    from .registry import _default_preset

    return _default_preset(prior) if isinstance(prior, str) else getattr(prior, "preset", None)


def scale_free_default(prior: Any, **settings: Any) -> AutoNDTM:
    """The default fiber sampler on ``prior``: :class:`AutoNDTM` (DDIM with η = 1 on every prior, flows too).

    ``prior`` is taken so that a default may depend on the prior; today none does (the Euler step a
    flow prior used to get kept fewer samples in the query's class: see the module's docstring).

    Example:
        >>> from fiberscope import FlowSchedule, GaussianPrior
        >>> m = scale_free_default(GaussianPrior(dim=2, schedule=FlowSchedule()), steps=20)
        >>> m.steps, m.sampler, m.eta
        (20, 'ddim', 1.0)
    """
    return AutoNDTM(**settings)


def strength_hint(method: GuidanceMethod) -> str:
    """What to raise when ``method`` did not steer its samples."""
    if isinstance(method, AutoNDTM):
        return (
            f"raise inner_steps (now {method.inner_steps}), rho (now {method.rho:g}), start (now {method.start:g}) "
            f"or polish_steps (now {method.polish_steps})"
        )
    lr, scale = getattr(method, "lr", None), getattr(method, "scale", None)
    if lr is not None and hasattr(method, "gamma"):
        return (
            f"raise lr (now {lr:g}) and gamma, or inner_steps "
            f"(now {getattr(method, 'inner_steps', '?')}); or use fiberscope.AutoNDTM(), which needs no tuning"
        )
    if scale is not None:
        return f"raise scale (now {scale:g})"
    return "raise the guidance strength of the method"


@torch.no_grad()
def unguided_reference(prior: Prior, objective: FiberObjective, x_init: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """φ of a short unguided chain's samples from ``x_init`` (features ``[B, ...]``).

    ``steps`` deterministic prior steps (DDIM η = 0, Euler on flows) from the very noise the guided
    run starts from: the level the samples would end at with no guidance, for about ``steps``
    prior forwards per sample (≈ 1 % of a guided run).
    """
    from .unguided import Unguided

    flow = getattr(prior.schedule, "kind", None) == "flow"
    m = Unguided(steps=steps, sampler="euler" if flow else "ddim", eta=0.0)
    traj = m.run(prior, objective, x_init, SampleNoise([0] * x_init.shape[0], x_init.device))
    return objective.features(traj.sample).float()


# moved to fiberscope.guidance.ndtm (they need NDTM, and NDTM's run needs them: one module, no import cycle)
__getattr__ = moved(
    __name__,
    {
        "resolve_method": "fiberscope.guidance.ndtm:resolve_method",
        "SHARED_SETTINGS": "fiberscope.guidance.ndtm:SHARED_SETTINGS",
    },
)
