"""NDTM: non-linear diffusion trajectory matching, with every knob of the paper's reference code.

At each denoising step t → s, a control ``u`` (zero, random or carried over: ``init_control``) is
optimised for ``inner_steps`` Adam steps on

    C(u) = τ·‖ε̂(x + γu) − ε̂(x)‖² + κ·γ²·‖(x + γu) − x‖² + w_T·ℓ(φ(decode(clip(x̂0(x + γu)))), y_t)

with per-sample gradients clipped to norm 1 and a fresh Adam per step; then the ordinary prior step
is taken from ``x + γu``. ``y_t`` is φ(query), or (``per_timestep_target=True``, the paper's
modification) φ of the prior's own estimate of the query noised to level t. Because NDTM only
uses ``prior.denoise`` and the schedule, the same code serves pixel DDPMs, latent diffusion and
rectified flows. ``docs/method.md`` lists every difference from the reference code and how each is
resolved; the ``paper-*`` presets reproduce it exactly.

Example:
    >>> from fiberscope import NDTM
    >>> m = NDTM(steps=50, inner_steps=3, lr=0.01, gamma=[(0, 0, 1000, 800), (2, 2, 800, 0)])
    >>> m.gamma_at(900), m.gamma_at(500)
    (0.0, 2.0)
    >>> NDTM.preset("paper-colormnist", gamma=10).gamma_at(100)
    10.0
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

from ..priors.base import Prior
from ..priors.schedule import Schedule, abar
from . import presets as _presets
from .auto import registered_preset, scale_free_default
from .base import (
    AdamSettings,
    FiberObjective,
    GuidanceMethod,
    LossSetting,
    SampleNoise,
    SamplingSettings,
    StepCallback,
    StepRule,
    Trajectory,
    adam_step,
    check_finite,
    cosine_ramp,
    per_sample_clip,
)

__all__ = ["NDTM", "SHARED_SETTINGS", "lr_at", "ndtm_weight", "parse_gamma", "resolve_method"]

Anchor = tuple[float, float, float, float]
GammaSpec = float | int | Sequence[Sequence[float]] | Callable[[float], float]
WeightSpec = str | float | int

WEIGHT_SCHEMES = ("zero", "ones", "ddim", "ddpm", "ddpm_strided")
LR_SCHEDULES = ("linear", "constant", "cosine")
INIT_CONTROLS = ("zero", "random", "causal_zero", "causal_random")

# The reference's "ones" scheme is not 1: it is these constants (fff/ndtm.py, _get_*_weight).
ONES_SCORE = 2e-5
ONES_CONTROL = 1e-4


def parse_gamma(gamma: GammaSpec, arg: str = "gamma") -> Callable[[float], float]:
    """γ(t) from a number (constant), a list of cosine-ramp anchors, or a callable.

    Anchors are ``(start, end, t_start, t_end)`` with ``t_start ≥ t_end`` in the prior's native
    time (0 … 1000 for DDPMs); the first anchor whose ``[t_end, t_start]`` holds t wins and γ = 0
    outside every anchor.
    """
    if callable(gamma):
        return gamma
    if isinstance(gamma, (int, float)):
        if not math.isfinite(gamma) or gamma < 0:
            raise ValueError(
                f"{arg} must be a non-negative number, a list of (start, end, t_start, t_end) anchors "
                f"or a callable; got {gamma!r}"
            )
        g = float(gamma)
        return lambda t: g
    try:
        anchors = [tuple(float(v) for v in a) for a in gamma]
    except (TypeError, ValueError):
        raise ValueError(
            f"{arg} must be a number, a list of (start, end, t_start, t_end) anchors or a callable; got {gamma!r}"
        ) from None
    if not anchors:
        raise ValueError(f"{arg}: the anchor list is empty; give at least one (start, end, t_start, t_end)")
    for a in anchors:
        if len(a) != 4:
            raise ValueError(f"{arg}: each anchor must be (start, end, t_start, t_end), got {a} with {len(a)} values")
        if a[2] < a[3]:
            raise ValueError(f"{arg}: anchor {a} has t_start < t_end; anchors run from t_start (noisier) down to t_end")
        if a[0] < 0 or a[1] < 0 or not all(math.isfinite(v) for v in a):
            raise ValueError(f"{arg}: anchor {a} must hold finite values with non-negative start and end")
    anchors_t: list[Anchor] = anchors  # type: ignore[assignment]

    def gamma_t(t: float) -> float:
        for start, end, ts, te in anchors_t:
            if te <= t <= ts:
                return cosine_ramp(start, end, ts, te, t)
        return 0.0

    return gamma_t


def ndtm_weight(spec: WeightSpec, which: str, schedule: Schedule, t: float, s: float | None, eta: float = 0.0) -> float:
    """τ (``which="score"``) or κ (``which="control"``) at the step t → s, by the reference's schemes.

    Every scheme reads the prior's own schedule at the grid times (never the rescaled ancestral
    table), with ᾱ = α²/(α² + σ²), ``s=None`` the clean end (ᾱ_s = 1) and β_t the one-step β of
    the full training schedule (:meth:`~fiberscope.priors.schedule.Schedule.beta`):

    * ``"zero"``: τ = κ = 0.
    * ``"ones"``: τ = 2e-5, κ = 1e-4 (the reference's constants; a plain 1.0 is ``1.0``).
    * ``"ddpm"``: τ = β_t² / ((1 − β_t)(1 − ᾱ_t)), κ = 1 / (1 − β_t).
    * ``"ddpm_strided"``: the same with the strided step's β = 1 − ᾱ_t/ᾱ_s (fiberscope's former
      ``"ddpm"``; equal to ``"ddpm"`` when K = T).
    * ``"ddim"``: τ = (c2 − √(ᾱ_s(1 − ᾱ_t)/ᾱ_t))² with c1 = η·√((1 − ᾱ_t/ᾱ_s)(1 − ᾱ_s)/(1 − ᾱ_t))
      and c2 = √(1 − ᾱ_s − c1²) (the small-variance c1, whatever the sampler); κ = ᾱ_t/ᾱ_s.
    * a number: that number.

    **Pure noise** (ᾱ_t = 0: the first step on a flow prior, where σ = 1). The ``ddpm``,
    ``ddpm_strided`` and ``ddim`` formulas divide by zero there: they are the squared coefficients of
    x_t and ε̂ in the step's mean written without x̂0, and both coefficients diverge as ᾱ_t → 0 while
    their contributions cancel. What the weights stand for, the squared change of the step's mean
    under the control, has a finite limit, because x̂0 stops depending on x_t and ε̂ → x_t; that
    limit is the weight at ᾱ_t = 0:

    * ``"ddim"``: the mean √ᾱ_s·x̂0 + c2·ε̂ changes by c2·Δε̂: τ = c2² = (1 − η²)(1 − ᾱ_s), κ = 0.
    * ``"ddpm"``, ``"ddpm_strided"``: β = 1, and the mean √ᾱ_s·β/(1 − ᾱ_t)·x̂0 +
      √(1 − β)(1 − ᾱ_s)/(1 − ᾱ_t)·x_t does not change at all: τ = κ = 0.

    Example:
        >>> from fiberscope.priors import FlowSchedule, VPSchedule
        >>> sch = VPSchedule.linear()
        >>> round(ndtm_weight("ddpm", "control", sch, 780, 760), 4)      # 1/(1 − β_780)
        1.0159
        >>> round(ndtm_weight("ddpm_strided", "control", sch, 780, 760), 3)
        1.365
        >>> ndtm_weight("ones", "score", sch, 780, 760), ndtm_weight("ones", "control", sch, 780, 760)
        (2e-05, 0.0001)
        >>> flow = FlowSchedule()                                           # t = 1000 is pure noise
        >>> round(ndtm_weight("ddim", "score", flow, 1000, 500), 9), ndtm_weight("ddpm", "control", flow, 1000, 500)
        (0.5, 0.0)
    """
    if isinstance(spec, bool) or not (isinstance(spec, (int, float)) or spec in WEIGHT_SCHEMES):
        raise ValueError(f"weight scheme must be one of {WEIGHT_SCHEMES} or a number, got {spec!r}")
    if isinstance(spec, (int, float)):
        return float(spec)
    score = which == "score"
    if spec == "zero":
        return 0.0
    if spec == "ones":
        return ONES_SCORE if score else ONES_CONTROL
    ab_t = float(abar(*schedule.alpha_sigma(t)))
    ab_s = float(abar(*schedule.alpha_sigma(s)))
    if spec in ("ddpm", "ddpm_strided"):
        if ab_t <= 0:  # pure noise: β = 1 and the step's mean does not depend on x_t (see above)
            return 0.0
        beta = float(schedule.beta(t)) if spec == "ddpm" else 1 - ab_t / ab_s
        if score:
            return beta**2 / ((1 - beta) * (1 - ab_t)) if ab_t < 1 else 0.0
        return 1 / (1 - beta)
    # "ddim"
    if not score:
        return ab_t / ab_s
    if ab_t >= 1:
        return 0.0
    c1 = eta * math.sqrt(max(1 - ab_t / ab_s, 0.0) * (1 - ab_s) / (1 - ab_t))
    c2 = math.sqrt(max(1 - ab_s - c1 * c1, 0.0))
    c2p = math.sqrt(ab_s * (1 - ab_t) / ab_t) if ab_t > 0 else 0.0  # pure noise: x̂0 does not move (see above)
    return (c2 - c2p) ** 2


def lr_at(schedule: str, lr: float, i: int, steps: int) -> float:
    """The control's learning rate at denoising step ``i`` of ``steps`` (i = 0 is the noisiest).

    ``"linear"``: lr·(1 − i/K), decaying towards t = 0 (the reference's default). ``"cosine"``:
    lr·½(1 − cos(π i/K)), the reference's ``"cos"``: the *reverse* of linear, rising from 0 at the
    noisiest step to ≈ lr at the last. ``"constant"``: lr.

    Example:
        >>> lr_at("linear", 1.0, 50, 100), round(lr_at("cosine", 1.0, 50, 100), 6), lr_at("cosine", 1.0, 0, 100)
        (0.5, 0.5, 0.0)
    """
    if schedule == "linear":
        return lr * (1.0 - i / steps)
    if schedule == "cosine":
        return lr * 0.5 * (1.0 - math.cos(math.pi * i / steps))
    if schedule == "constant":
        return lr
    raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}")


@dataclass
class NDTM(AdamSettings, LossSetting, SamplingSettings):
    """Non-linear diffusion trajectory matching (Pandey et al. 2025), as the fiber paper runs it.

    Settings are keyword arguments (``steps`` may also come first by position). Those NDTM shares
    with other methods are declared in :mod:`fiberscope.guidance.base` (:class:`SamplingSettings`,
    :class:`LossSetting`, :class:`AdamSettings`) and described here as NDTM uses them.

    Args:
        steps: K denoising steps on the prior's uniform grid.
        inner_steps: N Adam steps on the control per denoising step (0: unguided).
        lr: base learning rate of the control.
        lr_schedule: ``"linear"`` (``lr·(1 − i/K)``, the reference's default), ``"cosine"``
            (``lr·½(1 − cos(πi/K))``, the reference's ``"cos"``: rising from 0 to lr) or
            ``"constant"`` (the reference's ``"const"``); see :func:`lr_at`.
        gamma: γ(t): a number, cosine-ramp anchors ``[(start, end, t_start, t_end), ...]`` or a
            callable; γ = 0 skips the inner loop.
        init_control: where each step's control starts (the reference's ``init_control``):
            ``"zero"`` (every step), ``"random"`` (a fresh N(0, I) draw every step),
            ``"causal_zero"`` / ``"causal_random"`` (the previous step's control; zero / N(0, I)
            at the first step). Random draws come from the sample's own generator, after the
            per-timestep target's noise and before the update's, as in the reference.
        warm_start: the older spelling of ``init_control="causal_zero"``.
        w_terminal: weight of the fiber (terminal) cost.
        w_control: κ, weight of ``γ²‖γu‖²``: ``"zero"``, ``"ones"``, ``"ddim"``, ``"ddpm"``,
            ``"ddpm_strided"`` or a number (see :func:`ndtm_weight`).
        w_score: τ, weight of ``‖ε̂(x + γu) − ε̂(x)‖²``, same choices.
        loss: terminal cost, default ``"l2"`` (unsquared norm over all feature dimensions);
            ``"l2_per_token"`` is the reference's exact reduction (norm over the last dimension,
            summed over the others), which differs from ``"l2"`` only on 3+-dimensional features.
        per_timestep_target: match the query's Tweedie estimate at the same noise level.
        sampler: ``"ddim"``, ``"ancestral"`` or ``"euler"`` (flow ODE; η ignored).
        eta: DDIM stochasticity (no effect on the ancestral sampler).
        variance: ``"small"``, ``"large"`` or ``"learned_range"``.
        ancestral_rescaled: reproduce the reference's rescaled ancestral schedule (see
            :class:`~fiberscope.guidance.base.StepRule`).
        reference_ddim: reproduce the reference's DDIM branch exactly: c2 from the small-variance
            c1 under ``learned_range`` and the noise c1·ξ on the last step too (0.005·ξ with
            variance ``"large"`` at η = 0.5); see :class:`~fiberscope.guidance.base.StepRule`.
        clip: clip range of x̂0 in state space; ``"auto"`` takes the prior's, None disables.
        output: ``"x0"`` (last Tweedie estimate) or ``"state"`` (final state).
        init: ``"noise"`` or ``"sdedit"`` (start from the query noised to ``strength``).
        strength: SDEdit strength in (0, 1]: the fraction of the trajectory that is re-run.
        grad_clip: per-sample gradient norm clip (None: off).
        adam_betas, adam_eps: Adam settings (torch defaults).
        track_loss: record, after every guided step, the batch mean of the whole cost C(u) at the
            last inner iteration (no extra network call).
    """

    inner_steps: int = 5
    lr_schedule: str = "linear"
    gamma: GammaSpec = field(
        default_factory=lambda: [
            (0.0, 0.0, 1000.0, 800.0),
            (3.0, 3.0, 800.0, 600.0),
            (1.0, 0.5, 600.0, 200.0),
            (2.0, 10.0, 200.0, 0.0),
        ]
    )
    warm_start: bool = False
    w_terminal: float = 1.0
    w_control: WeightSpec = "zero"
    w_score: WeightSpec = "zero"
    per_timestep_target: bool = False
    ancestral_rescaled: bool = False
    grad_clip: float | None = 1.0
    track_loss: bool = True
    init_control: str = "zero"
    reference_ddim: bool = False

    name = "ndtm"

    def __post_init__(self) -> None:
        # the settings given explicitly: the constructor records them (every one, until it has)
        self._given: frozenset[str] = frozenset(f.name for f in fields(self))
        self._preset: str | None = None
        self.check_sampling()  # types and bounds of every number (one layer), the rule, clip, output, init
        self.check_loss()
        self.check_adam()
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"lr_schedule must be one of {LR_SCHEDULES} (the reference's 'const' is 'constant', its 'cos' is "
                f"'cosine'), got {self.lr_schedule!r}"
            )
        self._gamma_fn = parse_gamma(self.gamma)
        for nm in ("w_control", "w_score"):
            v = getattr(self, nm)
            if isinstance(v, bool) or (not isinstance(v, (int, float)) and v not in WEIGHT_SCHEMES):
                raise ValueError(f"{nm} must be one of {WEIGHT_SCHEMES} or a number, got {v!r}")
        if self.init_control not in INIT_CONTROLS:
            raise ValueError(f"init_control must be one of {INIT_CONTROLS}, got {self.init_control!r}")
        if self.warm_start and self.init_control not in ("zero", "causal_zero"):
            raise ValueError(
                f"warm_start=True is init_control='causal_zero' and contradicts init_control={self.init_control!r}; "
                "give only init_control"
            )

    # ---- helpers ------------------------------------------------------------------------------
    @property
    def rule(self) -> StepRule:
        return StepRule(self.sampler, self.eta, self.variance, self.ancestral_rescaled, self.reference_ddim)

    @property
    def control_init(self) -> str:
        """The effective ``init_control`` (``warm_start=True`` reads as ``"causal_zero"``)."""
        return "causal_zero" if self.warm_start else self.init_control

    def gamma_at(self, t: float) -> float:
        """γ(t) of this configuration."""
        return float(self._gamma_fn(t))

    def lr_at(self, i: int, steps: int | None = None) -> float:
        """The control's learning rate at denoising step ``i`` (see :func:`lr_at`)."""
        return lr_at(self.lr_schedule, self.lr, i, self.steps if steps is None else steps)

    def step_weights(self, prior: Prior, t: float, s: float | None) -> tuple[float, float]:
        """``(κ, τ)``: the control and score weights NDTM uses at the step t → s on ``prior``.

        Example:
            >>> from fiberscope.priors import GaussianPrior
            >>> m = NDTM(w_control="ddpm", w_score="ddpm")
            >>> kappa, tau = m.step_weights(GaussianPrior(dim=2), 780, 760)
            >>> round(kappa, 4), round(tau, 6)
            (1.0159, 0.000249)
        """
        eta = 0.0 if self.sampler == "euler" else self.eta
        return (
            ndtm_weight(self.w_control, "control", prior.schedule, t, s, eta),
            ndtm_weight(self.w_score, "score", prior.schedule, t, s, eta),
        )

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> NDTM:
        """A preset (:data:`fiberscope.guidance.presets.PRESETS`: the paper's reference scripts and the
        zoo's settings), with overrides; every setting a preset does not change is NDTM's default.

        ``gamma=<number>`` on the constant-γ presets (colour MNIST, HTRU2) sets the level after
        the guidance start instead of replacing the anchors.
        """
        table = _presets.PRESETS
        if name not in table:
            raise ValueError(f"unknown NDTM preset {name!r}; available: {sorted(table)}")
        kw = copy.deepcopy(table[name]["settings"])  # each NDTM owns its γ anchors
        g = overrides.pop("gamma", None)
        if g is not None:
            start = table[name].get("gamma_start")
            if start is not None and isinstance(g, (int, float)):
                g = [(0.0, 0.0, 1000.0, float(start)), (float(g), float(g), float(start), 0.0)]
            kw["gamma"] = g
        unknown = set(overrides) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"unknown NDTM setting(s) {sorted(unknown)}")
        kw.update(overrides)
        out = cls(**kw)
        out._given = frozenset(f.name for f in fields(cls))  # a preset leaves nothing open
        out._preset = name
        return out

    @property
    def open_settings(self) -> frozenset[str]:
        """The settings neither given to the constructor nor taken from a preset.

        ``NDTM()`` leaves every setting open: :func:`resolve_method` fills
        them from the prior's registered preset, or uses the scale-free :class:`AutoNDTM`. A copy
        made with ``dataclasses.replace(m, **changes)`` passes every setting to the constructor, so
        it leaves none open: where ``m`` left a setting open, the copy has NDTM's own default (resolve
        ``m`` first, with :func:`resolve_method`, to keep a prior's preset).

        Example:
            >>> from dataclasses import replace
            >>> sorted(NDTM(steps=20).open_settings)[:3], replace(NDTM(steps=20), lr=0.1).open_settings
            (['adam_betas', 'adam_eps', 'ancestral_rescaled'], frozenset())
        """
        return frozenset(f.name for f in fields(self)) - self._given

    # ---- the method ---------------------------------------------------------------------------
    def run(
        self,
        prior: Prior,
        objective: FiberObjective,
        x_init: torch.Tensor,
        noise: SampleNoise,
        callback: StepCallback | None = None,
    ) -> Trajectory:
        if self.open_settings:  # NDTM() with settings left open: the prior's preset or the scale-free default
            return resolve_method(self, prior)[0].run(prior, objective, x_init, noise, callback)
        times = self.times(prior)
        K = len(times)
        rule = self.rule
        table = rule.prepare(prior, times)
        clip = self.clip_range(prior)
        init_control = self.control_init
        x = x_init.float()
        u: torch.Tensor | None = None  # the control; None stands for zero
        x0 = x
        history: list[float] = []

        def _tweedie(zt: torch.Tensor, tt: float) -> torch.Tensor:
            return prior.denoise(zt, tt).x0

        for i, t in enumerate(times):
            ts, ss = table[i], table[i + 1]
            a_t, s_t = ts
            s_time = times[i + 1] if i + 1 < K else None
            # the reference's order of random draws within a step: target noise, control, update
            if self.per_timestep_target:
                y = objective.target_at(t, noise, clip, _tweedie)
            else:
                y = objective.target
            if init_control == "random" or (init_control == "causal_random" and i == 0):
                u = noise.randn_like(x)
            elif init_control == "zero":
                u = None
            g = self.gamma_at(t)
            lr = self.lr_at(i, K)
            w_c, w_s = self.step_weights(prior, t, s_time)
            last_cost: torch.Tensor | None = None
            if g > 0 and self.inner_steps > 0:
                u = torch.zeros_like(x) if u is None else u.clone()
                m = torch.zeros_like(x)
                v = torch.zeros_like(x)
                e0 = None
                if w_s != 0:
                    with torch.no_grad():
                        e0 = prior.denoise(x, t).eps
                for k in range(1, self.inner_steps + 1):
                    with torch.enable_grad():
                        u.requires_grad_(True)
                        xc = x + g * u
                        d = prior.denoise(xc, t)
                        x0h = rule.tweedie(prior, d, xc, a_t, s_t)
                        if clip is not None:
                            x0h = x0h.clamp(*clip)
                        cost = self.w_terminal * objective.loss(x0h, y)
                        if w_c != 0:
                            cost = cost + w_c * g * g * (xc - x).flatten(1).pow(2).sum(1)
                        if e0 is not None:
                            cost = cost + w_s * (d.eps - e0).flatten(1).pow(2).sum(1)
                        check_finite(cost, "the NDTM cost", i, t)
                        (grad,) = torch.autograd.grad(cost.sum(), u)
                    u = u.detach()
                    check_finite(grad, "the control gradient", i, t)
                    if self.grad_clip is not None:
                        grad = per_sample_clip(grad, self.grad_clip)
                    adam_step(u, grad, m, v, k, lr, self.adam_betas, self.adam_eps)  # element-wise: per sample
                    last_cost = cost.detach()
            # the prior step is taken from x + γu (a random initial control moves x even when N = 0)
            xc = x + g * u if (g > 0 and u is not None) else x
            with torch.no_grad():
                d = prior.denoise(xc, t)
                x0 = rule.tweedie(prior, d, xc, a_t, s_t)
                if clip is not None:
                    x0 = x0.clamp(*clip)
                x = rule.step(xc, x0, d, ts, ss, noise)
            check_finite(x, "the state", i, t)
            if self.track_loss and last_cost is not None:
                history.append(float(last_cost.mean()))
            if callback is not None:
                callback(
                    {
                        "step": i,
                        "t": t,
                        "x": x,
                        "x0": x0,
                        "gamma": g,
                        "cost": last_cost,
                        "steps": K,
                        "lr": lr,
                        "w_control": w_c,
                        "w_score": w_s,
                    }
                )
        sample = x0 if self.output == "x0" else x
        return Trajectory(sample=sample, x=x, x0=x0, loss_history=history)


_dataclass_init = NDTM.__init__


def _init_recording_given(self: NDTM, *args: Any, **kwargs: Any) -> None:
    if len(args) > 1:  # the shared settings come first in the field order, which differs from NDTM's older one
        raise TypeError(
            f"NDTM takes its settings as keyword arguments (only steps may come by position), got {len(args)} "
            "positional arguments: write e.g. NDTM(steps=50, inner_steps=3, lr=0.05)"
        )
    _dataclass_init(self, *args, **kwargs)
    self._given = frozenset(["steps"] if args else []) | frozenset(kwargs)


NDTM.__init__ = _init_recording_given  # type: ignore[method-assign]
NDTM.__init__.__doc__ = _dataclass_init.__doc__


def __getattr__(name: str) -> Any:
    if name == "PRESETS":  # moved to fiberscope.guidance.presets (issue 22)
        warnings.warn(
            "fiberscope.guidance.ndtm.PRESETS moved to fiberscope.guidance.presets.PRESETS (also "
            "fiberscope.guidance.PRESETS); the old path goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return _presets.PRESETS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---- what an NDTM with settings left open runs --------------------------------------------------

#: NDTM settings that mean the same in :class:`AutoNDTM`: given alone, they keep the scale-free default.
SHARED_SETTINGS = (
    "steps",
    "inner_steps",
    "loss",
    "sampler",
    "eta",
    "variance",
    "clip",
    "output",
    "init",
    "strength",
    "track_loss",
)


def resolve_method(method: GuidanceMethod | None, prior: Any) -> tuple[GuidanceMethod, dict[str, Any]]:
    """The method that actually runs on ``prior``, and where its settings came from.

    ``None`` and an ``NDTM`` with settings left open whose given settings all mean the same in
    :class:`AutoNDTM` (:data:`SHARED_SETTINGS`: ``NDTM()``, ``NDTM(steps=50)``) run the scale-free
    :class:`AutoNDTM` on every prior: it reached lower fiber losses than the zoo's tuned NDTM
    presets at their cost, kept the query's class more often and was as realistic
    (``docs/defaults.md``). An ``NDTM`` given settings of its own (``NDTM(lr=0.1)``: the user is
    tuning NDTM itself) takes the rest from the prior's registered preset, else from NDTM's
    defaults. A preset (``NDTM.preset(name)``) and any other method run as given.

    Returns:
        ``(method, {"source": "scale-free" | "preset" | "given", "preset": name or None, "given": [...]})``.

    Example:
        >>> from fiberscope import NDTM, GaussianPrior
        >>> m, how = resolve_method(NDTM(steps=20), GaussianPrior(dim=2))
        >>> type(m).__name__, m.steps, how["source"]
        ('AutoNDTM', 20, 'scale-free')
        >>> type(resolve_method(None, "builtin:mnist-ddpm")[0]).__name__
        'AutoNDTM'
        >>> resolve_method(NDTM(lr=0.1), "builtin:mnist-ddpm")[1]["preset"]
        'builtin-mnist'
    """
    if method is None:
        method = NDTM()
    if not isinstance(method, NDTM):
        return method, {"source": "given", "preset": None, "given": None}
    if not method.open_settings:
        return method, {"source": "preset" if method._preset else "given", "preset": method._preset, "given": None}
    given = {k: getattr(method, k) for k in sorted(method._given)}
    if set(given) <= set(SHARED_SETTINGS):
        return scale_free_default(prior, **given), {"source": "scale-free", "preset": None, "given": sorted(given)}
    preset = registered_preset(prior)
    if preset is not None:
        out = NDTM.preset(preset, **given)
        return out, {"source": "preset", "preset": preset, "given": sorted(given)}
    full = replace(method)
    full._given = frozenset(f.name for f in fields(full))
    return full, {"source": "given", "preset": None, "given": sorted(given)}
