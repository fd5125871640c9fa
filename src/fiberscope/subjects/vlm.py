"""VLM vision towers as the paper audits them: Qwen2-VL's ``get_image_features``, mean-pooled.

Qwen2-VL's image processor resizes each image to a size whose sides are multiples of
``patch_size · merge_size`` within ``[min_pixels, max_pixels]`` (``smart_resize``, bicubic),
normalises it, and cuts it into flattened ``temporal_patch_size × patch × patch`` patches in 2×2
merge order. :class:`Qwen2VLImageFeatures` does all of that with tensor ops (reshape/permute, the
still image repeated over the temporal patch exactly as the processor broadcasts it), calls
``model.get_image_features(pixel_values, image_grid_thw)`` and pools the merged patch tokens per
image.

Loaded through ``hf:`` (the config's ``model_type`` is ``qwen2_vl`` or ``qwen2_5_vl``):

    >>> from fiberscope import load_subject
    >>> phi = load_subject("hf:Qwen/Qwen2-VL-2B-Instruct", dtype=torch.bfloat16)    # doctest: +SKIP

Layers: ``"mean"`` (default): the mean of the merged image tokens, ``[B, D]``; ``"tokens"``: all of
them, ``[B, N, D]``. The language model is not needed and is dropped after loading to save memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .hf_loading import load_model, load_processor
from .library import LayerSpec, LibrarySubject, layer_list
from .preprocess import Preprocess, _get

__all__ = ["Qwen2VLImageFeatures", "load_vlm_subject", "qwen2vl_preprocess", "vlm_layers"]


def qwen2vl_preprocess(processor: Any) -> Preprocess:
    """Resize (``smart_resize``) + rescale + normalise, from a Qwen2-VL image processor's attributes."""
    size = getattr(processor, "size", None)
    min_pixels = _get(size, "shortest_edge") or getattr(processor, "min_pixels", None) or 56 * 56
    max_pixels = _get(size, "longest_edge") or getattr(processor, "max_pixels", None) or 28 * 28 * 1280
    factor = int(processor.patch_size) * int(processor.merge_size)
    scale = (
        255.0 * float(getattr(processor, "rescale_factor", 1 / 255))
        if getattr(processor, "do_rescale", True)
        else 255.0
    )
    mean = std = None
    if getattr(processor, "do_normalize", True):
        mean, std = tuple(processor.image_mean), tuple(processor.image_std)
    resample = getattr(processor, "resample", None)
    return Preprocess(
        resize=("smart", factor, int(min_pixels), int(max_pixels)) if getattr(processor, "do_resize", True) else None,
        interpolation=resample if resample is not None else "bicubic",
        mean=mean,
        std=std,
        scale=scale if abs(scale - 1.0) > 1e-9 else 1.0,
        source=f"transformers:{type(processor).__name__}",
    )


def patchify(x: torch.Tensor, patch: int, merge: int, temporal: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, C, H, W]`` → (``pixel_values [B·gh·gw, C·T·p·p]``, ``image_grid_thw [B, 3]``) in the processor's layout."""
    b, c, h, w = x.shape
    if h % (patch * merge) or w % (patch * merge):
        raise ValueError(f"image size {h}×{w} is not a multiple of patch·merge = {patch * merge}")
    gh, gw = h // patch, w // patch
    p = x.reshape(b, c, gh // merge, merge, patch, gw // merge, merge, patch)
    p = p.permute(0, 2, 5, 3, 6, 1, 4, 7)  # B, gh/m, gw/m, m, m, C, p, p
    p = p.unsqueeze(6).expand(*p.shape[:6], temporal, patch, patch)  # a still image repeated over time
    pixel_values = p.reshape(b * gh * gw, c * temporal * patch * patch)
    grid = torch.tensor([[1, gh, gw]] * b, dtype=torch.long, device=x.device)
    return pixel_values, grid


class Qwen2VLImageFeatures(nn.Module):
    """``get_image_features`` of a Qwen2-VL model on preprocessed images ``[B, C, H, W]``, pooled per image.

    Args:
        model: a Qwen2-VL model with ``get_image_features`` (``Qwen2VLModel`` or ``...ForConditionalGeneration``).
        patch_size, merge_size, temporal_patch_size: from the image processor.
        pool: ``"mean"`` over the merged tokens, or ``"tokens"`` to keep them all.
    """

    def __init__(
        self, model: nn.Module, patch_size: int, merge_size: int, temporal_patch_size: int, pool: str = "mean"
    ):
        super().__init__()
        if pool not in ("mean", "tokens"):
            raise ValueError(f"VLM layer must be 'mean' or 'tokens', got {pool!r}")
        self.model = model
        self.patch, self.merge, self.temporal, self.pool = patch_size, merge_size, temporal_patch_size, pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pv, grid = patchify(x, self.patch, self.merge, self.temporal)
        m: Any = self.model
        out = m.get_image_features(pixel_values=pv, image_grid_thw=grid)
        if not isinstance(out, (torch.Tensor, tuple, list)):
            out = out.pooler_output  # transformers ≥ 5: BaseModelOutputWithPooling with per-image splits
        per_image = list(out) if isinstance(out, (tuple, list)) else list(out.split(out.shape[0] // x.shape[0]))
        tokens = torch.stack(per_image).float()  # [B, N, D]: every image in a batch has the same size
        return tokens.mean(dim=1) if self.pool == "mean" else tokens


def load_vlm_subject(
    directory: Path,
    layer: LayerSpec = None,
    *,
    spec: str,
    trust_pickle: bool = False,
    model: nn.Module | None = None,
) -> LibrarySubject:
    """A Qwen2-VL(-family) vision tower as a subject (called by ``hf:`` for ``qwen2_vl`` configs)."""
    parsed = layer_list(layer)
    names = parsed[0] if parsed is not None else ["mean"]
    if len(names) != 1 or str(names[0]) not in ("mean", "tokens"):
        raise ValueError(f"{spec}: VLM layers are 'mean' (default) or 'tokens', got {layer!r}")
    net = model if model is not None else load_model(directory, spec, trust_pickle)
    if not hasattr(net, "get_image_features"):
        raise ValueError(f"{spec}: {type(net).__name__} has no get_image_features()")
    if hasattr(net, "language_model") and isinstance(getattr(net, "language_model", None), nn.Module):
        net.language_model = None  # type: ignore[assignment]  # only the vision tower is used: free the LLM's memory
    net.eval().requires_grad_(False)
    processor = load_processor(directory, spec)
    fn = Qwen2VLImageFeatures(
        net, int(processor.patch_size), int(processor.merge_size), int(processor.temporal_patch_size), str(names[0])
    )
    return LibrarySubject(
        fn,
        input_range=(0.0, 1.0),
        preprocess=qwen2vl_preprocess(processor),
        name=spec,
        layer=str(names[0]),
        info={"model_class": type(net).__name__, "features": "get_image_features"},
    )


def vlm_layers(config: Any) -> list[tuple[str, str]]:
    """Rows for ``fiberscope layers`` on a VLM."""
    return [
        ("mean", "get_image_features, mean over the merged image tokens (default)"),
        ("tokens", "get_image_features, all merged image tokens"),
    ]
