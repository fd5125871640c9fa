"""Do other models agree that the samples belong with the query?

* :func:`label_agreement`: the fraction of samples a reference classifier puts in the query's class
  (its true label) and in the class it predicts for the query itself (top-k) — the paper's "label
  preservation" with a ConvNeXt-L on ImageNet.
* :func:`cross_model_agreement`: model A's fiber samples embedded by model B. B's fiber loss of
  those samples is compared with B's nearest-neighbour reference for the query: a ratio well below 1
  means B cannot tell A's samples from the query either; a ratio near or above 1 means B sees a
  difference at least as large as that between the query and its closest real image — what A
  ignores, B sees (the paper's CheXpert cross-model figures).

Example:
    >>> import torch
    >>> from fiberscope.metrics import label_agreement
    >>> logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [4.0, 1.0]])
    >>> a = label_agreement(logits, torch.tensor([[1.0, 3.0]]), label=0)
    >>> round(a["vs_prediction"], 3), round(a["vs_label"], 3)
    (0.333, 0.667)
"""

from __future__ import annotations

import torch

from ..losses import LossFn, get_loss
from .neighbours import nearest_neighbour

__all__ = ["cross_model_agreement", "label_agreement"]


def label_agreement(
    sample_logits: torch.Tensor,
    query_logits: torch.Tensor,
    label: int | torch.Tensor | None = None,
    k: int = 1,
) -> dict[str, float]:
    """Top-k agreement of a reference classifier's predictions on the samples.

    Args:
        sample_logits: ``[n, C]`` the classifier's logits on the samples.
        query_logits: ``[1, C]`` (or ``[n, C]``, one query per sample) its logits on the query.
        label: the query's true label (an int, or ``[n]`` one per sample); omitted from the result
            when None.
        k: a sample agrees when the class is among its top-k.

    Returns:
        ``{"vs_prediction": fraction, "vs_label": fraction}``.
    """
    s = sample_logits.detach().float().flatten(1)
    q = query_logits.detach().float().flatten(1)
    if not 1 <= k <= s.shape[1]:
        raise ValueError(f"k must be between 1 and the number of classes {s.shape[1]}, got {k}")
    top = s.topk(k, dim=1).indices  # [n, k]
    pred = q.argmax(1).expand(s.shape[0]) if q.shape[0] == 1 else q.argmax(1)
    out = {"vs_prediction": float((top == pred[:, None]).any(1).float().mean())}
    if label is not None:
        lab = torch.as_tensor(label).flatten().to(top.device)
        lab = lab.expand(s.shape[0]) if lab.numel() == 1 else lab
        out["vs_label"] = float((top == lab[:, None]).any(1).float().mean())
    return out


def cross_model_agreement(
    sample_features_b: torch.Tensor,
    query_features_b: torch.Tensor,
    bank_features_b: torch.Tensor,
    metric: str | LossFn = "sq_l2",
    *,
    exclude: int | None = None,
    query_image: torch.Tensor | None = None,
    bank_images: torch.Tensor | None = None,
) -> dict[str, float]:
    """Model B's fiber loss of model A's samples, relative to B's nearest-neighbour reference.

    Args:
        sample_features_b: B's features of A's fiber samples ``[n, ...]``.
        query_features_b: B's features of the query ``[1, ...]``.
        bank_features_b: B's features of real images ``[N, ...]`` (for the nearest neighbour).
        metric: the fiber-loss form (default squared L2).
        exclude, query_image, bank_images: exclude the query from the bank (see
            :func:`~fiberscope.metrics.nearest_neighbour`).

    Returns:
        ``{"loss": mean B-loss of the samples, "nn_loss": B's nearest-neighbour loss,
        "ratio": loss / nn_loss}``.

    Example:
        >>> bank = torch.tensor([[0.0], [2.0]])
        >>> cross_model_agreement(torch.tensor([[1.5], [0.5]]), torch.tensor([[1.0]]), bank)
        {'loss': 0.25, 'nn_loss': 1.0, 'ratio': 0.25}
    """
    with torch.no_grad():
        loss = float(get_loss(metric)(sample_features_b.detach().float(), query_features_b.detach().float()).mean())
    nn = nearest_neighbour(
        query_features_b, bank_features_b, metric, exclude=exclude, query_image=query_image, bank_images=bank_images
    )
    ratio = loss / nn.loss if nn.loss > 0 else float("inf")
    return {"loss": loss, "nn_loss": nn.loss, "ratio": ratio}
