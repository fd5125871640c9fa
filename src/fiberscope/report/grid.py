"""Image grids with captions, in the layout of the paper's figures.

Example:
    >>> import torch
    >>> from fiberscope.report.grid import captioned_grid
    >>> img = captioned_grid([[torch.zeros(1, 8, 8), torch.ones(1, 8, 8)]], [["query", "ℓ=0.1"]],
    ...                      data_range=(0, 1), scale=4)
    >>> img.size[0] > 64
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = ["captioned_grid", "to_pil", "to_uint8"]


def to_uint8(x: torch.Tensor, data_range: tuple[float, float] | None = (-1.0, 1.0)) -> np.ndarray:
    """``[C, H, W]`` tensor in ``data_range`` → ``[H, W, C]`` uint8 (C = 1 or 3)."""
    x = x.detach().float().cpu()
    if data_range is None:
        lo, hi = float(x.min()), float(x.max())
    else:
        lo, hi = data_range
    x = ((x - lo) / max(hi - lo, 1e-12)).clamp(0, 1)
    arr = (x * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
    if arr.shape[2] not in (1, 3):
        arr = arr[:, :, :3] if arr.shape[2] > 3 else arr[:, :, :1]
    return arr


def to_pil(x: torch.Tensor, data_range: tuple[float, float] | None = (-1.0, 1.0), scale: int = 1) -> Image.Image:
    """One image tensor ``[C, H, W]`` → PIL image (L or RGB), optionally enlarged ``scale``× (nearest)."""
    arr = to_uint8(x, data_range)
    img = Image.fromarray(arr[:, :, 0], "L") if arr.shape[2] == 1 else Image.fromarray(arr, "RGB")
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    return img


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def captioned_grid(
    rows: Sequence[Sequence[torch.Tensor]],
    captions: Sequence[Sequence[str]] | None = None,
    *,
    data_range: tuple[float, float] | None = (-1.0, 1.0),
    scale: int = 1,
    pad: int = 6,
    gap_after: Sequence[int] = (),
    row_titles: Sequence[str] | None = None,
    title: str | None = None,
    font_size: int = 13,
    marks: Sequence[Sequence[bool | None]] | None = None,
) -> Image.Image:
    """Rows of images, each with a caption line under it (e.g. the fiber loss).

    Args:
        rows: lists of ``[C, H, W]`` tensors (all the same size).
        captions: one string per image (may be empty); several lines with ``\\n``.
        scale: enlarge small images (nearest neighbour), e.g. 4 for 28×28 digits.
        gap_after: column indices after which a wider gap separates groups (query | NN | samples).
        row_titles: a label drawn left of each row.
        title: a line drawn above the grid.
        marks: per image True (a green frame: in the fiber), False (a red frame: outside it) or
            None (no frame).
    """
    if not rows or not rows[0]:
        raise ValueError("captioned_grid needs at least one image")
    tiles = [[to_pil(x, data_range, scale) for x in row] for row in rows]
    w, h = tiles[0][0].size
    font = _font(font_size)
    n_lines = 1
    if captions:
        n_lines = max(1, max((c.count("\n") + 1 for row in captions for c in row), default=1))
    cap_h = n_lines * (font_size + 3) + 4
    left = 0
    if row_titles:
        left = max(int(ImageDraw.Draw(Image.new("L", (1, 1))).textlength(t, font=font)) for t in row_titles) + 2 * pad
    top = (font_size + 2 * pad) if title else 0
    ncol = max(len(r) for r in tiles)
    big = 3 * pad
    col_x = []
    x = left + pad
    for j in range(ncol):
        col_x.append(x)
        x += w + (big if j in gap_after else pad)
    width = x
    height = top + pad + len(tiles) * (h + cap_h + pad)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, pad), title, fill=(0, 0, 0), font=font)
    for i, row in enumerate(tiles):
        y = top + pad + i * (h + cap_h + pad)
        if row_titles:
            draw.text((pad, y + h // 2 - font_size // 2), row_titles[i], fill=(0, 0, 0), font=font)
        for j, tile in enumerate(row):
            canvas.paste(tile.convert("RGB"), (col_x[j], y))
            mark = marks[i][j] if marks and i < len(marks) and j < len(marks[i]) else None
            if mark is not None:
                colour = (30, 150, 60) if mark else (210, 40, 40)
                draw.rectangle([col_x[j] - 3, y - 3, col_x[j] + w + 2, y + h + 2], outline=colour, width=3)
            if captions and j < len(captions[i]) and captions[i][j]:
                for k, line in enumerate(captions[i][j].split("\n")):
                    tw = draw.textlength(line, font=font)
                    draw.text(
                        (col_x[j] + (w - tw) / 2, y + h + 2 + k * (font_size + 3)), line, fill=(40, 40, 40), font=font
                    )
    return canvas
