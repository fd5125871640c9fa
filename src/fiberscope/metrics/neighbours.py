"""The nearest-neighbour reference: the closest real image to the query in feature space.

The paper reports it beside every fiber loss: a fiber sample should be closer to the query in φ
than any real image is (e.g. DINOv2/ImageNet: NDTM 273 against the nearest neighbour's 1225).

Example:
    >>> import torch
    >>> from fiberscope.metrics import nearest_neighbour
    >>> bank = torch.tensor([[0.0, 0.0], [1.0, 1.0], [3.0, 0.0]])
    >>> nn = nearest_neighbour(torch.tensor([[0.9, 1.2]]), bank)
    >>> nn.index, round(nn.loss, 2)
    (1, 0.05)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..losses import LossFn, get_loss

__all__ = ["Neighbour", "embed", "nearest_neighbour", "nearest_neighbours"]


@dataclass
class Neighbour:
    """Index into the bank, its fiber loss to the query (in ``metric``), and how many were excluded."""

    index: int
    loss: float
    metric: str
    excluded: int = 0


@torch.no_grad()
def embed(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Features of many images, batched, flattened to ``[N, D]`` float32 on the CPU."""
    out = [fn(images[i : i + batch_size]).float().flatten(1).cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out)


@torch.no_grad()
def nearest_neighbour(
    target: torch.Tensor,
    bank: torch.Tensor,
    metric: str | LossFn = "sq_l2",
    *,
    exclude: int | None = None,
    query_image: torch.Tensor | None = None,
    bank_images: torch.Tensor | None = None,
    identity_threshold: float = 1e-4,
) -> Neighbour:
    """Closest bank entry to ``target`` [1, D] among ``bank`` [N, D] in L2, reported in ``metric``.

    The query itself is excluded: by index (``exclude``), and — as in the reference — any bank image
    whose mean absolute pixel difference to ``query_image`` is below ``identity_threshold``.
    """
    t = target.float().flatten(1).cpu()
    b = bank.float().flatten(1).cpu()
    d, mask = _distances(t, b, exclude, query_image, bank_images, identity_threshold)
    i = int(d.argmin())
    loss = float(get_loss(metric)(b[i : i + 1], t)[0])
    name = metric if isinstance(metric, str) else getattr(metric, "__name__", "custom")
    return Neighbour(index=i, loss=loss, metric=name, excluded=int(mask.sum()))


def _distances(
    t: torch.Tensor,
    b: torch.Tensor,
    exclude: int | None,
    query_image: torch.Tensor | None,
    bank_images: torch.Tensor | None,
    identity_threshold: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared L2 distances with excluded entries set to +inf, and the exclusion mask."""
    d = ((b - t) ** 2).sum(1)
    mask = torch.zeros(len(b), dtype=torch.bool)
    if exclude is not None:
        mask[exclude] = True
    if query_image is not None and bank_images is not None:
        bank_flat = bank_images.float().flatten(1).cpu()
        q = query_image.float().cpu().reshape(1, -1)  # one image, with or without its batch dimension
        if q.shape[1] != bank_flat.shape[1]:
            raise ValueError(
                f"query_image has {q.shape[1]} values but each bank image has {bank_flat.shape[1]}; "
                "pass one image of the bank's shape"
            )
        diff = (bank_flat - q).abs().mean(1)
        mask |= diff < identity_threshold
    if bool(mask.all()):
        raise ValueError("every bank entry was excluded as identical to the query; give a larger bank")
    d[mask] = float("inf")
    return d, mask


def nearest_neighbours(
    target: torch.Tensor,
    bank: torch.Tensor,
    k: int,
    *,
    exclude: int | None = None,
    query_image: torch.Tensor | None = None,
    bank_images: torch.Tensor | None = None,
    identity_threshold: float = 1e-4,
) -> torch.Tensor:
    """Indices ``[k]`` of the ``k`` bank entries closest to ``target`` in L2, nearest first.

    The same exclusions as :func:`nearest_neighbour`. Used as a "sampler" baseline: the k real
    images a model finds most similar to the query, judged with the same metrics as fiber samples.

    Example:
        >>> bank = torch.tensor([[0.0], [1.0], [2.0], [5.0]])
        >>> nearest_neighbours(torch.tensor([[1.8]]), bank, 2).tolist()
        [2, 1]
    """
    t = target.detach().float().flatten(1).cpu()
    b = bank.detach().float().flatten(1).cpu()
    d, mask = _distances(t, b, exclude, query_image, bank_images, identity_threshold)
    available = int((~mask).sum())
    if not 1 <= k <= available:
        raise ValueError(f"k must be between 1 and the {available} bank entries left after exclusion, got {k}")
    return torch.topk(d, k, largest=False).indices
