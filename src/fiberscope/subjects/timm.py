"""``timm:NAME`` subjects: any timm model, at its output, pre-logits, any block or any module.

Layers:

* None / ``"logits"``: the classifier output;
* ``"pre_logits"``: the pooled features before the classifier, ``forward_head(forward_features(x), pre_logits=True)``;
* ``"features"``: the unpooled ``forward_features(x)``;
* an int (or ``"3"``, ``"-1"``): block ``i`` through ``forward_intermediates(x, indices=[i])``, which
  timm supports on most models (ResNets' stages, ViTs' blocks as NCHW maps);
* any module path (``"layer3.1"``, ``"blocks.5.mlp"``): forward hooks;
* a list or ``{layer: weight}`` dict of these.

``fiberscope layers timm:NAME`` lists them with ``feature_info`` (channels, reduction).

Weights: ``pretrained=True`` (default) reads the model's weights from the local Hugging Face cache
(``hf download timm/resnet50.a1_in1k``) or torch's hub cache, never downloading;
``pretrained=False`` builds random weights. ``timm:hf-hub:org/name`` and ``timm:local-dir:/path``
work too. Preprocessing is built from ``timm.data.resolve_model_data_config(model)``.

Example:
    >>> import torch
    >>> from fiberscope import load_subject
    >>> phi = load_subject("timm:test_resnet", layer=3, pretrained=False)
    >>> phi(torch.rand(2, 3, 64, 64), (0, 1)).shape           # resized to 168, cropped to 160 inside
    torch.Size([2, 192, 10, 10])
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from ..errors import ModelNotAvailableError
from ..hub import check_weights, offline_hub
from .hooks import LayerExtractor
from .library import LayerSpec, LibrarySubject, Multi, as_index, layer_list, local_or_hub, require
from .preprocess import from_timm_config

__all__ = ["TimmFeatures", "build_timm_model", "load_timm_subject", "timm_layers"]

_SPECIAL = ("logits", "output", "pre_logits", "features")


def _weights_file(directory: Path, trust_pickle: bool, spec: str, filename: str | None = None) -> Path:
    fmt = check_weights(directory, trust_pickle=trust_pickle, what=spec)
    names = ["model.safetensors", "open_clip_model.safetensors"] if fmt == "safetensors" else []
    names += [filename] if filename else []
    names += ["pytorch_model.bin", "open_clip_pytorch_model.bin"] if fmt == "pickle" else []
    for n in names:
        if (directory / n).is_file() and (fmt == "pickle" or n.endswith(".safetensors")):
            return directory / n
    ext = "*.safetensors" if fmt == "safetensors" else "*.bin"
    found = sorted(directory.glob(ext))
    if not found:
        raise FileNotFoundError(f"{spec}: no weight file in {directory}")
    return found[0]


def build_timm_model(
    name: str,
    *,
    pretrained: bool = True,
    trust_pickle: bool = False,
    model_kwargs: dict[str, Any] | None = None,
    spec: str | None = None,
) -> nn.Module:
    """A timm model by name, offline: weights from the local cache only (or random with ``pretrained=False``)."""
    spec = spec or f"timm:{name}"
    timm = require("timm", spec)
    kw = dict(model_kwargs or {})
    if name.startswith(("hf-hub:", "local-dir:")):
        directory = local_or_hub(name, "subject")
        assert directory is not None
        if pretrained:
            _weights_file(directory, trust_pickle, spec)
        with offline_hub():
            return timm.create_model(f"local-dir:{directory}", pretrained=pretrained, **kw)
    if name.split(".")[0] not in timm.list_models():
        import difflib

        near = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=5)
        raise ValueError(f"{spec!r}: timm has no model {name!r}" + (f"; did you mean {near}?" if near else ""))
    if not pretrained:
        with offline_hub():
            return timm.create_model(name, pretrained=False, **kw)
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise ModelNotAvailableError(
            f"subject {spec!r}: timm knows no pretrained weights for {name!r}; pass pretrained=False for random weights"
        )
    path: Path | None = None
    errors: list[str] = []
    if cfg.hf_hub_id:
        try:
            directory = local_or_hub(f"hf-hub:{cfg.hf_hub_id}", "subject")
            assert directory is not None
            path = _weights_file(directory, trust_pickle, spec, cfg.hf_hub_filename)
        except ModelNotAvailableError as e:
            errors.append(str(e))
    if path is None and cfg.url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
        if candidate.is_file():
            if candidate.suffix != ".safetensors" and not trust_pickle:
                raise ValueError(
                    f"{candidate} is a pickled checkpoint; fiberscope does not unpickle .bin/.pth files unless you "
                    "pass trust_pickle=True (it is then read with torch.load(weights_only=True))"
                )
            path = candidate
    if path is None:
        fetch = f"hf download {cfg.hf_hub_id}" if cfg.hf_hub_id else f"download {cfg.url} into {candidate.parent}"
        raise ModelNotAvailableError(
            f"subject {spec!r}: timm weights for {name!r} are not cached and fiberscope never downloads: run `{fetch}` "
            "on a machine that reaches the hub (or pass pretrained=False for random weights)"
        )
    with offline_hub():
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path), "source": ""}, **kw)


class TimmFeatures(nn.Module):
    """``φ(x)`` for a timm model and one layer choice (see the module docstring)."""

    def __init__(self, model: nn.Module, layer: str | int):
        super().__init__()
        self.model = model
        idx = as_index(layer)
        self.index = idx
        self.kind = "index" if idx is not None else str(layer)
        if idx is not None and not hasattr(model, "forward_intermediates"):
            raise ValueError(
                f"timm model {type(model).__name__} has no forward_intermediates(): give a module path instead of "
                f"index {idx} (see `fiberscope layers`)"
            )
        if self.kind == "pre_logits" and not hasattr(model, "forward_head"):
            raise ValueError(f"timm model {type(model).__name__} has no forward_head(): use a module path")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m: Any = self.model
        if self.kind == "index":
            return m.forward_intermediates(x, indices=[self.index], intermediates_only=True, stop_early=True)[0]
        if self.kind == "pre_logits":
            return m.forward_head(m.forward_features(x), pre_logits=True)
        if self.kind == "features":
            return m.forward_features(x)
        return m(x)


class _Cast(nn.Module):
    """Run ``inner`` on inputs cast to the model's dtype; features come back in float32."""

    def __init__(self, inner: nn.Module, model: nn.Module):
        super().__init__()
        self.inner = inner
        self._model = [model]  # not registered twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = next(self._model[0].parameters(), None)
        return self.inner(x.to(p.dtype) if p is not None else x).float()


def features_module(model: nn.Module, layer: LayerSpec) -> tuple[nn.Module, Any]:
    """The feature function of ``model`` for ``layer=`` (single, list or weighted dict), and its label."""
    parsed = layer_list(layer)
    if parsed is None:
        return TimmFeatures(model, "logits"), "logits"
    names, weights = parsed
    modules = dict(model.named_modules())
    parts: list[nn.Module] = []
    hook_names = [str(n) for n in names if as_index(n) is None and str(n) not in _SPECIAL]
    for h in hook_names:
        if h not in modules:
            import difflib

            near = difflib.get_close_matches(h, [m for m in modules if m], n=6, cutoff=0.5)
            raise ValueError(
                f"layer {h!r} is not a timm layer choice ({', '.join(_SPECIAL)}, a block index) nor a module path of "
                f"{type(model).__name__}"
                + (f"; similar: {near}" if near else "")
                + "; list them with `fiberscope layers`"
            )
    if hook_names and len(hook_names) == len(names):  # one forward pass for all hooked modules
        parts = [LayerExtractor(model, hook_names, weights)]
        fn: nn.Module = parts[0]
    else:
        for n in names:
            if as_index(n) is None and str(n) not in _SPECIAL:
                parts.append(LayerExtractor(model, [str(n)]))
            else:
                parts.append(TimmFeatures(model, n))
        fn = parts[0] if len(parts) == 1 and weights == [1.0] else Multi(parts, weights)
    label = layer if isinstance(layer, (str, int)) else (dict(layer) if isinstance(layer, dict) else list(names))
    return fn, label


def load_timm_subject(
    name: str,
    layer: LayerSpec = None,
    *,
    pretrained: bool = True,
    trust_pickle: bool = False,
    model_kwargs: dict[str, Any] | None = None,
) -> LibrarySubject:
    """Load ``timm:NAME`` as a subject (layers and weights: see the module docstring).

    Args:
        name: ``"resnet50.a1_in1k"``, ``"hf-hub:timm/resnet50.a1_in1k"`` or ``"local-dir:/path"``.
        layer: ``None``/``"logits"``, ``"pre_logits"``, ``"features"``, a block index, a module path, or a
            list / ``{layer: weight}`` dict of them.
        pretrained: read cached weights (never downloaded) or, if False, use random weights.
        trust_pickle: allow ``.bin``/``.pth`` weight files (read with ``torch.load(weights_only=True)``).
        model_kwargs: passed to ``timm.create_model`` (e.g. ``img_size=``).

    Example:
        >>> phi = load_timm_subject("resnet50.a1_in1k", "pre_logits")                 # doctest: +SKIP
    """
    spec = f"timm:{name}"
    timm = require("timm", spec)
    model = build_timm_model(
        name, pretrained=pretrained, trust_pickle=trust_pickle, model_kwargs=model_kwargs, spec=spec
    )
    model.eval().requires_grad_(False)
    cfg = timm.data.resolve_model_data_config(model)
    fn, label = features_module(model, layer)
    return LibrarySubject(
        _Cast(fn, model),
        input_range=(0.0, 1.0),
        preprocess=from_timm_config(cfg),
        name=spec,
        layer=label,
        info={"pretrained": bool(pretrained), "data_config": {k: cfg[k] for k in sorted(cfg)}},
    )


def timm_layers(name: str, model_kwargs: dict[str, Any] | None = None, **_: Any) -> list[tuple[str, str]]:
    """Rows for ``fiberscope layers timm:NAME`` (built with random weights: the architecture is enough)."""
    model = build_timm_model(name, pretrained=False, model_kwargs=model_kwargs)
    rows = [("logits", "classifier output (default)")]
    if hasattr(model, "forward_head"):
        rows.append(("pre_logits", "pooled features before the classifier"))
    rows.append(("features", "forward_features(x), unpooled"))
    info = getattr(model, "feature_info", None)
    if hasattr(model, "forward_intermediates") and info is not None:
        entries = list(info) if not hasattr(info, "info") else list(info.info)
        for i, e in enumerate(entries):
            rows.append(
                (
                    str(i),
                    f"forward_intermediates index: {e.get('module')} ({e.get('num_chs')} ch, 1/{e.get('reduction')})",
                )
            )
    rows += [(n, type(m).__name__) for n, m in model.named_modules() if n]
    return rows
