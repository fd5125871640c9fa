"""A scale-free fiber sampler: Polyak control steps, so nothing needs tuning per prior or subject.

NDTM's learning rate and γ are absolute numbers: the paper's 2e-3 and γ ∈ [0.5, 10] were tuned on
ADM-256 and leave a 28×28 prior unguided (issue 21). :class:`AutoNDTM` keeps NDTM's structure —
at each denoising step t → s the state is moved by a control δ before the prior's step is taken from
``x + δ`` — but computes δ with a *Polyak step* on the fiber loss L of the Tweedie estimate,

    δ ← δ − ρ · max(L − L_tol, 0) / ‖∇L‖² · ∇L,      ∇L = ∂ ℓ(φ(decode(clip(x̂0(x + δ)))), y) / ∂x

per sample, capped at ``max_step`` × the RMS of the state. Every factor is relative: scaling the
data by c scales ∇L by 1/c and δ by c; scaling φ's features by c scales L and ∇L alike; the step is
the same in any dimension; and because each step aims at the remaining loss itself, the number of
denoising steps only sets how often it is corrected, not how far the state moves in total. With the
unsquared ``l2`` terminal cost and a locally linear φ∘x̂0, ρ = 1 is a Gauss-Newton step onto the
fiber; ρ < 1 spreads the correction over the trajectory so the prior can keep the sample natural.

Guidance runs over the last ``start`` fraction of the trajectory (in the prior's own time, so it is
the same on DDPMs, latent priors and flows). ``tolerance`` (relative to the first guided step's
loss) lets samples that have reached the fiber skip their inner steps: a per-sample early exit that
saves the prior's backward passes without changing the others.

Example:
    >>> from fiberscope.guidance.auto import AutoNDTM
    >>> m = AutoNDTM(steps=20)
    >>> m.config()["rho"], m.guided(500.0, 1000.0), m.guided(900.0, 1000.0)
    (0.5, True, False)
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from ..losses import LossFn
from ..priors.base import Prior
from ..validation import check_method_settings
from .base import FiberObjective, GuidanceMethod, SampleNoise, StepCallback, StepRule, Trajectory, check_finite

__all__ = ["AutoNDTM", "NotGuidedWarning", "polyak_step", "resolve_method", "unguided_reference"]


def polyak_step(
    loss: torch.Tensor, grad: torch.Tensor, scale: torch.Tensor, rho: float, max_step: float, floor: torch.Tensor
) -> torch.Tensor:
    """The per-sample Polyak step ``−ρ·max(L − floor, 0)/‖g‖²·g``, its RMS capped at ``max_step·scale``.

    Args:
        loss: ``[B]`` the loss L of each sample.
        grad: ``[B, ...]`` ∇L.
        scale: ``[B]`` the RMS of each sample's state (the step's unit).
        rho: damping (1: the full step to L = floor of a linear model).
        max_step: cap on the step's RMS, in units of ``scale``.
        floor: ``[B]`` the loss each sample aims at.

    Example:
        >>> import torch
        >>> x = torch.tensor([[3.0, 4.0]])          # L = ‖x‖ = 5, ∇L = x/5: the full step lands on 0
        >>> polyak_step(x.norm(dim=1), x / 5, torch.ones(1), 1.0, 10.0, torch.zeros(1))
        tensor([[-3., -4.]])
    """
    b = grad.shape[0]
    g = grad.flatten(1)
    gn2 = g.pow(2).sum(1).clamp_min(1e-30)
    size = rho * (loss - floor).clamp_min(0) / gn2  # [B]
    step = -size[:, None] * g
    rms = step.pow(2).mean(1).sqrt()
    cap = max_step * scale
    factor = torch.where(rms > cap, cap / rms.clamp_min(1e-30), torch.ones_like(rms))
    return (step * factor[:, None]).view(b, *grad.shape[1:])


@dataclass
class AutoNDTM(GuidanceMethod):
    """NDTM with scale-free Polyak control steps: the default for a prior without a tuned preset.

    Args:
        steps: K denoising steps on the prior's uniform grid.
        inner_steps: Polyak steps per guided denoising step.
        rho: damping of each Polyak step (0 < ρ ≤ 1).
        max_step: cap on one step's RMS, in units of the state's RMS.
        start: guidance runs where t ≤ start × the schedule's largest time.
        tolerance: a sample skips its inner steps while its loss is ≤ tolerance × its loss at the
            first guided step (0: never skip).
        loss: terminal cost (default ``"l2"``, the unsquared norm: Polyak steps aim at its zero).
        sampler, eta, variance: the update rule (see :class:`~fiberscope.guidance.base.StepRule`).
        clip: clip range of x̂0 (``"auto"``: the prior's).
        output: ``"x0"`` or ``"state"``.
        track_loss: record the batch-mean loss after every guided step.
    """

    steps: int = 50
    inner_steps: int = 2
    rho: float = 0.5
    max_step: float = 0.5
    start: float = 0.7
    tolerance: float = 0.0
    loss: str | LossFn = "l2"
    sampler: str = "ddim"
    eta: float = 0.5
    variance: str = "small"
    clip: tuple[float, float] | str | None = "auto"
    output: str = "x0"
    track_loss: bool = True

    name = "auto"

    def __post_init__(self) -> None:
        check_method_settings(self)
        for nm, lo, hi in (("rho", 0.0, 1.0), ("max_step", 0.0, 100.0), ("start", 0.0, 1.0)):
            v = getattr(self, nm)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo < v <= hi:
                raise ValueError(f"{nm} must be a number in ({lo:g}, {hi:g}], got {v!r}")
        if (
            isinstance(self.tolerance, bool)
            or not isinstance(self.tolerance, (int, float))
            or not 0 <= self.tolerance < 1
        ):
            raise ValueError(f"tolerance must be a number in [0, 1), got {self.tolerance!r}")
        if self.output not in ("x0", "state"):
            raise ValueError(f"output must be 'x0' or 'state', got {self.output!r}")
        self.rule.validate()

    @property
    def rule(self) -> StepRule:
        return StepRule(self.sampler, self.eta, self.variance)

    def guided(self, t: float, t_max: float) -> bool:
        """Whether the step at time ``t`` is guided (t ≤ start·t_max)."""
        return self.inner_steps > 0 and t <= self.start * t_max + 1e-9

    def with_(self, **changes: Any) -> AutoNDTM:
        return replace(self, **changes)

    def run(
        self,
        prior: Prior,
        objective: FiberObjective,
        x_init: torch.Tensor,
        generator: SampleNoise,
        callback: StepCallback | None = None,
    ) -> Trajectory:
        times = self.times(prior)
        K = len(times)
        rule = self.rule
        table = rule.prepare(prior, times)
        clip = prior.clip_range if isinstance(self.clip, str) else self.clip
        t_max = float(prior.schedule.num_train_timesteps)
        x = x_init.float()
        x0 = x
        history: list[float] = []
        first_loss: torch.Tensor | None = None
        skipped = 0
        for i, t in enumerate(times):
            a_t, s_t = table[i]
            last: torch.Tensor | None = None
            if self.guided(t, t_max):
                delta = torch.zeros_like(x)
                active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
                scale = x.flatten(1).pow(2).mean(1).sqrt()
                for _k in range(self.inner_steps):
                    idx = active.nonzero().flatten()
                    if idx.numel() == 0:
                        break
                    sub = idx if idx.numel() < x.shape[0] else slice(None)
                    with torch.enable_grad():
                        xc = (x[sub] + delta[sub]).detach().requires_grad_(True)
                        d = prior.denoise(xc, t)
                        x0h = rule.tweedie(prior, d, xc, a_t, s_t)
                        if clip is not None:
                            x0h = x0h.clamp(*clip)
                        target = objective.target
                        if target.shape[0] == x.shape[0] and target.shape[0] > 1:
                            target = target[sub]
                        cost = objective.loss(x0h, target)
                        check_finite(cost, "the fiber loss", i, t)
                        (grad,) = torch.autograd.grad(cost.sum(), xc)
                    check_finite(grad, "the control gradient", i, t)
                    cost = cost.detach()
                    if first_loss is None:
                        first_loss = torch.full((x.shape[0],), float("nan"), device=x.device)
                    if last is None:
                        last = torch.full((x.shape[0],), float("nan"), device=x.device)
                    last[sub] = cost
                    fl = first_loss[sub]
                    fl = torch.where(torch.isnan(fl), cost, fl)
                    first_loss[sub] = fl
                    floor = self.tolerance * fl
                    delta[sub] = delta[sub] + polyak_step(cost, grad, scale[sub], self.rho, self.max_step, floor)
                    if self.tolerance > 0:
                        done = cost <= floor
                        if done.any():
                            skipped += int(done.sum())
                            act = active.clone()
                            act[idx[done]] = False
                            active = act
                xc = x + delta
            else:
                xc = x
            with torch.no_grad():
                d = prior.denoise(xc, t)
                x0 = rule.tweedie(prior, d, xc, a_t, s_t)
                if clip is not None:
                    x0 = x0.clamp(*clip)
                x = rule.step(xc, x0, d, table[i], table[i + 1], generator)
            check_finite(x, "the state", i, t)
            if self.track_loss and last is not None:
                history.append(float(last.nanmean()))
            if callback is not None:
                callback(
                    {
                        "step": i,
                        "t": t,
                        "x": x,
                        "x0": x0,
                        "gamma": 1.0 if last is not None else 0.0,
                        "cost": last,
                        "steps": K,
                    }
                )
        sample = x0 if self.output == "x0" else x
        return Trajectory(sample=sample, x=x, x0=x0, loss_history=history, info={"skipped_inner_steps": skipped})


# ---- defaults per prior ------------------------------------------------------------------------

#: NDTM settings that mean the same in :class:`AutoNDTM`: given alone, they keep the scale-free default.
SHARED_SETTINGS = ("steps", "inner_steps", "loss", "sampler", "eta", "variance", "clip", "output", "track_loss")


class NotGuidedWarning(UserWarning):
    """Guided samples ended with a fiber loss above half the unguided level: the guidance barely steered them."""


def registered_preset(prior: Any) -> str | None:
    """The NDTM preset registered for ``prior`` (a spec or a Prior; the zoo's ``builtin:`` priors), or None."""
    from .registry import _default_preset

    return _default_preset(prior) if isinstance(prior, str) else getattr(prior, "preset", None)


def scale_free_default(prior: Any, **settings: Any) -> AutoNDTM:
    """The scale-free setting for a prior without a preset (the flow's Euler rule on flow priors)."""
    schedule = getattr(prior, "schedule", None)
    if getattr(schedule, "kind", None) == "flow":
        settings.setdefault("sampler", "euler")
    return AutoNDTM(**settings)


def resolve_method(method: GuidanceMethod | None, prior: Any) -> tuple[GuidanceMethod, dict[str, Any]]:
    """The method that actually runs on ``prior``, and where its settings came from.

    ``None`` and an ``NDTM`` with settings left open (``NDTM()``, ``NDTM(steps=50)``) take the
    prior's registered preset with the given settings applied; without a preset, the scale-free
    :class:`AutoNDTM` when only settings it shares were given (:data:`SHARED_SETTINGS`), else
    NDTM's own defaults for the rest (the user is tuning NDTM itself). Any other method runs as given.

    Returns:
        ``(method, {"source": "preset" | "scale-free" | "given", "preset": name or None, "given": [...]})``.

    Example:
        >>> from fiberscope import NDTM, GaussianPrior
        >>> m, how = resolve_method(NDTM(steps=20), GaussianPrior(dim=2))
        >>> type(m).__name__, m.steps, how["source"]
        ('AutoNDTM', 20, 'scale-free')
        >>> resolve_method(NDTM(steps=20), "builtin:mnist-ddpm")[1]["preset"]
        'builtin-mnist'
    """
    from .ndtm import NDTM

    if method is None:
        method = NDTM()
    if not isinstance(method, NDTM):
        return method, {"source": "given", "preset": None, "given": None}
    if not method.open_settings:
        return method, {"source": "preset" if method._preset else "given", "preset": method._preset, "given": None}
    given = {k: getattr(method, k) for k in sorted(method._given)}
    preset = registered_preset(prior)
    if preset is not None:
        out = NDTM.preset(preset, **given)
        return out, {"source": "preset", "preset": preset, "given": sorted(given)}
    if set(given) <= set(SHARED_SETTINGS):
        return scale_free_default(prior, **given), {"source": "scale-free", "preset": None, "given": sorted(given)}
    full = replace(method)
    full._given = frozenset(f.name for f in fields(full))
    return full, {"source": "given", "preset": None, "given": sorted(given)}


def strength_hint(method: GuidanceMethod) -> str:
    """What to raise when ``method`` did not steer its samples."""
    if isinstance(method, AutoNDTM):
        return f"raise inner_steps (now {method.inner_steps}), rho (now {method.rho:g}) or start (now {method.start:g})"
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
