"""Loading Hugging Face ``transformers`` models, configs and image processors offline, for the subject adapters.

Shared by :mod:`fiberscope.subjects.transformers` (vision towers) and :mod:`fiberscope.subjects.vlm`
(Qwen2-VL-family towers): safetensors unless pickles are trusted, the local cache only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..hub import check_weights, offline_hub
from .library import require

__all__ = ["load_config", "load_model", "load_processor"]


def load_config(directory: Path, spec: str) -> Any:
    tr = require("transformers", spec)
    with offline_hub():
        return tr.AutoConfig.from_pretrained(str(directory), local_files_only=True)


def load_model(directory: Path, spec: str, trust_pickle: bool, auto: str = "AutoModel") -> nn.Module:
    """``AutoModel.from_pretrained`` from safetensors (or trusted pickles), offline, frozen."""
    tr = require("transformers", spec)
    fmt = check_weights(directory, trust_pickle=trust_pickle, what=spec)
    with offline_hub():
        model = getattr(tr, auto).from_pretrained(
            str(directory), local_files_only=True, use_safetensors=fmt == "safetensors"
        )
    return model.eval().requires_grad_(False)


def load_processor(directory: Path, spec: str) -> Any:
    tr = require("transformers", spec)
    if not (directory / "preprocessor_config.json").is_file():
        raise FileNotFoundError(
            f"{spec}: {directory} has no preprocessor_config.json, so its preprocessing is unknown; pass "
            "preprocess= to load_subject (e.g. fiberscope.subjects.Preprocess(resize=..., mean=..., std=...))"
        )
    with offline_hub():
        return tr.AutoImageProcessor.from_pretrained(str(directory), local_files_only=True)
