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

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

from ..losses import LossFn
from ..priors.base import Prior
from ..priors.schedule import Schedule
from ..validation import check_method_settings
from .base import (
    FiberObjective,
    GuidanceMethod,
    SampleNoise,
    StepCallback,
    StepRule,
    Trajectory,
    check_finite,
    cosine_ramp,
    per_sample_clip,
)

__all__ = ["NDTM", "PRESETS", "lr_at", "ndtm_weight", "parse_gamma"]

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

    Example:
        >>> from fiberscope.priors import VPSchedule
        >>> sch = VPSchedule.linear()
        >>> round(ndtm_weight("ddpm", "control", sch, 780, 760), 4)      # 1/(1 − β_780)
        1.0159
        >>> round(ndtm_weight("ddpm_strided", "control", sch, 780, 760), 3)
        1.365
        >>> ndtm_weight("ones", "score", sch, 780, 760), ndtm_weight("ones", "control", sch, 780, 760)
        (2e-05, 0.0001)
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
    ab_t = float(schedule.abar(t))
    ab_s = float(schedule.abar(s))
    if spec in ("ddpm", "ddpm_strided"):
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
    c2p = math.sqrt(ab_s * (1 - ab_t) / ab_t)
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
class NDTM(GuidanceMethod):
    """Non-linear diffusion trajectory matching (Pandey et al. 2025), as the fiber paper runs it.

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
        track_loss: record the batch-mean terminal cost after every step (costs no extra network
            call: it is the cost of the last inner iteration).
    """

    steps: int = 100
    inner_steps: int = 5
    lr: float = 2e-3
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
    loss: str | LossFn = "l2"
    per_timestep_target: bool = False
    sampler: str = "ddim"
    eta: float = 0.0
    variance: str = "small"
    ancestral_rescaled: bool = False
    clip: tuple[float, float] | str | None = "auto"
    output: str = "x0"
    init: str = "noise"
    strength: float = 1.0
    grad_clip: float | None = 1.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    track_loss: bool = True
    init_control: str = "zero"
    reference_ddim: bool = False

    name = "ndtm"

    def __post_init__(self) -> None:
        # the settings given explicitly: the constructor records them (every one, until it has)
        self._given: frozenset[str] = frozenset(f.name for f in fields(self))
        self._preset: str | None = None
        check_method_settings(self)  # types and bounds of steps, inner_steps, lr, gamma, eta, ... (one layer)
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
        if self.output not in ("x0", "state"):
            raise ValueError(f"output must be 'x0' or 'state', got {self.output!r}")
        if self.init not in ("noise", "sdedit"):
            raise ValueError(f"init must be 'noise' or 'sdedit', got {self.init!r}")
        if not 0 < self.strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {self.strength!r}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be positive or None, got {self.grad_clip!r}")
        if not (isinstance(self.clip, str) and self.clip == "auto") and self.clip is not None:
            c = tuple(float(v) for v in self.clip)
            if len(c) != 2 or not c[0] < c[1]:
                raise ValueError(f"clip must be 'auto', None or (lo, hi) with lo < hi, got {self.clip!r}")
        self.rule.validate()

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

    def clip_range(self, prior: Prior) -> tuple[float, float] | None:
        if isinstance(self.clip, str):
            return prior.clip_range
        return None if self.clip is None else (float(self.clip[0]), float(self.clip[1]))

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> NDTM:
        """A configuration of the paper's reference scripts (see :data:`PRESETS`), with overrides.

        ``gamma=<number>`` on the constant-γ presets (colour MNIST, HTRU2) sets the level after
        the guidance start instead of replacing the anchors.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown NDTM preset {name!r}; available: {sorted(PRESETS)}")
        kw = dict(PRESETS[name]["settings"])
        g = overrides.pop("gamma", None)
        if g is not None:
            start = PRESETS[name].get("gamma_start")
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

    def with_(self, **changes: Any) -> NDTM:
        """A copy with some settings changed (settings left open stay open, see :attr:`open_settings`)."""
        out = replace(self, **changes)
        out._given = self._given | frozenset(changes)
        return out

    @property
    def open_settings(self) -> frozenset[str]:
        """The settings neither given to the constructor nor taken from a preset.

        ``NDTM()`` leaves every setting open: :func:`fiberscope.guidance.auto.resolve_method` fills
        them from the prior's registered preset, or uses the scale-free :class:`AutoNDTM`.
        """
        return frozenset(f.name for f in fields(self)) - self._given

    # ---- the method ---------------------------------------------------------------------------
    def run(
        self,
        prior: Prior,
        objective: FiberObjective,
        x_init: torch.Tensor,
        generator: SampleNoise,
        callback: StepCallback | None = None,
    ) -> Trajectory:
        if self.open_settings:  # NDTM() with settings left open: the prior's preset or the scale-free default
            from .auto import resolve_method

            return resolve_method(self, prior)[0].run(prior, objective, x_init, generator, callback)
        times = self.times(prior)
        K = len(times)
        rule = self.rule
        table = rule.prepare(prior, times)
        clip = self.clip_range(prior)
        b1, b2 = self.adam_betas
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
                y = objective.target_at(t, generator, clip, _tweedie)
            else:
                y = objective.target
            if init_control == "random" or (init_control == "causal_random" and i == 0):
                u = generator.randn_like(x)
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
                    # Adam, element-wise, so every sample is optimised independently
                    m.mul_(b1).add_(grad, alpha=1 - b1)
                    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                    denom = (v / (1 - b2**k)).sqrt_().add_(self.adam_eps)
                    u.addcdiv_(m, denom, value=-lr / (1 - b1**k))
                    last_cost = cost.detach()
            # the prior step is taken from x + γu (a random initial control moves x even when N = 0)
            xc = x + g * u if (g > 0 and u is not None) else x
            with torch.no_grad():
                d = prior.denoise(xc, t)
                x0 = rule.tweedie(prior, d, xc, a_t, s_t)
                if clip is not None:
                    x0 = x0.clamp(*clip)
                x = rule.step(xc, x0, d, ts, ss, generator)
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
    _dataclass_init(self, *args, **kwargs)
    names = [f.name for f in fields(NDTM)]
    self._given = frozenset(names[: len(args)]) | frozenset(kwargs)


NDTM.__init__ = _init_recording_given  # type: ignore[method-assign]
NDTM.__init__.__doc__ = _dataclass_init.__doc__


# The reference scripts' settings (method.md §1.5). Noisier-first anchors in DDPM time.
# The "builtin-*" presets are fiberscope's own, tuned for the zoo's small priors (see docs/benchmarks.md).
# Every "paper-*" preset reproduces the reference code exactly (docs/method.md): its terminal cost is
# "l2_per_token" (the reference's reduction; equal to "l2" on [B, D] features), the ancestral presets
# set ancestral_rescaled and the DDIM ones reference_ddim.
PRESETS: dict[str, dict[str, Any]] = {
    "builtin-mnist": {
        "doc": "fiberscope's setting for builtin:mnist-ddpm with a builtin MNIST subject (CPU budget)",
        "settings": dict(
            steps=50,
            inner_steps=3,
            lr=0.05,
            lr_schedule="linear",
            gamma=[(0, 0, 1000, 700), (2, 2, 700, 0)],
            sampler="ddim",
            eta=0.5,
            variance="small",
            w_control="zero",
            w_score="zero",
            per_timestep_target=False,
            output="x0",
            loss="l2",
        ),
    },
    "builtin-fashion": {
        "doc": "fiberscope's setting for builtin:fashion-ddpm with builtin:fashion-cnn (CPU budget)",
        "settings": dict(
            steps=50,
            inner_steps=3,
            lr=0.05,
            lr_schedule="linear",
            gamma=[(0, 0, 1000, 700), (2, 2, 700, 0)],
            sampler="ddim",
            eta=0.5,
            variance="small",
            w_control="zero",
            w_score="zero",
            per_timestep_target=False,
            output="x0",
            loss="l2",
        ),
    },
    "builtin-mnist-flow": {
        "doc": "fiberscope's setting for builtin:mnist-flow (rectified flow) with a builtin MNIST subject",
        "settings": dict(
            steps=40,
            inner_steps=3,
            lr=0.05,
            lr_schedule="linear",
            gamma=[(0, 0, 1000, 700), (2, 2, 700, 0)],
            sampler="euler",
            w_control="zero",
            w_score="zero",
            per_timestep_target=False,
            output="x0",
            loss="l2",
        ),
    },
    "builtin-colormnist": {
        "doc": "fiberscope's setting for builtin:colormnist-latent with builtin:colorblind-mnist",
        "gamma_start": 500,
        "settings": dict(
            steps=100,
            inner_steps=5,
            lr=2e-2,
            lr_schedule="linear",
            gamma=[(0, 0, 1000, 500), (5, 5, 500, 0)],
            sampler="ancestral",
            variance="small",
            w_control=3e-4,
            w_score="zero",
            per_timestep_target=False,
            output="x0",
            loss="l2",
            clip=(-5.0, 5.0),
        ),
    },
    "paper-imagenet-dinov2": {
        "doc": "DINOv2 ViT-B/14 on ImageNet with the 256×256 unconditional ADM (Table 5: 273 vs NN 1225)",
        "settings": dict(
            steps=200,
            inner_steps=5,
            lr=2e-3,
            lr_schedule="linear",
            gamma=[(0, 0, 1000, 800), (3, 3, 800, 600), (1, 0.5, 600, 200), (2, 10, 200, 0)],
            eta=0.5,
            variance="learned_range",
            sampler="ancestral",
            ancestral_rescaled=True,
            w_control="zero",
            w_score="zero",
            w_terminal=1.0,
            per_timestep_target=True,
            output="x0",
            loss="l2_per_token",
            clip=(-1.0, 1.0),
        ),
    },
    "paper-imagenet-inception": {
        "doc": "InceptionV3 pool3 on ImageNet (Table 5: 34.8)",
        "settings": dict(
            steps=200,
            inner_steps=5,
            lr=2e-3,
            lr_schedule="linear",
            gamma=[(1, 3, 1000, 800), (3, 3, 800, 600), (3, 3, 600, 400), (1, 1, 400, 200), (3, 10, 200, 0)],
            eta=1.0,
            variance="learned_range",
            sampler="ancestral",
            ancestral_rescaled=True,
            w_control="zero",
            w_score="zero",
            w_terminal=1.0,
            per_timestep_target=True,
            output="x0",
            loss="l2_per_token",
            clip=(-1.0, 1.0),
        ),
    },
    "paper-cue-conflict": {
        "doc": "DINOv2 / ResNet-50 on cue-conflict stimuli (Table 5: 487 / 38.1)",
        "settings": dict(
            steps=200,
            inner_steps=5,
            lr=2e-3,
            lr_schedule="linear",
            gamma=[(0, 0, 1000, 800), (3, 3, 800, 600), (1, 0.5, 600, 200), (2, 10, 200, 0)],
            eta=0.5,
            variance="small",
            sampler="ancestral",
            ancestral_rescaled=True,
            w_control="zero",
            w_score="zero",
            w_terminal=1.0,
            per_timestep_target=True,
            output="x0",
            loss="l2_per_token",
            clip=(-1.0, 1.0),
        ),
    },
    "paper-chexpert": {
        "doc": "BiomedCLIP / ConvNeXt CheXpert classifiers (5 logits; probability distance 1.1–1.6%)",
        "settings": dict(
            steps=100,
            inner_steps=4,
            lr=2e-3,
            lr_schedule="linear",
            gamma=[(0, 0, 1000, 500), (0, 10, 500, 0)],
            eta=0.5,
            variance="large",
            sampler="ddim",
            w_control="zero",
            w_score="zero",
            w_terminal=1.0,
            per_timestep_target=True,
            reference_ddim=True,
            output="state",
            loss="l2_per_token",
        ),
    },
    "paper-qwen": {
        "doc": "Qwen2-VL-2B vision encoder, mean-pooled patch tokens, on CheXpert (5.5 ± 3.0 vs NN 17.8)",
        "settings": dict(
            steps=100,
            inner_steps=7,
            lr=2e-3,
            lr_schedule="linear",
            gamma=[(0, 0, 1000, 600), (10, 10, 600, 200), (20, 20, 200, 0)],
            eta=0.25,
            variance="large",
            sampler="ddim",
            w_control=1e-4,
            w_score="zero",
            w_terminal=1.0,
            per_timestep_target=True,
            reference_ddim=True,
            output="x0",
            loss="l2_per_token",
        ),
    },
    "paper-colormnist": {
        "doc": "colour-blind subject on colour MNIST, latent prior (γ=5: RMS ≈ 0.06 at colour-KL ≈ 0.2)",
        "gamma_start": 500,
        "settings": dict(
            steps=200,
            inner_steps=10,
            lr=2e-2,
            lr_schedule="linear",
            gamma=[(0, 0, 1000, 500), (5, 5, 500, 0)],
            eta=0.25,
            variance="small",
            sampler="ancestral",
            ancestral_rescaled=True,
            w_control=3e-4,
            w_score="zero",
            w_terminal=1.0,
            per_timestep_target=False,
            output="x0",
            loss="l2_per_token",
            clip=(-5.0, 5.0),
        ),
    },
    "paper-causal-mnist": {
        "doc": "ERM vs IRM classifiers on causal MNIST (14×14, 2 channels)",
        "settings": dict(
            steps=200,
            inner_steps=6,
            lr=4e-3,
            lr_schedule="linear",
            gamma=[(0, 0, 1000, 500), (7, 20, 500, 0)],
            eta=0.5,
            variance="small",
            sampler="ancestral",
            ancestral_rescaled=True,
            w_control=3e-4,
            w_score="zero",
            w_terminal=1.0,
            per_timestep_target=False,
            output="x0",
            loss="l2_per_token",
        ),
    },
    "paper-htru2": {
        "doc": "HTRU2 tabular pulsar classifier (γ = 1/2/5/10: RMS 0.358/0.194/0.0705/0.028)",
        "gamma_start": 500,
        "settings": dict(
            steps=200,
            inner_steps=10,
            lr=2e-2,
            lr_schedule="linear",
            gamma=[(0, 0, 1000, 500), (5, 5, 500, 0)],
            eta=0.25,
            variance="small",
            sampler="ancestral",
            ancestral_rescaled=True,
            w_control=3e-4,
            w_score="zero",
            w_terminal=1.0,
            per_timestep_target=False,
            output="x0",
            loss="l2_per_token",
            clip=(-12.0, 12.0),
        ),
    },
}
