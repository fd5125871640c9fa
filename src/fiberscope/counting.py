"""Network evaluations per sample: the cost of a fiber in calls, prior and subject alike.

The sampler attaches one :class:`CallCounter` to the prior and the subject of a run; each forward
call adds its batch size, and :func:`count_backward` adds it again when the gradient flows back
through that call. Costs can then be compared across methods in network evaluations, not seconds.

Example:
    >>> import torch
    >>> from fiberscope.counting import CallCounter, count_backward
    >>> c = CallCounter()
    >>> x = torch.ones(4, 2, requires_grad=True)
    >>> c.subject_forwards += x.shape[0]
    >>> count_backward(x * 2, c, "subject_backwards").sum().backward()
    >>> c.subject_forwards, c.subject_backwards, c.forward_equivalents()
    (4, 4, 12.0)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["CallCounter", "count_backward"]


@dataclass
class CallCounter:
    """Network evaluations, counted per *sample* (a batch of 8 is 8 evaluations)."""

    prior_forwards: int = 0
    prior_backwards: int = 0
    subject_forwards: int = 0
    subject_backwards: int = 0
    decoder_forwards: int = 0
    decoder_backwards: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)

    def forward_equivalents(self, backward_cost: float = 2.0) -> float:
        """Total cost in forward-equivalents, a backward counted as ``backward_cost`` forwards."""
        f = self.prior_forwards + self.subject_forwards + self.decoder_forwards
        b = self.prior_backwards + self.subject_backwards + self.decoder_backwards
        return f + backward_cost * b


class _CountBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, counter, attr):
        ctx.counter, ctx.attr, ctx.n = counter, attr, x.shape[0]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        setattr(ctx.counter, ctx.attr, getattr(ctx.counter, ctx.attr) + ctx.n)
        return grad, None, None


def count_backward(x: torch.Tensor, counter: CallCounter | None, attr: str) -> torch.Tensor:
    """Identity whose backward pass adds the batch size to ``counter.<attr>``."""
    if counter is None or not x.requires_grad:
        return x
    return _CountBackward.apply(x, counter, attr)
