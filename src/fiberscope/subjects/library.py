"""What every library subject adapter shares: the subject class, optional imports, layer lists, local paths.

The adapters (:mod:`~fiberscope.subjects.torchvision`, :mod:`~fiberscope.subjects.timm`,
:mod:`~fiberscope.subjects.open_clip`, :mod:`~fiberscope.subjects.transformers`,
:mod:`~fiberscope.subjects.vlm`) follow the same rules:

* the library is imported lazily, inside the adapter, and a missing one is named with the extra to
  install (``pip install 'fiberscope[timm]'``, :func:`require`);
* nothing is downloaded: weights come from the local cache (or a local directory,
  :func:`local_or_hub`) and a missing model fails at once with the command that fetches it;
* the subject takes images in [0, 1] (``input_range=(0, 1)``; fiberscope converts from the prior's
  range) and the library's own preprocessing is rebuilt as tensor ops
  (:mod:`fiberscope.subjects.preprocess`);
* the model is in ``eval()`` mode with frozen parameters, and gradients reach the image.

Spec strings (``timm:NAME``, ``hf:ID``, ...) are dispatched to the adapters by :mod:`fiberscope.loading`.

Example:
    >>> from fiberscope.subjects.library import layer_list
    >>> layer_list({"layer3": 1.0, "layer4": 2.0})
    (['layer3', 'layer4'], [1.0, 2.0])
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..hub import resolve_hub_dir
from .base import Subject

__all__ = [
    "LayerSpec",
    "LibrarySubject",
    "Multi",
    "as_index",
    "combine",
    "layer_list",
    "local_or_hub",
    "require",
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
