"""``--engine ray``: units mapped onto Ray actors that each hold their loaded models.

Optional (``pip install "fiberscope[ray]"``). Each actor owns a :class:`~fiberscope.audit.unit.ModelCache`
and runs :func:`~fiberscope.audit.unit.run_unit`, exactly what the local engine runs, so results
are identical whichever engine ran them (per-unit seeds, CPU noise). Actors write their results
straight into the output directory: on a multi-node cluster it must be a shared file system.
Ray supplies the scheduling (an ``ActorPool`` over ``workers`` actors, one CPU or GPU each); there
is no cluster code here.

Example:
    >>> from fiberscope.audit import read_manifest, run_audit                      # doctest: +SKIP
    >>> run_audit(read_manifest("audit.jsonl"), "out", engine="ray", workers=4)     # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import OutputWriteError
from .manifest import WorkUnit
from .unit import ModelCache, RunOptions, UnitResult, run_unit

__all__ = ["AuditWorker", "run_units_ray"]


class AuditWorker:
    """The body of one Ray actor: a model cache that lives as long as the actor."""

    def __init__(self, out: str, options: RunOptions):
        if options.threads:
            import torch

            torch.set_num_threads(options.threads)
        self.out = out
        self.options = options
        self.cache = ModelCache(options)

    def run(self, unit: dict[str, Any], wait: bool = False) -> UnitResult:
        u = WorkUnit.from_dict(unit)
        try:
            return run_unit(u, self.out, self.cache, self.options, wait=wait)
        except OutputWriteError as e:  # reported, not raised: the driver stops the audit
            return UnitResult(u.key, u.dirname, u.line, "output-error", error=str(e))

    def loads(self) -> dict[str, int]:
        return {"/".join(k[:2]): v for k, v in self.cache.loads.items()}


def _import_ray() -> Any:
    try:
        import ray
    except ModuleNotFoundError:
        raise ValueError(
            '--engine ray needs Ray: pip install "fiberscope[ray]" (or use the default local engine)'
        ) from None
    return ray


def run_units_ray(
    units: list[WorkUnit],
    out: Path,
    options: RunOptions,
    *,
    workers: int = 1,
    address: str | None = None,
    gpus_per_worker: float | None = None,
) -> Iterator[UnitResult]:
    """Run ``units`` on ``workers`` Ray actors; yield results as they finish.

    A unit another process holds comes back ``busy`` (yielded, for the message) and is queued
    again behind the others, this time waiting for its lock.

    Args:
        units: this shard's units.
        out: the output directory (absolute; shared by every actor).
        options: as for the local engine.
        workers: number of actors (each loads the models it needs once).
        address: an existing cluster (``"auto"``, ``"ray://host:10001"``); default: start a local
            instance with ``workers`` CPUs, shut down again at the end.
        gpus_per_worker: default 1 when this machine sees a GPU and the device is not CPU, else 0.
    """
    ray = _import_ray()
    from ray.util import ActorPool

    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(num_cpus=max(1, workers), include_dashboard=False, log_to_driver=False)
        started = True
    if gpus_per_worker is None:
        import torch

        gpus_per_worker = 1.0 if torch.cuda.is_available() and options.device not in ("cpu",) else 0.0
    # inside an actor Ray sets CUDA_VISIBLE_DEVICES to its GPU, so "cuda" is that GPU
    opts = dataclasses.replace(options, device=options.device or ("cuda" if gpus_per_worker else "cpu"))
    actor_cls = ray.remote(num_cpus=1, num_gpus=gpus_per_worker)(AuditWorker)
    actors = [actor_cls.remote(str(Path(out).resolve()), opts) for _ in range(max(1, min(workers, len(units) or 1)))]
    try:
        pool = ActorPool(actors)
        by_key = {u.key: u for u in units}
        for u in units:
            pool.submit(lambda a, v: a.run.remote(v.to_dict()), u)
        while pool.has_next():
            r = pool.get_next_unordered()
            if r.status == "busy":
                pool.submit(lambda a, v: a.run.remote(v.to_dict(), True), by_key[r.key])
            yield r
    finally:
        for a in actors:
            ray.kill(a)
        if started:
            ray.shutdown()
