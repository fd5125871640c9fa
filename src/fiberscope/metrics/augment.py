"""The augmentation reference: the query under random augmentations, judged like fiber samples.

The paper prints the fiber loss under augmented copies of the query (DINOv2's training
augmentations) to show how far ordinary "semantics-preserving" changes move φ. For the zoo's
28×28 data the augmentations are

* ``"geometric"``: a random affine map per image — rotation ±``rotate`` degrees, shift
  ±``shift`` pixels, zoom 1 ± ``zoom`` — optionally with a smooth elastic displacement of
  amplitude ``elastic`` pixels;
* ``"colour"``: colour jitter — brightness, contrast and per-channel gain each in 1 ± ``jitter``;
* ``"recolour"`` (colour MNIST only): the digit recoloured with a background drawn from the
  data's colour mixture — exactly in the fiber of a colour-blind subject.

Every image draws its randomness from the generator in turn, so results are reproducible.

Example:
    >>> import torch
    >>> from fiberscope.metrics import augment
    >>> q = torch.zeros(1, 1, 28, 28); q[..., 10:18, 12:16] = 1.0
    >>> a = augment(q * 2 - 1, 8, torch.Generator().manual_seed(0), kind="geometric")
    >>> a.shape, bool(a.min() >= -1 and a.max() <= 1)
    (torch.Size([8, 1, 28, 28]), True)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["AUGMENTATIONS", "augment"]

AUGMENTATIONS = ("geometric", "colour", "recolour")


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _geometric(
    x: torch.Tensor, g: torch.Generator, rotate: float, shift: float, zoom: float, elastic: float, fill: float
) -> torch.Tensor:
    n, _, h, w = x.shape
    ang = _uniform(n, -rotate, rotate, g) * math.pi / 180
    sc = _uniform(n, 1 - zoom, 1 + zoom, g)
    tx = _uniform(n, -shift, shift, g) * 2 / w
    ty = _uniform(n, -shift, shift, g) * 2 / h
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)  # [n, 2, 3]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    if elastic > 0:
        disp = torch.randn(n, 2, h, w, generator=g)
        k = torch.arange(-4, 5, dtype=torch.float32)
        kern = torch.exp(-0.5 * (k / 2.0) ** 2)
        kern = kern / kern.sum()
        disp = F.conv2d(F.pad(disp, (4, 4, 0, 0), mode="reflect"), kern.view(1, 1, 1, 9).repeat(2, 1, 1, 1), groups=2)
        disp = F.conv2d(F.pad(disp, (0, 0, 4, 4), mode="reflect"), kern.view(1, 1, 9, 1).repeat(2, 1, 1, 1), groups=2)
        disp = disp / disp.flatten(1).std(1).clamp_min(1e-6).view(n, 1, 1, 1)
        scale = torch.tensor([2 / w, 2 / h]).view(1, 2, 1, 1)
        grid = grid + (elastic * disp * scale).permute(0, 2, 3, 1)
    # sample with the background value outside the image
    out = F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + fill


def augment(
    query: torch.Tensor,
    n: int,
    generator: torch.Generator,
    kind: str = "geometric",
    *,
    data_range: tuple[float, float] = (-1.0, 1.0),
    rotate: float = 10.0,
    shift: float = 2.0,
    zoom: float = 0.1,
    elastic: float = 0.0,
    jitter: float = 0.2,
) -> torch.Tensor:
    """``n`` random augmentations of ``query`` ``[1, C, H, W]`` (data range ``data_range``).

    Args:
        query: the image to augment.
        n: number of augmented copies.
        generator: source of randomness (CPU).
        kind: ``"geometric"``, ``"colour"`` or ``"recolour"`` (see the module docstring).
        data_range: range of the images; outputs are clamped to it.
        rotate, shift, zoom, elastic: geometric ranges (degrees, pixels, fraction, pixels).
        jitter: colour-jitter range (fraction).

    Returns:
        ``[n, C, H, W]`` augmented images.
    """
    if kind not in AUGMENTATIONS:
        raise ValueError(f"kind must be one of {AUGMENTATIONS}, got {kind!r}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if query.dim() != 4 or query.shape[0] != 1:
        raise ValueError(f"query must be one image [1, C, H, W], got {tuple(query.shape)}")
    lo, hi = data_range
    x01 = ((query.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1).expand(n, -1, -1, -1).contiguous()
    if kind == "geometric":
        fill = float(x01[0, :, :, 0].mean())  # the background: the first column (empty in MNIST)
        out = _geometric(x01, generator, rotate, shift, zoom, elastic, fill)
    elif kind == "colour":
        c = x01.shape[1]
        bright = _uniform(n, 1 - jitter, 1 + jitter, generator).view(n, 1, 1, 1)
        contrast = _uniform(n, 1 - jitter, 1 + jitter, generator).view(n, 1, 1, 1)
        gain = _uniform(n * c, 1 - jitter, 1 + jitter, generator).view(n, c, 1, 1)
        mean = x01.mean(dim=(1, 2, 3), keepdim=True)
        out = ((x01 - mean) * contrast + mean) * bright * gain
    else:
        from ..data.colormnist import colorize, decolorize

        if x01.shape[1] != 3:
            raise ValueError("kind='recolour' needs colour-MNIST images [1, 3, H, W]")
        out = colorize(decolorize(x01), generator=generator)
    return out.clamp(0, 1) * (hi - lo) + lo
