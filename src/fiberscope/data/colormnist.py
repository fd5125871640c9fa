"""Colour MNIST as in the fiber paper, built from MNIST in code.

Each channel's background colour is drawn from the mixture
``0.6·N(0.7, 0.08) + 0.35·N(0.5, 0.015) + 0.05·N(0.1, 0.02)`` (means and standard deviations,
clipped to [0, 1]) and the foreground colour is ``(background + 0.5) mod 1``. A digit with ink
``m ∈ [0, 1]`` becomes ``(1 − m)·background + m·foreground``. A colour-blind subject (one that
first decolourises) has a known fiber: every recolouring drawn from this distribution.

Example:
    >>> import torch
    >>> from fiberscope.data.colormnist import colorize, decolorize
    >>> ink = torch.zeros(2, 1, 28, 28); ink[:, :, 10:18, 12:16] = 1
    >>> x = colorize(ink, generator=torch.Generator().manual_seed(0))   # [2, 3, 28, 28] in [0, 1]
    >>> bool(torch.allclose(decolorize(x), ink, atol=1e-5))
    True
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "BG_MIXTURE",
    "background_density",
    "colorize",
    "decolorize",
    "estimate_background",
    "sample_background",
]

#: (weight, mean, std) of each component of the per-channel background-colour mixture.
BG_MIXTURE: tuple[tuple[float, float, float], ...] = ((0.6, 0.7, 0.08), (0.35, 0.5, 0.015), (0.05, 0.1, 0.02))


def sample_background(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``n`` background colours, shape ``[n, 3]``, each channel independently from the mixture."""
    w = torch.tensor([c[0] for c in BG_MIXTURE])
    mu = torch.tensor([c[1] for c in BG_MIXTURE])
    sd = torch.tensor([c[2] for c in BG_MIXTURE])
    comp = torch.multinomial(w, n * 3, replacement=True, generator=generator).view(n, 3)
    z = torch.randn(n, 3, generator=generator)
    return (mu[comp] + sd[comp] * z).clamp(0.0, 1.0)


def background_density(c: np.ndarray) -> np.ndarray:
    """Density of the (unclipped) background mixture at colour values ``c`` (per channel)."""
    c = np.asarray(c, dtype=np.float64)
    out = np.zeros_like(c)
    for w, mu, sd in BG_MIXTURE:
        out += w * np.exp(-0.5 * ((c - mu) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
    return out


def colorize(
    ink: torch.Tensor, background: torch.Tensor | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Colour grey digits: ``ink`` [N, 1, H, W] in [0, 1] → RGB [N, 3, H, W] in [0, 1].

    ``background`` [N, 3] is drawn from :data:`BG_MIXTURE` when not given.
    """
    if ink.dim() != 4 or ink.shape[1] != 1:
        raise ValueError(f"ink must be [N, 1, H, W], got {tuple(ink.shape)}")
    if background is None:
        background = sample_background(ink.shape[0], generator=generator)
    bg = background.to(ink)[:, :, None, None]
    fg = torch.remainder(bg + 0.5, 1.0)
    return (1 - ink) * bg + ink * fg


def estimate_background(x: torch.Tensor) -> torch.Tensor:
    """Background colour ``[N, 3]`` of colour-MNIST images ``x`` [N, 3, H, W] in [0, 1].

    The per-channel median of the border pixels. (The paper's code reads the first pixel column;
    a few MNIST digits touch it, and the median over the whole border stays exact for them.)
    Differentiable: the gradient flows to the median pixel.
    """
    border = torch.cat([x[:, :, 0, :], x[:, :, -1, :], x[:, :, 1:-1, 0], x[:, :, 1:-1, -1]], dim=2)
    return border.median(dim=2).values


def decolorize(x: torch.Tensor) -> torch.Tensor:
    """Recover the grey ink ``[N, 1, H, W]`` in [0, 1] from colour-MNIST images in [0, 1].

    Projects each pixel onto the line from the background colour to the foreground colour
    ``(bg + 0.5) mod 1``. Exactly invariant to recolouring; differentiable almost everywhere.
    """
    bg = estimate_background(x)[:, :, None, None]
    d = torch.remainder(bg + 0.5, 1.0) - bg  # ±0.5 per channel, so |d|² = 0.75
    m = ((x - bg) * d).sum(dim=1, keepdim=True) / (d * d).sum(dim=1, keepdim=True)
    return m.clamp(0.0, 1.0)
