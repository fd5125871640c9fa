"""Failing safely: every fault gets a one-line error naming the problem and the fix, a documented
non-zero exit code, and loses nothing already written. See docs/reliability.md for the table."""

from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fiberscope as fs
import fiberscope.loading as fs_loading
import fiberscope.utils as fs_utils
from audit_assets import Assets, make_assets, one_thread, write_jsonl
from fiberscope.cli import EXIT, main

_one_thread = pytest.fixture(autouse=True)(one_thread)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    return make_assets(tmp_path_factory.mktemp("failure-assets"))


@pytest.fixture(autouse=True)
def _zoo(assets: Assets, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIBERSCOPE_ZOO_DIR", str(assets.zoo))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


FAST = ["--steps", "3", "--inner-steps", "1", "--n", "2", "-q", "--device", "cpu"]


def _sample(assets: Assets, query: Path | str, out: Path, *extra: str, subject: str = "builtin:mnist-cnn") -> list[str]:
    return ["sample", str(query), "--subject", subject, "--prior", str(assets.prior), "--out", str(out), *FAST, *extra]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def _one_error_line(err: str, *needles: str) -> str:
    """The stderr holds exactly one error line, and it names every needle."""
    lines = [ln for ln in err.splitlines() if ": error: " in ln]
    assert len(lines) == 1, err
    for n in needles:
        assert n.lower() in lines[0].lower(), (n, lines[0])
    return lines[0]


# ---------------------------------------------------------------------------------------------------------------
# bad query images


def test_missing_corrupt_and_truncated_images(assets: Assets, tmp_path: Path, capsys) -> None:
    code, err = _run(_sample(assets, tmp_path / "nope.png", tmp_path / "o1"), capsys)
    assert code == EXIT["input"]
    _one_error_line(err, "nope.png", "does not exist", "check the path")

    bad = tmp_path / "noise.png"
    bad.write_bytes(os.urandom(300))
    code, err = _run(_sample(assets, bad, tmp_path / "o2"), capsys)
    assert code == EXIT["input"]
    _one_error_line(err, "noise.png", "corrupt", "re-export")

    big = tmp_path / "big.png"
    Image.fromarray((np.random.RandomState(0).rand(64, 64) * 255).astype(np.uint8)).save(big)
    cut = tmp_path / "cut.png"
    cut.write_bytes(big.read_bytes()[: big.stat().st_size // 2])
    code, err = _run(_sample(assets, cut, tmp_path / "o3"), capsys)
    assert code == EXIT["input"]
    _one_error_line(err, "cut.png", "truncated")

    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    code, err = _run(_sample(assets, empty, tmp_path / "o4"), capsys)
    assert code == EXIT["input"] and "empty" in _one_error_line(err)
    # every bad query is refused before any sampling starts: nothing was written
    assert not [p for d in ("o1", "o2", "o3", "o4") for p in (tmp_path / d).glob("*.png")]


def test_a_bad_image_in_a_folder_fails_before_sampling_starts(assets: Assets, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "qs"
    folder.mkdir()
    Image.open(assets.queries[0]).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    code, err = _run(_sample(assets, folder, tmp_path / "out"), capsys)
    assert code == EXIT["input"]
    _one_error_line(err, "b.png")
    assert not (tmp_path / "out" / "a").exists()  # a.png was not sampled only to fail on b.png afterwards


def test_channel_count_and_size_mismatches(assets: Assets, tmp_path: Path, capsys, monkeypatch) -> None:
    five = tmp_path / "five.npy"
    np.save(five, np.zeros((5, 8, 8), np.uint8))
    code, err = _run(_sample(assets, five, tmp_path / "o1"), capsys)
    assert code == EXIT["input"]
    _one_error_line(err, "5 channels", "grey↔RGB")

    real = fs.load_subject

    def fake(spec, layer=None, **kw):
        if spec == "test:rgb-net":  # a subject that wants 3 channels, given a 1-channel prior
            return real(torch.nn.Conv2d(3, 4, 3), **kw)
        if spec == "test:mlp-28":  # a subject that wants 28×28 images, given an 8×8 prior
            return real(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)), **kw)
        return real(spec, layer, **kw)

    monkeypatch.setattr(fs_loading, "load_subject", fake)
    for spec in ("test:rgb-net", "test:mlp-28"):
        code, err = _run(_sample(assets, assets.queries[0], tmp_path / spec, subject=spec), capsys)
        assert code == EXIT["input"], err
        _one_error_line(err, "cannot take the prior's images", "(1, 8, 8)", "pair it with a prior")


# ---------------------------------------------------------------------------------------------------------------
# subjects that cannot be steered


def test_subject_without_gradient_or_with_nan(assets: Assets, tmp_path: Path, capsys, monkeypatch) -> None:
    real = fs.load_subject

    def blocked(x):
        with torch.no_grad():
            return x.flatten(1)[:, :4] * 2

    def nan_features(x):
        return x.flatten(1)[:, :4] * float("nan")

    class NanLater(torch.nn.Module):  # fine for the checks before sampling, NaN once guidance runs
        calls = 0

        def forward(self, x):
            NanLater.calls += 1
            f = x.flatten(1)[:, :4]
            return f * float("nan") if NanLater.calls > 4 else f

    def fake(spec, layer=None, **kw):
        return {
            "test:no-grad": lambda: real(blocked, **kw),
            "test:nan": lambda: real(nan_features, **kw),
            "test:nan-later": lambda: real(NanLater(), **kw),
        }[spec]()

    monkeypatch.setattr(fs_loading, "load_subject", fake)
    code, err = _run(_sample(assets, assets.queries[0], tmp_path / "a", subject="test:no-grad"), capsys)
    assert code == EXIT["numeric"]
    _one_error_line(err, "no gradient", "remove the no_grad")
    code, err = _run(_sample(assets, assets.queries[0], tmp_path / "b", subject="test:nan"), capsys)
    assert code == EXIT["numeric"]
    _one_error_line(err, "NaN", "fix the operations")
    code, err = _run(_sample(assets, assets.queries[0], tmp_path / "c", subject="test:nan-later"), capsys)
    assert code == EXIT["numeric"]
    _one_error_line(err, "NaN/inf at step", "lower the learning rate")
    assert not list((tmp_path / "c").glob("*.npz"))


# ---------------------------------------------------------------------------------------------------------------
# models that are not there; pickle checkpoints


def test_unknown_or_uncached_model_ids(assets: Assets, tmp_path: Path, capsys) -> None:
    argv = _sample(assets, assets.queries[0], tmp_path / "a")
    argv[argv.index("--prior") + 1] = "someorg/not-a-cached-model"
    code, err = _run(argv, capsys)
    assert code == EXIT["model"]
    _one_error_line(
        err, "someorg/not-a-cached-model", "not in the local Hugging Face cache", "huggingface-cli download"
    )

    code, err = _run(_sample(assets, assets.queries[0], tmp_path / "b", subject="builtin:no-such-model"), capsys)
    assert code == EXIT["model"]
    _one_error_line(err, "no-such-model", "fiberscope zoo list")


def test_pickle_checkpoints_need_trust_pickle(assets: Assets, tmp_path: Path, capsys) -> None:
    from diffusers import DDPMPipeline, DDPMScheduler

    from conftest import tiny_unet

    pickled = tmp_path / "pickled-prior"
    DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(
        str(pickled), safe_serialization=False
    )
    assert not list(pickled.rglob("*.safetensors"))
    argv = _sample(assets, assets.queries[0], tmp_path / "out")
    argv[argv.index("--prior") + 1] = str(pickled)
    code, err = _run(argv, capsys)
    assert code == EXIT["weights"] and not (tmp_path / "out" / "record.json").exists()
    _one_error_line(err, "no .safetensors", "--trust-pickle")
    code, err = _run([*argv, "--trust-pickle"], capsys)  # explicitly trusted: read with weights_only=True
    assert code == 0, err
    assert (tmp_path / "out" / "record.json").is_file()


def test_trust_pickle_reaches_the_loaders(assets: Assets, tmp_path: Path, monkeypatch) -> None:
    seen: list[tuple[str, object]] = []
    real_prior, real_subject = fs.load_prior, fs.load_subject

    def prior(spec, *, device=None, dtype=None, trust_pickle=False):
        seen.append(("prior", trust_pickle))
        return real_prior(spec, device=device, dtype=dtype)

    def subject(spec, layer=None, **kw):  # a library spec such as "timm:..." takes trust_pickle=True
        seen.append(("subject", kw.get("trust_pickle")))
        return real_subject("builtin:mnist-cnn", layer, device=kw.get("device"))

    monkeypatch.setattr(fs_loading, "load_prior", prior)
    monkeypatch.setattr(fs_loading, "load_subject", subject)
    manifest = write_jsonl(tmp_path / "m.jsonl", [assets.unit(0, subject="timm:any")])
    assert main(["audit", str(manifest), "--out", str(tmp_path / "a"), "-q", "--trust-pickle", "--device", "cpu"]) == 0
    assert main(["audit", str(manifest), "--out", str(tmp_path / "b"), "-q", "--device", "cpu"]) == 0
    assert seen == [("prior", True), ("subject", True), ("prior", False), ("subject", None)]


# ---------------------------------------------------------------------------------------------------------------
# output problems


def test_unwritable_output_directory(assets: Assets, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, err = _run(_sample(assets, assets.queries[0], blocker / "out"), capsys)
    assert code == EXIT["output"]
    _one_error_line(err, "cannot write to", "choose another --out")
    manifest = write_jsonl(tmp_path / "m.jsonl", [assets.unit(0)])
    code, err = _run(["audit", str(manifest), "--out", str(blocker / "audit"), "-q"], capsys)
    assert code == EXIT["output"]
    _one_error_line(err, "cannot write to")
    assert blocker.read_text() == "not a directory"


@contextlib.contextmanager
def _disk_fills_up(monkeypatch: pytest.MonkeyPatch, when: str, exc: BaseException | None = None):
    """Every atomic write whose path contains ``when`` (and every write after it) fails like a full disk.

    With ``exc`` (e.g. KeyboardInterrupt) only the writes whose path contains ``when`` raise it.
    """
    real = fs_utils.atomic_writer
    state = {"full": False}

    @contextlib.contextmanager
    def writer(path, mode="w"):
        with real(path, mode) as f:
            if when in str(path) or (state["full"] and exc is None):
                state["full"] = True

                class Full:
                    def write(self, data):
                        f.write(data[: len(data) // 2])  # part of it lands in the temporary file
                        raise exc if exc is not None else OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

                    def __getattr__(self, k):
                        return getattr(f, k)

                yield Full()
            else:
                yield f

    monkeypatch.setattr(fs_utils, "atomic_writer", writer)
    yield state
    monkeypatch.setattr(fs_utils, "atomic_writer", real)


def test_full_disk_mid_audit_stops_cleanly_and_a_rerun_finishes(assets: Assets, tmp_path: Path, capsys, monkeypatch):
    from fiberscope.audit import ShardInfo, read_manifest, shard_units

    manifest = write_jsonl(tmp_path / "m.jsonl", [assets.unit(i) for i in range(3)])
    order = shard_units(read_manifest(manifest).units, ShardInfo())
    out = tmp_path / "out"
    argv = ["audit", str(manifest), "--out", str(out), "-q", "--device", "cpu"]
    with _disk_fills_up(monkeypatch, f".partial-{order[1].key}") as state:
        code, err = _run(argv, capsys)
    assert state["full"] and code == EXIT["output"]
    _one_error_line(err, "no space left on device", "free space")
    units = sorted(p.name for p in (out / "units").iterdir())
    assert units == [order[0].dirname]  # the unit finished before the disk filled up is intact
    fs.FiberSamples.load(out / "units" / order[0].dirname)
    assert not list(out.rglob("*.tmp"))
    before = (out / "units" / order[0].dirname / "record.json").read_bytes()

    code, err = _run(argv, capsys)  # space freed: the rerun finishes the rest
    assert code == 0, err
    assert len(list((out / "units").iterdir())) == 3
    assert (out / "units" / order[0].dirname / "record.json").read_bytes() == before


def test_full_disk_during_sample_keeps_earlier_files_whole(assets: Assets, tmp_path: Path, capsys, monkeypatch):
    out = tmp_path / "out"
    with _disk_fills_up(monkeypatch, "samples.npz"):
        code, err = _run(_sample(assets, assets.queries[0], out), capsys)
    assert code == EXIT["output"]
    _one_error_line(err, "no space left on device")
    assert not (out / "samples.npz").exists() and not (out / "record.json").exists()
    assert not list(out.glob("*.tmp"))
    for png in out.glob("*.png"):  # the files written before the disk filled up are complete
        Image.open(png).load()


def test_interrupt_while_writing_discards_the_unit(assets: Assets, tmp_path: Path, capsys, monkeypatch) -> None:
    from fiberscope.audit import ShardInfo, read_manifest, shard_units

    manifest = write_jsonl(tmp_path / "m.jsonl", [assets.unit(i) for i in range(2)])
    order = shard_units(read_manifest(manifest).units, ShardInfo())
    out = tmp_path / "out"
    with _disk_fills_up(monkeypatch, f".partial-{order[1].key}", KeyboardInterrupt()):
        code, err = _run(["audit", str(manifest), "--out", str(out), "-q", "--device", "cpu"], capsys)
    assert code == EXIT["interrupt"] and "discarded" in err
    assert sorted(p.name for p in (out / "units").iterdir()) == [order[0].dirname]
    rows = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]
    assert sorted(r["status"] for r in rows) == ["done", "pending"]


# ---------------------------------------------------------------------------------------------------------------
# manifests and per-unit failures


def test_malformed_manifest_lines_are_reported_and_the_rest_run(assets: Assets, tmp_path: Path, capsys) -> None:
    manifest = write_jsonl(
        tmp_path / "m.jsonl",
        [assets.unit(0), '{"query": "x.png", "subject"', assets.unit(1), {"query": "y.png", "prior": "p"}],
    )
    code, err = _run(["audit", str(manifest), "--out", str(tmp_path / "out"), "-q", "--device", "cpu"], capsys)
    assert code == EXIT["partial"]
    assert f"{manifest}:2: bad manifest line skipped: not valid JSON" in err
    assert f"{manifest}:4: bad manifest line skipped: missing 'subject'" in err
    assert len(list((tmp_path / "out" / "units").iterdir())) == 2
    summary = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert (summary["done"], summary["invalid"]) == (2, 2) and [b["line"] for b in summary["bad_lines"]] == [2, 4]

    empty = write_jsonl(tmp_path / "bad.jsonl", ["nonsense", "[]"])
    code, err = _run(["audit", str(empty), "--out", str(tmp_path / "out2"), "-q"], capsys)
    assert code == EXIT["input"]
    _one_error_line(err, "no valid work units")
    code, err = _run(["audit", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "out3"), "-q"], capsys)
    assert code == EXIT["input"]
    _one_error_line(err, "missing.jsonl", "does not exist")


def test_a_failing_unit_does_not_stop_the_others(assets: Assets, tmp_path: Path, capsys) -> None:
    manifest = write_jsonl(
        tmp_path / "m.jsonl", [assets.unit(0), assets.unit(1, query=str(tmp_path / "gone.png")), assets.unit(2)]
    )
    out = tmp_path / "out"
    code, err = _run(["audit", str(manifest), "--out", str(out), "-q", "--device", "cpu"], capsys)
    assert code == EXIT["partial"]
    assert "unit 2: query file" in err and "gone.png does not exist" in err
    rows = {r["line"]: r for r in map(json.loads, (out / "summary.jsonl").read_text().splitlines())}
    assert [rows[i]["status"] for i in (1, 2, 3)] == ["done", "failed", "done"]
    assert rows[2]["code"] == EXIT["input"] and "gone.png" in rows[2]["error"]
    failed = json.loads(next((out / "failed").iterdir()).read_text())
    assert "Traceback" in failed["traceback"]

    # every unit fails for the same reason: the audit exits with that reason's code
    manifest = write_jsonl(tmp_path / "all.jsonl", [assets.unit(i, prior="someorg/uncached") for i in range(2)])
    code, err = _run(["audit", str(manifest), "--out", str(tmp_path / "o2"), "-q", "--device", "cpu"], capsys)
    assert code == EXIT["model"] and err.count("not in the local Hugging Face cache") == 2


def test_unreadable_query_paths_and_report_outputs(assets: Assets, tmp_path: Path, capsys) -> None:
    long_name = tmp_path / ("q" * 300 + ".png")  # ENAMETOOLONG from stat(), not "does not exist"
    manifest = write_jsonl(
        tmp_path / "m.jsonl",
        [assets.unit(0), assets.unit(1, query=str(long_name)), assets.unit(2, query=str(tmp_path))],
    )
    out = tmp_path / "out"
    code, err = _run(["audit", str(manifest), "--out", str(out), "-q", "--device", "cpu"], capsys)
    assert code == EXIT["partial"], err
    rows = {r["line"]: r for r in map(json.loads, (out / "summary.jsonl").read_text().splitlines())}
    assert [rows[i]["status"] for i in (1, 2, 3)] == ["done", "failed", "failed"]
    assert rows[2]["code"] == rows[3]["code"] == EXIT["input"]
    assert "cannot be read (File name too long)" in rows[2]["error"] and "is a directory" in rows[3]["error"]

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, err = _run(["report", str(out), "--out", str(blocker / "report.html")], capsys)
    assert code == EXIT["output"]
    _one_error_line(err, "cannot write output", "choose another --out")
    (tmp_path / "empty").mkdir()
    code, err = _run(["report", str(tmp_path / "empty")], capsys)
    assert code == EXIT["input"]
    _one_error_line(err, "no fiberscope results", "fiberscope audit")


# ---------------------------------------------------------------------------------------------------------------
# the HTML report escapes names taken from files and manifests


def test_report_escapes_file_names_and_manifest_values(assets: Assets, tmp_path: Path, capsys) -> None:
    evil_dir = tmp_path / "<script>alert(1)<"  # with the file below: .../<script>alert(1)</script>.png
    evil_dir.mkdir()
    evil = evil_dir / "script>.png"
    Image.open(assets.queries[0]).save(evil)
    manifest = write_jsonl(
        tmp_path / "m.jsonl",
        [
            assets.unit(0, query=str(evil), label='"&<> label'),
            assets.unit(1, query=str(evil_dir / "missing<b>.png")),
            '{"query": "<img src=x onerror=alert(2)>"',
        ],
    )
    out = tmp_path / "out"
    code, _ = _run(["audit", str(manifest), "--out", str(out), "-q", "--device", "cpu"], capsys)
    assert code == EXIT["partial"]
    html = (out / "report.html").read_text()
    assert "<script>alert(1)" not in html and "<img src=x" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.png" in html
    assert "&quot;&amp;&lt;&gt; label" in html
    assert "missing&lt;b&gt;.png" in html and "&lt;img src=x onerror=alert(2)&gt;" in html

    folder = tmp_path / "qs"
    folder.mkdir()
    Image.open(assets.queries[1]).save(folder / "<img src=y onerror=alert(3)>.png")
    Image.open(assets.queries[2]).save(folder / "plain.png")
    assert main(_sample(assets, folder, tmp_path / "sample-out")) == 0
    html = (tmp_path / "sample-out" / "report.html").read_text()
    assert "<img src=y" not in html and "&lt;img src=y onerror=alert(3)&gt;" in html


# ---------------------------------------------------------------------------------------------------------------
# issue 20, items 9 and 10: every bad input a user can name has its own exit class, never "internal error";
# flags are checked before any model loads; nothing a user wrote reaches the terminal unescaped


@pytest.fixture
def _count_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    loads: list[str] = []
    real_prior, real_subject = fs.load_prior, fs.load_subject

    def prior(spec, **kw):
        loads.append(f"prior {spec}")
        return real_prior(spec, **kw)

    def subject(spec, layer=None, **kw):
        loads.append(f"subject {spec}")
        return real_subject(spec, layer, **kw)

    monkeypatch.setattr(fs_loading, "load_prior", prior)
    monkeypatch.setattr(fs_loading, "load_subject", subject)
    return loads


def test_bad_flags_are_usage_errors_named_before_any_model_loads(
    assets: Assets, tmp_path: Path, capsys, _count_loads: list[str]
) -> None:
    manifest = write_jsonl(tmp_path / "m.jsonl", [assets.unit(0)])
    audit = ["audit", str(manifest), "--out", str(tmp_path / "a"), "-q", "--device", "cpu"]
    q = assets.queries[0]
    cases = [
        (_sample(assets, q, tmp_path / "o", "--seed", "-1"), r"--seed must be an integer in [0, 18446744073709551615]"),
        (_sample(assets, q, tmp_path / "o", "--n", "10000000"), "--n must be an integer in [1, 100000]"),
        (_sample(assets, q, tmp_path / "o", "--steps", "1000000000"), "--steps must be an integer in [1, 10000]"),
        (_sample(assets, q, tmp_path / "o", "--inner-steps", "1000000000"), "--inner-steps must be an integer"),
        (_sample(assets, q, tmp_path / "o", "--gamma", "1e308"), "NDTM.gamma must be a finite number in [0, 10000]"),
        (_sample(assets, q, tmp_path / "o", "--gamma", "true"), "NDTM.gamma must be a number"),
        (_sample(assets, q, tmp_path / "o", "--lr", "1e308"), "--lr must be a finite number in (0, 1000]"),
        (_sample(assets, q, tmp_path / "o", "--method", "unguided"), "unknown setting(s) ['inner_steps']"),
        (_sample(assets, q, tmp_path / "o", "--device", "gpu0"), "--device 'gpu0' is not a device name"),
        ([*audit, "--threads", "-1"], "--threads must be an integer in [1, 1024]"),
        ([*audit, "--threads", "0"], "--threads must be an integer in [1, 1024]"),
        ([*audit, "--batch-size", "0"], "--batch-size must be an integer in [1, 100000]"),  # was: per unit, after loads
        ([*audit, "--cache-size", "0"], "--cache-size must be an integer in [1, 1000]"),
        (["zoo", "evaluate", "mnist-ddpm", "--n", "0", "--no-write"], "--n must be an integer in [1, 100000]"),
        (["zoo", "train", "mnist-cnn", "--threads", "-1"], "--threads must be an integer"),
    ]
    if not torch.cuda.is_available():
        cases += [
            (_sample(assets, q, tmp_path / "o", "--device", "cuda"), "no CUDA GPU is visible on this machine"),
            ([*audit, "--device", "cuda:1"], "no CUDA GPU is visible on this machine"),
            (["demo", "--quick", "--device", "cuda", "--out", str(tmp_path / "d")], "no CUDA GPU is visible"),
        ]
    for argv, needle in cases:
        code, err = _run(argv, capsys)
        assert code == EXIT["usage"], (argv, err)
        _one_error_line(err, needle)
    assert _count_loads == []
    assert not (tmp_path / "o").exists()


def test_unknown_zoo_names_are_model_not_available(capsys) -> None:
    for sub in (["card", "nope"], ["evaluate", "nope", "--n", "2"], ["export", "nope"], ["show", "builtin:nope"]):
        code, err = _run(["zoo", *sub], capsys)
        assert code == EXIT["model"], (sub, err)
        _one_error_line(err, "no built-in model named", "mnist-ddpm", "fiberscope zoo list")


def _damaged_prior(assets: Assets, root: Path, how: str) -> Path:
    import shutil

    from safetensors.torch import load_file, save_file

    d = root / f"prior-{how}"
    shutil.copytree(assets.prior, d)
    w = d / "unet" / "diffusion_pytorch_model.safetensors"
    unet_cfg, sched = d / "unet" / "config.json", d / "scheduler" / "scheduler_config.json"
    if how == "zero-byte":
        w.write_bytes(b"")
    elif how == "truncated":
        w.write_bytes(w.read_bytes()[:3000])
    elif how == "wrong-shape":
        sd = load_file(str(w))
        k = next(iter(sd))
        sd[k] = sd[k].new_zeros(tuple(s + 2 for s in sd[k].shape))
        save_file(sd, str(w))
    elif how == "scheduler-list":
        sched.write_text("[1, 2]")
    elif how == "prediction-nonsense":
        sched.write_text(json.dumps({**json.loads(sched.read_text()), "prediction_type": "nonsense"}))
    elif how.startswith("sample-size"):
        size = {"sample-size-0": 0, "sample-size-neg": -5, "sample-size-huge": 10**6}[how]
        unet_cfg.write_text(json.dumps({**json.loads(unet_cfg.read_text()), "sample_size": size}))
    elif how == "broken-config":
        unet_cfg.write_text('{"_class_name": "UNet2DModel",')
    elif how == "no-weights":
        w.unlink()
    return d


@pytest.mark.parametrize(
    "how, needle",
    [
        ("zero-byte", "cannot be loaded"),
        ("truncated", "cannot be loaded"),
        ("wrong-shape", "size mismatch"),
        ("scheduler-list", "scheduler_config.json must hold a JSON object, got list"),
        ("prediction-nonsense", "prediction_type 'nonsense' is not one of"),
        ("sample-size-0", "sample_size must be an integer"),
        ("sample-size-neg", "sample_size must be an integer"),
        ("sample-size-huge", "in [1, 8192], got 1000000"),
        ("broken-config", "unet/config.json is not valid JSON"),
        ("no-weights", "no weights (.safetensors) found in"),
    ],
)
def test_damaged_model_files_are_bad_weights_naming_the_file(
    assets: Assets, tmp_path: Path, capsys, how: str, needle: str
) -> None:
    d = _damaged_prior(assets, tmp_path, how)
    argv = _sample(assets, assets.queries[0], tmp_path / "out")
    argv[argv.index("--prior") + 1] = str(d)
    code, err = _run(argv, capsys)
    assert code == EXIT["weights"], err
    _one_error_line(err, needle, str(d))
    assert not (tmp_path / "out" / "record.json").exists()


def test_special_query_files_and_layouts_are_named(assets: Assets, tmp_path: Path, capsys) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    hwc5 = tmp_path / "hwc5.npy"
    np.save(hwc5, np.zeros((28, 28, 5), np.uint8))
    for query, needle in [
        (fifo, "is a FIFO (named pipe), not a regular file"),
        ("/dev/zero", "is a character device, not a regular file"),
        ("/proc/self/status", "is not an image"),
        (hwc5, "has 5 channels and the prior wants 1"),
    ]:
        code, err = _run(_sample(assets, query, tmp_path / "o"), capsys)
        assert code == EXIT["input"], err
        line = _one_error_line(err, needle)
        assert "empty (0 bytes)" not in line and "28 channels" not in line


def test_an_error_inside_a_subject_is_not_called_a_shape_mismatch(
    assets: Assets, tmp_path: Path, capsys, monkeypatch
) -> None:
    real = fs.load_subject

    def raises(x):
        raise RuntimeError("my feature extractor lost its lookup table")

    monkeypatch.setattr(fs_loading, "load_subject", lambda spec, layer=None, **kw: real(raises, **kw))
    code, err = _run(_sample(assets, assets.queries[0], tmp_path / "o", subject="test:raises"), capsys)
    assert code == EXIT["input"]
    line = _one_error_line(err, "failed on the query (RuntimeError: my feature extractor lost its lookup table)")
    assert "cannot take the prior's images" not in line


def test_terminal_escapes_in_names_are_printed_escaped(assets: Assets, tmp_path: Path, capsys) -> None:
    evil = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred\u202e"
    code, err = _run(_sample(assets, tmp_path / f"{evil}.png", tmp_path / "o"), capsys)
    assert code == EXIT["input"] and "\\x1b]0;pwned\\x07" in err
    manifest = write_jsonl(
        tmp_path / "m.jsonl",
        [assets.unit(0, label=evil), assets.unit(1, query=str(tmp_path / f"{evil}.png")), {"query": evil}],
    )
    code, err2 = _run(["audit", str(manifest), "--out", str(tmp_path / "a"), "-q", "--device", "cpu"], capsys)
    assert code == EXIT["partial"]
    with pytest.raises(SystemExit):
        main(["sample", "q.png", "--\x1b[2Jevil"])  # argparse's own errors quote the argument
    err3 = capsys.readouterr().err
    for text in (err, err2, err3):
        assert not any((ord(ch) < 32 and ch not in "\n\t") or ch in "\x7f\u202e" for ch in text), repr(text)
    assert "\\x1b[2J" in err3
