"""Ground truth on colour MNIST: how the fiber samples' background colours are distributed.

A colour-blind subject cannot see the colour, so its fiber holds every recolouring of the query,
and the background colours of fiber samples should follow the data's colour mixture
(:data:`~fiberscope.data.colormnist.BG_MIXTURE`). :func:`colour_histogram_stats` measures the
distance between the histogram of sample background colours and that mixture (KL and W1, averaged
over RGB, 100 bins as in the paper) and the foreground/background consistency ``dev``: the mean
``|max decolourised pixel − 1|``, 0 when every digit's ink has the colour its background implies.

Example:
    >>> import torch
    >>> from fiberscope.data.colormnist import colorize
    >>> from fiberscope.metrics import colour_histogram_stats
    >>> ink = torch.zeros(2000, 1, 28, 28); ink[:, :, 8:20, 12:16] = 1
    >>> real = colorize(ink, generator=torch.Generator().manual_seed(0)) * 2 - 1
    >>> s = colour_histogram_stats(real)
    >>> s["colour_kl"] < 0.1, s["dev"] < 1e-3
    (True, True)
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.colormnist import background_density, decolorize, estimate_background

__all__ = ["colour_histogram_stats"]


def colour_histogram_stats(images: torch.Tensor, bins: int = 100) -> dict[str, float]:
    """KL and W1 between sample background colours and the true mixture (mean over RGB), and "dev".

    Args:
        images: colour-MNIST images ``[N, 3, H, W]`` in [-1, 1].
        bins: histogram bins on [0, 1].

    Returns:
        ``{"colour_kl", "colour_w1", "dev"}``. Backgrounds come from
        :func:`~fiberscope.data.colormnist.estimate_background` (the border median);
        ``KL(samples ‖ mixture)`` with a 1e-8 floor on both histograms.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be colour images [N, 3, H, W] in [-1, 1], got {tuple(images.shape)}")
    x01 = ((images.detach().float().cpu() + 1) / 2).clamp(0, 1)
    bg = estimate_background(x01).numpy()  # [N, 3]
    edges = np.linspace(0, 1, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    p_true = background_density(centres) + 1e-8
    p_true /= p_true.sum()
    kls, w1s = [], []
    for c in range(3):
        h, _ = np.histogram(np.clip(bg[:, c], 0, 1), bins=edges)
        p = h / max(h.sum(), 1) + 1e-8
        p /= p.sum()
        kls.append(float((p * np.log(p / p_true)).sum()))
        w1s.append(float(np.abs(np.cumsum(p) - np.cumsum(p_true)).sum() / bins))
    ink = decolorize(x01)
    dev = float((ink.flatten(1).max(1).values - 1).abs().mean())
    return {"colour_kl": float(np.mean(kls)), "colour_w1": float(np.mean(w1s)), "dev": dev}
