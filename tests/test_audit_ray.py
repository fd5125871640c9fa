"""`--engine ray` on a small local Ray instance: same results as the local engine, models held by actors."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from audit_assets import Assets, make_assets, one_thread, write_jsonl
from fiberscope.audit import RunOptions, ShardInfo, read_manifest, run_audit

ray = pytest.importorskip("ray")


_one_thread = pytest.fixture(autouse=True)(one_thread)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    return make_assets(tmp_path_factory.mktemp("ray-assets"))


def _unit_arrays(out: Path) -> dict[str, tuple[list[float], dict[str, np.ndarray]]]:
    res = {}
    for d in sorted((out / "units").iterdir()):
        with np.load(d / "samples.npz", allow_pickle=False) as z:
            res[d.name] = (json.loads((d / "record.json").read_text())["fiber_loss"], {k: z[k] for k in z.files})
    return res


@pytest.mark.timeout(300)
def test_ray_engine_matches_local_runs_bit_for_bit(assets: Assets, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FIBERSCOPE_ZOO_DIR", str(assets.zoo))  # inherited by the local Ray workers
    man = read_manifest(
        write_jsonl(tmp_path / "m.jsonl", [assets.unit(0), assets.unit(1, layer="penultimate"), assets.unit(2)])
    )
    opts = RunOptions(device="cpu", threads=1)
    run_audit(man, tmp_path / "local", options=opts, progress=False, report=False)
    for i in range(2):
        run_audit(man, tmp_path / "sharded", shard=ShardInfo(i, 2), options=opts, progress=False, report=False)
    # another process holds one unit's lock for a while: the actors come back to it, waiting
    from filelock import FileLock

    busy = man.units[1]
    (tmp_path / "ray" / ".locks").mkdir(parents=True)
    other = FileLock(str(tmp_path / "ray" / ".locks" / f"{busy.key}.lock"), thread_local=False)
    other.acquire()
    logs: list[str] = []
    safety = threading.Timer(240.0, lambda: other.is_locked and other.release())
    safety.start()

    def log(msg: str) -> None:
        logs.append(msg)
        if "coming back to it" in msg and other.is_locked:
            other.release()  # the other process finishes without having written it

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run = run_audit(
            man, tmp_path / "ray", engine="ray", workers=2, options=opts, progress=False, report=False, log=log
        )
    finally:
        ray.shutdown()
        safety.cancel()
    assert run.counts() == {"done": 3, "skipped": 0, "failed": 0}
    assert [m for m in logs if "coming back to it" in m and busy.dirname in m], logs
    local, sharded, viaray = (_unit_arrays(tmp_path / d) for d in ("local", "sharded", "ray"))
    assert sorted(local) == sorted(sharded) == sorted(viaray) and len(local) == 3
    for name, (fl, arrays) in local.items():
        for other in (sharded, viaray):
            assert other[name][0] == fl, name  # bit-identical fiber losses
            for k, v in arrays.items():
                assert np.array_equal(v, other[name][1][k]), (name, k)
