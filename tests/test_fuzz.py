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
from typing import Any

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


# ---------------------------------------------------------------------------------------------------------------
# no input ends in an internal error (exit 1) or a traceback: manifests, CLI flags, sample_fiber arguments
# (issue 20). Tiny models and a few samples per example keep each test to seconds.

ENDINGS = {0, 2, 3, 4, 5, 6, 7, 8}  # every documented exit code but 1 (internal) and 130 (interrupt)
FUZZ = settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    """On-disk tiny models (zoo subject, 8×8 UNet prior), loaded once for the flag tests."""
    import os

    from audit_assets import make_assets

    assets = make_assets(tmp_path_factory.mktemp("fuzz-assets"))
    saved = {k: os.environ.get(k) for k in ("FIBERSCOPE_ZOO_DIR", "HF_HUB_OFFLINE")}
    os.environ.update(FIBERSCOPE_ZOO_DIR=str(assets.zoo), HF_HUB_OFFLINE="1")
    yield assets
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from fiberscope.cli import main

    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code if isinstance(e.code, int) else 2
    err = capsys.readouterr().err
    return code, err


def _check_ending(code: int, err: str) -> None:
    from hypothesis import event

    event(f"exit {code}")
    assert code in ENDINGS, err
    assert "internal error" not in err and "Traceback" not in err, err
    assert len([ln for ln in err.splitlines() if ": error: " in ln]) <= 1, err
    assert not any((ord(ch) < 32 and ch not in "\n\t") or ch == "\x7f" for ch in err), repr(err)


def _opt(values: list[str], extra: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[str | None]:
    s: st.SearchStrategy[Any] = st.sampled_from(values)
    if extra is not None:
        s = s | extra
    return st.one_of(st.none(), st.none(), st.none(), st.none(), s)  # mostly unset: some examples get to sample


short_text = st.text(max_size=8)
SAMPLE_FLAGS = {
    "--n": _opt(["0", "1", "2", "-1", "10000000", "1.5", "abc", "true"]),
    "--seed": _opt(["0", "3", "-1", "1.5", str(2**64), str(2**70), "x"]),
    "--inner-steps": _opt(["-1", "0", "1", "1000000000", "two"]),
    "--lr": _opt(["0", "0.05", "-1", "nan", "inf", "1e308", "x"]),
    "--gamma": _opt(
        ["1", "0", "-1", "nan", "1e308", "true", "null", "[]", "[[1,2]]", "[[0,0,1000,0]]", '{"a":1}'], short_text
    ),
    "--eta": _opt(["0", "0.5", "2", "nan"]),
    "--batch-size": _opt(["1", "0", "-1", "100001"]),
    "--method": _opt(["ndtm", "unguided", "dps", "tfg", "mpgd", "freedom", "ugd", "nonsense", ""], short_text),
    "--loss": _opt(["l2", "sq_l2", "cosine", "nope"], short_text),
    "--sampler": _opt(["ddim", "ancestral", "euler", "heun"]),
    "--device": _opt(["cpu", "cuda", "cuda:1", "meta", "gpu0", "-1"], short_text),
    "--dtype": _opt(["fp32", "bf16", "int8"]),
    "--layer": _opt(["penultimate", "logits", "nope"], short_text),
}


@settings(FUZZ, max_examples=30)
@given(
    flags=st.fixed_dictionaries(SAMPLE_FLAGS),
    steps=st.sampled_from(["1", "2", "1", "2", "0", "-3", "1000000000", "1e3"]),
    query=st.sampled_from(["good", "good", "missing", "folder", "garbage"]),
    prior=st.sampled_from(["good", "good", "good", "someorg/uncached", "builtin:nope", "builtin:mnist-cnn"]),
)
def test_sample_flags_never_end_in_an_internal_error(
    tiny,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flags: dict[str, str | None],
    steps: str,
    query: str,
    prior: str,
) -> None:
    d = Path(tempfile.mkdtemp(dir=tmp_path))
    q = {"good": tiny.queries[0], "missing": d / "nope.png", "folder": d, "garbage": d / "g.png"}[query]
    (d / "g.png").write_bytes(b"\x89PNG not really")
    prior = str(tiny.prior) if prior == "good" else prior
    argv = ["sample", str(q), "--subject", "builtin:mnist-cnn", "--prior", prior, "--out", str(d / "o")]
    argv += ["--steps", steps, "-q", "--no-report"]
    for flag, value in flags.items():
        if value is not None:
            argv.append(f"{flag}={value}")  # `=`: a value that starts with '-' is still this flag's value
    code, err = _cli(argv, capsys)
    _check_ending(code, err)


@st.composite
def audit_units(draw: st.DrawFn, assets: Any) -> dict[str, Any]:
    """Work units near the valid ones: every field valid, missing or wrong; methods with ≤ 2 steps."""
    u: dict[str, Any] = assets.unit(draw(st.integers(0, 3)))
    u["n"] = draw(st.sampled_from([1, 2, 0, -1, True, 1.5, "2", 10**7, None]))
    u["seed"] = draw(st.sampled_from([0, 1, -1, 2**64, 1.5, "3", False, None]))
    u["method"] = draw(
        st.sampled_from(
            [
                {"name": "ndtm", "steps": 2, "inner_steps": 1},
                {"name": "unguided", "steps": 2},
                {"name": "unguided", "steps": 2, "inner_steps": 3},
                {"name": "dps", "steps": 2},
                {"name": "ndtm", "steps": True},
                {"name": "ndtm", "steps": 10**9},
                {"name": "ndtm", "steps": 2, "gamma": 1e308},
                {"name": "ndtm", "steps": 2, "gamma": [[1, 1, 1000, 0]], "inner_steps": 1},
                {"name": "nope"},
                "unguided",
                7,
            ]
        )
    )
    u["query"] = draw(st.sampled_from([u["query"], "missing.png", "", "\x1b[2J.png", str(assets.root), 3]))
    u["prior"] = draw(st.sampled_from([u["prior"], u["prior"], "someorg/uncached", "builtin:nope", "nonsense"]))
    u["subject"] = draw(st.sampled_from([u["subject"], u["subject"], "builtin:nope", "timm:nope_net"]))
    u["layer"] = draw(st.sampled_from([None, "penultimate", "nope", {"penultimate": 1e308}, [], 5]))
    if draw(st.booleans()):
        u[draw(st.sampled_from(["label", "steps", "Query"]))] = draw(json_scalars)
    return {k: v for k, v in u.items() if v is not None or k == "layer"}


@settings(FUZZ, max_examples=12)
@given(data=st.data(), fmt=st.sampled_from(["jsonl", "csv"]), extra=st.lists(st.text(max_size=30), max_size=2))
def test_audit_manifests_never_end_in_an_internal_error(
    tiny, tmp_path: Path, capsys: pytest.CaptureFixture[str], data: st.DataObject, fmt: str, extra: list[str]
) -> None:
    import csv

    units = data.draw(st.lists(audit_units(tiny), min_size=1, max_size=3))
    d = Path(tempfile.mkdtemp(dir=tmp_path))
    if fmt == "jsonl":
        text = "".join(json.dumps(u) + "\n" for u in units) + "".join(e.replace("\n", " ") + "\n" for e in extra)
    else:
        buf = io.StringIO()
        cols = ["query", "subject", "prior", "layer", "method", "n", "seed", "label"]
        w = csv.writer(buf)
        w.writerow(cols)
        for u in units:
            w.writerow([json.dumps(u.get(c)) if isinstance(u.get(c), (dict, list)) else u.get(c, "") for c in cols])
        text = buf.getvalue()
    m = d / f"m.{fmt}"
    m.write_text(text)
    dry = data.draw(st.booleans())
    code, err = _cli(["audit", str(m), "--out", str(d / "o"), "-q", "--device", "cpu", "--no-report"]
                     + (["--dry-run"] if dry else []), capsys)  # fmt: skip
    _check_ending(code, err)
    summary = d / "o" / "summary.jsonl"
    if summary.exists():
        rows = [json.loads(line) for line in summary.read_text().splitlines()]
        assert all(r.get("code") != 1 for r in rows), rows


@st.composite
def api_calls(draw: st.DrawFn) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if draw(st.booleans()):
        kw["n"] = draw(st.one_of(st.integers(-2, 3), st.sampled_from([True, 1.5, "2", None, 10**7])))
    if draw(st.booleans()):
        kw["seed"] = draw(st.one_of(st.integers(-1, 2**64), st.sampled_from([1.5, "1", None, True, 2**70])))
    if draw(st.booleans()):
        kw["seeds"] = draw(
            st.one_of(
                st.lists(st.integers(-1, 2**63), min_size=0, max_size=3),
                st.lists(st.sampled_from([True, 1.5, "1", None]), min_size=1, max_size=2),
                st.sampled_from(["12", 12, b"1", {"a": 1}, np.array([1, 2])]),
            )
        )
    if draw(st.booleans()):
        kw["batch_size"] = draw(st.sampled_from([None, 1, 2, 0, -1, True, 1.5]))
    if draw(st.booleans()):
        kw["dtype"] = draw(st.sampled_from([None, torch.float32, torch.float16, torch.int64, "fp16", "nope", 3]))
    if draw(st.booleans()):
        kw["device"] = draw(st.sampled_from([None, "cpu", "cuda", "meta", "gpu0", 0, torch.device("cpu")]))
    if draw(st.booleans()):
        kw["metric"] = draw(st.sampled_from(["sq_l2", "l2", "cosine", "nope", 3]))
    kw["method"] = draw(st.sampled_from(["unguided", "ndtm", "string", "none"]))
    kw["query"] = draw(st.sampled_from(["zeros", "nan", "uint8", "wrong-shape", "missing", "int"]))
    return kw


@settings(FUZZ, max_examples=80)
@given(api_calls())
def test_sample_fiber_arguments_never_end_in_an_internal_error(kw: dict[str, Any]) -> None:
    import fiberscope as fs
    from conftest import TinyCNN
    from fiberscope.errors import exit_code_for

    prior = fs.GaussianPrior(shape=(1, 8, 8), data_range=(-1.0, 1.0))
    kw["method"] = {
        "unguided": fs.Unguided(steps=2),
        "ndtm": fs.NDTM(steps=2, inner_steps=1, gamma=1.0),
        "string": "ndtm",
        "none": None,
    }[kw["method"]]
    if kw["method"] is None:
        kw["method"] = fs.NDTM(steps=2, inner_steps=1)
    kw["query"] = {
        "zeros": torch.zeros(1, 1, 8, 8),
        "nan": torch.full((1, 1, 8, 8), float("nan")),
        "uint8": np.zeros((8, 8), np.uint8),
        "wrong-shape": torch.zeros(1, 3, 5, 5),
        "missing": "/nonexistent/q.png",
        "int": 3,
    }[kw["query"]]
    query = kw.pop("query")
    try:
        out = fs.sample_fiber(TinyCNN(), query, prior, progress=False, **kw)
    except Exception as e:  # a refusal: never classified as a bug, and it says what is wrong
        assert exit_code_for(e) != 1, f"{type(e).__name__}: {e}"
        assert str(e).strip()
        return
    n = len(kw["seeds"]) if kw.get("seeds") is not None else kw.get("n", 8)
    assert len(out) == n and torch.isfinite(out.images).all()
