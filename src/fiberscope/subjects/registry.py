"""Named subject specs: ``builtin:``, ``timm:``, ``torchvision:``, ``open_clip:``, ``hf:``.

Every library adapter follows the same rules:

* the library is imported lazily, inside the adapter, and a missing one is named with the extra to
  install (``pip install 'fiberscope[timm]'``);
* nothing is downloaded: weights come from the local cache (or a local directory) and a missing
  model fails at once with the command that fetches it;
* the subject takes images in [0, 1] (``input_range=(0, 1)``; fiberscope converts from the prior's
  range) and the library's own preprocessing is rebuilt as tensor ops
  (:mod:`fiberscope.subjects.preprocess`);
* the model is in ``eval()`` mode with frozen parameters, and gradients reach the image.

Example:
    >>> from fiberscope import load_subject
    >>> phi = load_subject("timm:resnet18.a1_in1k", layer="pre_logits")         # doctest: +SKIP
    >>> phi = load_subject("torchvision:resnet50", layer="layer3.5.relu_2")     # doctest: +SKIP
    >>> phi = load_subject("hf:facebook/dinov2-base", layer="cls")              # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base import Subject

__all__ = [
    "SUBJECT_PREFIXES",
    "LibrarySubject",
    "load_named_subject",
    "require",
    "subject_layers",
]

LayerSpec = str | int | Sequence[str | int] | Mapping[str, float] | None

# extra to install per library module
_EXTRAS = {"timm": "timm", "torchvision": "torchvision", "open_clip": "clip", "transformers": "transformers"}


def require(module: str, spec: str) -> Any:
    """Import an optional library for ``spec``, or raise an ImportError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        extra = _EXTRAS.get(top, top)
        raise ImportError(
            f"subject {spec!r} needs the {top} package: pip install 'fiberscope[{extra}]' ({e})"
        ) from None


class LibrarySubject(Subject):
    """A :class:`Subject` loaded from a library spec; records where its model and preprocessing came from."""

    def __init__(self, fn: Callable[[torch.Tensor], Any], *, info: dict[str, Any] | None = None, **kwargs: Any):
        super().__init__(fn, **kwargs)
        self.info = dict(info or {})
        self.eval().requires_grad_(False)  # the wrapper and its preprocessing too, not only the model

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        # preprocessing in float32 whatever the model's dtype, then the model's dtype, float32 features out
        pre = getattr(self, "preprocess", None)
        if pre is not None:
            x = pre(x.float())
        fn: Any = self.fn if hasattr(self, "fn") else self._callable
        p = next(fn.parameters(), None) if isinstance(fn, nn.Module) else None
        if p is not None and p.is_floating_point():
            x = x.to(p.dtype)
        out = fn(x)
        if not isinstance(out, torch.Tensor):
            from .hooks import _first_tensor

            out = _first_tensor(out)
        return out.float()

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        pre = getattr(self, "preprocess", None)
        if pre is not None and hasattr(pre, "config"):
            d["preprocess"] = pre.config()
        d.update(self.info)
        return d


def layer_list(layer: LayerSpec) -> tuple[list[str | int], list[float]] | None:
    """``layer=`` as (names, weights); None when no layer was asked for."""
    if layer is None:
        return None
    if isinstance(layer, (str, int)):
        return [layer], [1.0]
    if isinstance(layer, Mapping):
        return list(layer), [float(w) for w in layer.values()]
    names = list(layer)
    if not names:
        raise ValueError("layer= is an empty list; give at least one layer")
    return names, [1.0] * len(names)


def as_index(name: str | int) -> int | None:
    """``3``, ``"3"`` or ``"-1"`` → an int index; anything else → None."""
    if isinstance(name, int) and not isinstance(name, bool):
        return name
    s = str(name).strip()
    if s.lstrip("-").isdigit():
        return int(s)
    return None


def combine(features: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """One feature tensor per layer → flattened and concatenated with √weight scaling (one layer: as is)."""
    if len(features) == 1 and weights[0] == 1.0:
        return features[0]
    return torch.cat([f.flatten(1) * float(w) ** 0.5 for f, w in zip(features, weights)], dim=1)


class Multi(nn.Module):
    """Several feature functions of one input, combined by :func:`combine`."""

    def __init__(self, parts: Sequence[nn.Module], weights: Sequence[float]):
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.weights = [float(w) for w in weights]
        if any(w < 0 for w in self.weights):
            raise ValueError("layer weights must be non-negative")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return combine([p(x) for p in self.parts], self.weights)


def local_or_hub(name: str, kind: str) -> Path | None:
    """A ``local-dir:PATH``, an existing path, or a cached ``org/name`` hub id → a directory; else None."""
    from ..priors.loading import resolve_hub_dir

    if name.startswith("local-dir:"):
        p = Path(name[len("local-dir:") :]).expanduser()
        if not p.is_dir():
            raise FileNotFoundError(f"{kind} directory {p} does not exist")
        return p
    p = Path(name).expanduser()
    if p.is_dir():
        return p
    hub = name.removeprefix("hf-hub:")
    if name.startswith("hf-hub:") or (hub.count("/") == 1 and not name.startswith(("/", ".", "~"))):
        return resolve_hub_dir(hub, kind)
    return None


# ---------------------------------------------------------------------------------------------------------------
# adapters (each imports its library lazily)


def _builtin(name: str, layer: LayerSpec, input_range: tuple[float, float] | None, **options: Any) -> Subject:
    from ..zoo.registry import load_builtin_subject

    options.pop("trust_pickle", None)  # zoo weights are always safetensors: nothing to trust
    if options:
        raise TypeError(f"builtin:{name} takes no options (got {sorted(options)})")
    return load_builtin_subject(name, layer)


def _torchvision(name: str, layer: LayerSpec, input_range: tuple[float, float] | None, **options: Any) -> Subject:
    from .torchvision import load_torchvision_subject

    return load_torchvision_subject(name, layer, **options)


def _timm(name: str, layer: LayerSpec, input_range: tuple[float, float] | None, **options: Any) -> Subject:
    from .timm import load_timm_subject

    return load_timm_subject(name, layer, **options)


def _open_clip(name: str, layer: LayerSpec, input_range: tuple[float, float] | None, **options: Any) -> Subject:
    from .open_clip import load_open_clip_subject

    return load_open_clip_subject(name, layer, **options)


def _hf(name: str, layer: LayerSpec, input_range: tuple[float, float] | None, **options: Any) -> Subject:
    from .transformers import load_hf_subject

    return load_hf_subject(name, layer, **options)


SUBJECT_PREFIXES: dict[str, Callable[..., Subject]] = {
    "builtin": _builtin,
    "torchvision": _torchvision,
    "timm": _timm,
    "open_clip": _open_clip,
    "hf": _hf,
}


def load_named_subject(
    spec: str,
    layer: LayerSpec,
    *,
    input_range: tuple[float, float] | None = None,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    **options: Any,
) -> Subject:
    """Dispatch ``PREFIX:rest`` to the adapter registered for PREFIX.

    Args:
        spec: e.g. ``"timm:resnet50.a1_in1k"``.
        layer: the adapter's layer choice (see each adapter).
        input_range: override the range the subject expects.
        preprocess: replace the preprocessing rebuilt from the library's config (a differentiable
            transform of images in ``input_range``).
        options: adapter options: ``weights=`` (torchvision), ``pretrained=`` (timm, open_clip),
            ``trust_pickle=``, ``model_kwargs=`` ...
    """
    prefix, sep, rest = spec.partition(":")
    if not sep or prefix not in SUBJECT_PREFIXES:
        raise ValueError(
            f"unknown subject {spec!r}: expected one of {sorted(p + ':' for p in SUBJECT_PREFIXES)} followed by a "
            "model name (e.g. 'builtin:mnist-cnn'), or pass an nn.Module / callable"
        )
    if not rest:
        raise ValueError(f"subject {spec!r} names no model after {prefix + ':'!r}")
    if preprocess is not None and prefix == "hf":
        options["preprocess"] = preprocess  # a model without preprocessor_config.json can still be loaded
    subject = SUBJECT_PREFIXES[prefix](rest, layer, input_range, **options)
    if input_range is not None:
        subject.input_range = tuple(input_range)
    if preprocess is not None:
        subject.preprocess = preprocess if isinstance(preprocess, nn.Module) else _Fn(preprocess)
        if hasattr(subject, "_preprocess"):
            subject._preprocess = None
    return subject


class _Fn(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def subject_layers(spec: str | os.PathLike[str], **options: Any) -> list[tuple[str, str]]:
    """The layers a user can pick for ``spec``, as ``(layer, description)`` rows.

    Library models are built without weights for this (the architecture is enough), except
    ``hf:`` models, whose config must be cached. Used by ``fiberscope layers SPEC``.
    """
    s = os.fspath(spec)
    prefix, sep, rest = s.partition(":")
    if sep and prefix == "torchvision":
        from .torchvision import torchvision_layers

        return torchvision_layers(rest)
    if sep and prefix == "timm":
        from .timm import timm_layers

        return timm_layers(rest, **options)
    if sep and prefix == "open_clip":
        from .open_clip import open_clip_layers

        return open_clip_layers(rest, **options)
    if sep and prefix == "hf":
        from .transformers import hf_layers

        return hf_layers(rest, **options)
    from .base import load_subject
    from .hooks import list_layers

    subject = load_subject(s)
    model = getattr(subject, "fn", None)
    base = getattr(model, "model", model)
    if not isinstance(base, nn.Module):
        raise ValueError(f"{s} is not a module; it has no named layers")
    return [(n, c) for n, c in list_layers(base)]
