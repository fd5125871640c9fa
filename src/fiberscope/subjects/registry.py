"""Named subject specs: ``builtin:``, ``timm:``, ``torchvision:``, ``open_clip:``, ``hf:``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .base import Subject

__all__ = ["SUBJECT_PREFIXES", "load_named_subject"]

LayerSpec = str | Sequence[str] | Mapping[str, float] | None


def _builtin(name: str, layer: LayerSpec, input_range: tuple[float, float] | None) -> Subject:
    from ..zoo.registry import load_builtin_subject

    return load_builtin_subject(name, layer)


SUBJECT_PREFIXES: dict[str, Callable[[str, LayerSpec, Any], Subject]] = {"builtin": _builtin}


def load_named_subject(spec: str, layer: LayerSpec, *, input_range: tuple[float, float] | None = None) -> Subject:
    """Dispatch ``PREFIX:rest`` to the adapter registered for PREFIX."""
    prefix, sep, rest = spec.partition(":")
    if not sep or prefix not in SUBJECT_PREFIXES:
        raise ValueError(
            f"unknown subject {spec!r}: expected one of {sorted(p + ':' for p in SUBJECT_PREFIXES)} followed by a "
            "model name (e.g. 'builtin:mnist-cnn'), or pass an nn.Module / callable"
        )
    subject = SUBJECT_PREFIXES[prefix](rest, layer, input_range)
    if input_range is not None:
        subject.input_range = tuple(input_range)
    return subject
