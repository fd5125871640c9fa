"""Take any named layer of any ``nn.Module``, stopping the forward pass as soon as it is computed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["LayerExtractor", "list_layers"]


class _Stop(Exception):
    pass


def list_layers(model: nn.Module) -> list[tuple[str, str]]:
    """``(name, class)`` of every named submodule, in registration order."""
    return [(n, type(m).__name__) for n, m in model.named_modules() if n]


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    for attr in ("last_hidden_state", "pooler_output", "sample", "logits"):
        v = getattr(out, attr, None)
        if isinstance(v, torch.Tensor):
            return v
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"layer output of type {type(out).__name__} holds no tensor fiberscope can use")


class LayerExtractor(nn.Module):
    """``φ(x)`` = the outputs of ``layers`` of ``model`` (forward hooks; the forward stops early).

    Args:
        model: any module.
        layers: module paths as in ``model.named_modules()`` (e.g. ``"layer3.1.conv2"``).
        weights: one weight per layer; features are flattened and concatenated, each scaled by
            ``√weight`` so that a squared-L2 fiber loss is the weighted sum of the per-layer losses.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], weights: Sequence[float] | None = None):
        super().__init__()
        self.model = model
        names = dict(model.named_modules())
        missing = [name for name in layers if name not in names]
        if missing:
            near = [n for n in names if n and any(m.split(".")[-1] in n for m in missing)][:8]
            raise ValueError(
                f"layer(s) {missing} not found in {type(model).__name__}; "
                + (f"similar names: {near}; " if near else "")
                + "list them with `fiberscope layers SPEC` or fiberscope.subjects.list_layers(model)"
            )
        self.layers = list(layers)
        self.weights = [1.0] * len(self.layers) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(self.layers) or any(w < 0 for w in self.weights):
            raise ValueError("layer weights must be one non-negative number per layer")
        self._mods = [names[n] for n in self.layers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        store: dict[int, torch.Tensor] = {}
        need = len(self._mods)

        def make_hook(i: int):
            def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
                store[i] = _first_tensor(out)
                if len(store) == need:
                    raise _Stop

            return hook

        handles = [m.register_forward_hook(make_hook(i)) for i, m in enumerate(self._mods)]
        try:
            self.model(x)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        if len(store) != need:
            raise RuntimeError(
                f"layers {[self.layers[i] for i in range(need) if i not in store]} were not run by forward()"
            )
        if need == 1 and self.weights[0] == 1.0:
            return store[0]
        return torch.cat([store[i].flatten(1) * self.weights[i] ** 0.5 for i in range(need)], dim=1)
