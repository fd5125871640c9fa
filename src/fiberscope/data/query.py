"""Query images: from tensors, arrays, PIL images or files (PNG/JPEG/NPY) into the prior's data space.

Tensors are taken as already being in the prior's data space and are checked strictly (shape and
value range), since a silent rescale would audit the wrong image. Files, PIL images and uint8
arrays are converted: decoded, converted between grey and RGB, resized to the prior's image size
and mapped to its data range.

Example:
    >>> import numpy as np
    >>> from fiberscope.data.query import load_query
    >>> q = load_query(np.zeros((56, 56), dtype=np.uint8), image_shape=(1, 28, 28), data_range=(-1, 1))
    >>> tuple(q.shape), float(q.min())
    ((1, 1, 28, 28), -1.0)
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["QueryError", "image_to_tensor", "load_query"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class QueryError(ValueError):
    """A query that cannot be turned into an image in the prior's space."""


def _read_file(path: Path) -> np.ndarray | Any:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise QueryError(
            f"query file {path} does not exist; check the path (in a manifest, relative to its folder)"
        ) from None
    except OSError as e:  # a name too long, a loop of links, no permission to a parent folder...
        raise QueryError(
            f"query file {path} cannot be read ({e.strerror}); check the path and its permissions"
        ) from None
    if stat.S_ISDIR(st.st_mode):
        raise QueryError(f"query file {path} is a directory; pass an image file (`fiberscope sample` takes folders)")
    if st.st_size == 0:
        raise QueryError(f"query file {path} is empty (0 bytes): re-export the image")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            _check_npy_size(path)
            return np.load(path, allow_pickle=False)
        except Exception as e:  # any failure to parse the file is a bad file, never a crash
            raise QueryError(
                f"query file {path} is not a readable .npy array ({type(e).__name__}: {_short(e)}); "
                "save it with numpy.save(path, array) (object arrays are refused)"
            ) from None
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, DecompressionBombError...
        kind = "truncated or corrupt" if suffix in IMAGE_SUFFIXES else "not an image"
        raise QueryError(
            f"query file {path} is {kind} ({type(e).__name__}: {_short(e)}); re-export it; supported: PNG, "
            "JPEG and other formats Pillow reads, or .npy arrays"
        ) from None


def _short(e: BaseException) -> str:
    s = " ".join(str(e).split())
    return s if len(s) <= 200 else s[:199] + "…"


def _check_npy_size(path: Path) -> None:
    """Refuse a .npy whose header promises more data than the file holds (before allocating it)."""
    fmt = np.lib.format
    with open(path, "rb") as f:
        major, _ = fmt.read_magic(f)
        if major not in (1, 2):
            return  # newer versions: np.load checks them
        read = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
        shape, _, dtype = read(f)
        need = int(np.prod(shape, dtype=object)) * dtype.itemsize
        have = path.stat().st_size - f.tell()
    if have < need:
        raise ValueError(f"truncated: the header announces {need} data bytes, the file holds {have}")


def image_to_tensor(img: Any) -> torch.Tensor:
    """PIL image or array → float tensor ``[C, H, W]`` in [0, 1] (uint8 ÷ 255; floats kept)."""
    from PIL import Image

    if isinstance(img, Image.Image):
        if img.mode not in ("L", "RGB"):
            img = img.convert("RGBA" if "A" in img.getbands() else "RGB") if img.mode != "I;16" else img
            if img.mode == "RGBA":  # composite transparent images on white
                bg = Image.new("RGB", img.size, (255, 255, 255))
                bg.paste(img, mask=img.split()[-1])
                img = bg
        arr = np.asarray(img)
    else:
        arr = np.asarray(img)
    if arr.dtype == object or arr.size == 0:
        raise QueryError(f"query array has dtype {arr.dtype} and size {arr.size}; expected a numeric image")
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3 and arr.shape[-1] in (1, 3, 4) and arr.shape[0] not in (1, 3):
        arr = arr.transpose(2, 0, 1)  # HWC -> CHW
    elif arr.ndim != 3:
        raise QueryError(f"query array has shape {arr.shape}; expected [H, W], [H, W, C] or [C, H, W]")
    if arr.shape[0] == 4:
        arr = arr[:3]
    if arr.dtype == np.uint8:
        t = torch.from_numpy(arr.astype(np.float32) / 255.0)
    elif arr.dtype == np.uint16:
        t = torch.from_numpy(arr.astype(np.float32) / 65535.0)
    elif np.issubdtype(arr.dtype, np.integer):
        a = arr.astype(np.float64)
        lo, hi = a.min(), a.max()
        t = torch.from_numpy(((a - lo) / max(hi - lo, 1e-12)).astype(np.float32))
    else:
        t = torch.from_numpy(arr.astype(np.float32))
        lo, hi = float(t.min()), float(t.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise QueryError(
                f"float query array spans [{lo:.3g}, {hi:.3g}]; float arrays must be in [0, 1] "
                "(or pass uint8 data, or a tensor already in the prior's data range)"
            )
    if not torch.isfinite(t).all():
        raise QueryError("query array contains NaN or inf")
    return t


def _fit(t: torch.Tensor, image_shape: tuple[int, ...]) -> torch.Tensor:
    c, h, w = image_shape
    if t.shape[0] != c:
        if t.shape[0] == 3 and c == 1:
            t = 0.299 * t[0:1] + 0.587 * t[1:2] + 0.114 * t[2:3]
        elif t.shape[0] == 1 and c == 3:
            t = t.expand(3, -1, -1)
        else:
            raise QueryError(f"query has {t.shape[0]} channels and the prior wants {c}; only grey↔RGB is converted")
    if t.shape[1:] != (h, w):
        th, tw = t.shape[1:]
        scale = max(h / th, w / tw)  # resize the short side, then centre-crop
        nh, nw = max(h, round(th * scale)), max(w, round(tw * scale))
        t = F.interpolate(t[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
        top, left = (nh - h) // 2, (nw - w) // 2
        t = t[:, top : top + h, left : left + w]
    return t.clamp(0, 1)


def load_query(
    query: Any,
    *,
    image_shape: tuple[int, ...],
    data_range: tuple[float, float] | None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Turn ``query`` into a ``[1, *image_shape]`` float32 tensor in ``data_range``.

    Args:
        query: a tensor already in the data space (``[C, H, W]`` or ``[1, C, H, W]``), a NumPy
            array or PIL image (converted), or a path to PNG/JPEG/… or .npy.
        image_shape: the prior's image shape ``(C, H, W)``.
        data_range: the prior's data range; None leaves values as they are.

    Raises:
        QueryError: (a ValueError) naming what does not fit and what is accepted.
    """
    if isinstance(query, torch.Tensor):
        t = query.detach().float()
        if t.dim() == len(image_shape):
            t = t.unsqueeze(0)
        if t.dim() != len(image_shape) + 1 or t.shape[0] != 1:
            raise QueryError(
                f"query tensor has shape {tuple(query.shape)}; expected {tuple(image_shape)} or "
                f"{(1, *image_shape)} (one image in the prior's data space)"
            )
        if tuple(t.shape[1:]) != tuple(image_shape):
            raise QueryError(
                f"query tensor has shape {tuple(t.shape[1:])} but the prior's images are "
                f"{tuple(image_shape)}; resize it, or pass a PIL image / file to have it converted"
            )
        if not torch.isfinite(t).all():
            raise QueryError("query tensor contains NaN or inf")
        if data_range is not None:
            lo, hi = data_range
            tol = 1e-3 * (hi - lo)
            if float(t.min()) < lo - tol or float(t.max()) > hi + tol:
                raise QueryError(
                    f"query tensor values span [{float(t.min()):.3g}, {float(t.max()):.3g}] but the prior's data range "
                    f"is [{lo:g}, {hi:g}]; rescale it (e.g. x / 127.5 - 1 for uint8 into [-1, 1]) or pass a PIL image "
                    "or uint8 array to have it converted"
                )
        return t.clamp(*data_range).to(device) if data_range is not None else t.to(device)
    if isinstance(query, (str, os.PathLike)):
        query = _read_file(Path(query))
    if len(image_shape) != 3:
        raise QueryError(
            f"only image priors (C, H, W) accept files or arrays as queries; this prior's data shape is "
            f"{tuple(image_shape)}: pass a tensor of that shape"
        )
    t = _fit(image_to_tensor(query), tuple(image_shape))
    if data_range is not None:
        lo, hi = data_range
        t = t * (hi - lo) + lo
    return t.unsqueeze(0).to(device)
