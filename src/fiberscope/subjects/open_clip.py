"""``open_clip:NAME`` subjects: CLIP-family image towers (OpenCLIP, BiomedCLIP, SigLIP, ...).

Names: ``open_clip:ViT-B-32/laion2b_s34b_b79k`` (a built-in architecture and its pretrained tag, or
``pretrained="..."``), ``open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``
(a hub repo already in the local cache) or ``open_clip:local-dir:/path`` (``open_clip_config.json`` +
weights). ``pretrained=False`` builds random weights (tests, architecture listings).

Layers: None / ``"embed"``: ``model.encode_image(x)`` (the image embedding, unnormalised);
``"embed_norm"``: the L2-normalised embedding; a module path inside ``model.visual``
(``"transformer.resblocks.6"``, or ``"trunk.blocks.6"`` for timm towers such as BiomedCLIP's); an
int: block ``i`` of a timm tower through ``trunk.forward_intermediates``. Preprocessing comes from
``open_clip.get_model_preprocess_cfg(model)``.

BiomedCLIP builds its text tower from a transformers config (PubMedBERT), which must be cached as
well; its weights ship as a pickle (``open_clip_pytorch_model.bin``), so it needs ``trust_pickle=True``
(read with ``torch.load(weights_only=True)``).

Example:
    >>> from fiberscope import load_subject
    >>> phi = load_subject("open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
    ...                    trust_pickle=True)                                          # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelNotAvailableError
from ..hub import check_weights, offline_hub, resolve_hub_dir
from .hooks import LayerExtractor
from .library import LayerSpec, LibrarySubject, Multi, as_index, layer_list, local_or_hub, require
from .preprocess import from_open_clip

__all__ = ["OpenClipImage", "build_open_clip_model", "load_open_clip_subject", "open_clip_layers"]

_EMBED = ("embed", "embed_norm", "logits", "output")


def _text_hf_name(cfg: dict[str, Any]) -> str | None:
    model_cfg = cfg.get("model_cfg", cfg)
    return (model_cfg.get("text_cfg") or {}).get("hf_model_name")


def build_open_clip_model(
    name: str,
    *,
    pretrained: str | bool | None = None,
    trust_pickle: bool = False,
    model_kwargs: dict[str, Any] | None = None,
    spec: str | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """``(model, info)`` for an open_clip spec, offline (see the module docstring for names)."""
    spec = spec or f"open_clip:{name}"
    oc = require("open_clip", spec)
    kw: dict[str, Any] = {"device": "cpu", "precision": "fp32", "pretrained_text": False, **(model_kwargs or {})}
    info: dict[str, Any] = {}
    hf_text: str | None = None
    if name.startswith(("hf-hub:", "local-dir:")):
        directory = local_or_hub(name, "subject")
        assert directory is not None
        cfg_file = directory / "open_clip_config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(
                f"{spec}: {directory} has no open_clip_config.json (not an open_clip model directory)"
            )
        hf_text = _text_hf_name(json.loads(cfg_file.read_text()))
        load = pretrained is not False
        if load:
            info["weights_format"] = check_weights(directory, trust_pickle=trust_pickle, what=spec)
        model_name = f"local-dir:{directory}"
        args: dict[str, Any] = {"load_weights": load}
    else:
        model_name, _, tag = name.partition("/")
        if model_name not in oc.list_models():
            import difflib

            near = difflib.get_close_matches(model_name, oc.list_models(), n=5)
            raise ValueError(
                f"{spec!r}: open_clip has no model config {model_name!r}" + (f"; did you mean {near}?" if near else "")
            )
        hf_text = _text_hf_name(oc.get_model_config(model_name) or {})
        if isinstance(pretrained, str) and tag and pretrained != tag:
            raise ValueError(f"{spec!r} names pretrained tag {tag!r} and pretrained={pretrained!r} was given; pick one")
        choice = tag or (pretrained if isinstance(pretrained, str) else None)
        if pretrained is False:
            args = {}
        elif choice is None:
            raise ValueError(
                f"{spec!r} names an architecture without weights: add a pretrained tag "
                f"({spec}/TAG; open_clip.list_pretrained_tags_by_model({model_name!r}) lists them), "
                "or pass pretrained=False for random weights"
            )
        elif os.path.isfile(choice):
            args = {"pretrained": choice}
        else:
            args = _tag_weights(oc, model_name, choice, spec, trust_pickle)
            info["pretrained_tag"] = choice
    try:
        with offline_hub():
            model = oc.create_model(model_name, **args, **kw)
    except (OSError, RuntimeError) as e:
        if hf_text and ("offline" in str(e).lower() or "cache" in str(e).lower() or "connect" in str(e).lower()):
            raise ModelNotAvailableError(
                f"subject {spec!r}: its text tower is built from the transformers config of {hf_text!r}, which is not "
                f"cached; run `hf download {hf_text} config.json` on a machine that reaches the hub"
            ) from None
        raise
    return model, info


def _tag_weights(oc: Any, model_name: str, tag: str, spec: str, trust_pickle: bool) -> dict[str, Any]:
    """Arguments for ``create_model`` that load a pretrained tag's weights from the local cache only."""
    cfg = oc.get_pretrained_cfg(model_name, tag)
    if not cfg:
        raise ValueError(
            f"{spec!r}: unknown pretrained tag {tag!r} for {model_name}; available: "
            f"{oc.list_pretrained_tags_by_model(model_name)}"
        )
    path: Path | None = None
    if cfg.get("hf_hub"):
        hub = str(cfg["hf_hub"])  # 'org/repo/' (default file) or 'org/repo/file.bin'
        repo, filename = (hub.rstrip("/"), "") if hub.endswith("/") else os.path.split(hub)
        directory = resolve_hub_dir(repo, "subject")
        fmt = check_weights(directory, trust_pickle=trust_pickle, what=spec)
        candidates = sorted(directory.glob("*.safetensors")) if fmt == "safetensors" else []
        candidates += [directory / (filename or "open_clip_pytorch_model.bin")] if fmt == "pickle" else []
        path = next((c for c in candidates if c.is_file()), None)
    elif cfg.get("url"):
        cached = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(cfg["url"])
        if cached.is_file():
            if not trust_pickle:
                raise ValueError(
                    f"{cached} is a pickled checkpoint; fiberscope does not unpickle .bin/.pt files unless you pass "
                    "trust_pickle=True (it is then read with torch.load(weights_only=True))"
                )
            path = cached
    if path is None:
        raise ModelNotAvailableError(
            f"subject {spec!r}: weights for tag {tag!r} are not cached and fiberscope never downloads: run "
            f"`hf download {cfg.get('hf_hub', '').rstrip('/')}` (or fetch {cfg.get('url')}) on a machine "
            "that reaches the hub"
        )
    pre = {k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode", "size") if k in cfg}
    return {
        "pretrained": str(path),
        "force_preprocess_cfg": pre or None,
        "force_quick_gelu": bool(cfg.get("quick_gelu")),
    }


class OpenClipImage(nn.Module):
    """``encode_image`` (optionally L2-normalised) of an open_clip model; float32 features."""

    def __init__(self, model: nn.Module, normalize: bool = False):
        super().__init__()
        self.model = model
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m: Any = self.model
        p = next(m.visual.parameters())
        out = m.encode_image(x.to(p.dtype)).float()
        return F.normalize(out, dim=-1) if self.normalize else out


class _Visual(nn.Module):
    """The image tower alone, so module paths read as in ``model.visual``; inputs cast to its dtype."""

    def __init__(self, visual: nn.Module, layer: str | int):
        super().__init__()
        idx = as_index(layer)
        self.visual = visual
        if idx is not None:
            trunk = getattr(visual, "trunk", None)
            if trunk is None or not hasattr(trunk, "forward_intermediates"):
                raise ValueError(
                    f"layer {layer!r}: block indices need a timm image tower (model.visual.trunk); "
                    f"{type(visual).__name__} has none: use a module path (see `fiberscope layers`)"
                )
            from .timm import TimmFeatures

            self.inner: nn.Module = TimmFeatures(trunk, idx)
        else:
            mods = dict(visual.named_modules())
            if str(layer) not in mods:
                import difflib

                near = difflib.get_close_matches(str(layer), [m for m in mods if m], n=6, cutoff=0.5)
                raise ValueError(
                    f"layer {layer!r} is not 'embed', 'embed_norm', a block index or a module path of model.visual "
                    f"({type(visual).__name__})"
                    + (f"; similar: {near}" if near else "")
                    + "; list them with `fiberscope layers`"
                )
            self.inner = LayerExtractor(visual, [str(layer)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = next(self.visual.parameters())
        return self.inner(x.to(p.dtype)).float()


def load_open_clip_subject(
    name: str,
    layer: LayerSpec = None,
    *,
    pretrained: str | bool | None = None,
    trust_pickle: bool = False,
    model_kwargs: dict[str, Any] | None = None,
) -> LibrarySubject:
    """Load ``open_clip:NAME`` as a subject (names, layers and weights: see the module docstring).

    Args:
        name: ``"ViT-B-32/laion2b_s34b_b79k"``, ``"hf-hub:org/repo"`` or ``"local-dir:/path"``.
        layer: ``None``/``"embed"``, ``"embed_norm"``, a module path in ``model.visual``, a timm-tower
            block index, or a list / ``{layer: weight}`` dict of them.
        pretrained: a tag or a weights file for built-in names, or False for random weights.
        trust_pickle: allow ``.bin``/``.pt`` weights (read with ``torch.load(weights_only=True)``).
        model_kwargs: passed to ``open_clip.create_model``.
    """
    spec = f"open_clip:{name}"
    oc = require("open_clip", spec)
    model, info = build_open_clip_model(
        name, pretrained=pretrained, trust_pickle=trust_pickle, model_kwargs=model_kwargs, spec=spec
    )
    model.eval().requires_grad_(False)
    pre = from_open_clip(oc.get_model_preprocess_cfg(model))
    parsed = layer_list(layer)
    names, weights = parsed if parsed is not None else (["embed"], [1.0])
    parts: list[nn.Module] = []
    for n in names:
        if str(n) in _EMBED:
            parts.append(OpenClipImage(model, normalize=str(n) == "embed_norm"))
        else:
            parts.append(_Visual(model.visual, n))  # type: ignore[arg-type]
    fn = parts[0] if len(parts) == 1 and weights == [1.0] else Multi(parts, weights)
    label = (
        "embed"
        if layer is None
        else (layer if isinstance(layer, (str, int)) else (dict(layer) if isinstance(layer, dict) else list(names)))
    )
    return LibrarySubject(
        fn,
        input_range=(0.0, 1.0),
        preprocess=pre,
        name=spec,
        layer=label,
        info={"pretrained": pretrained is not False, **info},
    )


def open_clip_layers(name: str, model_kwargs: dict[str, Any] | None = None, **_: Any) -> list[tuple[str, str]]:
    """Rows for ``fiberscope layers open_clip:NAME`` (random weights: the architecture is enough)."""
    model, _info = build_open_clip_model(name, pretrained=False, model_kwargs=model_kwargs)
    visual: Any = model.visual
    rows = [("embed", "encode_image(x), the image embedding (default)"), ("embed_norm", "the L2-normalised embedding")]
    trunk = getattr(visual, "trunk", None)
    info = getattr(trunk, "feature_info", None)
    if trunk is not None and hasattr(trunk, "forward_intermediates") and info is not None:
        for i, e in enumerate(list(info)):
            rows.append((str(i), f"timm tower block: trunk.{e.get('module')} ({e.get('num_chs')} ch)"))
    rows += [(n, type(m).__name__) for n, m in visual.named_modules() if n]
    return rows
