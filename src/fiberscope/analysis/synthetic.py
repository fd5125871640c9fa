"""Synthetic "fibers": copies of a query under one known transformation, to validate the probes.

The copies are made with implementations independent of the probes' own fits (Pillow's rotate,
resize, blur and enhancers, integer shifts, pixel shuffles), and every change is clearly visible:

============== ===================================================================================
kind           each copy
============== ===================================================================================
brightness     Pillow ``ImageEnhance.Brightness``, factor 0.3–0.8
contrast       Pillow ``ImageEnhance.Contrast``, factor 0.3–0.7
colour         colour images only: alternately a random affine recolouring (each channel mapped by a
               random 3×3 mixing and offset, as the colour-MNIST recolourings are) and an HSV hue
               rotation of 60–180° (Pillow's HSV conversion)
translation    an integer shift of 2–4 pixels horizontally (alternating sign) and −3…3 vertically
rotation       Pillow ``rotate`` by ±(15–40)° (bilinear)
scale          Pillow ``resize`` by 0.7–0.85 or 1.15–1.3 about the centre (bilinear)
flip           alternately left-right and top-bottom mirrored
blur           Pillow ``GaussianBlur`` with radius 0.8–1.6
fine_detail    the pixels of every 4×4 block shuffled (the 7×7 thumbnail is unchanged)
background     every pixel outside the (dilated) foreground replaced: uniform noise (grey images) or
               a random colour (colour images)
============== ===================================================================================

Example:
    >>> import torch
    >>> from fiberscope.analysis.synthetic import synthetic_fiber
    >>> q = -torch.ones(1, 1, 28, 28); q[..., 6:22, 12:16] = 1.0
    >>> synthetic_fiber(q, "flip", n=4).shape
    torch.Size([4, 1, 28, 28])
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageFilter

__all__ = ["KINDS", "synthetic_fiber"]

KINDS = (
    "brightness",
    "contrast",
    "colour",
    "translation",
    "rotation",
    "scale",
    "flip",
    "blur",
    "fine_detail",
    "background",
)


def _pil(x01: torch.Tensor) -> Image.Image:
    arr = (x01.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr[:, :, 0], "L") if arr.shape[2] == 1 else Image.fromarray(arr, "RGB")


def _tensor(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img, dtype=np.float32) / 255.0
    t = torch.from_numpy(arr.copy())
    return t[None] if t.dim() == 2 else t.permute(2, 0, 1)


def _fill(x01: torch.Tensor) -> int | tuple[int, ...]:
    from .transforms import border_colour

    c = [round(255 * float(v)) for v in border_colour(x01[None])]
    return c[0] if len(c) == 1 else tuple(c)


def _one(x: torch.Tensor, kind: str, i: int, g: torch.Generator) -> torch.Tensor:
    """One copy of ``x`` ``[C, H, W]`` in [0, 1]."""

    def r(a: float, b: float) -> float:
        return float(a + (b - a) * torch.rand(1, generator=g))

    sign = 1 if i % 2 else -1
    c, h, w = x.shape
    img = _pil(x)
    fill = _fill(x)
    if kind == "brightness":
        return _tensor(ImageEnhance.Brightness(img).enhance(r(0.3, 0.8)))
    if kind == "contrast":
        return _tensor(ImageEnhance.Contrast(img).enhance(r(0.3, 0.7)))
    if kind == "colour":
        if c != 3:
            raise ValueError("kind='colour' needs colour images [C=3]")
        if i % 2:
            mix = torch.eye(3) * r(0.3, 0.8) + 0.4 * (torch.rand(3, 3, generator=g) - 0.5)
            off = 0.5 * torch.rand(3, generator=g)
            return (torch.einsum("ij,jhw->ihw", mix, x) + off.view(3, 1, 1)).clamp(0, 1)
        hsv = np.asarray(img.convert("HSV")).copy()
        hsv[:, :, 0] = (hsv[:, :, 0].astype(np.int32) + int(r(60, 180) * 256 / 360)) % 256
        return _tensor(Image.fromarray(hsv, "HSV").convert("RGB"))
    if kind == "translation":
        dx, dy = sign * int(r(2, 4.999)), int(r(-3, 3.999))
        out = torch.empty_like(x)
        out[:] = torch.tensor(fill if isinstance(fill, tuple) else (fill,), dtype=x.dtype).view(-1, 1, 1) / 255
        ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
        xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
        out[:, yd, xd] = x[:, ys, xs]
        return out
    if kind == "rotation":
        return _tensor(img.rotate(sign * r(15, 40), resample=Image.Resampling.BILINEAR, fillcolor=fill))
    if kind == "scale":
        s = r(0.7, 0.85) if sign > 0 else r(1.15, 1.3)
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        small = img.resize((nw, nh), Image.Resampling.BILINEAR)
        canvas = Image.new(img.mode, (w, h), fill)
        canvas.paste(small, ((w - nw) // 2, (h - nh) // 2))
        return _tensor(canvas)
    if kind == "flip":
        return x.flip(2) if i % 2 else x.flip(1)
    if kind == "blur":
        return _tensor(img.filter(ImageFilter.GaussianBlur(radius=r(0.8, 1.6))))
    if kind == "fine_detail":
        b = 4
        hh, ww = h - h % b, w - w % b
        blocks = (
            x[:, :hh, :ww].reshape(c, hh // b, b, ww // b, b).permute(0, 1, 3, 2, 4).reshape(c, hh // b, ww // b, -1)
        )
        perm = torch.argsort(torch.rand(hh // b, ww // b, b * b, generator=g), -1)
        blocks = torch.gather(blocks, 3, perm[None].expand(c, -1, -1, -1))
        out = x.clone()
        out[:, :hh, :ww] = blocks.reshape(c, hh // b, ww // b, b, b).permute(0, 1, 3, 2, 4).reshape(c, hh, ww)
        return out
    if kind == "background":
        from .transforms import border_colour, foreground_mask

        fg = foreground_mask(x[None], border_colour(x[None]), threshold=0.1, dilate=2)
        noise = torch.rand(x.shape, generator=g) if c == 1 else torch.rand(c, 1, 1, generator=g).expand_as(x)
        return torch.where(fg[None], x, noise)
    raise ValueError(f"unknown kind {kind!r}; choose from {KINDS}")


def synthetic_fiber(
    query: torch.Tensor,
    kind: str,
    n: int = 6,
    seed: int = 0,
    data_range: tuple[float, float] = (-1.0, 1.0),
) -> torch.Tensor:
    """``n`` copies of ``query`` ``[1, C, H, W]`` under the transformation ``kind`` (see the module docstring).

    Returns images ``[n, C, H, W]`` in ``data_range``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose from {KINDS}")
    lo, hi = data_range
    x = ((query.detach().float().cpu()[0] - lo) / (hi - lo)).clamp(0, 1)
    g = torch.Generator().manual_seed(seed)
    out = torch.stack([_one(x, kind, i, g) for i in range(n)])
    return F.hardtanh(out, 0.0, 1.0) * (hi - lo) + lo
