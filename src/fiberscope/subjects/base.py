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

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import SubjectGradientError
from ..priors.base import CallCounter, count_backward
from ..runtime import autocast, to_channels_last
from .hooks import LayerExtractor

__all__ = ["Subject", "SubjectGradientError", "check_gradients", "load_subject"]


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


def load_subject(
    spec: str | os.PathLike[str] | nn.Module | Callable[[torch.Tensor], Any] | Subject,
    layer: str | Sequence[str] | Mapping[str, float] | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    input_range: tuple[float, float] | None = None,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    name: str | None = None,
    **options: Any,
) -> Subject:
    """Make a :class:`Subject` from a name, a module or a callable.

    Args:
        spec: ``"builtin:mnist-cnn"``, a library spec (``"timm:resnet50.a1_in1k"``,
            ``"torchvision:resnet50"``, ``"open_clip:..."``, ``"hf:facebook/dinov2-base"``), any
            ``nn.Module`` or callable, or a :class:`Subject`.
        layer: a module path (``"layer4"``), a list of them, or ``{path: weight}``; features of
            several layers are flattened and concatenated with √weight scaling.
        device, dtype: where and in which dtype to run φ.
        input_range: the value range φ expects (default: that of the spec, or the prior's).
        preprocess: a differentiable transform applied before φ.
        options: for library specs, the adapter's options, e.g. ``weights=`` (torchvision),
            ``pretrained=`` (timm, open_clip), ``trust_pickle=`` (see :mod:`fiberscope.subjects.registry`).
    """
    if options and not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"options {sorted(options)} apply to named subjects ('timm:...', 'hf:...'), not to objects")
    if isinstance(spec, Subject):
        subject = spec
        if layer is not None:
            raise ValueError("layer= cannot be applied to an existing Subject; pass its module instead")
    elif isinstance(spec, (str, os.PathLike)):
        s = os.fspath(spec)
        from .registry import load_named_subject

        subject = load_named_subject(s, layer, input_range=input_range, preprocess=preprocess, **options)
    elif isinstance(spec, nn.Module) or callable(spec):
        fn: Any = spec
        if layer is not None:
            if not isinstance(spec, nn.Module):
                raise ValueError("layer= needs an nn.Module subject (a plain callable has no named layers)")
            if isinstance(layer, str):
                fn = LayerExtractor(spec, [layer])
            elif isinstance(layer, Mapping):
                fn = LayerExtractor(spec, list(layer), list(layer.values()))
            else:
                fn = LayerExtractor(spec, list(layer))
        label = name or (type(spec).__name__ if isinstance(spec, nn.Module) else getattr(spec, "__name__", "callable"))
        subject = Subject(
            fn,
            input_range=input_range,
            preprocess=preprocess,
            name=str(label),
            layer=dict(layer) if isinstance(layer, Mapping) else layer,
        )
    else:
        raise TypeError(f"subject must be a name, an nn.Module or a callable, got {type(spec).__name__}")
    if name:
        subject.name = name
    if device is not None or dtype is not None:
        subject.to(device=device, dtype=dtype)
    return subject
