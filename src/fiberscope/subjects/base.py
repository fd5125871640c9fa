"""The subject contract: ``φ(x) -> Tensor[B, ...]``, per sample, differentiable with respect to x.

A :class:`Subject` wraps any module or callable with the input range it expects and optional
differentiable preprocessing. fiberscope rescales the prior's data (e.g. [-1, 1]) into the
subject's range before calling it, so users never convert by hand.

Example:
    >>> import torch
    >>> from fiberscope import load_subject
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> phi = load_subject(net, layer="2")                  # the ReLU output: 3 features
    >>> phi(torch.zeros(5, 1, 2, 2)).shape
    torch.Size([5, 3])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .._deprecated import moved
from ..counting import CallCounter, count_backward
from ..errors import SubjectGradientError
from ..runtime import autocast, to_channels_last

__all__ = ["Subject", "SubjectGradientError", "check_gradients"]


class Subject(nn.Module):
    """A feature extractor φ with the input convention it expects.

    Args:
        fn: module or callable mapping images to features.
        input_range: value range φ expects, e.g. ``(0, 1)``; None means "whatever the prior gives".
        preprocess: differentiable tensor transform applied after the range conversion.
        name: shown in reports.
        differentiable: set False for a φ known to block gradients (refused by guidance).
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor], Any],
        *,
        input_range: tuple[float, float] | None = None,
        preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
        name: str = "subject",
        differentiable: bool = True,
        layer: Any = None,
    ):
        super().__init__()
        if isinstance(fn, nn.Module):
            self.fn = fn
            fn.eval().requires_grad_(False)
        else:
            self._callable = fn
        if isinstance(preprocess, nn.Module):
            self.preprocess = preprocess
        else:
            self._preprocess = preprocess
        self.input_range = tuple(input_range) if input_range is not None else None
        self.name = name
        self.layer = layer
        self.differentiable = differentiable
        self.counter: CallCounter | None = None
        #: autocast dtype of φ (set by ``sample_fiber(autocast=...)``); its features are cast to float32
        self.autocast_dtype: torch.dtype | None = None
        self.channels_last: bool = False

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        f = self.fn if hasattr(self, "fn") else self._callable
        pre = getattr(self, "preprocess", None) or getattr(self, "_preprocess", None)
        if pre is not None:
            x = pre(x)
        out = f(x)
        if not isinstance(out, torch.Tensor):
            from .hooks import _first_tensor

            out = _first_tensor(out)
        return out

    def forward(self, x: torch.Tensor, data_range: tuple[float, float] | None = None) -> torch.Tensor:
        """Features of ``x`` given in ``data_range`` (converted to :attr:`input_range` first)."""
        if data_range is not None and self.input_range is not None and tuple(data_range) != self.input_range:
            (lo, hi), (a, b) = data_range, self.input_range
            x = (x - lo) * ((b - a) / (hi - lo)) + a
        amp = getattr(self, "autocast_dtype", None)
        if amp is not None or getattr(self, "channels_last", False):
            with autocast(x.device, amp):
                out = self._call(to_channels_last(x, getattr(self, "channels_last", False)))
            out = out.float() if amp is not None and out.is_floating_point() else out
        else:
            out = self._call(x)
        if out.dim() == 0 or out.shape[0] != x.shape[0]:
            raise ValueError(
                f"subject {self.name!r} returned shape {tuple(out.shape)} for a batch of {x.shape[0]}; "
                "φ must return one feature tensor per sample [B, ...]"
            )
        if self.counter is not None:
            self.counter.subject_forwards += x.shape[0]
            out = count_backward(out, self.counter, "subject_backwards")
        return out

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "layer": self.layer, "input_range": self.input_range}


def check_gradients(subject: Subject, example: torch.Tensor, data_range: tuple[float, float] | None = None) -> None:
    """Raise :class:`SubjectGradientError` unless φ passes a finite, non-zero gradient to its input."""
    x = example.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = subject(x, data_range)
        if not out.requires_grad:
            raise SubjectGradientError(
                f"subject {subject.name!r} returns features with no gradient (run under torch.no_grad(), detached, "
                "or computed outside torch): fiberscope needs a differentiable φ; remove the no_grad/detach or "
                "rebuild its preprocessing from tensor ops"
            )
        r = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(out)
        (g,) = torch.autograd.grad((out.float() * r).sum(), x, allow_unused=True)
    if g is None or not torch.isfinite(g).all() or float(g.abs().max()) == 0.0:
        what = "no" if g is None else ("a non-finite" if not torch.isfinite(g).all() else "an all-zero")
        raise SubjectGradientError(
            f"subject {subject.name!r} passes {what} gradient to its input: guidance cannot steer it. Check for "
            "argmax/rounding/uint8 conversions in φ, a layer that ignores the image, or NaN-producing operations"
        )


__getattr__ = moved(__name__, {"load_subject": "fiberscope.loading:load_subject"})
