"""`fiberscope audit`: manifests, atomic per-unit results, resume, model reuse, sharding, real SIGKILL / SIGINT."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

import fiberscope as fs
from audit_assets import FAST_METHOD, Assets, fiberscope_cmd, make_assets, one_thread, write_jsonl
from fiberscope.audit import (
    ModelCache,
    RunOptions,
    ShardInfo,
    parse_manifest,
    read_manifest,
    resolve_shard,
    run_audit,
    shard_units,
    split_units,
)
from fiberscope.errors import ShardError

_one_thread = pytest.fixture(autouse=True)(one_thread)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    return make_assets(tmp_path_factory.mktemp("audit-assets"))


@pytest.fixture(autouse=True)
def _zoo(assets: Assets, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIBERSCOPE_ZOO_DIR", str(assets.zoo))
    for var in ("RANK", "WORLD_SIZE", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"):
        monkeypatch.delenv(var, raising=False)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _unit_arrays(out: Path) -> dict[str, tuple[list[float], dict[str, np.ndarray]]]:
    res = {}
    for d in sorted((out / "units").iterdir()):
        rec = json.loads((d / "record.json").read_text())
        with np.load(d / "samples.npz", allow_pickle=False) as z:
            res[d.name] = (rec["fiber_loss"], {k: z[k] for k in z.files})
    return res


def _assert_no_debris(out: Path) -> None:
    """No staging directory, temporary file or half-written unit anywhere under ``out``."""
    assert not [p for p in out.rglob(".partial-*")], "staging directories left behind"
    assert not [p for p in out.rglob("*.tmp")], "temporary files left behind"
    for d in (out / "units").iterdir():
        assert not d.name.startswith("."), d
        fs.FiberSamples.load(d)  # every finished unit reads back completely


# ---------------------------------------------------------------------------------------------------------------
# manifests


def test_manifest_jsonl_and_csv_give_the_same_units_and_stable_keys(tmp_path: Path) -> None:
    jsonl = tmp_path / "m.jsonl"
    write_jsonl(
        jsonl,
        [
            {"query": "a.png", "subject": "builtin:mnist-cnn", "prior": "builtin:mnist-ddpm", "n": 4, "seed": 0},
            "",
            "# a comment",
            {
                "query": "b.png",
                "subject": "builtin:mnist-cnn",
                "layer": "penultimate",
                "prior": "builtin:mnist-ddpm",
                "method": {"name": "NDTM", "steps": 50, "inner_steps": 3},
                "seed": 7,
                "label": "second",
            },
        ],
    )
    csv = tmp_path / "m.csv"
    csv.write_text(
        "query,subject,layer,prior,method,n,seed\n"
        "a.png,builtin:mnist-cnn,,builtin:mnist-ddpm,,4,0\n"
        'b.png,builtin:mnist-cnn,penultimate,builtin:mnist-ddpm,"{""name"": ""ndtm"", ""steps"": 50, '
        '""inner_steps"": 3}",,7\n'
    )
    a, b = read_manifest(jsonl), read_manifest(csv)
    assert not a.errors and not b.errors
    assert [u.key for u in a.units] == [u.key for u in b.units]
    assert [u.line for u in a.units] == [1, 4] and [u.line for u in b.units] == [2, 3]
    u = a.units[1]
    assert u.n == 8 and u.method == {"inner_steps": 3, "name": "ndtm", "steps": 50}  # defaults filled, normalised
    assert u.query_path == tmp_path / "b.png"  # relative to the manifest's folder
    # identity ignores line, label and folder; defaults written out or not hash the same
    same = parse_manifest(
        '\n\n{"seed": 0, "prior": "builtin:mnist-ddpm", "query": "a.png", "subject": "builtin:mnist-cnn", '
        '"n": 4, "method": null, "label": "x"}\n'
    )
    assert same.units[0].key == a.units[0].key and same.units[0].line == 3
    assert (
        parse_manifest(
            '{"query": "a.png", "subject": "builtin:mnist-cnn", "prior": "builtin:mnist-ddpm", "n": 4, "seed": 1}'
        )
        .units[0]
        .key
        != a.units[0].key
    )
    assert u.dirname.endswith("-" + u.key) and "/" not in u.dirname and len(u.key) == 16


def test_manifest_bad_lines_are_reported_with_their_numbers_and_the_rest_kept() -> None:
    good = '{"query": "a.png", "subject": "builtin:mnist-cnn", "prior": "builtin:mnist-ddpm"}'
    text = "\n".join(
        [
            good,
            "{not json",
            '{"query": "b.png", "subject": "builtin:mnist-cnn"}',  # no prior
            '{"query": "c.png", "subject": "s:x", "prior": "p", "n": 0}',
            '{"query": "d.png", "subject": "s:x", "prior": "p", "steps": 5}',  # a method knob at top level
            '{"query": "e.png", "subject": "s:x", "prior": "p", "method": {"name": "ndtm", "bogus": 1}}',
            '{"query": "f.png", "subject": "s:x", "prior": "p", "method": "no-such-method"}',
            '{"query": "g.png", "subject": "s:x", "prior": "p", "seed": -1}',
            "[1, 2]",
            good,  # a repeat: runs once
            '{"query": "h.png", "subject": "s:x", "prior": "p", "layer": 3}',
            '{"query": "i.png", "subject": "s:x", "prior": "p", "seed": 3}',
        ]
    )
    m = parse_manifest(text)
    assert [u.query for u in m.units] == ["a.png", "i.png"]
    assert [e.line for e in m.errors] == [2, 3, 4, 5, 6, 7, 8, 9, 11]
    assert m.duplicates == [(10, 1)]
    msgs = {e.line: e.message for e in m.errors}
    assert "prior" in msgs[3] and "'n'" in msgs[4] and "steps" in msgs[5] and "bogus" in msgs[6]
    assert "no-such-method" in msgs[7] and "seed" in msgs[8] and "layer" in msgs[11]
    assert all("\n" not in e.message for e in m.errors)


def test_sharding_splits_every_unit_exactly_once() -> None:
    units = parse_manifest(
        "\n".join(
            json.dumps({"query": f"{i}.png", "subject": f"builtin:s{i % 3}", "prior": f"p{i % 2}", "seed": i})
            for i in range(11)
        )
    ).units
    for count in (1, 2, 3, 4, 11, 13):
        parts = [shard_units(units, ShardInfo(i, count)) for i in range(count)]
        keys = [u.key for p in parts for u in p]
        assert sorted(keys) == sorted(u.key for u in units) and len(set(keys)) == len(keys)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    # the split does not depend on the manifest's line order
    assert [u.key for u in shard_units(units[::-1], ShardInfo(1, 3))] == [
        u.key for u in shard_units(units, ShardInfo(1, 3))
    ]
    assert split_units(list(range(5)), 0, 2) == [0, 1, 2]


def test_shard_defaults_come_from_the_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_shard(env={}) == ShardInfo(0, 1, "single process")
    assert resolve_shard(2, 1, env={"RANK": "0", "WORLD_SIZE": "8"}).index == 1  # explicit options win
    s = resolve_shard(env={"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (s.index, s.count) == (3, 4) and "torchrun" in s.source
    s = resolve_shard(env={"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "2"})
    assert (s.index, s.count) == (3, 4) and "SLURM" in s.source
    with pytest.raises(ShardError, match="--array"):
        resolve_shard(env={"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "4"})
    with pytest.raises(ShardError, match="both"):
        resolve_shard(num_shards=2, env={})
    with pytest.raises(ShardError, match=r"\[0, 2\)"):
        resolve_shard(2, 2, env={})
    with pytest.raises(ShardError, match="RANK"):
        resolve_shard(env={"RANK": "x", "WORLD_SIZE": "2"})

    # accelerate's PartialState when installed (a stand-in module here), before SLURM
    fake = types.ModuleType("accelerate")

    class PartialState:
        num_processes, process_index = 3, 2

    fake.PartialState = PartialState  # type: ignore[attr-defined]
    fake.__spec__ = __import__("importlib.machinery").machinery.ModuleSpec("accelerate", None)
    monkeypatch.setitem(sys.modules, "accelerate", fake)
    s = resolve_shard(env={"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "4"})
    assert (s.index, s.count, s.source) == (2, 3, "accelerate PartialState")
    PartialState.num_processes, PartialState.process_index = 1, 0  # one process: fall through to SLURM
    assert resolve_shard(env={"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "4"}).count == 4


# ---------------------------------------------------------------------------------------------------------------
# running


def test_audit_writes_each_unit_once_resumes_and_reuses_models(assets: Assets, tmp_path: Path) -> None:
    manifest = write_jsonl(
        tmp_path / "m.jsonl",
        [assets.unit(0), assets.unit(1), assets.unit(2, layer="penultimate"), assets.unit(3, label='"&<>')],
    )
    calls: list[tuple[str, str]] = []

    def counting_prior(spec, **kw):
        calls.append(("prior", spec))
        return fs.load_prior(spec, **kw)

    def counting_subject(spec, layer=None, **kw):
        calls.append(("subject", f"{spec}@{layer}"))
        return fs.load_subject(spec, layer, **kw)

    out = tmp_path / "out"
    cache = ModelCache(RunOptions(device="cpu"), load_prior=counting_prior, load_subject=counting_subject)
    run = run_audit(read_manifest(manifest), out, cache=cache, progress=False)
    assert run.counts() == {"done": 4, "skipped": 0, "failed": 0}
    # one prior and two subject variants (two layers), each loaded once for the four units
    assert sorted(calls) == [("prior", str(assets.prior)), ("subject", "builtin:mnist-cnn@None"),
                             ("subject", "builtin:mnist-cnn@penultimate")]  # fmt: skip
    assert sum(cache.loads.values()) == 3
    dirs = sorted(p.name for p in (out / "units").iterdir())
    assert dirs == sorted(u.dirname for u in run.units) and len(dirs) == 4
    for d in dirs:
        rec = json.loads((out / "units" / d / "record.json").read_text())
        assert len(rec["fiber_loss"]) == 2 and rec["config"]["audit"]["key"] in d
    rows = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["done"] * 4 and all(len(r["fiber_loss"]) == 2 for r in rows)
    assert json.loads((out / "audit.json").read_text())["done"] == 4
    assert (out / "report.html").is_file()
    _assert_no_debris(out)

    # a rerun skips every finished unit: nothing is loaded, nothing rewritten
    before = _files(out / "units")
    calls.clear()
    cache2 = ModelCache(RunOptions(device="cpu"), load_prior=counting_prior, load_subject=counting_subject)
    again = run_audit(read_manifest(manifest), out, cache=cache2, progress=False)
    assert again.counts() == {"done": 0, "skipped": 4, "failed": 0} and calls == []
    assert _files(out / "units") == before


def test_results_are_identical_for_one_shard_and_two(assets: Assets, tmp_path: Path) -> None:
    man = read_manifest(
        write_jsonl(tmp_path / "m.jsonl", [assets.unit(0), assets.unit(1, layer="penultimate"), assets.unit(2)])
    )
    run_audit(man, tmp_path / "one", progress=False, report=False, options=RunOptions(device="cpu"))
    shards = [run_audit(man, tmp_path / "two", shard=ShardInfo(i, 2), progress=False, report=False) for i in range(2)]
    assert sorted(len(s.units) for s in shards) == [1, 2]
    one, two = _unit_arrays(tmp_path / "one"), _unit_arrays(tmp_path / "two")
    assert sorted(one) == sorted(two) and len(one) == 3
    for name, (fl, arrays) in one.items():
        assert fl == two[name][0]  # bit-identical fiber losses
        for k, v in arrays.items():
            assert np.array_equal(v, two[name][1][k]), (name, k)


# ---------------------------------------------------------------------------------------------------------------
# real signals to a real process


def _slow_manifest(assets: Assets, path: Path, k: int) -> Path:
    slow = {**FAST_METHOD, "steps": 40, "inner_steps": 2}
    return write_jsonl(path, [assets.unit(i % 4, method=slow, seed=i) for i in range(k)])


def _wait_for(pred, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    t0 = time.monotonic()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(
                f"the audit exited early ({proc.returncode}): {proc.stderr.read() if proc.stderr else ''}"
            )
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for the audit")
        time.sleep(0.02)


def _records(out: Path) -> list[Path]:
    d = out / "units"
    return sorted(p for p in d.glob("*/record.json") if not p.parent.name.startswith(".")) if d.is_dir() else []


def test_sigkill_mid_audit_then_restart_finishes_every_unit_exactly_once(assets: Assets, tmp_path: Path) -> None:
    manifest = _slow_manifest(assets, tmp_path / "m.jsonl", 4)
    out = tmp_path / "out"
    args = ["audit", str(manifest), "--out", str(out), "-q", "--device", "cpu"]
    proc = subprocess.Popen(fiberscope_cmd(*args), env=assets.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for(lambda: len(_records(out)) >= 1, proc)
    proc.send_signal(signal.SIGKILL)  # no cleanup of any kind can run
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    first = {p.parent.name: p.read_bytes() for p in _records(out)}
    assert 1 <= len(first) < 4, "the kill should land mid-way"

    done = subprocess.run(fiberscope_cmd(*args), env=assets.env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert f"{4 - len(first)} done, {len(first)} already finished, 0 failed" in done.stdout
    recs = _records(out)
    assert len(recs) == 4 and len({p.parent.name for p in recs}) == 4
    assert {n: (out / "units" / n / "record.json").read_bytes() for n in first} == first  # not redone
    _assert_no_debris(out)
    rows = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["done"] * 4


def test_ctrl_c_discards_the_unit_in_progress_and_keeps_the_rest(assets: Assets, tmp_path: Path) -> None:
    manifest = _slow_manifest(assets, tmp_path / "m.jsonl", 3)
    out = tmp_path / "out"
    args = ["audit", str(manifest), "--out", str(out), "-q", "--device", "cpu"]
    proc = subprocess.Popen(
        fiberscope_cmd(*args),
        env=assets.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell's background job (`pytest &`) ignores SIGINT and its children inherit that: restore it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    _wait_for(lambda: len(_records(out)) >= 1, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "resume" in err
    kept = _records(out)
    assert 1 <= len(kept) < 3
    _assert_no_debris(out)
    rows = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]
    assert sorted(r["status"] for r in rows) == sorted(["done"] * len(kept) + ["pending"] * (3 - len(kept)))
    assert json.loads((out / "audit.json").read_text())["state"] == "interrupted"
