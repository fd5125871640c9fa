"""``torchvision:NAME`` subjects: any classification model of ``torchvision.models``, any graph node.

Layers are FX graph nodes picked with ``torchvision.models.feature_extraction.create_feature_extractor``
(``"layer3"``, ``"layer2.3.relu_2"``, ``"avgpool"``, ``"flatten"``; list them with
``fiberscope layers torchvision:resnet50``). Models that symbolic tracing cannot handle fall back to
forward hooks on module paths. Preprocessing comes from the weights' own ``transforms()`` preset.

Weights: ``torchvision:resnet50`` uses ``weights="DEFAULT"``; pick others with
``torchvision:resnet50/IMAGENET1K_V1`` or ``weights="IMAGENET1K_V1"``; ``weights=None`` gives random
weights (the preprocessing is still that of the default weights). Weight files must already be in
torch's hub cache (``~/.cache/torch/hub/checkpoints``): nothing is downloaded, and the file is read
with ``torch.load(weights_only=True)``.

Example:
    >>> import torch
    >>> from fiberscope import load_subject
    >>> phi = load_subject("torchvision:resnet18", layer="layer3", weights=None)
    >>> phi(torch.rand(2, 3, 64, 64), (0, 1)).shape      # resized to 256, cropped to 224 inside
    torch.Size([2, 256, 14, 14])
"""

from __future__ import annotations

import contextlib
import difflib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from ..errors import ModelNotAvailableError
from .hooks import LayerExtractor
from .library import LayerSpec, LibrarySubject, combine, layer_list, require
from .preprocess import from_torchvision_weights

__all__ = ["NodeFeatures", "load_torchvision_subject", "torchvision_layers"]

_OUTPUT = ("logits", "output", "")


def _resolve(name: str, spec: str) -> tuple[str, str | None]:
    tv = require("torchvision", spec)
    base, _, tag = name.partition("/")
    models = tv.models.list_models(module=tv.models)
    if base not in models:
        near = difflib.get_close_matches(base, models, n=5)
        raise ValueError(
            f"{spec!r}: torchvision has no classification model {base!r}"
            + (f"; did you mean {near}?" if near else "")
            + " (torchvision.models.list_models(module=torchvision.models) lists them)"
        )
    return base, tag or None


def _weights_enum(base: str, choice: Any, spec: str) -> Any:
    tv = require("torchvision", spec)
    enum = tv.models.get_model_weights(base)
    if choice is None:
        return None
    if not isinstance(choice, str):
        return choice
    if choice == "DEFAULT":
        return enum.DEFAULT
    try:
        return enum[choice.split(".")[-1]]
    except KeyError:
        raise ValueError(f"{spec!r}: unknown weights {choice!r}; available: {[w.name for w in enum]} or None") from None


def cached_weights_path(weights: Any) -> Path:
    """Where torchvision keeps the file of ``weights`` (torch hub's ``checkpoints`` directory)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


@contextlib.contextmanager
def _cache_only(spec: str) -> Iterator[None]:
    """Make torchvision read weights only from torch's hub cache, with ``weights_only=True``, never downloading."""
    api = require("torchvision.models._api", spec)
    original = api.load_state_dict_from_url

    def load(url: str, *args: Any, **kwargs: Any) -> Any:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
        if not path.is_file():  # checked before; a second file (rare) would land here
            raise ModelNotAvailableError(
                f"subject {spec!r}: weight file {path} is not cached and fiberscope never downloads"
            )
        return torch.load(path, map_location="cpu", weights_only=True)

    api.load_state_dict_from_url = load
    try:
        yield
    finally:
        api.load_state_dict_from_url = original


def build_torchvision_model(name: str, weights: Any = "DEFAULT", spec: str | None = None) -> tuple[nn.Module, Any]:
    """``(model, weights_enum_or_None)`` for ``name`` (``"resnet50"`` or ``"resnet50/IMAGENET1K_V2"``), offline."""
    spec = spec or f"torchvision:{name}"
    tv = require("torchvision", spec)
    base, tag = _resolve(name, spec)
    if tag is not None:
        if weights not in ("DEFAULT", tag):
            raise ValueError(f"{spec!r} names weights {tag!r} and weights={weights!r} was given too; pick one")
        weights = tag
    w = _weights_enum(base, weights, spec)
    if w is None:
        return tv.models.get_model(base, weights=None), None
    path = cached_weights_path(w)
    if not path.is_file():
        raise ModelNotAvailableError(
            f"subject {spec!r}: torchvision weights {w} are not cached at {path} and fiberscope never downloads: "
            f"run `python -c \"import torchvision; torchvision.models.get_model('{base}', weights='{w.name}')\"` "
            "on a machine that reaches download.pytorch.org and copy the file here (or pass weights=None for random "
            "weights)"
        )
    with _cache_only(spec):
        model = tv.models.get_model(base, weights=w)
    return model, w


class NodeFeatures(nn.Module):
    """The outputs of graph nodes (FX, ``create_feature_extractor``) or, failing tracing, of module paths (hooks).

    Args:
        model: any module.
        nodes: node names as ``get_graph_node_names(model)`` lists them (module paths are nodes too).
        weights: one weight per node for :func:`~fiberscope.subjects.library.combine`.
    """

    def __init__(self, model: nn.Module, nodes: list[str], weights: list[float], spec: str = "model"):
        super().__init__()
        from torchvision.models.feature_extraction import create_feature_extractor

        self.nodes, self.weights = list(nodes), list(weights)
        self.mode = "fx"
        try:
            model.eval()
            self.net: nn.Module = create_feature_extractor(
                model, return_nodes={n: f"f{i}" for i, n in enumerate(nodes)}
            )
        except Exception as e:
            modules = dict(model.named_modules())
            missing = [n for n in nodes if n not in modules]
            if missing:
                hint = _near(model, missing)
                raise ValueError(
                    f"{spec}: layer(s) {missing} are not graph nodes or module paths ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:160]})"
                    + (f"; similar names: {hint}" if hint else "")
                    + f"; list them with `fiberscope layers {spec}`"
                ) from None
            self.mode = "hooks"  # symbolic tracing failed: forward hooks on module paths
            self.net = LayerExtractor(model, nodes, weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "hooks":
            return self.net(x)
        feats = self.net(x)
        return combine([feats[f"f{i}"] for i in range(len(self.nodes))], self.weights)


def _near(model: nn.Module, missing: list[str]) -> list[str]:
    names = [n for n, _ in model.named_modules() if n]
    out: list[str] = []
    for m in missing:
        out += difflib.get_close_matches(m, names, n=4, cutoff=0.5)
    return out[:8]


def load_torchvision_subject(
    name: str,
    layer: LayerSpec = None,
    *,
    weights: Any = "DEFAULT",
    model_kwargs: dict[str, Any] | None = None,
) -> LibrarySubject:
    """Load ``torchvision:NAME`` as a subject.

    Args:
        name: a classification model of ``torchvision.models`` (``"resnet50"``), optionally with its
            weights (``"resnet50/IMAGENET1K_V2"``).
        layer: None or ``"logits"`` for the model output; a graph node name (``"layer3"``,
            ``"layer4.1.relu_1"``, ``"avgpool"``, ``"flatten"``); a list or ``{node: weight}`` dict of them.
        weights: ``"DEFAULT"``, a weights name (``"IMAGENET1K_V1"``), an enum member, or None for random
            weights. Must be cached; never downloaded.
        model_kwargs: passed to the model builder when ``weights=None`` (e.g. ``num_classes``).

    Example:
        >>> phi = load_torchvision_subject("mobilenet_v3_small", "features.3", weights=None)   # doctest: +SKIP
    """
    spec = f"torchvision:{name}"
    if model_kwargs:
        tv = require("torchvision", spec)
        if weights is not None:
            raise ValueError("model_kwargs only apply with weights=None (pretrained weights fix the architecture)")
        base, _ = _resolve(name, spec)
        model, w = tv.models.get_model(base, weights=None, **model_kwargs), None
    else:
        model, w = build_torchvision_model(name, weights, spec)
    base = name.partition("/")[0]
    pre_weights = w if w is not None else _weights_enum(base, "DEFAULT", spec)
    preprocess = from_torchvision_weights(pre_weights)
    model.eval().requires_grad_(False)
    parsed = layer_list(layer)
    fn: nn.Module
    label: Any
    if parsed is None or (len(parsed[0]) == 1 and str(parsed[0][0]) in _OUTPUT):
        fn, label = model, "logits"
    else:
        nodes = [str(n) for n in parsed[0]]
        fn = NodeFeatures(model, nodes, parsed[1], spec)
        label = layer if isinstance(layer, (str, int)) else (dict(layer) if isinstance(layer, dict) else nodes)
    return LibrarySubject(
        fn,
        input_range=(0.0, 1.0),
        preprocess=preprocess,
        name=spec,
        layer=label,
        info={"weights": str(w) if w is not None else None, "extractor": getattr(fn, "mode", "model")},
    )


def torchvision_layers(name: str) -> list[tuple[str, str]]:
    """Rows for ``fiberscope layers torchvision:NAME``: the eval-mode graph nodes (random weights suffice)."""
    spec = f"torchvision:{name}"
    tv = require("torchvision", spec)
    base, _ = _resolve(name, spec)
    model = tv.models.get_model(base, weights=None).eval()
    from torchvision.models.feature_extraction import get_graph_node_names

    mods = dict(model.named_modules())
    rows = [("logits", "model output (default)")]
    try:
        _, eval_nodes = get_graph_node_names(model)
    except Exception as e:  # untraceable: module paths (forward hooks) only
        rows.append(("#", f"symbolic tracing failed ({type(e).__name__}); module paths work through forward hooks"))
        return rows + [(n, type(m).__name__) for n, m in mods.items() if n]
    for n in eval_nodes:
        if n == "x":
            continue
        rows.append((n, f"graph node, {type(mods[n]).__name__}" if n in mods else "graph node"))
    return rows
