"""``hf:ID`` subjects: vision models from transformers (DINOv2, CLIP/SigLIP image towers, ViT, ...) and VLMs.

``ID`` is a Hugging Face repo id already in the local cache (``hf:facebook/dinov2-base``), a local
directory (``hf:/path/to/model``) or ``hf:local-dir:/path``. The model is loaded with
``AutoModel.from_pretrained`` from safetensors, offline; preprocessing is rebuilt from its
``AutoImageProcessor`` (``preprocessor_config.json``). Qwen2-VL-family configs are routed to
:mod:`fiberscope.subjects.vlm`.

Layers (token models, ``[B, T, D]`` hidden states):

* ``"cls"``: the CLS token of ``last_hidden_state`` (DINOv2's is layer-normed);
* ``"mean"``: the mean patch token (CLS and register tokens excluded);
* ``"pooler"``: ``pooler_output`` (CLIP: layer-normed CLS; ViT: dense+tanh head);
* ``"embeds"``: ``get_image_features`` of a dual encoder (CLIP/SigLIP ``image_embeds``, projected);
* ``"tokens"``: the whole ``last_hidden_state``;
* ``"hidden:N"``: ``hidden_states[N]`` (0 = embeddings, −1 = last block, before any final norm),
  whole, or pooled with ``"hidden:N:cls"`` / ``"hidden:N:mean"``;
* any module path of the vision model (forward hooks); or a list / ``{layer: weight}`` dict.

The default is ``"embeds"`` for dual encoders, else ``"cls"`` (``"mean"`` for models without a CLS token).

Example:
    >>> from fiberscope import load_subject
    >>> phi = load_subject("hf:facebook/dinov2-base", layer="cls")                  # doctest: +SKIP
    >>> phi(torch.rand(1, 3, 256, 256), (0, 1)).shape                                # doctest: +SKIP
    torch.Size([1, 768])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..hub import offline_hub
from .hf_loading import load_config, load_model, load_processor
from .hooks import LayerExtractor
from .library import LayerSpec, LibrarySubject, Multi, as_index, layer_list, local_or_hub, require
from .preprocess import from_hf_processor
from .vlm import load_vlm_subject, vlm_layers

__all__ = ["HFVisionFeatures", "hf_layers", "load_hf_subject"]

VLM_TYPES = ("qwen2_vl", "qwen2_5_vl")
_NO_CLS = ("siglip", "siglip_vision_model", "siglip2", "siglip2_vision_model")
_POOLED = ("cls", "mean", "pooler", "embeds", "tokens")


def _resolve_dir(name: str, spec: str) -> Path:
    directory = local_or_hub(name, "subject")
    if directory is None:
        raise ValueError(
            f"{spec!r}: expected a Hugging Face id 'org/name' (cached), a local directory or local-dir:PATH after 'hf:'"
        )
    return directory


def _vision(model: nn.Module) -> nn.Module:
    """The image tower of a dual encoder (``CLIPModel.vision_model``), else the model itself."""
    if hasattr(model, "vision_model") and hasattr(model, "get_image_features"):
        return model.vision_model  # type: ignore[return-value]
    return model


def _n_prefix(config: Any) -> int:
    vc = getattr(config, "vision_config", None) or config
    if getattr(config, "model_type", "") in _NO_CLS or getattr(vc, "model_type", "") in _NO_CLS:
        return 0
    return 1 + int(getattr(vc, "num_register_tokens", 0) or 0)


def _tensor(out: Any, *names: str) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    for n in names:
        v = getattr(out, n, None)
        if isinstance(v, torch.Tensor):
            return v
    raise TypeError(f"model output {type(out).__name__} has none of {names}")


class HFVisionFeatures(nn.Module):
    """One pooled/hidden-state layer choice of a transformers vision model (see the module docstring)."""

    def __init__(self, model: nn.Module, layer: str, n_prefix: int):
        super().__init__()
        self.model = model
        self.vision = _vision(model)
        self.n_prefix = n_prefix
        self.layer = layer
        parts = layer.split(":")
        self.hidden: int | None = None
        self.pool = parts[0]
        if parts[0] == "hidden":
            idx = as_index(parts[1]) if len(parts) > 1 else None
            if idx is None or len(parts) > 3 or (len(parts) == 3 and parts[2] not in ("cls", "mean")):
                raise ValueError(f"layer {layer!r}: write hidden:N, hidden:N:cls or hidden:N:mean (N an int, e.g. -1)")
            self.hidden, self.pool = idx, parts[2] if len(parts) == 3 else "tokens"
        elif parts[0] not in _POOLED or len(parts) > 1:
            raise ValueError(f"unknown layer {layer!r}")
        if self.pool == "cls" and n_prefix == 0:
            raise ValueError(f"layer {layer!r}: this model has no CLS token; use 'mean' or 'pooler'")
        if self.pool == "embeds" and self.vision is model:
            raise ValueError(
                f"layer {layer!r}: 'embeds' needs a dual encoder (CLIPModel, SiglipModel); use 'pooler' or 'cls'"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = next(self.model.parameters())
        x = x.to(p.dtype)
        if self.pool == "embeds":
            m: Any = self.model
            return _tensor(m.get_image_features(pixel_values=x), "image_embeds", "pooler_output").float()
        out = self.vision(pixel_values=x, output_hidden_states=self.hidden is not None)
        if self.pool == "pooler":
            pooled = getattr(out, "pooler_output", None)
            if pooled is None:
                raise ValueError(f"{type(self.vision).__name__} returns no pooler_output; use 'cls' or 'mean'")
            return pooled.float()
        h = out.hidden_states[self.hidden] if self.hidden is not None else _tensor(out, "last_hidden_state")
        if self.pool == "cls":
            return h[:, 0].float()
        if self.pool == "mean":
            return h[:, self.n_prefix :].mean(dim=1).float()
        return h.float()


class _PixelCall(nn.Module):
    """``model(pixel_values=x)``, so that forward hooks can run a transformers model on a tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Any:
        p = next(self.model.parameters())
        return self.model(pixel_values=x.to(p.dtype))


class _Float(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).float()


def _default_layer(model: nn.Module, config: Any) -> str:
    if _vision(model) is not model:
        return "embeds"
    return "cls" if _n_prefix(config) > 0 else "mean"


def features_module(model: nn.Module, config: Any, layer: LayerSpec) -> tuple[nn.Module, Any]:
    """The feature function for ``layer=`` and its label."""
    parsed = layer_list(layer)
    default = _default_layer(model, config)
    names, weights = parsed if parsed is not None else ([default], [1.0])
    vision = _vision(model)
    modules = dict(vision.named_modules())
    parts: list[nn.Module] = []
    for n in names:
        s = str(n)
        if s.split(":")[0] in (*_POOLED, "hidden"):
            parts.append(HFVisionFeatures(model, s, _n_prefix(config)))
        elif s in modules:
            parts.append(_Float(LayerExtractor(_PixelCall(vision), ["model." + s])))
        else:
            import difflib

            near = difflib.get_close_matches(s, [m for m in modules if m], n=6, cutoff=0.5)
            raise ValueError(
                f"layer {s!r} is not one of cls, mean, pooler, embeds, tokens, hidden:N[:cls|:mean] nor a module "
                f"path of {type(vision).__name__}"
                + (f"; similar: {near}" if near else "")
                + "; list them with `fiberscope layers`"
            )
    fn = parts[0] if len(parts) == 1 and weights == [1.0] else Multi(parts, weights)
    label = (
        default
        if layer is None
        else (layer if isinstance(layer, (str, int)) else (dict(layer) if isinstance(layer, dict) else list(names)))
    )
    return fn, label


def load_hf_subject(
    name: str,
    layer: LayerSpec = None,
    *,
    trust_pickle: bool = False,
    model: nn.Module | None = None,
    preprocess: nn.Module | None = None,
) -> LibrarySubject:
    """Load ``hf:ID`` as a subject (layers: see the module docstring).

    Args:
        name: a cached hub id, a local directory or ``local-dir:PATH``.
        layer: ``cls``, ``mean``, ``pooler``, ``embeds``, ``tokens``, ``hidden:N[:cls|:mean]``, a module
            path, or a list / ``{layer: weight}`` dict; VLMs: see :func:`fiberscope.subjects.vlm.load_vlm_subject`.
        trust_pickle: allow ``pytorch_model.bin`` (read with ``torch.load(weights_only=True)``).
        model: an already loaded model for this directory (skips loading the weights again).
        preprocess: use this instead of the ``AutoImageProcessor`` (needed when the directory has no
            ``preprocessor_config.json``).

    Example:
        >>> phi = load_hf_subject("facebook/dinov2-base", "mean")                    # doctest: +SKIP
    """
    spec = f"hf:{name}"
    directory = _resolve_dir(name, spec)
    config = load_config(directory, spec)
    if getattr(config, "model_type", "") in VLM_TYPES:
        return load_vlm_subject(directory, layer, spec=spec, trust_pickle=trust_pickle, model=model)
    net = model if model is not None else load_model(directory, spec, trust_pickle)
    net.eval().requires_grad_(False)
    fn, label = features_module(net, config, layer)
    return LibrarySubject(
        fn,
        input_range=(0.0, 1.0),
        preprocess=preprocess if preprocess is not None else from_hf_processor(load_processor(directory, spec)),
        name=spec,
        layer=label,
        info={"model_class": type(net).__name__, "model_type": getattr(config, "model_type", None)},
    )


def hf_layers(name: str, **_: Any) -> list[tuple[str, str]]:
    """Rows for ``fiberscope layers hf:ID`` (the config must be cached; the model is built without weights)."""
    spec = f"hf:{name}"
    tr = require("transformers", spec)
    directory = _resolve_dir(name, spec)
    config = load_config(directory, spec)
    if getattr(config, "model_type", "") in VLM_TYPES:
        return vlm_layers(config)

    with offline_hub():
        model = tr.AutoModel.from_config(config)
    vision = _vision(model)
    vc = getattr(config, "vision_config", None) or config
    n = int(getattr(vc, "num_hidden_layers", 0) or 0)
    rows = [
        ("embeds", "get_image_features: the projected image embedding"),
        ("cls", "CLS token of last_hidden_state"),
        ("mean", "mean patch token of last_hidden_state"),
        ("pooler", "pooler_output"),
        ("tokens", "the whole last_hidden_state"),
    ]
    if vision is model:
        rows = rows[1:] if _n_prefix(config) else [r for r in rows[1:] if r[0] != "cls"]
    default = _default_layer(model, config)
    rows = [(k, d + (" (default)" if k == default else "")) for k, d in rows]
    rows += [(f"hidden:{i}", "embeddings" if i == 0 else f"output of block {i}") for i in range(n + 1)]
    rows += [(m, type(mod).__name__) for m, mod in vision.named_modules() if m]
    return rows
