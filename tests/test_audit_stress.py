"""Stress: three `fiberscope audit` processes on one --out, one of them SIGKILLed or paused at random moments.

Each round writes a new manifest of units into the same --out and starts three processes on it:
in even rounds as three shards, in odd rounds all three on the same units. One of the three (chosen
at random) is then either SIGKILLed or paused with SIGSTOP for a random time and continued; the
moment is random, half of the time at a uniform time after the start, half of the time just after
the victim has begun writing a unit (its staging directory appeared). After every round every
visible unit is complete. After the last round one resume with ``--verify`` over all the units must
leave every unit present exactly once, every file matching its digest, each unit committed by
exactly one process over the whole test, and no staging directory or temporary file.

Units are as cheap as possible: an analytic Gaussian prior (``tests/audit_driver.py --analytic-prior``,
no network, no diffusers import), the tiny test classifier, 3 steps, 2 samples.

    FIBERSCOPE_STRESS_REPORT=stress.json python -m pytest tests/test_audit_stress.py -m slow -o addopts="" -s

(``FIBERSCOPE_STRESS_ROUNDS``, ``FIBERSCOPE_STRESS_SEED`` change the number of rounds and the seed.)
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from audit_assets import FAST_METHOD, Assets, make_assets, write_jsonl

DRIVER = Path(__file__).with_name("audit_driver.py")
UNITS_PER_ROUND = 6


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    return make_assets(tmp_path_factory.mktemp("stress-assets"))


def _cmd(manifest: Path, out: Path, log: Path, *extra: str) -> list[str]:
    return [sys.executable, str(DRIVER), "--analytic-prior", "--slow-writes", "0.02", "--commit-log", str(log), "--",
            "audit", str(manifest), "--out", str(out), "-q", "--device", "cpu", "--no-report", *extra]  # fmt: skip


def _staging_of(out: Path, pid: int) -> bool:
    d = out / "units"
    return d.is_dir() and any(p.name.startswith(".partial-") and f"-{pid}-" in p.name for p in d.iterdir())


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_three_processes_on_one_out_with_kills_and_pauses(assets: Assets, tmp_path: Path) -> None:
    from fiberscope.audit import read_manifest
    from fiberscope.audit.store import check_result

    rounds = int(os.environ.get("FIBERSCOPE_STRESS_ROUNDS", "20"))
    seed = int(os.environ.get("FIBERSCOPE_STRESS_SEED", "20"))
    rng = random.Random(seed)
    env = assets.env()
    out, log = tmp_path / "out", tmp_path / "commits.log"
    lines: list[dict] = []
    stats = collections.Counter()
    t_start = time.monotonic()
    for r in range(rounds):
        units = [
            assets.unit(i % 4, prior="test:gauss-8", method=dict(FAST_METHOD), seed=1000 * r + i)
            for i in range(UNITS_PER_ROUND)
        ]
        lines += units
        manifest = write_jsonl(tmp_path / f"round{r}.jsonl", units)
        sharded = r % 2 == 0
        procs = [
            subprocess.Popen(
                _cmd(manifest, out, log, *(["--num-shards", "3", "--shard-index", str(k)] if sharded else [])),
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for k in range(3)
        ]
        victim = procs[rng.randrange(3)]
        action = rng.choice(["kill", "pause"])
        t0 = time.monotonic()
        if rng.random() < 0.5:
            when = "at a random time"
            deadline = t0 + rng.uniform(0.5, 20.0)
            while time.monotonic() < deadline and victim.poll() is None:
                time.sleep(0.01)
        else:
            when = "while writing"
            while victim.poll() is None and not _staging_of(out, victim.pid) and time.monotonic() - t0 < 120:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.15))
        if victim.poll() is None:
            if action == "kill":
                victim.send_signal(signal.SIGKILL)
            else:
                victim.send_signal(signal.SIGSTOP)
                time.sleep(rng.uniform(0.5, 4.0))
                victim.send_signal(signal.SIGCONT)
            stats[f"{action}s"] += 1
            stats[f"{action}s {when}"] += 1
        else:
            stats["victim finished before its signal"] += 1
        for p in procs:
            _, err = p.communicate(timeout=600)
            if p is victim and action == "kill" and p.returncode == -signal.SIGKILL:
                continue
            assert p.returncode == 0, (r, p.returncode, err)
            assert "No space" not in err and "cannot write output" not in err, err
        # never a half-committed unit, at any time
        for d in (out / "units").iterdir():
            if not d.name.startswith("."):
                check = check_result(d)
                assert check.ok, (r, d.name, check.problem)
    stats["rounds"] = rounds

    union = write_jsonl(tmp_path / "all.jsonl", lines)
    final = subprocess.run(_cmd(union, out, log, "--verify"), env=env, capture_output=True, text=True, timeout=900)
    assert final.returncode == 0, final.stderr
    wall = time.monotonic() - t_start
    expected = {u.dirname for u in read_manifest(union).units}
    visible = [d.name for d in (out / "units").iterdir() if not d.name.startswith(".")]
    assert len(expected) == rounds * UNITS_PER_ROUND
    assert sorted(visible) == sorted(expected), "every unit present exactly once, and nothing else"
    for name in visible:
        check = check_result(out / "units" / name, digests=True)
        assert check.ok, (name, check.problem)
    commits = collections.Counter(line.split()[1] for line in log.read_text().splitlines())
    assert set(commits) == expected and set(commits.values()) == {1}, "each unit committed by exactly one process"
    assert not list(out.rglob(".partial-*")) and not list(out.rglob(".stale-*")) and not list(out.rglob("*.tmp"))
    rows = [json.loads(x) for x in (out / "summary.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["done"] * len(expected)
    done_at_end = int(final.stdout.split(" done,")[0].rsplit(" ", 1)[-1])
    figures = {
        "rounds": rounds,
        "seed": seed,
        "units": len(expected),
        "kills": stats["kills"],
        "kills while writing": stats["kills while writing"],
        "pauses": stats["pauses"],
        "pauses while writing": stats["pauses while writing"],
        "victim finished before its signal": stats["victim finished before its signal"],
        "units finished by the final resume": done_at_end,
        "units redone (damaged)": sum(1 for r in rows if r.get("redone")),
        "commits": sum(commits.values()),
        "wall seconds": round(wall, 1),
        "outcome": "every unit present once, every file matches its digest, one commit per unit",
    }
    print(json.dumps(figures, indent=1))
    if os.environ.get("FIBERSCOPE_STRESS_REPORT"):
        Path(os.environ["FIBERSCOPE_STRESS_REPORT"]).write_text(json.dumps(figures, indent=1) + "\n")
