"""Per-sample fiber losses ``ℓ(φ(x), y) -> Tensor[B]``. Never a reduction over the batch.

================== ==================================================== ======================================
name               formula (sums over feature dimensions d)             where the paper uses it
================== ==================================================== ======================================
``l2``             ‖φ − y‖₂                                             NDTM's optimised terminal cost
``l2_per_token``   Σ_tokens ‖φ_tok − y_tok‖₂ (norm over the last dim)   the reference code's ``l2``
``sq_l2``          Σ_d (φ_d − y_d)²                                     reported fiber loss (ImageNet, Qwen)
``l1``             Σ_d |φ_d − y_d|                                      Table 7
``rms``            √(Σ_d (φ_d − y_d)² / D)                              colour MNIST, HTRU2, trained models
``cosine``         1 − cos(φ, y)                                        (scale-free alternative)
``cross_entropy``  −Σ_c softmax(y)_c · log softmax(φ)_c                 Table 7 / NDTM option (logits)
``prob_dist``      100 · Σ_c |softmax(φ)_c − softmax(y)_c|              CheXpert classifiers (in %)
================== ==================================================== ======================================

``y`` may have batch size 1 (broadcast) or B. ``l2`` and ``l2_per_token`` agree on features
``[B, D]``; on token features ``[B, T, D]`` (or feature maps) ``l2`` is one norm over everything
while ``l2_per_token`` sums a norm per token, as the reference's ``torch.norm(φ − y, dim=-1)``
followed by a sum does.

Example:
    >>> import torch
    >>> from fiberscope.losses import fiber_loss
    >>> fiber_loss(torch.tensor([[3.0, 4.0], [0.0, 0.0]]), torch.zeros(1, 2), "sq_l2")
    tensor([25.,  0.])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["LOSSES", "LossFn", "fiber_loss", "get_loss"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _flat(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a = a.float().flatten(1)
    b = b.float().flatten(1)
    if b.shape[0] == 1 and a.shape[0] != 1:
        b = b.expand(a.shape[0], -1)
    if a.shape != b.shape:
        raise ValueError(f"features {tuple(a.shape)} and target {tuple(b.shape)} do not match")
    return a, b


def l2(phi: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    a, b = _flat(phi, y)
    # sqrt of a sum with a tiny floor: the gradient stays finite when φ == y exactly
    return torch.sqrt(((a - b) ** 2).sum(1) + 1e-20)


def l2_per_token(phi: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Σ over all leading positions of ‖φ − y‖₂ taken over the last dimension (the reference's ``l2``).

    Example:
        >>> phi = torch.tensor([[[3.0, 4.0], [6.0, 8.0]]])          # [B=1, T=2, D=2]
        >>> l2_per_token(phi, torch.zeros(1, 2, 2)), l2(phi, torch.zeros(1, 2, 2))
        (tensor([15.]), tensor([11.1803]))
    """
    a, b = phi.float(), y.float()
    if b.shape[0] == 1 and a.shape[0] != 1:
        b = b.expand(a.shape[0], *b.shape[1:])
    if a.shape != b.shape:
        raise ValueError(f"features {tuple(a.shape)} and target {tuple(b.shape)} do not match")
    d = a - b
    if d.dim() == 1:
        d = d[:, None]
    return torch.sqrt((d**2).sum(-1) + 1e-20).reshape(d.shape[0], -1).sum(1)


def sq_l2(phi: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    a, b = _flat(phi, y)
    return ((a - b) ** 2).sum(1)


def l1(phi: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    a, b = _flat(phi, y)
    return (a - b).abs().sum(1)


def rms(phi: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    a, b = _flat(phi, y)
    return torch.sqrt(((a - b) ** 2).mean(1) + 1e-20)


def cosine(phi: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    a, b = _flat(phi, y)
    return 1 - F.cosine_similarity(a, b, dim=1, eps=1e-12)


def cross_entropy(phi: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    a, b = _flat(phi, y)
    return -(torch.softmax(b, 1) * torch.log_softmax(a, 1)).sum(1)


def prob_dist(phi: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    a, b = _flat(phi, y)
    return 100.0 * (torch.softmax(a, 1) - torch.softmax(b, 1)).abs().sum(1)


LOSSES: dict[str, LossFn] = {
    "l2": l2,
    "l2_per_token": l2_per_token,
    "sq_l2": sq_l2,
    "l1": l1,
    "rms": rms,
    "cosine": cosine,
    "cross_entropy": cross_entropy,
    "prob_dist": prob_dist,
}


def get_loss(loss: str | LossFn) -> LossFn:
    """Resolve a loss name (see :data:`LOSSES`) or pass a callable through."""
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise ValueError(f"unknown fiber loss {loss!r}; choose one of {sorted(LOSSES)} or pass a callable")
    return LOSSES[loss]


def fiber_loss(phi: torch.Tensor, y: torch.Tensor, loss: str | LossFn = "sq_l2") -> torch.Tensor:
    """Per-sample fiber loss ``[B]`` between features ``phi`` [B, ...] and target ``y`` [1 or B, ...]."""
    return get_loss(loss)(phi, y)
