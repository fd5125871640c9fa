"""Stateless update rules: ``(x_t, x̂0, ε̂, t, s, noise) → x_s``.

diffusers schedulers count their own steps and cannot be stepped twice per timestep, which
guidance with recurrence or inner optimisation needs; fiberscope takes only their schedules and
does the arithmetic here. All rules are written for the general interpolant
``x_t = α_t·x0 + σ_t·ε`` so that one function serves VP diffusion and rectified flow.

* :func:`ddim_step` — DDIM with any η and a variance type (``small``/``large``/``learned_range``);
  on a flow schedule with η = 0 it is exactly the Euler step of the velocity ODE.
* :func:`ancestral_step` — the DDPM posterior ``q(x_s | x_t, x̂0)`` for any skip t → s.

ᾱ is :func:`fiberscope.priors.schedule.abar` throughout.
"""

from __future__ import annotations

import torch

from .schedule import abar

__all__ = ["ancestral_step", "ddim_coefficients", "ddim_step", "step_noise_scale"]

VARIANCE_TYPES = ("small", "large", "learned_range")


def ddim_coefficients(
    a_t: torch.Tensor,
    s_t: torch.Tensor,
    a_s: torch.Tensor,
    s_s: torch.Tensor,
    eta: float,
    variance: str = "small",
    v: torch.Tensor | None = None,
    c2_from_small: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c1, c2)`` of ``x_s = α_s·x̂0 + c1·ξ + c2·ε̂`` (the reference's formulas, general α/σ).

    ``small``: c1 = η·σ_s/σ_t·√(1 − ᾱ_t/ᾱ_s)·(scale), c2 = √(σ_s² − c1²).
    ``large``: c1 = η·√(1 − ᾱ_t/ᾱ_s)·(scale), c2 = √(σ_s² − σ_s²/σ_t²·c1²).
    ``learned_range``: log c1 interpolated between the two with f = (v + 1)/2, and
    c2 = √(σ_s² − c1²), so that c1² + c2² = σ_s² (the marginal variance is kept). With
    ``c2_from_small=True`` c2 is the ``small`` one, √(σ_s² − c1_small²), as the reference code has
    it: that adds c1² − c1_small² of extra variance per step.
    For VP schedules (α² + σ² = 1) these are exactly the reference's DDIM coefficients.

    Example:
        >>> import torch
        >>> a_t, s_t = torch.tensor(0.6).sqrt(), torch.tensor(0.4).sqrt()
        >>> a_s, s_s = torch.tensor(0.8).sqrt(), torch.tensor(0.2).sqrt()
        >>> c1, c2 = ddim_coefficients(a_t, s_t, a_s, s_s, 1.0, "small")
        >>> round(float(c1 ** 2 + c2 ** 2), 6)          # σ_s²
        0.2
    """
    if variance not in VARIANCE_TYPES:
        raise ValueError(f"variance must be one of {VARIANCE_TYPES}, got {variance!r}")
    ab_t, ab_s = abar(a_t, s_t), abar(a_s, s_s)
    # VP quantities rescaled to the state's scale at s (1 for VP schedules)
    scale_s = torch.sqrt(a_s * a_s + s_s * s_s)
    ratio = torch.clamp(1 - ab_t / ab_s, min=0.0)
    small = eta * torch.sqrt(ratio * (1 - ab_s) / torch.clamp(1 - ab_t, min=1e-20)) * scale_s
    if variance == "small":
        c1 = small
        c2 = torch.sqrt(torch.clamp(s_s * s_s - c1 * c1, min=0.0))
        return c1, c2
    large = eta * torch.sqrt(ratio) * scale_s
    if variance == "large":
        c2sq = s_s * s_s - (1 - ab_s) / torch.clamp(1 - ab_t, min=1e-20) * large * large
        return large, torch.sqrt(torch.clamp(c2sq, min=0.0))
    if v is None:
        raise ValueError("variance='learned_range' needs the model's variance output v (a prior with learned variance)")
    f = (v + 1) / 2
    c1 = torch.exp(f * torch.log(torch.clamp(large, min=1e-20)) + (1 - f) * torch.log(torch.clamp(small, min=1e-20)))
    c1 = torch.where(torch.as_tensor(small) > 0, c1, torch.zeros_like(c1))
    c_eps = small if c2_from_small else c1
    c2 = torch.sqrt(torch.clamp(s_s * s_s - c_eps * c_eps, min=0.0))
    return c1, c2


def ddim_step(
    x0: torch.Tensor,
    eps: torch.Tensor,
    a_t: torch.Tensor,
    s_t: torch.Tensor,
    a_s: torch.Tensor,
    s_s: torch.Tensor,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    variance: str = "small",
    v: torch.Tensor | None = None,
    c2_from_small: bool = False,
) -> torch.Tensor:
    """One DDIM step ``x_s = α_s·x̂0 + c1·ξ + c2·ε̂`` (see :func:`ddim_coefficients`).

    The noise term is added whenever ``noise`` is given and c1 > 0, also on the last step: with
    variance ``large`` c1 stays η·√β_0 > 0 there (the caller decides whether to pass noise).
    """
    c1, c2 = ddim_coefficients(a_t, s_t, a_s, s_s, eta, variance, v, c2_from_small)
    out = a_s * x0 + c2 * eps
    if noise is not None and (torch.as_tensor(c1) > 0).any():
        out = out + c1 * noise
    return out


def step_noise_scale(
    a_t: torch.Tensor,
    s_t: torch.Tensor,
    a_s: torch.Tensor,
    s_s: torch.Tensor,
    variance: str = "small",
    v: torch.Tensor | None = None,
) -> torch.Tensor:
    """Standard deviation of the DDPM ancestral step's noise (posterior ``small``, ``large`` β, learned)."""
    ab_t, ab_s = abar(a_t, s_t), abar(a_s, s_s)
    beta = torch.clamp(1 - ab_t / ab_s, min=0.0)
    scale_s2 = a_s * a_s + s_s * s_s
    small = beta * (1 - ab_s) / torch.clamp(1 - ab_t, min=1e-20)
    if variance == "small":
        var = small
    elif variance == "large":
        var = beta
    elif variance == "learned_range":
        if v is None:
            raise ValueError("variance='learned_range' needs the model's variance output v")
        f = (v + 1) / 2
        var = torch.exp(
            f * torch.log(torch.clamp(beta, min=1e-20)) + (1 - f) * torch.log(torch.clamp(small, min=1e-20))
        )
    else:
        raise ValueError(f"variance must be one of {VARIANCE_TYPES}, got {variance!r}")
    return torch.sqrt(var * scale_s2)


def ancestral_step(
    x_t: torch.Tensor,
    x0: torch.Tensor,
    a_t: torch.Tensor,
    s_t: torch.Tensor,
    a_s: torch.Tensor,
    s_s: torch.Tensor,
    noise: torch.Tensor | None = None,
    variance: str = "small",
    v: torch.Tensor | None = None,
) -> torch.Tensor:
    """DDPM ancestral step: the posterior mean of ``q(x_s | x_t, x̂0)`` plus noise.

    With β = 1 − ᾱ_t/ᾱ_s: mean = √ᾱ_s·β/(1 − ᾱ_t)·x̂0 + √(1 − β)·(1 − ᾱ_s)/(1 − ᾱ_t)·x_t, in VP
    units (states of other schedules are rescaled to VP and back). Noise is added when σ_s > 0.
    """
    ab_t, ab_s = abar(a_t, s_t), abar(a_s, s_s)
    k_t = torch.sqrt(a_t * a_t + s_t * s_t)  # state scale: 1 for VP
    k_s = torch.sqrt(a_s * a_s + s_s * s_s)
    beta = torch.clamp(1 - ab_t / ab_s, min=0.0)
    c_x0 = torch.sqrt(ab_s) * beta / torch.clamp(1 - ab_t, min=1e-20)
    c_xt = torch.sqrt(1 - beta) * (1 - ab_s) / torch.clamp(1 - ab_t, min=1e-20)
    mean = k_s * (c_x0 * x0 + c_xt * x_t / k_t)
    if noise is not None and float(s_s) > 0:
        mean = mean + step_noise_scale(a_t, s_t, a_s, s_s, variance, v) * noise
    return mean
