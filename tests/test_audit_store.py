"""Storing results safely: concurrent processes on one unit, damaged results, `sample` overwrites, unit
identity by content, file modes, repeated signals. Each test here failed on the code before these fixes
(see docs/reliability.md, section "Storage and concurrency")."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import fiberscope as fs
import fiberscope.api as fs_api
from audit_assets import Assets, make_assets, one_thread, write_jsonl
from fiberscope.audit import RunOptions, read_manifest, run_audit, write_summary
from fiberscope.cli import EXIT, main

_one_thread = pytest.fixture(autouse=True)(one_thread)
DRIVER = Path(__file__).with_name("audit_driver.py")
FAST = ["--steps", "3", "--inner-steps", "1", "--n", "2", "-q", "--device", "cpu"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    return make_assets(tmp_path_factory.mktemp("store-assets"))


@pytest.fixture(autouse=True)
def _zoo(assets: Assets, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIBERSCOPE_ZOO_DIR", str(assets.zoo))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("RANK", "WORLD_SIZE", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"):
        monkeypatch.delenv(var, raising=False)


def _unit_dirs(out: Path) -> list[Path]:
    return sorted(p for p in (out / "units").iterdir() if not p.name.startswith("."))


def _summary(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]


def _audit(manifest: Path, out: Path, *extra: str) -> list[str]:
    return ["audit", str(manifest), "--out", str(out), "-q", "--device", "cpu", *extra]


def _sample(assets: Assets, *queries: Path, out: Path, extra: tuple[str, ...] = ()) -> list[str]:
    return ["sample", *map(str, queries), "--subject", "builtin:mnist-cnn", "--prior", str(assets.prior),
            "--out", str(out), *FAST, *extra]  # fmt: skip


def _driver(*args: str) -> list[str]:
    return [sys.executable, str(DRIVER), *args]


def _sigint_default() -> None:  # a shell's background job ignores SIGINT and children inherit it: restore it
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for(pred, proc: subprocess.Popen | None = None, timeout: float = 180.0) -> None:
    t0 = time.monotonic()
    while not pred():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process exited early ({proc.returncode}): {proc.communicate()[1]}")
        if time.monotonic() - t0 > timeout:
            if proc is not None:
                proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.02)


def _complete(d: Path) -> None:
    """``d`` is one whole unit: every sample PNG its record counts, and every file matches its digest."""
    from fiberscope.audit.store import check_result

    rec = json.loads((d / "record.json").read_text())
    assert sorted(p.name for p in d.glob("sample_*.png")) == [f"sample_{i:03d}.png" for i in range(rec["n"])]
    check = check_result(d, digests=True)
    assert check.ok, check.problem
    fs.FiberSamples.load(d)


# ---------------------------------------------------------------------------------------------------------------
# 1. a process starting while another writes the same unit


def test_a_process_starting_while_another_writes_a_unit_leaves_it_alone(
    assets: Assets, tmp_path: Path, monkeypatch
) -> None:
    manifest = write_jsonl(tmp_path / "m.jsonl", [assets.unit(0)])
    out = tmp_path / "out"
    real = fs_api.atomic_write_bytes
    paused, go = threading.Event(), threading.Event()

    def write(path, data):  # the first run stops after its first sample PNG, inside its staging directory
        real(path, data)
        if threading.current_thread().name == "first" and Path(path).name == "sample_000.png":
            paused.set()
            go.wait(120)

    monkeypatch.setattr(fs_api, "atomic_write_bytes", write)
    runs: dict[str, object] = {}
    logs: list[str] = []

    def run(name: str) -> None:
        try:
            runs[name] = run_audit(
                read_manifest(manifest), out, progress=False, report=False, options=RunOptions(device="cpu"),
                log=logs.append,
            )  # fmt: skip
        except BaseException as e:  # reported below
            runs[name] = e

    first = threading.Thread(target=run, args=("first",), name="first")
    first.start()
    assert paused.wait(120)
    (staging,) = [p for p in (out / "units").iterdir() if p.name.startswith(".partial-")]
    second = threading.Thread(target=run, args=("second",), name="second")
    second.start()
    # the second run either deletes the first's staging directory (the bug) or waits for the unit's lock
    _wait_for(lambda: not (staging / "sample_000.png").exists() or any("coming back" in m for m in logs), timeout=60)
    survived = (staging / "sample_000.png").exists()
    go.set()
    first.join(120)
    second.join(120)
    assert survived, "the second process deleted the staging directory of the first while it was writing"
    assert not any(isinstance(r, BaseException) for r in runs.values()), runs  # no false "no space" error
    assert runs["first"].counts() == {"done": 1, "skipped": 0, "failed": 0}  # type: ignore[union-attr]
    assert runs["second"].counts() == {"done": 0, "skipped": 1, "failed": 0}  # type: ignore[union-attr]
    (unit,) = _unit_dirs(out)
    _complete(unit)
    assert not [p for p in (out / "units").iterdir() if p.name.startswith(".")]


def test_two_processes_on_the_same_units_commit_each_unit_once(assets: Assets, tmp_path: Path, monkeypatch) -> None:
    manifest = write_jsonl(tmp_path / "m.jsonl", [assets.unit(i) for i in range(3)])
    out = tmp_path / "out"
    commits: list[tuple[str, str]] = []
    real_rename = os.rename

    def rename(src, dst, *a, **k):
        real_rename(src, dst, *a, **k)
        if Path(src).name.startswith(".partial-") and not Path(dst).name.startswith("."):
            commits.append((threading.current_thread().name, Path(dst).name))

    monkeypatch.setattr(os, "rename", rename)
    runs = {}

    def run(name: str) -> None:
        runs[name] = run_audit(read_manifest(manifest), out, progress=False, report=False, log=lambda s: None)

    threads = [threading.Thread(target=run, args=(f"p{i}",), name=f"p{i}") for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert sorted(n for _, n in commits) == sorted(p.name for p in _unit_dirs(out)) and len(commits) == 3
    assert sum(r.counts()["done"] for r in runs.values()) == 3
    assert all(r.counts()["done"] + r.counts()["skipped"] == 3 for r in runs.values())
    for d in _unit_dirs(out):
        _complete(d)


# ---------------------------------------------------------------------------------------------------------------
# 2. damaged finished units are found, reported and redone


def _truncate_npz(d: Path) -> None:
    p = d / "samples.npz"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _delete_png(d: Path) -> None:
    (d / "sample_001.png").unlink()


def _garbage_loss(d: Path) -> None:
    rec = json.loads((d / "record.json").read_text())
    rec["fiber_loss"] = "garbage"
    (d / "record.json").write_text(json.dumps(rec))


def _unparsable_record(d: Path) -> None:
    (d / "record.json").write_text('{"fiber_loss": [0.1, ')


DAMAGE = {
    "truncated samples.npz": (_truncate_npz, "samples.npz has"),
    "deleted sample PNG": (_delete_png, "sample_001.png is missing"),
    "fiber_loss garbage": (_garbage_loss, "'fiber_loss' is not a list of numbers"),
    "unparsable record": (_unparsable_record, "not valid JSON"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_units_are_reported_and_redone(kind: str, assets: Assets, tmp_path: Path, capsys) -> None:
    from fiberscope.report.results import write_results_report

    damage, reason = DAMAGE[kind]
    manifest = write_jsonl(tmp_path / "m.jsonl", [assets.unit(0), assets.unit(1)])
    out = tmp_path / "out"
    assert main(_audit(manifest, out, "--no-report")) == 0
    victim, intact = _unit_dirs(out)
    kept = {p.name: p.read_bytes() for p in intact.iterdir()}
    damage(victim)
    capsys.readouterr()

    assert main(_audit(manifest, out, "--dry-run")) == 0
    listed = capsys.readouterr().out
    assert "damaged" in listed and reason in listed, listed
    # the summary never says done for it, and the report says damaged, not a result
    summary = write_summary(out, read_manifest(manifest))
    rows = {r["dir"]: r for r in _summary(out)}
    assert rows[f"units/{victim.name}"]["status"] == "damaged" and reason in rows[f"units/{victim.name}"]["error"]
    assert summary["done"] == 1 and summary["damaged"] == 1
    html = write_results_report(out).read_text()
    assert "damaged" in html

    assert main(_audit(manifest, out)) == 0
    captured = capsys.readouterr()
    assert "its finished result was damaged" in captured.err and reason in captured.err, captured.err
    assert "1 done, 1 already finished" in captured.out and "1 damaged and redone" in captured.out
    _complete(victim)
    assert {p.name: p.read_bytes() for p in intact.iterdir()} == kept  # the sound unit was not touched
    rows = {r["dir"]: r for r in _summary(out)}
    assert [r["status"] for r in rows.values()] == ["done", "done"]
    assert reason in rows[f"units/{victim.name}"]["redone"] and "redone" not in rows[f"units/{intact.name}"]
    assert json.loads((out / "audit.json").read_text())["redone"] == 1
    assert "could not read" not in (out / "report.html").read_text()
    assert not [p for p in (out / "units").iterdir() if p.name.startswith(".")]


def test_a_same_size_corruption_is_found_by_verify(assets: Assets, tmp_path: Path, capsys) -> None:
    manifest = write_jsonl(tmp_path / "m.jsonl", [assets.unit(0)])
    out = tmp_path / "out"
    assert main(_audit(manifest, out)) == 0
    (unit,) = _unit_dirs(out)
    npz = unit / "samples.npz"
    data = bytearray(npz.read_bytes())
    data[len(data) // 3] ^= 0xFF  # same size: only the digest tells
    npz.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(_audit(manifest, out)) == 0
    assert "0 done, 1 already finished" in capsys.readouterr().out  # sizes only by default
    assert main(_audit(manifest, out, "--verify")) == 0
    captured = capsys.readouterr()
    assert "samples.npz does not match its SHA-256 digest" in captured.err
    assert "1 done, 0 already finished" in captured.out
    _complete(unit)

    # --verify also cross-checks the record's per-sample values with the (verified) samples.npz
    rec = json.loads((unit / "record.json").read_text())
    rec["fiber_loss"] = [v + 1.0 for v in rec["fiber_loss"]]
    (unit / "record.json").write_text(json.dumps(rec))
    assert main(_audit(manifest, out, "--verify")) == 0
    assert "differ from those in samples.npz" in capsys.readouterr().err
    _complete(unit)


# ---------------------------------------------------------------------------------------------------------------
# 3. `fiberscope sample` never overwrites silently


def _two_images_named_x(assets: Assets, root: Path) -> tuple[Path, Path]:
    paths = []
    for i, folder in enumerate(("a", "b")):
        (root / folder).mkdir(parents=True)
        shutil.copy(assets.queries[i], root / folder / "x.png")
        paths.append(root / folder / "x.png")
    return paths[0], paths[1]


def _result_dirs(out: Path) -> list[Path]:
    return sorted(p.parent for p in out.rglob("record.json") if not any(s.startswith(".") for s in p.parts))


def test_sample_gives_same_named_queries_from_two_folders_their_own_folders(
    assets: Assets, tmp_path: Path, capsys
) -> None:
    a, b = _two_images_named_x(assets, tmp_path)
    out = tmp_path / "out"
    assert main(_sample(assets, a, b, out=out)) == 0
    dirs = _result_dirs(out)
    assert len(dirs) == 2, dirs
    stored = {}
    for d in dirs:
        rec = json.loads((d / "record.json").read_text())
        src = Path(rec["config"]["query_file"]["path"])
        assert rec["config"]["query_file"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
        stored[src] = np.load(d / "samples.npz")["query"]
    assert not np.array_equal(stored[a], stored[b])
    # a later run with a third x.png into the same --out adds its own folder and keeps the others
    (tmp_path / "c").mkdir()
    shutil.copy(assets.queries[2], tmp_path / "c" / "x.png")
    before = {d: (d / "record.json").read_bytes() for d in dirs}
    assert main(_sample(assets, tmp_path / "c" / "x.png", a, out=out)) == 0
    assert len(_result_dirs(out)) == 3
    assert (dirs[1] / "record.json").read_bytes() == before[dirs[1]] or (
        dirs[0] / "record.json"
    ).read_bytes() == before[dirs[0]]  # the one not named again is untouched


def test_sample_refuses_to_overwrite_another_querys_result(assets: Assets, tmp_path: Path, capsys) -> None:
    a, b = _two_images_named_x(assets, tmp_path)
    out = tmp_path / "out"
    assert main(_sample(assets, a, out=out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    code = main(_sample(assets, b, out=out))
    err = capsys.readouterr().err
    assert code == EXIT["output"], err
    assert "already holds the fiber of" in err and str(a) in err and "choose another --out" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_sample_rerun_with_a_smaller_n_leaves_no_stale_files(assets: Assets, tmp_path: Path, capsys) -> None:
    q = assets.queries[0]
    out = tmp_path / "out"
    assert main(_sample(assets, q, out=out, extra=("--n", "3"))) == 0
    assert (out / "sample_002.png").is_file()
    capsys.readouterr()
    assert main(_sample(assets, q, out=out, extra=("--n", "2"))) == 0
    assert json.loads((out / "record.json").read_text())["n"] == 2
    assert not (out / "sample_002.png").exists(), "a stale sample beside a record of 2 samples"
    assert "replaces the earlier result" in capsys.readouterr().out
    _complete(out)
    assert not [p for p in out.iterdir() if p.name.startswith(".partial")]


def test_a_full_disk_during_a_sample_rerun_keeps_the_earlier_result_whole(
    assets: Assets, tmp_path: Path, capsys, monkeypatch
) -> None:
    from test_failures import _disk_fills_up

    out = tmp_path / "out"
    assert main(_sample(assets, assets.queries[0], out=out, extra=("--n", "3"))) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with _disk_fills_up(monkeypatch, "samples.npz"):
        code = main(_sample(assets, assets.queries[0], out=out, extra=("--n", "2")))
    assert code == EXIT["output"], capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # untouched
    assert not list(out.glob(".partial-*")) and not list(out.rglob("*.tmp"))
    _complete(out)


# ---------------------------------------------------------------------------------------------------------------
# 4. a unit's identity includes its query's content


def test_two_manifests_naming_the_same_path_for_different_images_give_two_units(
    assets: Assets, tmp_path: Path, capsys
) -> None:
    from fiberscope.data.query import load_query

    manifests = []
    for i, folder in enumerate(("one", "two")):
        (tmp_path / folder / "q").mkdir(parents=True)
        shutil.copy(assets.queries[i], tmp_path / folder / "q" / "x.png")
        manifests.append(write_jsonl(tmp_path / folder / "m.jsonl", [assets.unit(0, query="q/x.png")]))
    out = tmp_path / "out"
    assert main(_audit(manifests[0], out)) == 0
    capsys.readouterr()
    assert main(_audit(manifests[1], out)) == 0
    assert "1 done, 0 already finished" in capsys.readouterr().out  # not the first manifest's fiber
    dirs = _unit_dirs(out)
    assert len(dirs) == 2
    for i, folder in enumerate(("one", "two")):
        (d,) = [d for d in dirs if json.loads((d / "record.json").read_text())["config"]["audit"]["unit"]
                ["query_sha256"] == read_manifest(manifests[i]).units[0].query_sha256]  # fmt: skip
        want = load_query(tmp_path / folder / "q" / "x.png", image_shape=(1, 8, 8), data_range=(-1.0, 1.0))
        assert np.array_equal(np.load(d / "samples.npz")["query"], want.numpy())


def test_unit_keys_follow_the_query_content(assets: Assets, tmp_path: Path) -> None:
    from fiberscope.audit import parse_manifest

    line = json.dumps(assets.unit(0, query="x.png"))
    shutil.copy(assets.queries[0], tmp_path / "x.png")
    k0 = parse_manifest(line, base_dir=tmp_path).units[0]
    assert k0.query_sha256 is not None and parse_manifest(line, base_dir=tmp_path).units[0].key == k0.key
    shutil.copy(assets.queries[1], tmp_path / "x.png")
    k1 = parse_manifest(line, base_dir=tmp_path).units[0]
    assert k1.key != k0.key and k1.legacy_key == k0.legacy_key  # same path, other content: another unit
    (tmp_path / "x.png").unlink()
    gone = parse_manifest(line, base_dir=tmp_path).units[0]
    assert gone.query_sha256 is None and gone.key not in (k0.key, k1.key)
    os.mkfifo(tmp_path / "x.png")  # never read (it would block): no digest, the unit fails when run
    assert parse_manifest(line, base_dir=tmp_path).units[0].query_sha256 is None


def test_a_query_file_changed_while_its_unit_runs_fails_that_unit(
    assets: Assets, tmp_path: Path, capsys, monkeypatch
) -> None:
    shutil.copy(assets.queries[0], tmp_path / "x.png")
    manifest = write_jsonl(tmp_path / "m.jsonl", [assets.unit(0, query="x.png"), assets.unit(1)])
    real = fs_api.sample_fiber

    def sample_and_swap(subject, query, *a, **k):
        res = real(subject, query, *a, **k)
        if Path(query).name == "x.png":
            shutil.copy(assets.queries[2], query)  # replaced while the unit ran
        return res

    monkeypatch.setattr(fs_api, "sample_fiber", sample_and_swap)
    out = tmp_path / "out"
    assert main(_audit(manifest, out)) == EXIT["partial"]
    assert "changed while the audit ran" in capsys.readouterr().err
    rows = {r["line"]: r for r in _summary(out)}
    assert rows[1]["status"] == "failed" and rows[1]["code"] == EXIT["input"] and rows[2]["status"] == "done"
    assert len(_unit_dirs(out)) == 1


def _make_legacy(out: Path, unit) -> Path:
    """Rewrite a finished unit as fiberscope wrote it before keys had the query's digest."""
    d = out / "units" / unit.dirname
    rec = json.loads((d / "record.json").read_text())
    del rec["files"]
    rec["config"]["audit"]["key"] = unit.legacy_key
    del rec["config"]["audit"]["unit"]["query_sha256"]
    (d / "record.json").write_text(json.dumps(rec, indent=2))
    legacy = out / "units" / unit.legacy_dirname
    d.rename(legacy)
    return legacy


def test_units_finished_before_keys_had_the_digest_are_adopted(assets: Assets, tmp_path: Path, capsys) -> None:
    shutil.copy(assets.queries[0], tmp_path / "x.png")
    shutil.copy(assets.queries[1], tmp_path / "y.png")
    manifest = write_jsonl(tmp_path / "m.jsonl", [assets.unit(0, query="x.png"), assets.unit(1, query="y.png")])
    out = tmp_path / "out"
    assert main(_audit(manifest, out)) == 0
    ux, uy = sorted(read_manifest(manifest).units, key=lambda u: u.query)
    samples = (out / "units" / ux.dirname / "samples.npz").read_bytes()
    _make_legacy(out, ux)
    stale_y = _make_legacy(out, uy)
    shutil.copy(assets.queries[2], tmp_path / "y.png")  # y.png changed since: its old unit is not adopted
    capsys.readouterr()
    assert main(_audit(manifest, out, "--verify")) == 0
    captured = capsys.readouterr()
    assert "1 done, 1 already finished" in captured.out and "1 adopted from an older layout" in captured.out
    x_now = out / "units" / ux.dirname
    _complete(x_now)
    assert (x_now / "samples.npz").read_bytes() == samples  # taken over, not recomputed
    assert not (out / "units" / ux.legacy_dirname).exists()
    assert stale_y.is_dir()  # left as it was
    new_y = out / "units" / read_manifest(manifest).units[1].dirname
    _complete(new_y)


# ---------------------------------------------------------------------------------------------------------------
# 11. output files honour the umask


@pytest.mark.parametrize("umask", [0o022, 0o007])
def test_outputs_honour_the_umask(umask: int, assets: Assets, tmp_path: Path) -> None:
    old = os.umask(umask)
    try:
        manifest = write_jsonl(tmp_path / "m.jsonl", [assets.unit(0)])
        assert main(_audit(manifest, tmp_path / "audit")) == 0
        assert main(_sample(assets, assets.queries[0], assets.queries[1], out=tmp_path / "sample")) == 0
    finally:
        os.umask(old)
    want_file, want_dir = 0o666 & ~umask, 0o777 & ~umask
    files = [p for p in tmp_path.rglob("*") if p.is_file() and ".locks" not in p.parts and p.suffix != ".jsonl"]
    dirs = [p for p in tmp_path.rglob("*") if p.is_dir() and ".locks" not in p.parts]
    assert len(files) > 20 and any(p.name == "report.html" for p in files)
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(want_file)}, "files"
    assert {oct(p.stat().st_mode & 0o777) for p in dirs} == {oct(want_dir)}, "dirs"
    assert any(p.name == "summary.jsonl" and p.stat().st_mode & 0o777 == want_file for p in tmp_path.rglob("*"))


def test_atomic_writer_gives_the_mode_open_would(tmp_path: Path) -> None:
    from fiberscope.utils import atomic_write_text

    old = os.umask(0o002)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        (tmp_path / "b.txt").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o664


# ---------------------------------------------------------------------------------------------------------------
# 12. repeated signals


def test_two_quick_ctrl_c_leave_no_staging_behind(assets: Assets, tmp_path: Path) -> None:
    manifest = write_jsonl(tmp_path / "m.jsonl", [assets.unit(0), assets.unit(1)])
    out, ready = tmp_path / "out", tmp_path / "ready"
    cmd = _driver("--slow-writes", "0.5", "--slow-rmtree", "1.5", "--ready", str(ready), "--", *_audit(manifest, out))
    proc = subprocess.Popen(
        cmd, env=assets.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_sigint_default
    )
    _wait_for(ready.exists, proc)
    proc.send_signal(signal.SIGINT)  # while a result file is being written
    time.sleep(0.4)
    proc.send_signal(signal.SIGINT)  # while the half-written unit is being removed
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT["interrupt"], err
    assert "the unit in progress was discarded" in err
    assert not list(out.rglob(".partial-*")), "the message says discarded, but the staging directory is there"
    assert not list(out.rglob("*.tmp"))
    assert [r["status"] for r in _summary(out)] == ["pending", "pending"]


def _visible_pngs_without_record(out: Path) -> list[Path]:
    return [
        p
        for p in out.rglob("*.png")
        if not any(s.startswith(".") for s in p.relative_to(out).parts) and not (p.parent / "record.json").exists()
    ]


def test_sample_on_sigterm_leaves_no_partial_result(assets: Assets, tmp_path: Path) -> None:
    out, ready = tmp_path / "out", tmp_path / "ready"
    cmd = _driver("--slow-writes", "1.0", "--ready", str(ready), "--", *_sample(assets, assets.queries[0], out=out))
    proc = subprocess.Popen(cmd, env=assets.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(ready.exists, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT["interrupt"], (proc.returncode, err)
    assert "interrupted" in err
    assert not list(out.rglob("*.tmp")) and not _visible_pngs_without_record(out)
    assert not list(out.glob(".partial-*"))


def test_sample_on_sigkill_leaves_only_hidden_staging_that_the_next_run_removes(assets: Assets, tmp_path: Path) -> None:
    # SIGKILL cannot be handled: its staging directory stays hidden, and the next run removes it
    out, ready = tmp_path / "out", tmp_path / "ready"
    cmd = _driver("--slow-writes", "1.0", "--ready", str(ready), "--", *_sample(assets, assets.queries[0], out=out))
    proc = subprocess.Popen(cmd, env=assets.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(ready.exists, proc)
    proc.kill()
    proc.communicate(timeout=60)
    assert not _visible_pngs_without_record(out) and list(out.glob(".partial-sample-*"))
    assert main(_sample(assets, assets.queries[0], out=out)) == 0
    assert not list(out.glob(".partial-*")) and not list(out.rglob("*.tmp"))
    _complete(out)


# ---------------------------------------------------------------------------------------------------------------
# the ownership rule itself


def _fake_staging(parent: Path, name: str, owner: dict | None, age: float = 0.0) -> Path:
    d = parent / name
    d.mkdir()
    (d / "sample_000.png").write_bytes(b"x")
    if owner is not None:
        (d / "owner.json").write_text(json.dumps(owner))
    t = time.time() - age
    for p in (d / "owner.json", d):
        if p.exists():
            os.utime(p, (t, t))
    return d


def test_stale_staging_is_removed_only_when_its_owner_is_provably_gone(tmp_path: Path, monkeypatch) -> None:
    from fiberscope.audit.store import Owner, _proc_stat, remove_stale_staging

    me = Owner.current()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _wait_for(lambda: _proc_stat(sleeper.pid) is not None, timeout=10)
        sleeper_start = _proc_stat(sleeper.pid)[1]  # type: ignore[index]
        here = {"host": me.host, "boot": me.boot, "pidns": me.pidns}
        there = {"host": "elsewhere", "boot": "x", "pidns": "y", "pid": sleeper.pid, "start": "1"}
        d = tmp_path
        keep = [
            _fake_staging(d, ".partial-k-alive", {**here, "pid": sleeper.pid, "start": sleeper_start}),
            _fake_staging(d, ".partial-k-me", {**here, "pid": me.pid, "start": me.start}),
            _fake_staging(d, ".partial-k-remote", there, age=600),  # another host, heartbeat 10 min old
            _fake_staging(d, ".partial-k-noowner", None, age=60),
            _fake_staging(d, ".partial-other-dead", {**here, "pid": dead.pid, "start": "1"}),  # not this prefix
        ]
        gone = [
            _fake_staging(d, ".partial-k-dead", {**here, "pid": dead.pid, "start": "1"}),
            _fake_staging(d, ".partial-k-reused", {**here, "pid": sleeper.pid, "start": "1"}),  # pid reused
            _fake_staging(d, ".partial-k-remote-old", there, age=7200),  # heartbeat older than the timeout
            _fake_staging(d, ".partial-k-noowner-old", None, age=7200),
        ]
        assert sorted(remove_stale_staging(d, ".partial-k-")) == sorted(p.name for p in gone)
        assert all(p.is_dir() for p in keep) and not any(p.exists() for p in gone)
        assert not [p for p in d.iterdir() if p.name.startswith(".stale-")]
        monkeypatch.setenv("FIBERSCOPE_STALE_STAGING_SECONDS", "300")  # the documented timeout, shortened
        assert remove_stale_staging(d, ".partial-k-") == [keep[2].name]
        assert keep[0].is_dir() and keep[1].is_dir() and keep[3].is_dir()
        # a zombie (killed, not yet reaped by its parent) writes nothing: its staging is stale
        zombie = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        _wait_for(lambda: _proc_stat(zombie.pid) is not None, timeout=10)
        z = _fake_staging(d, ".partial-k-zombie", {**here, "pid": zombie.pid, "start": _proc_stat(zombie.pid)[1]})
        zombie.kill()
        _wait_for(lambda: (_proc_stat(zombie.pid) or ("Z",))[0] == "Z", timeout=10)
        assert remove_stale_staging(d, ".partial-k-") == [z.name]
        zombie.wait()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_staging_keeps_its_heartbeat_and_knows_when_it_was_taken(tmp_path: Path, monkeypatch) -> None:
    import fiberscope.audit.store as store

    monkeypatch.setattr(store, "HEARTBEAT_SECONDS", 0.05)
    st = store.Staging(tmp_path, ".partial-k-")
    try:
        t0 = (st.path / "owner.json").stat().st_mtime
        os.utime(st.path / "owner.json", (t0 - 100, t0 - 100))
        _wait_for(lambda: (st.path / "owner.json").stat().st_mtime > t0 - 50, timeout=10)
        assert st.intact()
        shutil.rmtree(st.path)  # removed behind its back, then recreated by a writer: no longer its own
        st.path.mkdir()
        with pytest.raises(fs.errors.StagingLostError):
            store.seal(st, 1)
    finally:
        st.discard()
