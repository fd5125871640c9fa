"""Each library's image preprocessing, rebuilt as differentiable tensor ops from its own config.

timm (``create_transform``), torchvision (``weights.transforms()``), open_clip (``preprocess_val``) and
transformers (``AutoImageProcessor``) ship PIL/NumPy transforms: no gradient flows through them. A
subject must see what it saw in training *and* pass gradients to the image, so :class:`Preprocess`
re-does the same steps on tensors — grey↔RGB, resize with the library's filter and output-size
rule, centre crop (or pad) with its rounding, rescale and mean/std normalisation — reading only
the numbers from the library's config.

Resizing follows Pillow's resampling (the filter every one of these libraries applies to a PIL
image): bilinear and bicubic use ``F.interpolate(..., antialias=True)``, which computes Pillow's
filter weights (a = −0.5 cubic) when down- and up-sampling; box, Hamming and Lanczos use the same
separable weights written out as small matrices. Results are clamped to [0, 1] after filters with
negative lobes, as Pillow's 8-bit images are. The only remaining difference from the library is
Pillow's rounding to 8 bits between and after its passes (≤ about 1/255 per pixel).

Example:
    >>> import torch
    >>> from fiberscope.subjects.preprocess import Preprocess
    >>> pre = Preprocess(resize=("shortest", 256), crop=(224, 224), interpolation="bilinear",
    ...                  mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))   # torchvision ResNet
    >>> pre(torch.rand(2, 1, 300, 400, requires_grad=True)).shape                 # grey → RGB too
    torch.Size([2, 3, 224, 224])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "INTERPOLATIONS",
    "Preprocess",
    "center_crop",
    "from_hf_processor",
    "from_open_clip",
    "from_timm_config",
    "from_torchvision_weights",
    "pil_resize",
    "resized_size",
    "smart_resize",
    "to_channels",
]

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
# Pillow's Image.Resampling numbers (transformers stores these in its processor configs).
_PIL_CODES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _interp_name(value: Any) -> str:
    """Normalise an interpolation given as a string, a Pillow code or a torchvision InterpolationMode."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value not in _PIL_CODES:
            raise ValueError(f"unknown Pillow resampling code {value}; expected one of {sorted(_PIL_CODES)}")
        return _PIL_CODES[value]
    name = str(getattr(value, "value", value)).lower()
    name = {"antialias": "lanczos", "cubic": "bicubic", "linear": "bilinear", "nearest-exact": "nearest"}.get(
        name, name
    )
    if name == "random":  # timm/open_clip train-time option; inference uses bicubic
        name = "bicubic"
    if name not in INTERPOLATIONS:
        raise ValueError(f"interpolation {value!r} is not supported; expected one of {INTERPOLATIONS}")
    return name


# ---------------------------------------------------------------------------------------------------------------
# tensor ops


def _filter(name: str) -> tuple[float, Any]:
    if name == "box":
        return 0.5, lambda x: ((x > -0.5) & (x <= 0.5)).to(x.dtype)
    if name == "hamming":

        def hamming(x: torch.Tensor) -> torch.Tensor:
            ax = x.abs()
            y = ax * math.pi
            w = torch.where(
                ax == 0, torch.ones_like(x), torch.sin(y) / y.clamp_min(1e-30) * (0.54 + 0.46 * torch.cos(y))
            )
            return torch.where(ax >= 1, torch.zeros_like(x), w)

        return 1.0, hamming
    if name == "lanczos":

        def sinc(x: torch.Tensor) -> torch.Tensor:
            y = x * math.pi
            return torch.where(x == 0, torch.ones_like(x), torch.sin(y) / torch.where(x == 0, torch.ones_like(y), y))

        return 3.0, lambda x: torch.where((x >= -3) & (x < 3), sinc(x) * sinc(x / 3), torch.zeros_like(x))
    raise ValueError(name)  # pragma: no cover


@lru_cache(maxsize=64)
def _weights(n_in: int, n_out: int, name: str) -> torch.Tensor:
    """Pillow's separable resampling weights ``[n_out, n_in]`` (float64, rows sum to 1)."""
    support, f = _filter(name)
    scale = n_in / n_out
    fscale = max(scale, 1.0)
    reach = support * fscale
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo, hi = max(int(centre - reach + 0.5), 0), min(int(centre + reach + 0.5), n_in)
        xs = torch.arange(lo, hi, dtype=torch.float64)
        k = f((xs - centre + 0.5) / fscale)
        total = float(k.sum())
        w[i, lo:hi] = k / total if total != 0 else k
    return w


def pil_resize(
    x: torch.Tensor, size: Sequence[int], interpolation: str = "bilinear", clamp: bool = True
) -> torch.Tensor:
    """Resize ``[B, C, H, W]`` to ``size = (h, w)`` as Pillow does, differentiably.

    Args:
        x: images, any float dtype, values nominally in [0, 1].
        size: output ``(height, width)``.
        interpolation: one of :data:`INTERPOLATIONS` (or a Pillow code / torchvision mode).
        clamp: clip to [0, 1] after filters with negative lobes (bicubic, Lanczos), as Pillow's 8-bit
            images are.
    """
    name = _interp_name(interpolation)
    h, w = int(size[0]), int(size[1])
    if (h, w) == tuple(x.shape[-2:]):
        return x
    if name == "nearest":
        return F.interpolate(x, size=(h, w), mode="nearest-exact")
    clip = clamp and name in ("bicubic", "lanczos")
    # Pillow resamples horizontally, stores the 8-bit (clipped) intermediate, then vertically.
    if w != x.shape[-1]:
        x = _resample_axis(x, w, name, axis=-1)
        if clip:
            x = x.clamp(0.0, 1.0)
    if h != x.shape[-2]:
        x = _resample_axis(x, h, name, axis=-2)
        if clip:
            x = x.clamp(0.0, 1.0)
    return x


def _resample_axis(x: torch.Tensor, n: int, name: str, axis: int) -> torch.Tensor:
    size = (x.shape[-2], n) if axis == -1 else (n, x.shape[-1])
    if name in ("bilinear", "bicubic"):
        return F.interpolate(x, size=size, mode=name, antialias=True, align_corners=False)
    wm = _weights(x.shape[axis], n, name).to(x.device, x.dtype)
    return torch.matmul(x, wm.T) if axis == -1 else torch.matmul(wm, x)


def center_crop(
    x: torch.Tensor,
    size: Sequence[int],
    rounding: str = "round",
    fill: Sequence[float] | float = 0.0,
    pad: str = "floor",
) -> torch.Tensor:
    """Centre-crop ``[..., H, W]`` to ``size``, padding first when the image is smaller.

    Args:
        size: ``(height, width)``.
        rounding: offset of the crop: ``"round"`` is torchvision's ``int(round((H − h) / 2))`` (also
            used by timm and open_clip), ``"floor"`` is transformers' ``(H − h) // 2``.
        fill: padding value per channel (in the [0, 1] pixel scale).
        pad: where the odd pixel of padding goes: ``"floor"`` (torchvision: less on the top/left) or
            ``"ceil"`` (transformers: more on the top/left).
    """
    h, w = int(size[0]), int(size[1])
    H, W = x.shape[-2:]
    if h > H or w > W:
        dh, dw = max(h - H, 0), max(w - W, 0)
        top = math.ceil(dh / 2) if pad == "ceil" else dh // 2
        left = math.ceil(dw / 2) if pad == "ceil" else dw // 2
        x = _pad(x, (left, dw - left, top, dh - top), fill)
        H, W = x.shape[-2:]
    if rounding == "round":
        top, left = round((H - h) / 2.0), round((W - w) / 2.0)  # Python's round, as torchvision
    else:
        top, left = (H - h) // 2, (W - w) // 2
    return x[..., top : top + h, left : left + w]


def _pad(x: torch.Tensor, ltrb: tuple[int, int, int, int], fill: Sequence[float] | float) -> torch.Tensor:
    vals = [float(fill)] * x.shape[-3] if isinstance(fill, (int, float)) else [float(v) for v in fill]
    if len(set(vals)) == 1:
        return F.pad(x, ltrb, value=vals[0])
    return torch.cat([F.pad(x[..., c : c + 1, :, :], ltrb, value=vals[c]) for c in range(x.shape[-3])], dim=-3)


def to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey → RGB by repetition, RGB → grey by Pillow's ``convert("L")`` luma (ITU-R 601-2)."""
    c = x.shape[-3]
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return x.expand(*x.shape[:-3], 3, *x.shape[-2:])
    if c == 3 and channels == 1:
        r, g, b = x.unbind(-3)
        return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(-3)
    if c == 4 and channels == 3:
        return x[..., :3, :, :]
    raise ValueError(f"cannot convert {c}-channel images to {channels} channels (only grey ↔ RGB)")


def resized_size(hw: tuple[int, int], rule: tuple[Any, ...]) -> tuple[int, int]:
    """Output ``(h, w)`` of a resize rule for an input of size ``hw``.

    Rules:
        ``("shortest", s)`` / ``("shortest", s, max_size)``: short side to ``s``, long side
        ``int(s · long / short)`` (torchvision ``Resize(int)``, transformers ``shortest_edge``);
        ``("keep_ratio", (h, w), longest)``: timm/open_clip ``ResizeKeepRatio`` (``round``);
        ``("exact", (h, w))``; ``("smart", factor, min_pixels, max_pixels)``: Qwen2-VL.
    """
    H, W = hw
    kind = rule[0]
    if kind == "exact":
        return int(rule[1][0]), int(rule[1][1])
    if kind == "shortest":
        s = int(rule[1])
        max_size = rule[2] if len(rule) > 2 else None
        short, long = (W, H) if W <= H else (H, W)
        new_short, new_long = s, int(s * long / short)
        if max_size is not None and new_long > max_size:
            new_short, new_long = int(max_size * new_short / new_long), int(max_size)
        return (new_long, new_short) if W <= H else (new_short, new_long)
    if kind == "keep_ratio":
        th, tw = rule[1]
        longest = float(rule[2]) if len(rule) > 2 else 0.0
        rh, rw = H / th, W / tw
        ratio = max(rh, rw) * longest + min(rh, rw) * (1.0 - longest)
        return round(H / ratio), round(W / ratio)
    if kind == "smart":
        return smart_resize(H, W, int(rule[1]), int(rule[2]), int(rule[3]))
    raise ValueError(f"unknown resize rule {rule!r}")


def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280
):
    """Qwen2-VL's size rule: both sides multiples of ``factor``, area within [min_pixels, max_pixels]."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.0f} is above Qwen2-VL's limit of 200")
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


# ---------------------------------------------------------------------------------------------------------------
# the module


class Preprocess(nn.Module):
    """Images in [0, 1] ``[B, C, H, W]`` → the tensor a library model expects, differentiably.

    Steps, each optional: channel conversion, resize, centre crop (with padding), rescale, normalise.

    Args:
        resize: a rule for :func:`resized_size`, e.g. ``("shortest", 256)``; None keeps the size.
        crop: centre-crop size ``(h, w)``; None for no crop.
        interpolation: resize filter (:data:`INTERPOLATIONS`, a Pillow code, or a torchvision mode).
        mean, std: per-channel normalisation applied after ``scale`` (None: no normalisation).
        channels: channel count the model expects (grey ↔ RGB conversion).
        scale: multiply pixel values by this before normalising (``255 · rescale_factor``).
        crop_rounding, crop_pad: see :func:`center_crop`.
        fill: padding value per channel in the [0, 1] pixel scale (timm's border mode pads with the mean).
        clamp: clip after bicubic/Lanczos resizing, as Pillow's 8-bit images are.
        source: where the numbers came from (shown in ``describe()`` and reports).
    """

    def __init__(
        self,
        *,
        resize: tuple[Any, ...] | None = None,
        crop: Sequence[int] | None = None,
        interpolation: Any = "bilinear",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        channels: int = 3,
        scale: float = 1.0,
        crop_rounding: str = "round",
        crop_pad: str = "floor",
        fill: Sequence[float] | float = 0.0,
        clamp: bool = True,
        source: str = "custom",
    ):
        super().__init__()
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        self.resize_rule = tuple(resize) if resize is not None else None
        if self.resize_rule is not None:
            resized_size((64, 48), self.resize_rule)  # validate early
        self.crop = (int(crop[0]), int(crop[1])) if crop is not None else None
        self.interpolation = _interp_name(interpolation)
        self.channels = int(channels)
        self.scale = float(scale)
        self.crop_rounding = crop_rounding
        self.crop_pad = crop_pad
        self.fill = fill if isinstance(fill, (int, float)) else tuple(float(v) for v in fill)
        self.clamp = clamp
        self.source = source
        self.normalize = mean is not None
        # plain floats, not buffers: ``subject.to(torch.bfloat16)`` must not round the constants
        self._mean = tuple(float(v) for v in (mean or [0.0]))
        self._std = tuple(float(v) for v in (std or [1.0]))
        if self.normalize and (len(self._mean) not in (1, self.channels) or len(self._std) not in (1, self.channels)):
            raise ValueError(f"mean/std have {len(self._mean)}/{len(self._std)} values for {self.channels} channels")
        if any(v == 0 for v in self._std):
            raise ValueError("std must be non-zero")

    @property
    def mean(self) -> torch.Tensor:
        """Per-channel mean ``[C, 1, 1]`` (float32)."""
        return torch.tensor(self._mean, dtype=torch.float32).view(-1, 1, 1)

    @property
    def std(self) -> torch.Tensor:
        """Per-channel standard deviation ``[C, 1, 1]`` (float32)."""
        return torch.tensor(self._std, dtype=torch.float32).view(-1, 1, 1)

    def output_size(self, hw: tuple[int, int]) -> tuple[int, int]:
        """Spatial size of the output for an input of size ``hw``."""
        if self.crop is not None:
            return self.crop
        return resized_size(hw, self.resize_rule) if self.resize_rule is not None else hw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"preprocessing expects images [B, C, H, W], got shape {tuple(x.shape)}")
        x = to_channels(x, self.channels)
        if self.resize_rule is not None:
            size = resized_size((x.shape[-2], x.shape[-1]), self.resize_rule)
            x = pil_resize(x, size, self.interpolation, clamp=self.clamp)
        if self.crop is not None:
            x = center_crop(x, self.crop, self.crop_rounding, self.fill, self.crop_pad)
        if self.scale != 1.0:
            x = x * self.scale
        if self.normalize:
            x = (x - self.mean.to(x.device, x.dtype)) / self.std.to(x.device, x.dtype)
        return x

    def config(self) -> dict[str, Any]:
        """The numbers in use (recorded with every result)."""
        return {
            "source": self.source,
            "resize": [list(v) if isinstance(v, tuple) else v for v in self.resize_rule] if self.resize_rule else None,
            "interpolation": self.interpolation,
            "crop": list(self.crop) if self.crop else None,
            "channels": self.channels,
            "scale": self.scale,
            "mean": list(self._mean) if self.normalize else None,
            "std": list(self._std) if self.normalize else None,
        }

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items() if v is not None)


# ---------------------------------------------------------------------------------------------------------------
# builders, one per library: each reads the library's own config and nothing else


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (int, float)):
        return int(v), int(v)
    v = list(v)
    return (int(v[-2]), int(v[-1])) if len(v) >= 2 else (int(v[0]), int(v[0]))


def from_timm_config(cfg: dict[str, Any]) -> Preprocess:
    """From ``timm.data.resolve_model_data_config(model)`` (what ``create_transform(**cfg)`` does at eval).

    Follows ``transforms_imagenet_eval``: ``scale = floor(size / crop_pct)``; crop mode ``center``
    resizes the short side (``Resize(int)``, or ``ResizeKeepRatio`` for non-square inputs) and
    centre-crops; ``squash`` resizes both sides and crops; ``border`` fits the long side and pads
    with the mean colour.
    """
    c, h, w = cfg.get("input_size", (3, 224, 224))
    crop_pct = cfg.get("crop_pct") or 0.875
    mode = cfg.get("crop_mode") or "center"
    scale_hw = (math.floor(h / crop_pct), math.floor(w / crop_pct))
    mean, std = tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    interp = cfg.get("interpolation", "bilinear")
    fill: Any = 0.0
    if mode == "squash":
        rule: tuple[Any, ...] = ("exact", scale_hw)
    elif mode == "border":
        rule = ("keep_ratio", scale_hw, 1.0)
        fill = tuple(round(255 * v) / 255 for v in mean)
    elif scale_hw[0] == scale_hw[1]:
        rule = ("shortest", scale_hw[0])
    else:
        rule = ("keep_ratio", scale_hw, 0.0)
    return Preprocess(
        resize=rule, crop=(h, w), interpolation=interp, mean=mean, std=std, channels=int(c), fill=fill, source="timm"
    )


def from_torchvision_weights(weights: Any) -> Preprocess:
    """From a torchvision weights enum (``ResNet50_Weights.DEFAULT``): its ``ImageClassification`` preset."""
    t = weights.transforms()
    needed = ("resize_size", "crop_size", "mean", "std", "interpolation")
    if not all(hasattr(t, k) for k in needed):
        raise ValueError(
            f"torchvision weights {weights} use {type(t).__name__}, not an image-classification preset; "
            "pass preprocess= explicitly"
        )
    crop = list(t.crop_size)
    return Preprocess(
        resize=("shortest", int(t.resize_size[0])),
        crop=(int(crop[0]), int(crop[-1])),
        interpolation=t.interpolation,
        mean=t.mean,
        std=t.std,
        source=f"torchvision:{weights}",
    )


def from_open_clip(cfg: dict[str, Any]) -> Preprocess:
    """From ``open_clip.get_model_preprocess_cfg(model)`` (what ``image_transform(..., is_train=False)`` does)."""
    size = _pair(cfg.get("size", 224))
    mode = cfg.get("resize_mode") or "shortest"
    interp = cfg.get("interpolation") or "bicubic"
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is None or std is None:
        from_const = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
        mean, std = mean or from_const[0], std or from_const[1]
    mean = tuple(mean) if isinstance(mean, (list, tuple)) else (float(mean),) * 3
    std = tuple(std) if isinstance(std, (list, tuple)) else (float(std),) * 3
    crop: tuple[int, int] | None = size
    fill = float(cfg.get("fill_color", 0) or 0) / 255.0
    if mode == "squash":
        rule: tuple[Any, ...] = ("exact", size)
        crop = None
    elif mode == "longest":
        rule = ("keep_ratio", size, 1.0)
    elif size[0] == size[1]:
        rule = ("shortest", size[0])
    else:  # open_clip builds ResizeKeepRatio(size) here, with its default (bicubic) filter
        rule, interp = ("keep_ratio", size, 0.0), "bicubic"
    return Preprocess(resize=rule, crop=crop, interpolation=interp, mean=mean, std=std, fill=fill, source="open_clip")


def _get(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def from_hf_processor(processor: Any) -> Preprocess:
    """From a transformers image processor (``AutoImageProcessor.from_pretrained(...)``): its attributes.

    Reads ``do_resize``/``size``/``resample``, ``do_center_crop``/``crop_size``, ``do_rescale``/
    ``rescale_factor``, ``do_normalize``/``image_mean``/``image_std`` as the processor's own
    ``preprocess`` would use them (transformers crops at ``(H − h) // 2``).
    """
    rule: tuple[Any, ...] | None = None
    if getattr(processor, "do_resize", True):
        size = getattr(processor, "size", None)
        if isinstance(size, (int, float)):
            size = {"shortest_edge": int(size)}
        se, le = _get(size, "shortest_edge"), _get(size, "longest_edge")
        h, w = _get(size, "height"), _get(size, "width")
        if h and w:
            rule = ("exact", (int(h), int(w)))
        elif se and not le:
            rule = ("shortest", int(se))
        elif size is not None:
            raise ValueError(
                f"{type(processor).__name__} has size={dict(size) if hasattr(size, 'keys') else size}: only "
                "'shortest_edge' or 'height'/'width' sizes are rebuilt; pass preprocess= explicitly"
            )
    crop = None
    if getattr(processor, "do_center_crop", False):
        cs = getattr(processor, "crop_size", None)
        if isinstance(cs, (int, float)):
            crop = (int(cs), int(cs))
        else:
            crop = (int(_get(cs, "height")), int(_get(cs, "width")))
    scale = (
        255.0 * float(getattr(processor, "rescale_factor", 1 / 255))
        if getattr(processor, "do_rescale", True)
        else 255.0
    )
    mean = std = None
    if getattr(processor, "do_normalize", True):
        mean, std = processor.image_mean, processor.image_std
        mean = tuple(mean) if isinstance(mean, (list, tuple)) else (float(mean),) * 3
        std = tuple(std) if isinstance(std, (list, tuple)) else (float(std),) * 3
    return Preprocess(
        resize=rule,
        crop=crop,
        interpolation=_resample if (_resample := getattr(processor, "resample", None)) is not None else "bilinear",
        mean=mean,
        std=std,
        scale=scale if abs(scale - 1.0) > 1e-9 else 1.0,
        crop_rounding="floor",
        crop_pad="ceil",
        source=f"transformers:{type(processor).__name__}",
    )
