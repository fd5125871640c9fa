"""Analytic priors with exact denoisers: ground truth for tests and for reasoning about guidance.

For data ``x0 ~ N(μ, s²I)`` and ``x_t = α·x0 + σ·ε``, the posterior mean is
``E[x0 | x_t] = μ + α s² / (α² s² + σ²) · (x_t − α μ)``; a Gaussian mixture adds responsibilities.
Both work on vectors ``[B, D]`` and on images ``[B, C, H, W]`` (flattened inside), under a VP or a
flow schedule, and return the exact ε (VP) or velocity (flow) through the same contract as a
network prior.

Example:
    >>> import torch
    >>> from fiberscope.priors import GaussianPrior, VPSchedule
    >>> prior = GaussianPrior(dim=4, schedule=VPSchedule.linear())
    >>> d = prior.denoise(torch.zeros(2, 4), 999)
    >>> float(d.x0.abs().max())          # at pure noise, E[x0] is the mean
    0.0
"""

from __future__ import annotations

import math

import torch

from .base import Prior
from .schedule import Schedule, VPSchedule

__all__ = ["GaussianMixturePrior", "GaussianPrior"]


class _AnalyticPrior(Prior):
    def __init__(
        self, shape: tuple[int, ...], schedule: Schedule | None, data_range: tuple[float, float] | None, name: str
    ):
        super().__init__()
        self.schedule = schedule or VPSchedule.linear()
        self.parameterization = "velocity" if self.schedule.kind == "flow" else "eps"
        self.state_shape = tuple(shape)
        self.data_range = data_range
        self.clip_range = None
        self.name = name

    def _as(self, t_model: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, s = self.schedule.alpha_sigma(float(t_model[0]))
        return a.float().to(t_model.device), s.float().to(t_model.device)

    def posterior_mean(self, x_t: torch.Tensor, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def network(self, x_t: torch.Tensor, t_model: torch.Tensor) -> torch.Tensor:
        a, s = self._as(t_model)
        flat = x_t.reshape(x_t.shape[0], -1).float()
        x0 = self.posterior_mean(flat, a, s)
        if self.parameterization == "velocity":  # v = ε − x0 with ε = (x_t − α x0)/σ
            eps = (flat - a * x0) / torch.clamp(s, min=1e-12)
            out = eps - x0
        else:
            out = (flat - a * x0) / torch.clamp(s, min=1e-12)
        return out.reshape(x_t.shape)

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError


class GaussianPrior(_AnalyticPrior):
    mean: torch.Tensor
    """Isotropic Gaussian data ``N(mean, std²·I)`` on vectors (``dim``) or images (``shape``)."""

    def __init__(
        self,
        dim: int | None = None,
        *,
        shape: tuple[int, ...] | None = None,
        mean: float | torch.Tensor = 0.0,
        std: float = 1.0,
        schedule: Schedule | None = None,
        data_range: tuple[float, float] | None = None,
    ):
        if (dim is None) == (shape is None):
            raise ValueError("give exactly one of dim= (vectors) or shape= (e.g. images (C, H, W))")
        shape = (dim,) if dim is not None else tuple(shape)  # type: ignore[arg-type]
        super().__init__(shape, schedule, data_range, "gaussian")
        d = math.prod(shape)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).expand(d).clone())
        self.std = float(std)

    def posterior_mean(self, x_t: torch.Tensor, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        v = self.std**2
        return self.mean + a * v / (a * a * v + s * s) * (x_t - a * self.mean)

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(n, self.mean.numel(), generator=generator)
        return (self.mean + self.std * z).reshape(n, *self.state_shape)


class GaussianMixturePrior(_AnalyticPrior):
    means: torch.Tensor
    stds: torch.Tensor
    weights: torch.Tensor
    """Mixture of isotropic Gaussians ``Σ_k w_k N(μ_k, s_k² I)`` with an exact posterior mean."""

    def __init__(
        self,
        means: torch.Tensor,
        stds: torch.Tensor | float = 0.1,
        weights: torch.Tensor | None = None,
        *,
        shape: tuple[int, ...] | None = None,
        schedule: Schedule | None = None,
        data_range: tuple[float, float] | None = None,
    ):
        means = torch.as_tensor(means, dtype=torch.float32)
        if means.dim() < 2:
            raise ValueError("means must be [K, D] (or [K, *shape])")
        k = means.shape[0]
        shape = tuple(shape) if shape is not None else tuple(means.shape[1:])
        super().__init__(shape, schedule, data_range, "gaussian-mixture")
        self.register_buffer("means", means.reshape(k, -1))
        self.register_buffer("stds", torch.as_tensor(stds, dtype=torch.float32).expand(k).clone())
        w = torch.full((k,), 1.0 / k) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
        self.register_buffer("weights", w / w.sum())

    def responsibilities(self, x_t: torch.Tensor, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        var = a * a * self.stds**2 + s * s  # [K]
        d = self.means.shape[1]
        sq = ((x_t[:, None, :] - a * self.means[None]) ** 2).sum(-1)  # [B, K]
        logp = torch.log(self.weights) - 0.5 * sq / var - 0.5 * d * torch.log(var)
        return torch.softmax(logp, dim=1)

    def posterior_mean(self, x_t: torch.Tensor, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        r = self.responsibilities(x_t, a, s)  # [B, K]
        v = self.stds**2
        gain = (a * v / (a * a * v + s * s))[None, :, None]  # [1, K, 1]
        comp = self.means[None] + gain * (x_t[:, None, :] - a * self.means[None])  # [B, K, D]
        return (r[..., None] * comp).sum(1)

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.means.shape[1], generator=generator)
        return (self.means[k] + self.stds[k, None] * z).reshape(n, *self.state_shape)

    def log_density(self, x: torch.Tensor) -> torch.Tensor:
        """Log density of clean data ``x`` under the mixture (per sample)."""
        flat = x.reshape(x.shape[0], -1)
        var = self.stds**2
        d = flat.shape[1]
        sq = ((flat[:, None] - self.means[None]) ** 2).sum(-1)
        lp = torch.log(self.weights) - 0.5 * sq / var - 0.5 * d * torch.log(2 * math.pi * var)
        return torch.logsumexp(lp, dim=1)
