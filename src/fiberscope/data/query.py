"""Query images: from tensors, arrays, PIL images or files (PNG/JPEG/NPY) into the prior's data space.

Tensors are taken as already being in the prior's data space and are checked strictly (shape and
value range), since a silent rescale would audit the wrong image. Files, PIL images and arrays
are converted by fixed, range-aware rules (see :func:`load_query`): decoded, scaled by their bit
depth, converted between grey and RGB, cropped and resized to the prior's image size and mapped to
its data range.

Example:
    >>> import numpy as np
    >>> from fiberscope.data.query import load_query
    >>> q = load_query(np.zeros((56, 56), dtype=np.uint8), image_shape=(1, 28, 28), data_range=(-1, 1))
    >>> tuple(q.shape), float(q.min())
    ((1, 1, 28, 28), -1.0)
"""

from __future__ import annotations

import io
import os
import re
import stat
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import QueryError

__all__ = ["QueryError", "image_to_tensor", "load_query"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}

#: Query files larger than this are refused before they are read.
MAX_QUERY_BYTES = 1 << 30


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
    if not stat.S_ISREG(st.st_mode):  # never opened: reading a FIFO blocks, /dev/zero never ends
        kind = next(
            (
                k
                for test, k in (
                    (stat.S_ISFIFO, "a FIFO (named pipe)"),
                    (stat.S_ISCHR, "a character device"),
                    (stat.S_ISBLK, "a block device"),
                    (stat.S_ISSOCK, "a socket"),
                )
                if test(st.st_mode)
            ),
            "not a regular file",
        )
        raise QueryError(f"query file {path} is {kind}, not a regular file; save the image to a file and pass that")
    if st.st_size > MAX_QUERY_BYTES:
        raise QueryError(
            f"query file {path} is {st.st_size / 2**30:.1f} GiB; query images up to {MAX_QUERY_BYTES >> 20} MiB are "
            "read: downsample it first"
        )
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_QUERY_BYTES + 1)  # by reading, not by st_size: /proc files report 0 bytes
    except OSError as e:
        raise QueryError(f"query file {path} cannot be read ({e.strerror}); check its permissions") from None
    if not data:
        raise QueryError(f"query file {path} is empty (0 bytes): re-export the image")
    if len(data) > MAX_QUERY_BYTES:
        raise QueryError(f"query file {path} is larger than {MAX_QUERY_BYTES >> 20} MiB: downsample it first")
    suffix = path.suffix.lower()
    what = f"query file {path}"
    if suffix == ".npy":
        try:
            buf = io.BytesIO(data)
            _check_npy_header(buf, len(data), what)
            buf.seek(0)
            return np.load(buf, allow_pickle=False)
        except QueryError:
            raise
        except Exception as e:  # any failure to parse the file is a bad file, never a crash
            raise QueryError(
                f"query file {path} is not a readable .npy array ({type(e).__name__}: {_short(e)}); "
                "save it with numpy.save(path, array) (object arrays are refused)"
            ) from None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            _check_image_size(im.size[1], im.size[0], what)  # from the header, before decoding
            im.load()
            return im.copy()
    except QueryError:
        raise
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, DecompressionBombError...
        kind = "truncated or corrupt" if suffix in IMAGE_SUFFIXES else "not an image"
        raise QueryError(
            f"query file {path} is {kind} ({type(e).__name__}: {_short(e)}); re-export it; supported: PNG, "
            "JPEG and other formats Pillow reads, or .npy arrays"
        ) from None


def _short(e: BaseException) -> str:
    s = " ".join(str(e).split())
    s = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>", "", s)  # we decode from memory: the repr says nothing
    return s if len(s) <= 200 else s[:199] + "…"


def _check_image_size(height: int, width: int, what: str) -> None:
    """Refuse an image whose sides or pixel count exceed the documented bounds (before any allocation)."""
    from ..validation import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE

    if height < 1 or width < 1:
        raise QueryError(f"{what} is {width} × {height} pixels; an image needs at least one pixel")
    if height > MAX_IMAGE_SIDE or width > MAX_IMAGE_SIDE or height * width > MAX_IMAGE_PIXELS:
        raise QueryError(
            f"{what} is {width} × {height} pixels; query images may be at most {MAX_IMAGE_SIDE} pixels a side and "
            f"{MAX_IMAGE_PIXELS / 1e6:.0f} Mpixels in all (a decompression-bomb guard): downsample or crop it first"
        )


def _check_npy_header(f: Any, size: int, what: str) -> None:
    """Refuse a .npy whose header promises more data than the file holds, or an image too large (before allocating)."""
    from ..validation import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE

    fmt = np.lib.format
    major, _ = fmt.read_magic(f)
    if major not in (1, 2):
        return  # newer versions: np.load checks them
    read = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
    shape, _, dtype = read(f)
    n = int(np.prod(shape, dtype=object))
    need = n * dtype.itemsize
    have = size - f.tell()
    if have < need:
        raise ValueError(f"truncated: the header announces {need} data bytes, the file holds {have}")
    if any(int(s) > MAX_IMAGE_SIDE for s in shape) or n > 4 * MAX_IMAGE_PIXELS:
        raise QueryError(
            f"{what} holds an array of shape {tuple(shape)}; query images may be at most {MAX_IMAGE_SIDE} pixels a "
            f"side and {MAX_IMAGE_PIXELS / 1e6:.0f} Mpixels in all: downsample or crop it first"
        )


def _tiff_bits(img: Any) -> int | None:
    """Bits per sample of a TIFF (tag 258), else None."""
    tags = getattr(img, "tag_v2", None)
    try:
        bits = tags.get(258) if tags is not None else None
    except Exception:  # pragma: no cover - damaged tags
        return None
    if isinstance(bits, tuple):
        bits = bits[0] if bits else None
    return int(bits) if isinstance(bits, int) else None


def _pil_array(img: Any, what: str) -> tuple[np.ndarray, int | None]:
    """A PIL image as an array ``[H, W]`` / ``[H, W, C]`` and its integer bit depth if the file says so.

    8-bit modes are converted to grey or RGB (transparency composited on white); 16-bit (``I;16``),
    32-bit integer (``I``) and float (``F``) images keep their values, for the range rules of
    :func:`_to_unit`.
    """
    from PIL import Image

    _check_image_size(img.size[1], img.size[0], what)
    mode = img.mode
    if mode == "F" or mode.startswith("I;16") or mode == "I":
        return np.asarray(img), (16 if mode.startswith("I;16") else _tiff_bits(img) if mode == "I" else None)
    if mode not in ("L", "RGB"):
        try:
            img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
        except (ValueError, OSError) as e:
            raise QueryError(
                f"{what}: images of mode {mode} cannot be converted ({_short(e)}); save it as RGB or grey"
            ) from None
        if img.mode == "RGBA":  # composite transparent images on white
            bg = Image.new("RGB", img.size, (255, 255, 255))
            bg.paste(img, mask=img.split()[-1])
            img = bg
    return np.asarray(img), 8


def _to_unit(arr: np.ndarray, bits: int | None, what: str) -> np.ndarray:
    """Values of an image array in [0, 1] (float32), by the documented rules (see :func:`load_query`)."""
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        ilo, hi = int(arr.min()), int(arr.max())
        if ilo < 0:
            raise QueryError(
                f"{what} holds negative values ({arr.dtype}, [{ilo}, {hi}]); integer images must be ≥ 0: save it "
                "as 8- or 16-bit, or as floats in [0, 1]"
            )
        size = arr.dtype.itemsize
        if np.issubdtype(arr.dtype, np.unsignedinteger) and size <= 2:
            depth = 8 * size  # uint8, uint16 (and Pillow's I;16)
        elif bits is not None and bits <= 16:
            depth = bits  # a TIFF that says how many bits its samples have
        elif hi <= 255:
            depth = 8
        elif hi <= 65535:
            depth = 16
        else:
            raise QueryError(
                f"{what} is {arr.dtype} with values up to {hi}, beyond 16 bits: fiberscope cannot tell which value "
                "is white in a 32-bit image; convert it to 8- or 16-bit, or to floats in [0, 1]"
            )
        return (arr.astype(np.float64) / (2**depth - 1)).astype(np.float32)
    if not np.issubdtype(arr.dtype, np.floating):
        raise QueryError(f"{what} has dtype {arr.dtype}; expected a numeric image (integers, floats or booleans)")
    a = arr.astype(np.float32)
    if not np.isfinite(a).all():
        raise QueryError(f"{what} contains NaN or inf")
    lo, fhi = float(a.min()), float(a.max())
    tol = 1e-3
    if lo >= -tol and fhi <= 1 + tol:
        return np.clip(a, 0, 1)
    if lo >= -255 * tol and 2 <= fhi <= 255 * (1 + tol):
        return np.clip(a / 255.0, 0, 1)
    raise QueryError(
        f"{what} holds floats in [{lo:.3g}, {fhi:.3g}]; float images and arrays must be in [0, 1] (taken as they "
        "are) or in [0, 255] (divided by 255): rescale it, save it as 8/16-bit, or pass a tensor already in the "
        "prior's data range"
    )


def _channels_first(arr: np.ndarray, what: str) -> tuple[np.ndarray, str]:
    """``[C, H, W]`` from ``[H, W]``, ``[H, W, C]`` or ``[C, H, W]``, and how the axes were read.

    A 3-D array's channel axis is the first or the last: the one of size 1, 3 or 4 when only one is,
    else the shorter one (``28 × 28 × 5`` is 5 channels of 28 × 28).
    """
    if arr.ndim == 2:
        return arr[None], f"{arr.shape[0]} × {arr.shape[1]} grey"
    if arr.ndim != 3:
        raise QueryError(f"{what} has shape {arr.shape}; expected [H, W], [H, W, C] or [C, H, W]")
    first, last = arr.shape[0], arr.shape[-1]
    usual = (1, 3, 4)
    if (last in usual) != (first in usual):
        channels_last = last in usual
    elif first != last:
        channels_last = last < first
    else:
        channels_last = last in usual and first not in (1, 3)
    if channels_last:
        return arr.transpose(2, 0, 1), f"shape {arr.shape} read as height × width × {last} channels"
    return arr, f"shape {arr.shape} read as {first} channels × height × width"


def _array_to_tensor(img: Any, what: str) -> tuple[torch.Tensor, str]:
    from PIL import Image

    bits: int | None = None
    if isinstance(img, Image.Image):
        arr, bits = _pil_array(img, what)
    else:
        arr = np.asarray(img)
    if arr.dtype == object or arr.size == 0:
        raise QueryError(f"{what} has dtype {arr.dtype} and size {arr.size}; expected a numeric image")
    if np.iscomplexobj(arr):
        raise QueryError(f"{what} holds complex numbers; pass the real image (e.g. its magnitude)")
    arr, how = _channels_first(arr, what)
    _check_image_size(arr.shape[1], arr.shape[2], what)
    if arr.shape[0] == 4:
        arr = arr[:3]
    return torch.from_numpy(np.ascontiguousarray(_to_unit(arr, bits, what))), how


def image_to_tensor(img: Any) -> torch.Tensor:
    """PIL image or array → float tensor ``[C, H, W]`` in [0, 1], by the range rules of :func:`load_query`."""
    return _array_to_tensor(img, "query image" if hasattr(img, "mode") else "query array")[0]


def _fit(t: torch.Tensor, image_shape: tuple[int, ...], how: str = "", what: str = "query") -> torch.Tensor:
    c, h, w = image_shape
    if t.shape[0] != c:
        if t.shape[0] == 3 and c == 1:
            t = 0.299 * t[0:1] + 0.587 * t[1:2] + 0.114 * t[2:3]
        elif t.shape[0] == 1 and c == 3:
            t = t.expand(3, -1, -1)
        else:
            raise QueryError(
                f"{what} has {t.shape[0]} channels and the prior wants {c}; only grey↔RGB is converted"
                + (f" ({how})" if how else "")
            )
    th, tw = t.shape[1:]
    if (th, tw) != (h, w):
        # centre-crop to the prior's aspect ratio first, then resize: the resize never allocates more than the
        # prior's image, whatever the aspect ratio of the query (a 1 × 20000 strip stays cheap)
        if tw * h > th * w:
            ch, cw = th, max(1, min(tw, round(th * w / h)))
        else:
            ch, cw = max(1, min(th, round(tw * h / w))), tw
        top, left = (th - ch) // 2, (tw - cw) // 2
        t = t[:, top : top + ch, left : left + cw]
        t = F.interpolate(t[None], size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]
    return t.clamp(0, 1)


def load_query(
    query: Any,
    *,
    image_shape: tuple[int, ...],
    data_range: tuple[float, float] | None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Turn ``query`` into a ``[1, *image_shape]`` float32 tensor in ``data_range``.

    Files, arrays and PIL images are converted by fixed rules (never by stretching the image's own
    minimum and maximum):

    * **integers** are divided by the largest value of their bit depth: uint8 by 255, uint16 and
      16-bit images (``I;16``) by 65535, a TIFF whose ``BitsPerSample`` is ≤ 16 by ``2^bits − 1``;
      32/64-bit integers (mode ``I``, int32, int64) say nothing about their range, so their values
      decide: ≤ 255 is read as 8-bit, ≤ 65535 as 16-bit, larger values are refused; negative values
      are refused; booleans are 0 and 1;
    * **floats** (mode ``F`` TIFFs, float arrays) in [0, 1] are taken as they are, floats in
      [0, 255] (maximum ≥ 2) are divided by 255, any other range is refused;
    * **channels**: ``[H, W]`` is grey; a 3-D array's channel axis is the first or the last, the one
      of size 1, 3 or 4 when only one is, else the shorter one; grey ↔ RGB is converted, a fourth
      (alpha) channel dropped, transparent images composited on white;
    * **size**: centre-cropped to the prior's aspect ratio, then resized (bilinear, antialiased);
      images over 32,768 pixels a side or 2²⁷ pixels, and files over 1 GiB, are refused before they
      are decoded; FIFOs, devices and sockets are refused without being opened.

    Args:
        query: a tensor already in the data space (``[C, H, W]`` or ``[1, C, H, W]``), a NumPy
            array or PIL image (converted), or a path to PNG/JPEG/TIFF/… or .npy.
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
    what = "query image" if hasattr(query, "mode") else "query array"
    if isinstance(query, (str, os.PathLike)):
        what = f"query file {os.fspath(query)}"
        query = _read_file(Path(query))
    if len(image_shape) != 3:
        raise QueryError(
            f"only image priors (C, H, W) accept files or arrays as queries; this prior's data shape is "
            f"{tuple(image_shape)}: pass a tensor of that shape"
        )
    t, how = _array_to_tensor(query, what)
    t = _fit(t, tuple(image_shape), how, what)
    if data_range is not None:
        lo, hi = data_range
        t = t * (hi - lo) + lo
    return t.unsqueeze(0).to(device)
