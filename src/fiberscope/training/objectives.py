"""Training objectives: ``loss(model, batch, generator) -> scalar``, the form :func:`run_training` takes.

Each factory returns a loss that draws all its randomness from the step's generator, so a resumed
run follows exactly the path of an uninterrupted one.

Example:
    >>> import torch
    >>> from fiberscope.training import diffusion_eps_loss
    >>> abar = torch.linspace(0.999, 0.01, 1000)
    >>> loss = diffusion_eps_loss(abar)
    >>> float(loss(lambda x, t: torch.zeros_like(x), torch.zeros(4, 2), torch.Generator().manual_seed(0))) > 0
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .data import random_hflip

__all__ = ["Loss", "diffusion_eps_loss", "flow_velocity_loss", "vae_loss", "with_hflip"]

#: ``loss(model, batch, generator) -> scalar tensor``
Loss = Callable[[Any, torch.Tensor, torch.Generator], torch.Tensor]


def diffusion_eps_loss(alphas_cumprod: torch.Tensor, snr_gamma: float | None = 5.0) -> Loss:
    """ε-prediction loss with min-SNR-γ weighting (Hang et al. 2023), for ``model(x_t, t) -> ε``."""

    def loss(model: Any, x0: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b = x0.shape[0]
        t = torch.randint(0, len(alphas_cumprod), (b,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        a = alphas_cumprod[t].view(-1, *([1] * (x0.dim() - 1)))
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        pred = model(xt, t)
        err = (pred - eps).pow(2).flatten(1).mean(1)
        if snr_gamma is not None:
            snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
            err = err * torch.clamp(snr, max=snr_gamma) / snr
        return err.mean()

    return loss


def flow_velocity_loss(num_train_timesteps: int = 1000) -> Loss:
    """Rectified-flow loss, diffusers convention: x_σ = (1−σ)x0 + σε, target v = ε − x0, t = 1000σ.

    σ is drawn logit-normally (as in Stable Diffusion 3), which spends training on mid noise levels.
    """

    def loss(model: Any, x0: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b = x0.shape[0]
        sigma = torch.sigmoid(torch.randn(b, generator=g))
        eps = torch.randn(x0.shape, generator=g)
        s = sigma.view(-1, *([1] * (x0.dim() - 1)))
        xt = (1 - s) * x0 + s * eps
        pred = model(xt, sigma * num_train_timesteps)
        return F.mse_loss(pred, eps - x0)

    return loss


def vae_loss(beta: float, pixels: int) -> Loss:
    """Gaussian VAE loss for ``model.encode_dist(x) -> (μ, log σ²)`` and ``model.decode(z) -> x``.

    The summed squared reconstruction error of one reparameterised sample plus ``beta`` · KL to
    N(0, I), averaged over the batch and divided by ``pixels`` (a per-pixel scale for the rate).
    """

    def loss(model: Any, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        mu, logvar = model.encode_dist(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=g)
        nll = ((model.decode(z) - x) ** 2).flatten(1).sum(1).mean()
        kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1).mean()
        return (nll + beta * kl) / pixels

    return loss


def with_hflip(loss: Loss, enabled: bool = True) -> Loss:
    """``loss`` on a batch whose images are each mirrored left-right with probability ½ (or ``loss`` itself)."""
    if not enabled:
        return loss

    def wrapped(model: Any, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return loss(model, random_hflip(x, g), g)

    return wrapped
