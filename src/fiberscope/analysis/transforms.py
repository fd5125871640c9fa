"""The image transformations that the invariance probes fit, on images in [0, 1].

Every function takes ``[N, C, H, W]`` float tensors with values in [0, 1] (the probes convert
from the prior's data range first) and returns the same layout. Geometric maps resample with
bilinear interpolation and fill what comes in from outside the frame with the query's
background colour (the median of its border pixels).

Conventions of the fitted parameters (what the report prints):

* translation ``(dx, dy)``: the content moves ``dx`` pixels right and ``dy`` pixels down;
* rotation ``degrees``: counter-clockwise as displayed (as ``torchvision``'s ``rotate``), about the centre;
* scale ``factor``: the content is enlarged by ``factor`` about the centre;
* blur ``sigma``: standard deviation of a Gaussian kernel, in pixels;
* brightness ``factor``: every value multiplied (``torchvision``'s ``adjust_brightness``);
* contrast ``factor``: values moved from the image's mean grey level by this factor (``adjust_contrast``).

Example:
    >>> import torch
    >>> from fiberscope.analysis.transforms import shift_images
    >>> x = torch.zeros(1, 1, 8, 8); x[..., 2, 2] = 1.0
    >>> y = shift_images(x, torch.tensor([[3.0, 1.0]]), torch.zeros(1))
    >>> tuple(int(i) for i in (y[0, 0] == 1).nonzero()[0])   # row 3, column 5
    (3, 5)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "adjust_brightness",
    "adjust_contrast",
    "border_colour",
    "coarse",
    "foreground_mask",
    "gaussian_blur",
    "grey",
    "mean_hue_shift",
    "rotate_images",
    "scale_images",
    "shift_images",
    "warp",
]

# ITU-R BT.601 luma weights, as torchvision's rgb_to_grayscale
_LUMA = (0.299, 0.587, 0.114)


def grey(x: torch.Tensor) -> torch.Tensor:
    """Luma ``[N, 1, H, W]`` of RGB images (grey images are returned as they are)."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x[:, :3] * w).sum(1, keepdim=True)


def border_colour(x: torch.Tensor) -> torch.Tensor:
    """Per-channel median of the border pixels of one image ``[1, C, H, W]`` → ``[C]`` (the background)."""
    b = torch.cat([x[0, :, 0, :], x[0, :, -1, :], x[0, :, 1:-1, 0], x[0, :, 1:-1, -1]], dim=1)
    return b.median(dim=1).values


def foreground_mask(x: torch.Tensor, background: torch.Tensor, threshold: float = 0.2, dilate: int = 1) -> torch.Tensor:
    """Pixels of one image ``[1, C, H, W]`` that differ from ``background`` ``[C]`` by more than ``threshold``.

    The largest per-channel difference is compared; the mask is grown by ``dilate`` pixels so that
    the soft edges of strokes count as foreground. Returns ``[H, W]`` bool.
    """
    diff = (x[0] - background.view(-1, 1, 1)).abs().amax(0)
    m = (diff > threshold).float()[None, None]
    if dilate > 0:
        m = F.max_pool2d(m, 2 * dilate + 1, stride=1, padding=dilate)
    return m[0, 0] > 0.5


def warp(x: torch.Tensor, inverse: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Resample images under affine maps given in pixel units, about the image centre.

    Args:
        x: ``[1 or K, C, H, W]`` images.
        inverse: ``[K, 2, 3]``: for each output pixel ``p`` (centred pixel coordinates, x right,
            y down) the input location ``A p + t``.
        fill: ``[C]`` the value outside the frame.

    Returns:
        ``[K, C, H, W]``.
    """
    k = inverse.shape[0]
    _, c, h, w = x.shape
    s = torch.tensor([2.0 / w, 2.0 / h], dtype=x.dtype, device=x.device)
    a = inverse[:, :, :2] * s.view(1, 2, 1) / s.view(1, 1, 2)  # S A S⁻¹
    t = inverse[:, :, 2] * s.view(1, 2)
    theta = torch.cat([a, t[:, :, None]], dim=2).to(x)
    grid = F.affine_grid(theta, [k, c, h, w], align_corners=False)
    f = fill.to(x).view(1, -1, 1, 1)
    src = (x - f).expand(k, -1, -1, -1)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + f


def _eye(k: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    m = torch.zeros(k, 2, 3, dtype=dtype)
    m[:, 0, 0] = 1
    m[:, 1, 1] = 1
    return m


def shift_images(x: torch.Tensor, shifts: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """``x`` ``[1, C, H, W]`` with its content moved by each ``(dx, dy)`` of ``shifts`` ``[K, 2]`` pixels."""
    m = _eye(shifts.shape[0])
    m[:, :, 2] = -shifts.float().cpu()
    return warp(x, m.to(x.device), fill)


def rotate_images(x: torch.Tensor, degrees: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """``x`` ``[1, C, H, W]`` rotated counter-clockwise (as displayed) by each angle of ``degrees`` ``[K]``."""
    a = degrees.float().cpu() * math.pi / 180
    m = torch.zeros(a.shape[0], 2, 3)
    # content map on screen (y down): [[cos, sin], [-sin, cos]]; the inverse is its transpose
    m[:, 0, 0] = torch.cos(a)
    m[:, 0, 1] = -torch.sin(a)
    m[:, 1, 0] = torch.sin(a)
    m[:, 1, 1] = torch.cos(a)
    return warp(x, m.to(x.device), fill)


def scale_images(x: torch.Tensor, factors: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """``x`` ``[1, C, H, W]`` with its content enlarged about the centre by each of ``factors`` ``[K]``."""
    m = _eye(factors.shape[0])
    inv = 1.0 / factors.float().cpu().clamp_min(1e-6)
    m[:, 0, 0] = inv
    m[:, 1, 1] = inv
    return warp(x, m.to(x.device), fill)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``x`` ``[N, C, H, W]`` with standard deviation ``sigma`` pixels (reflect padding)."""
    if sigma <= 1e-3:
        return x
    _, c, h, w = x.shape
    r = max(1, min(math.ceil(3 * sigma), h - 1, w - 1))
    k = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    kern = torch.exp(-0.5 * (k / sigma) ** 2)
    kern = kern / kern.sum()
    y = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), kern.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), kern.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def adjust_brightness(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """``x`` ``[1, C, H, W]`` with every value multiplied by each of ``factors`` ``[K]``, clipped to [0, 1]."""
    return (x * factors.to(x).view(-1, 1, 1, 1)).clamp(0, 1)


def adjust_contrast(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """``x`` ``[1, C, H, W]`` moved from its mean grey level by each of ``factors`` ``[K]``, clipped to [0, 1]."""
    m = grey(x).mean()
    return ((x - m) * factors.to(x).view(-1, 1, 1, 1) + m).clamp(0, 1)


def coarse(x: torch.Tensor, block: int = 4) -> torch.Tensor:
    """Orthogonal projection of ``x`` ``[N, C, H, W]`` onto its coarse content: its ``block``×``block`` means.

    Each pixel is replaced by the mean of its block (edge blocks may be smaller): what a thumbnail
    at 1/``block`` resolution shows (7×7 for a 28×28 image at ``block=4``). The complement
    ``x − coarse(x)`` is the fine detail.
    """
    if block <= 1:
        return x
    h, w = x.shape[-2:]
    m = F.avg_pool2d(x, block, ceil_mode=True)
    return m.repeat_interleave(block, -2).repeat_interleave(block, -1)[..., :h, :w]


def _hue_sat(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hue (radians) and saturation (HSV) of RGB images ``[N, 3, H, W]`` in [0, 1]."""
    mx, _ = x.max(1)
    mn, _ = x.min(1)
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    # hue from the opponent-colour angle (the hexcone hue up to a smooth reparametrisation)
    hue = torch.atan2(math.sqrt(3) * (g - b), 2 * r - g - b)
    sat = (mx - mn) / mx.clamp_min(1e-6)
    return hue, sat


def mean_hue_shift(before: torch.Tensor, after: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: the mean hue change (degrees) and the saturation ratio from ``before`` to ``after``.

    The hue change is the circular mean of the per-pixel hue differences, weighted by the smaller
    of the two saturations (grey pixels have no hue). ``before`` and ``after`` are ``[N, 3, H, W]``.
    """
    h0, s0 = _hue_sat(before)
    h1, s1 = _hue_sat(after)
    wgt = torch.minimum(s0, s1)
    d = h1 - h0
    c = (wgt * torch.cos(d)).flatten(1).sum(1)
    s = (wgt * torch.sin(d)).flatten(1).sum(1)
    shift = torch.rad2deg(torch.atan2(s, c))
    shift = torch.where(wgt.flatten(1).sum(1) > 1e-6, shift, torch.zeros_like(shift))
    ratio = s1.flatten(1).mean(1) / s0.flatten(1).mean(1).clamp_min(1e-6)
    return shift, ratio
