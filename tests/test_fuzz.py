"""Property-based tests: random manifests and byte strings thrown at the loaders.

The manifest parser, the query loader and the idx reader must either return a valid result or
raise their documented error (ManifestError / a per-line error, QueryError, ValueError) with a
message: never another exception type, and never hang (pytest-timeout guards each test).
"""

from __future__ import annotations

import gzip
import io
import json
import string
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fiberscope.audit.manifest import FIELDS, Manifest, ManifestError, parse_manifest
from fiberscope.data.mnist import read_idx
from fiberscope.data.query import QueryError, load_query

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
pytestmark = pytest.mark.timeout(120)

json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12
)
unit_like = st.dictionaries(
    st.sampled_from([*FIELDS, "steps", "Query", ""]),
    st.one_of(
        json_values,
        st.sampled_from(["builtin:mnist-cnn", "q.png", "ndtm", "unguided", "penultimate", "x" * 300]),
        st.fixed_dictionaries(
            {"name": st.sampled_from(["ndtm", "unguided", "dps", "nope", ""])},
            optional={"steps": json_scalars, "inner_steps": json_scalars, "gamma": json_values, "lr": json_scalars},
        ),
    ),
    max_size=9,
)


def _check_manifest(m: Manifest, n_lines: int) -> None:
    assert isinstance(m, Manifest)
    for e in m.errors:
        assert 1 <= e.line <= max(n_lines, 1) and e.message.strip() and "\n" not in e.message
    for u in m.units:
        assert isinstance(u.query, str) and u.query and isinstance(u.subject, str) and isinstance(u.prior, str)
        assert isinstance(u.n, int) and u.n >= 1 and isinstance(u.seed, int) and u.seed >= 0
        assert len(u.key) == 16 and "/" not in u.dirname and u.dirname.strip(".")
        json.loads(u.canonical_json())
    assert len({u.key for u in m.units}) == len(m.units)


@SETTINGS
@given(st.binary(max_size=600), st.sampled_from([None, "jsonl", "csv"]))
def test_manifest_parser_on_random_bytes(data: bytes, fmt: str | None) -> None:
    try:
        m = parse_manifest(data, fmt)
    except ManifestError as e:
        assert str(e).strip()
        return
    _check_manifest(m, data.count(b"\n") + 1)


@SETTINGS
@given(st.lists(st.one_of(unit_like.map(json.dumps), st.text(max_size=60)), max_size=8))
def test_manifest_parser_on_random_jsonl_units(lines: list[str]) -> None:
    text = "\n".join(lines)
    m = parse_manifest(text, "jsonl")
    _check_manifest(m, text.count("\n") + 1)


csv_cell = st.one_of(
    st.text(string.printable, max_size=12), st.sampled_from(["", "3", "-1", '{"name": "ndtm"}', "[1]"])
)


@SETTINGS
@given(
    st.lists(st.sampled_from([*FIELDS, "junk"]), min_size=1, max_size=8),
    st.lists(st.lists(csv_cell, max_size=9), max_size=6),
)
def test_manifest_parser_on_random_csv(header: list[str], rows: list[list[str]]) -> None:
    buf = io.StringIO()
    import csv

    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    text = buf.getvalue()
    try:
        m = parse_manifest(text, "csv")
    except ManifestError as e:
        assert "header" in str(e)
        return
    _check_manifest(m, text.count("\n") + 1)


# ---------------------------------------------------------------------------------------------------------------
# query files


def _png(seed: int, size: int = 12, mode: str = "L") -> bytes:
    from PIL import Image

    rng = np.random.RandomState(seed)
    arr = (rng.rand(size, size, *(() if mode == "L" else (3,))) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _npy(seed: int) -> bytes:
    buf = io.BytesIO()
    np.save(buf, (np.random.RandomState(seed).rand(3, 8, 8) * 255).astype(np.uint8))
    return buf.getvalue()


@st.composite
def damaged_files(draw: st.DrawFn) -> tuple[str, bytes]:
    """Random bytes, or a valid PNG / NPY / GIF header followed by damage: truncation, flipped bytes."""
    kind = draw(st.sampled_from(["random", "png", "png-rgb", "npy"]))
    suffix = draw(st.sampled_from([".png", ".jpg", ".gif", ".npy", ".bmp", ".webp", ".tif", ".txt"]))
    if kind == "random":
        return suffix, draw(st.binary(max_size=400))
    seed = draw(st.integers(0, 3))
    data = bytearray(_npy(seed) if kind == "npy" else _png(seed, mode="RGB" if kind == "png-rgb" else "L"))
    suffix = ".npy" if kind == "npy" else ".png"
    cut = draw(st.integers(0, len(data)))
    if draw(st.booleans()):
        data = data[:cut]
    for _ in range(draw(st.integers(0, 4))):
        if data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
    return suffix, bytes(data)


@SETTINGS
@given(damaged_files(), st.sampled_from([(1, 8, 8), (3, 8, 8)]))
def test_query_loader_on_random_and_damaged_files(file: tuple[str, bytes], shape: tuple[int, int, int]) -> None:
    suffix, data = file
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"query{suffix}"
        p.write_bytes(data)
        try:
            q = load_query(p, image_shape=shape, data_range=(-1.0, 1.0))
        except QueryError as e:
            assert str(e).strip() and str(p) in str(e)
            return
    assert q.shape == (1, *shape) and q.dtype == torch.float32
    assert torch.isfinite(q).all() and float(q.min()) >= -1 and float(q.max()) <= 1


def test_query_loader_refuses_a_decompression_bomb_header(tmp_path: Path) -> None:
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0))
    p = tmp_path / "bomb.png"
    p.write_bytes(png + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))
    with pytest.raises(QueryError, match=r"bomb\.png"):
        load_query(p, image_shape=(1, 8, 8), data_range=(-1, 1))
    big = tmp_path / "huge.npy"  # a header announcing 10^12 elements, with no data behind it
    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (1000000, 1000000), }".ljust(117) + b"\n"
    big.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header)
    with pytest.raises(QueryError, match=r"huge\.npy"):
        load_query(big, image_shape=(1, 8, 8), data_range=(-1, 1))


# ---------------------------------------------------------------------------------------------------------------
# idx files


def _idx(arr: np.ndarray) -> bytes:
    return b"\0\0\x08" + bytes([arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape) + arr.tobytes()


@SETTINGS
@given(
    st.one_of(
        st.binary(max_size=300),
        st.builds(lambda b, tail: b"\0\0" + b + tail, st.binary(min_size=2, max_size=2), st.binary(max_size=60)),
        st.builds(
            lambda n, cut: _idx(np.arange(n * 4, dtype=np.uint8).reshape(n, 2, 2))[:cut],
            st.integers(0, 5),
            st.integers(0, 40),
        ),
    ),
    st.booleans(),
    st.booleans(),
)
def test_idx_reader_on_random_bytes(data: bytes, gz: bool, damage_gzip: bool) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / ("x.idx.gz" if gz else "x.idx")
        payload = gzip.compress(data) if gz else data
        if gz and damage_gzip:
            assume(len(payload) > 12)
            payload = payload[: len(payload) // 2]
        p.write_bytes(payload)
        try:
            arr = read_idx(p)
        except ValueError as e:
            assert str(e).strip()
            return
    assert isinstance(arr, np.ndarray)
