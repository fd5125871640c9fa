"""Diversity of the samples of one fiber: how much of the invariance the samples actually show.

A sampler that returns the same image n times can have a tiny fiber loss and tell nothing about
what the model ignores. :func:`mean_pairwise_distance` is the mean Euclidean distance over all pairs
of samples (in pixels, or in a reference model's features); :func:`variance_map` is the per-pixel
variance across the samples — where in the image the fiber lets things change.

Example:
    >>> import torch
    >>> from fiberscope.metrics import mean_pairwise_distance, variance_map
    >>> x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    >>> round(mean_pairwise_distance(x), 3)        # pairs: 5, 0, 5
    3.333
    >>> variance_map(torch.zeros(4, 1, 2, 2)).shape
    torch.Size([1, 2, 2])
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["diversity", "mean_pairwise_distance", "variance_map"]


def mean_pairwise_distance(x: torch.Tensor) -> float:
    """Mean L2 distance over all ``n(n−1)/2`` pairs of ``x`` ``[n, ...]`` (flattened); NaN if n < 2."""
    f = x.detach().float().flatten(1).cpu()
    if f.shape[0] < 2:
        return float("nan")
    return float(torch.pdist(f).mean())


def variance_map(x: torch.Tensor, reduce_channels: bool = False) -> torch.Tensor:
    """Per-pixel variance across samples ``[n, C, H, W]`` → ``[C, H, W]`` (or ``[1, H, W]`` summed over C).

    The population variance (divides by n); zeros for a single sample.
    """
    v = x.detach().float().cpu().var(0, unbiased=False)
    return v.sum(0, keepdim=True) if reduce_channels else v


def diversity(
    samples: torch.Tensor, reference: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> dict[str, float]:
    """``{"pixel": …, "feature": …}``: mean pairwise distance in pixels and in ``reference``'s features.

    Args:
        samples: the samples of one fiber ``[n, C, H, W]``.
        reference: a feature map (e.g. a :class:`~fiberscope.metrics.realism.Reference`); the
            ``"feature"`` entry is left out without one.
    """
    out = {"pixel": mean_pairwise_distance(samples)}
    if reference is not None:
        with torch.no_grad():
            out["feature"] = mean_pairwise_distance(reference(samples))
    return out
