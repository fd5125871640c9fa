"""The fiber loss in every form the paper reports, per sample, and the ``mean ± std`` it reports.

=================== =============================================== ===================================
form                formula (sums over feature dimensions d)        reported for
=================== =============================================== ===================================
``sq_l2``           Σ_d (φ_d − y_d)²                                ImageNet, cue conflict, Qwen (Tab. 5–7)
``rms``             √(Σ_d (φ_d − y_d)² / D)                         colour MNIST, HTRU2
``prob_dist``       100 · Σ_c |softmax(φ)_c − softmax(y)_c|  (%)     CheXpert classifiers (logits only)
``l1``              Σ_d |φ_d − y_d|                                 Table 7
``cross_entropy``   −Σ_c softmax(y)_c · log softmax(φ)_c            Table 7 (logits only)
``l2``              ‖φ − y‖₂                                        what NDTM optimises
=================== =============================================== ===================================

``prob_dist`` and ``cross_entropy`` treat features as logits; they are only meaningful for a
classifier's output layer. The paper's ``±`` is the standard deviation *across independently drawn
sample sets* (the query set fixed, only the sampling seed varied), not across fibers:
:func:`across_seeds` computes it from one mean per seed.

Example:
    >>> import torch
    >>> from fiberscope.metrics import fiber_loss_forms
    >>> f = fiber_loss_forms(torch.tensor([[3.0, 4.0]]), torch.zeros(1, 2))
    >>> float(f["sq_l2"][0]), float(f["l1"][0]), round(float(f["rms"][0]), 3)
    (25.0, 7.0, 3.536)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from ..losses import LOSSES

__all__ = ["REPORTED_FORMS", "across_seeds", "fiber_loss_forms"]

#: The forms reported by :func:`fiber_loss_forms` by default (the paper's, plus the optimised ``l2``).
REPORTED_FORMS: tuple[str, ...] = ("sq_l2", "rms", "prob_dist", "l1", "cross_entropy", "l2")


def fiber_loss_forms(
    features: torch.Tensor, target: torch.Tensor, forms: Sequence[str] = REPORTED_FORMS
) -> dict[str, torch.Tensor]:
    """Every requested form of the fiber loss, per sample.

    Args:
        features: φ of the samples ``[B, ...]``.
        target: φ of the query ``[1, ...]`` (broadcast) or one target per sample ``[B, ...]``.
        forms: names from :data:`~fiberscope.losses.LOSSES` (default :data:`REPORTED_FORMS`).

    Returns:
        ``{form: Tensor[B]}`` on the CPU, float32.
    """
    unknown = [f for f in forms if f not in LOSSES]
    if unknown:
        raise ValueError(f"unknown fiber loss form(s) {unknown}; choose from {sorted(LOSSES)}")
    with torch.no_grad():
        return {f: LOSSES[f](features.detach().float(), target.detach().float()).cpu() for f in forms}


def across_seeds(per_seed: Iterable[float]) -> tuple[float, float]:
    """``(mean, std)`` of one value per sampling seed; std is the sample std (0 for a single seed).

    Example:
        >>> across_seeds([1.0, 2.0, 3.0])
        (2.0, 1.0)
    """
    v = [float(x) for x in per_seed if x is not None and math.isfinite(float(x))]
    if not v:
        return float("nan"), float("nan")
    m = sum(v) / len(v)
    if len(v) < 2:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))
