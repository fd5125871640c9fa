"""Data readers, colour MNIST and query loading."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pytest
import torch
from PIL import Image

from fiberscope.data import colorize, decolorize, load_fashion_mnist, load_mnist, read_idx
from fiberscope.data.colormnist import BG_MIXTURE, background_density, estimate_background, sample_background
from fiberscope.data.query import QueryError, load_query


def test_bundled_test_splits_are_the_canonical_files():
    x, y = load_mnist("test")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8 and y.shape == (10000,)
    assert y[:5].tolist() == [7, 2, 1, 0, 4] and np.bincount(y).min() > 800
    fx, fy = load_fashion_mnist("test")
    assert fx.shape == (10000, 28, 28) and set(np.unique(fy)) == set(range(10))


def test_idx_reader_roundtrip_and_errors(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = (
        bytes([0, 0, 0x08, 3])
        + (2).to_bytes(4, "big")
        + (3).to_bytes(4, "big")
        + (4).to_bytes(4, "big")
        + arr.tobytes()
    )
    (tmp_path / "a-idx3-ubyte").write_bytes(raw)
    with gzip.open(tmp_path / "a-idx3-ubyte.gz", "wb") as f:
        f.write(raw)
    assert np.array_equal(read_idx(tmp_path / "a-idx3-ubyte"), arr)
    assert np.array_equal(read_idx(tmp_path / "a-idx3-ubyte.gz"), arr)
    (tmp_path / "short").write_bytes(raw[:-5])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short")
    (tmp_path / "bad").write_bytes(b"\x89PNG....")
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(tmp_path / "bad")


def test_missing_training_split_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="fiberscope data fetch mnist"):
        load_mnist("train", root=tmp_path)


def test_colour_mnist_follows_the_paper_recipe():
    g = torch.Generator().manual_seed(0)
    bg = sample_background(20000, generator=g).numpy()
    # the mixture 0.6 N(0.7, 0.08) + 0.35 N(0.5, 0.015) + 0.05 N(0.1, 0.02), per channel
    assert abs(bg.mean() - (0.6 * 0.7 + 0.35 * 0.5 + 0.05 * 0.1)) < 0.01

    def cdf(v, mu, sd):
        return 0.5 * (1 + math.erf((v - mu) / (sd * math.sqrt(2))))

    near_half = sum(w * (cdf(0.55, mu, sd) - cdf(0.45, mu, sd)) for w, mu, sd in BG_MIXTURE)
    assert abs((np.abs(bg - 0.5) < 0.05).mean() - near_half) < 0.01
    hist, edges = np.histogram(bg[:, 0], bins=50, range=(0, 1), density=True)
    centres = (edges[:-1] + edges[1:]) / 2
    assert np.abs(hist - background_density(centres)).mean() < 0.35
    ink = torch.zeros(4, 1, 28, 28)
    ink[:, :, 8:20, 10:14] = 1.0
    x = colorize(ink, generator=g)
    b = estimate_background(x)
    fg = x[:, :, 12, 11]
    assert torch.allclose(fg, torch.remainder(b + 0.5, 1.0), atol=1e-6)  # foreground = (bg + 0.5) mod 1
    assert torch.allclose(decolorize(x), ink, atol=1e-5)


def test_decolorize_is_exact_when_a_digit_touches_the_border():
    ink = torch.zeros(1, 1, 28, 28)
    ink[:, :, 5:20, 0:3] = 1.0  # touches the first column
    x = colorize(ink, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(decolorize(x), ink, atol=1e-5)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "I;16", "P"])
def test_query_files_of_any_mode_and_size(tmp_path, mode):
    rng = np.random.default_rng(0)
    base = Image.fromarray((rng.random((40, 60, 3)) * 255).astype(np.uint8), "RGB")
    img = base.convert("L").convert("I;16") if mode == "I;16" else base.convert(mode)
    path = tmp_path / f"q_{mode.replace(';', '')}.png"
    img.save(path)
    for shape in [(1, 28, 28), (3, 32, 32)]:
        q = load_query(path, image_shape=shape, data_range=(-1.0, 1.0))
        assert q.shape == (1, *shape) and q.min() >= -1 and q.max() <= 1


def test_query_jpeg_and_npy(tmp_path):
    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((30, 30, 3)) * 255).astype(np.uint8)).save(tmp_path / "q.jpg", quality=90)
    assert load_query(tmp_path / "q.jpg", image_shape=(3, 28, 28), data_range=(0.0, 1.0)).shape == (1, 3, 28, 28)
    np.save(tmp_path / "f.npy", rng.random((28, 28)).astype(np.float32))
    q = load_query(tmp_path / "f.npy", image_shape=(1, 28, 28), data_range=(-1.0, 1.0))
    assert q.shape == (1, 1, 28, 28)
    big = rng.random((28, 28)) * 255  # floats on the 8-bit scale are divided by 255
    np.save(tmp_path / "big.npy", big)
    q = load_query(tmp_path / "big.npy", image_shape=(1, 28, 28), data_range=(0.0, 1.0))
    assert torch.allclose(q[0, 0], torch.from_numpy(big / 255).float(), atol=1e-6)
    np.save(tmp_path / "wide.npy", rng.random((28, 28)) * 4000 - 2000)  # any other range is refused
    with pytest.raises(QueryError, match=r"wide\.npy holds floats in .*must be in \[0, 1\] .* or in \[0, 255\]"):
        load_query(tmp_path / "wide.npy", image_shape=(1, 28, 28), data_range=(-1.0, 1.0))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(QueryError, match="npy"):
        load_query(tmp_path / "obj.npy", image_shape=(1, 28, 28), data_range=(-1.0, 1.0))


def test_query_file_errors_name_the_problem(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(good)
    (tmp_path / "trunc.png").write_bytes(good.read_bytes()[:40])
    kw = dict(image_shape=(1, 28, 28), data_range=(-1.0, 1.0))
    with pytest.raises(QueryError, match="empty"):
        load_query(tmp_path / "empty.png", **kw)
    with pytest.raises(QueryError, match="truncated or corrupt"):
        load_query(tmp_path / "junk.png", **kw)
    with pytest.raises(QueryError, match="truncated or corrupt"):
        load_query(tmp_path / "trunc.png", **kw)
    with pytest.raises(QueryError, match="does not exist"):
        load_query(tmp_path / "nope.png", **kw)
    with pytest.raises(QueryError, match="shape"):
        load_query(np.zeros((4, 28, 28, 2), np.uint8), **kw)
    with pytest.raises(QueryError, match="2 channels and the prior wants 1"):
        load_query(np.zeros((2, 28, 28), np.uint8), **kw)


def test_query_tensor_is_checked_not_rescaled():
    with pytest.raises(QueryError, match=r"\[0, 255\]"):
        load_query(
            torch.full((1, 28, 28), 255.0).index_fill_(2, torch.tensor([0]), 0.0),
            image_shape=(1, 28, 28),
            data_range=(-1.0, 1.0),
        )
    q = load_query(torch.zeros(1, 28, 28), image_shape=(1, 28, 28), data_range=(-1.0, 1.0))
    assert q.shape == (1, 1, 28, 28) and float(q.abs().max()) == 0.0
