"""NDTM: non-linear diffusion trajectory matching, with every knob of the paper's reference code.

At each denoising step t → s, a control ``u`` (zero at first) is optimised for ``inner_steps``
Adam steps on

    C(u) = τ·‖ε̂(x + γu) − ε̂(x)‖² + κ·γ²·‖(x + γu) − x‖² + w_T·ℓ(φ(decode(clip(x̂0(x + γu)))), y_t)

with per-sample gradients clipped to norm 1 and a fresh Adam per step; then the ordinary prior step
is taken from ``x + γu``. ``y_t`` is φ(query), or (``per_timestep_target=True``, the paper's
modification) φ of the prior's own estimate of the query noised to level t. Because NDTM only
uses ``prior.denoise`` and the schedule, the same code serves pixel DDPMs, latent diffusion and
rectified flows.

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
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..losses import LossFn
from ..priors.base import Prior
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

__all__ = ["NDTM", "PRESETS", "parse_gamma"]

Anchor = tuple[float, float, float, float]
GammaSpec = float | int | Sequence[Sequence[float]] | Callable[[float], float]
WeightSpec = str | float | int

WEIGHT_SCHEMES = ("zero", "ones", "ddim", "ddpm")


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


def _weight(spec: WeightSpec, which: str, a_t: float, a_s: float, c2: float) -> float:
    """The reference's weight schemes, from ᾱ_t, ᾱ_s (and DDIM's ε coefficient c2 for 'ddim')."""
    if isinstance(spec, (int, float)):
        return float(spec)
    if spec == "zero":
        return 0.0
    if spec == "ones":
        return 1.0
    beta = 1 - a_t / a_s
    if spec == "ddpm":
        if which == "score":
            return beta**2 / ((1 - beta) * (1 - a_t)) if a_t < 1 else 0.0
        return 1 / (1 - beta)
    if spec == "ddim":
        if which == "score":
            c2p = math.sqrt(a_s * (1 - a_t) / a_t)
            return (c2 - c2p) ** 2
        return a_t / a_s
    raise ValueError(f"weight scheme must be one of {WEIGHT_SCHEMES} or a number, got {spec!r}")


@dataclass
class NDTM(GuidanceMethod):
    """Non-linear diffusion trajectory matching (Pandey et al. 2025), as the fiber paper runs it.

    Args:
        steps: K denoising steps on the prior's uniform grid.
        inner_steps: N Adam steps on the control per denoising step (0: unguided).
        lr: base learning rate of the control.
        lr_schedule: ``"linear"`` (``lr·(1 − i/K)``, the reference) or ``"constant"``.
        gamma: γ(t): a number, cosine-ramp anchors ``[(start, end, t_start, t_end), ...]`` or a
            callable; γ = 0 skips the inner loop.
        warm_start: start each step's control from the previous one instead of zero.
        w_terminal: weight of the fiber (terminal) cost.
        w_control: κ, weight of ``γ²‖γu‖²``: ``"zero"``, ``"ones"``, ``"ddim"``, ``"ddpm"`` or a number.
        w_score: τ, weight of ``‖ε̂(x + γu) − ε̂(x)‖²``, same choices.
        loss: terminal cost, default ``"l2"`` (unsquared norm, the reference's choice).
        per_timestep_target: match the query's Tweedie estimate at the same noise level.
        sampler: ``"ddim"``, ``"ancestral"`` or ``"euler"`` (flow ODE; η ignored).
        eta: DDIM stochasticity (no effect on the ancestral sampler).
        variance: ``"small"``, ``"large"`` or ``"learned_range"``.
        ancestral_rescaled: reproduce the reference's rescaled ancestral schedule (see
            :class:`~fiberscope.guidance.base.StepRule`).
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

    name = "ndtm"

    def __post_init__(self) -> None:
        check_method_settings(self)  # types and bounds of steps, inner_steps, lr, gamma, eta, ... (one layer)
        if self.lr_schedule not in ("linear", "constant"):
            raise ValueError(f"lr_schedule must be 'linear' or 'constant', got {self.lr_schedule!r}")
        self._gamma_fn = parse_gamma(self.gamma)
        for nm in ("w_control", "w_score"):
            v = getattr(self, nm)
            if not isinstance(v, (int, float)) and v not in WEIGHT_SCHEMES:
                raise ValueError(f"{nm} must be one of {WEIGHT_SCHEMES} or a number, got {v!r}")
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
        if self.ancestral_rescaled and self.sampler == "ancestral" and self.steps <= 20:
            raise ValueError(
                f"ancestral_rescaled builds the reference's rescaled schedule β' up to 0.02·1000/steps, "
                f"which exceeds 1 for steps ≤ 20; use steps > 20 (got {self.steps}) or "
                "ancestral_rescaled=False"
            )

    # ---- helpers ------------------------------------------------------------------------------
    @property
    def rule(self) -> StepRule:
        return StepRule(self.sampler, self.eta, self.variance, self.ancestral_rescaled)

    def gamma_at(self, t: float) -> float:
        """γ(t) of this configuration."""
        return float(self._gamma_fn(t))

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
        return cls(**kw)

    def with_(self, **changes: Any) -> NDTM:
        """A copy with some settings changed."""
        return replace(self, **changes)

    # ---- the method ---------------------------------------------------------------------------
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
        clip = self.clip_range(prior)
        b1, b2 = self.adam_betas
        x = x_init.float()
        u_prev: torch.Tensor | None = None
        x0 = x
        history: list[float] = []

        def _tweedie(zt: torch.Tensor, tt: float) -> torch.Tensor:
            return prior.denoise(zt, tt).x0

        for i, t in enumerate(times):
            ts, ss = table[i], table[i + 1]
            a_t, s_t = ts
            if self.per_timestep_target:
                y = objective.target_at(t, generator, clip, _tweedie)
            else:
                y = objective.target
            g = self.gamma_at(t)
            last_cost: torch.Tensor | None = None
            if g > 0 and self.inner_steps > 0:
                ab_t = float(a_t**2 / (a_t**2 + s_t**2))
                ab_s = float(ss[0] ** 2 / (ss[0] ** 2 + ss[1] ** 2))
                w_c = _weight(self.w_control, "control", ab_t, ab_s, 0.0)
                c2 = float(rule.ddim_c2(ts, ss)) if self.w_score == "ddim" else 0.0
                w_s = _weight(self.w_score, "score", ab_t, ab_s, c2)
                u = u_prev.clone() if (self.warm_start and u_prev is not None) else torch.zeros_like(x)
                m = torch.zeros_like(x)
                v = torch.zeros_like(x)
                lr = self.lr * (1 - i / K) if self.lr_schedule == "linear" else self.lr
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
                u_prev = u
                xc = x + g * u
            else:
                xc = x
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
                callback({"step": i, "t": t, "x": x, "x0": x0, "gamma": g, "cost": last_cost, "steps": K})
        sample = x0 if self.output == "x0" else x
        return Trajectory(sample=sample, x=x, x0=x0, loss_history=history)


# The reference scripts' settings (method.md §1.5). Noisier-first anchors in DDPM time.
# The "builtin-*" presets are fiberscope's own, tuned for the zoo's small priors (see docs/benchmarks.md).
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
            loss="l2",
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
            loss="l2",
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
            loss="l2",
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
            output="state",
            loss="l2",
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
            output="x0",
            loss="l2",
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
            loss="l2",
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
            loss="l2",
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
            loss="l2",
            clip=(-12.0, 12.0),
        ),
    },
}
