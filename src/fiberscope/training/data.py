"""Training data as tensors, and the augmentations and batched evaluations the recipes share.

The zoo and the trained models train on MNIST / Fashion-MNIST (``[N, 1, 28, 28]`` in [-1, 1])
and on colour MNIST, recoloured afresh from the grey digits with a seeded generator.
:func:`fiberscope.training.run_training` indexes one tensor on dim 0, so labels ride along in the
last column (:func:`with_labels`, :func:`split_labels`).

Example:
    >>> import torch
    >>> from fiberscope.training.data import split_labels, with_labels
    >>> rows = with_labels(torch.zeros(4, 1, 28, 28), torch.tensor([3, 1, 4, 1]))
    >>> x, y = split_labels(rows, (1, 28, 28))
    >>> rows.shape, x.shape, y.tolist()
    (torch.Size([4, 785]), torch.Size([4, 1, 28, 28]), [3, 1, 4, 1])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..data.colormnist import colorize
from ..data.mnist import load_dataset

__all__ = [
    "accuracy",
    "colour_batch",
    "image_tensors",
    "in_batches",
    "random_hflip",
    "random_shift",
    "split_labels",
    "with_labels",
]


def image_tensors(dataset: str, split: str = "train", root: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey images in [-1, 1] ``[N, 1, 28, 28]`` and labels ``[N]`` of ``mnist`` or ``fashion-mnist``.

    ``colormnist`` gives MNIST's grey digits (recolour them with :func:`colour_batch`).
    ``root``: a directory with the idx files (default: searched, see :func:`fiberscope.data.find_idx_dir`).
    """
    images, labels = load_dataset("mnist" if dataset == "colormnist" else dataset, split, root)
    return torch.from_numpy(images).float().div(127.5).sub(1.0).unsqueeze(1), torch.from_numpy(labels)


def colour_batch(ink: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Colour-MNIST images in [-1, 1] from grey ink in [0, 1], with colours drawn from ``g``."""
    return colorize(ink, generator=g) * 2 - 1


def random_shift(x: torch.Tensor, g: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero padding in [-1, 1] units = -1)."""
    b, _, h, w = x.shape
    p = max_shift
    padded = F.pad(x, (p, p, p, p), value=-1.0)
    dx = torch.randint(0, 2 * p + 1, (b,), generator=g)
    dy = torch.randint(0, 2 * p + 1, (b,), generator=g)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])


def random_hflip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Mirror each image of ``x`` ``[B, C, H, W]`` left-right with probability ½."""
    flip = torch.rand(x.shape[0], generator=g) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def with_labels(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One training tensor ``[N, D + 1]``: the flattened images with their labels as the last column."""
    return torch.cat([x.flatten(1), y[:, None].float()], 1)


def split_labels(batch: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[B, *shape]`` and integer labels ``[B]`` of a batch of :func:`with_labels` rows."""
    return batch[:, :-1].view(-1, *shape), batch[:, -1].long()


def in_batches(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """``fn`` applied to ``x`` a batch at a time without gradients, concatenated on dim 0."""
    with torch.no_grad():
        return torch.cat([fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of the classifier ``model`` (put in eval mode) on images ``x`` with labels ``y``."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            correct += int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    return correct / len(x)
