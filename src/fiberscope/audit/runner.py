"""Run an audit: a shard's units through an engine (local or Ray), resume, the summary and the report.

Layout of an audit's output directory::

    OUT/units/<slug>-<key>/      one finished unit: sample_XXX.png, grid.png, query.png, samples.npz,
                                 record.json (fiber_loss, seeds, config incl. the unit, and "files":
                                 the name, size and SHA-256 of every other file)
    OUT/units/.partial-<key>-*/  a unit being written, with owner.json (renamed into place when complete)
    OUT/.locks/<key>.lock        held by the process working on the unit (never deleted)
    OUT/failed/<slug>-<key>.json why a unit failed (removed once it succeeds)
    OUT/summary.jsonl            one line per manifest line: status, fiber loss or error
    OUT/audit.json               totals, shard, engine, bad manifest lines
    OUT/report.html              the HTML report (single-shard runs; ``fiberscope report OUT`` rebuilds it)

A unit is finished when ``units/<slug>-<key>/record.json`` is sound and every file it lists has
its recorded size (and, with ``--verify``, its SHA-256); how one unit runs and is written
atomically is :mod:`fiberscope.audit.unit` (:func:`~fiberscope.audit.unit.run_unit`, the
:class:`~fiberscope.audit.unit.ModelCache`). This module runs a shard's units with an engine
(local, or Ray), writes the summary rebuilt from what is on disk, and the report.

Example:
    >>> from fiberscope.audit import read_manifest, run_audit           # doctest: +SKIP
    >>> run = run_audit(read_manifest("audit.jsonl"), "audit-out")      # doctest: +SKIP
    >>> run.counts()                                                    # doctest: +SKIP
    {'done': 12, 'skipped': 0, 'failed': 0}
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import errors
from .._deprecated import moved
from ..utils import atomic_write_json, atomic_write_text, is_rank_zero, jsonable, signals_deferred
from .manifest import Manifest, WorkUnit
from .sharding import ShardInfo, shard_units
from .store import held, lock_for, remove_stale_temps
from .unit import (
    ModelCache,
    RunOptions,
    UnitResult,
    failure_path,
    output_error,
    result_mean,
    run_unit,
    sweep_debris,
    unit_status,
)

__all__ = [
    "AuditRun",
    "ModelCache",
    "RunOptions",
    "UnitResult",
    "run_audit",
    "run_unit",
    "unit_status",
    "write_summary",
]


# ---------------------------------------------------------------------------------------------------------------
# summary


def write_summary(
    out: str | os.PathLike[str],
    manifest: Manifest,
    *,
    shard: ShardInfo | None = None,
    engine: str = "local",
    state: str = "finished",
) -> dict[str, Any]:
    """Write ``summary.jsonl`` (a line per manifest line) and ``audit.json`` from what is on disk.

    The summary is rebuilt from the output directory each time, so several shards writing it in
    turn each leave a complete, consistent snapshot (the last one written is the most complete).
    A unit is ``done`` only if its record is sound and every file it lists has its recorded size
    (:func:`~fiberscope.audit.store.check_result`); otherwise ``damaged``, ``failed`` or ``pending``.
    A row's ``redone`` says why an earlier result of the unit was found damaged and redone.
    """
    root = Path(out)
    rows: list[dict[str, Any]] = []
    for u in manifest.units:
        row: dict[str, Any] = {
            "line": u.line,
            "key": u.key,
            "dir": f"units/{u.dirname}",
            **u.identity(),
            "label": u.label,
        }
        check = unit_status(root, u)
        if check.ok and check.record is not None:
            rec = check.record
            row.update(status="done", fiber_loss_mean=result_mean(rec), fiber_loss=rec.get("fiber_loss"))
            audit = rec["config"].get("audit")
            if isinstance(audit, dict) and audit.get("redone"):
                row["redone"] = audit["redone"]
        elif check.status == "damaged":
            row.update(
                status="damaged", error=f"finished result is damaged: {check.problem}; rerun the audit to redo it"
            )
        else:
            try:
                fail = json.loads(failure_path(root, u).read_text())
                row.update(status="failed", error=fail.get("error"), code=fail.get("code"))
                if fail.get("redone"):
                    row["redone"] = fail["redone"]
            except (OSError, ValueError, AttributeError):
                row.update(status="pending")
        rows.append(row)
    for err in manifest.errors:
        rows.append({"line": err.line, "status": "invalid", "error": err.message, "text": err.text})
    for line, first in manifest.duplicates:
        rows.append({"line": line, "status": "duplicate", "error": f"repeats the unit on line {first}; run once"})
    rows.sort(key=lambda r: r["line"])
    counts = Counter(r["status"] for r in rows)
    summary = {
        "fiberscope_audit": 1,
        "manifest": manifest.path,
        "state": state,
        "units": len(manifest.units),
        **{k: counts.get(k, 0) for k in ("done", "failed", "damaged", "pending", "invalid", "duplicate")},
        "redone": sum(1 for r in rows if r.get("redone")),
        "bad_lines": [{"line": e.line, "error": e.message} for e in manifest.errors],
        "last_writer": {
            "shard": dataclasses.asdict(shard) if shard else None,
            "engine": engine,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    }
    # shards write these in turn; the lock also makes every other writer's temporary files debris
    with held(lock_for(root, "summary")):
        remove_stale_temps(root, ("summary.jsonl", "audit.json", "report.html"))
        atomic_write_text(root / "summary.jsonl", "".join(json.dumps(jsonable(r)) + "\n" for r in rows))
        atomic_write_json(root / "audit.json", summary)
    return summary


# ---------------------------------------------------------------------------------------------------------------
# the whole audit


@dataclass
class AuditRun:
    """The outcome of :func:`run_audit` for this process's shard."""

    out: Path
    manifest: Manifest
    shard: ShardInfo
    units: list[WorkUnit]
    results: list[UnitResult] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    report: Path | None = None
    cache_loads: dict[str, int] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        c = Counter(r.status for r in self.results)
        return {k: c.get(k, 0) for k in ("done", "skipped", "failed")}

    @property
    def redone(self) -> list[UnitResult]:
        """Units whose finished result was found damaged (and redone, or failed when redone)."""
        return [r for r in self.results if r.redone]

    @property
    def adopted(self) -> list[UnitResult]:
        """Units finished by a fiberscope whose keys had no query digest, taken over without rerunning."""
        return [r for r in self.results if r.adopted]

    @property
    def failed(self) -> list[UnitResult]:
        return [r for r in self.results if r.status == "failed"]


def _local_engine(
    units: list[WorkUnit], out: Path, options: RunOptions, cache: ModelCache | None
) -> Iterator[UnitResult]:
    """Each unit in turn; units another process holds are yielded as ``busy`` and run (waiting) at the end."""
    cache = cache or ModelCache(options)
    busy: list[WorkUnit] = []
    for u in units:
        r = run_unit(u, out, cache, options, wait=False)
        if r.status == "busy":
            busy.append(u)
        yield r
    for u in busy:
        yield run_unit(u, out, cache, options, wait=True)


def run_audit(
    manifest: Manifest,
    out: str | os.PathLike[str],
    *,
    shard: ShardInfo | None = None,
    engine: str = "local",
    options: RunOptions | None = None,
    workers: int = 1,
    ray_address: str | None = None,
    cache: ModelCache | None = None,
    progress: bool = True,
    report: bool = True,
    log: Callable[[str], None] | None = None,
) -> AuditRun:
    """Run this shard's units of ``manifest`` into ``out``, skipping finished ones.

    Args:
        manifest: from :func:`~fiberscope.audit.read_manifest`.
        out: output directory (created).
        shard: this process's shard (default: the whole manifest; see :func:`~fiberscope.audit.resolve_shard`).
        engine: ``"local"`` (this process) or ``"ray"`` (Ray actors holding the models).
        options: how units run (device, dtype, ``trust_pickle``...).
        workers: Ray actors (engine ``"ray"``).
        ray_address: an existing Ray cluster (default: a local Ray instance with ``workers`` CPUs).
        cache: a :class:`ModelCache` to use (local engine), e.g. to share models with other calls.
        progress: a progress bar over units (never on non-zero ranks).
        report: write ``report.html`` when done (single-shard runs; with several shards run
            ``fiberscope report OUT`` once every shard has finished).
        log: called with one line per failed, damaged-and-redone or waited-for unit (default: printed to stderr).

    Returns:
        :class:`AuditRun`. Units that failed are in ``.failed``; bad manifest lines in ``.manifest.errors``.

    Raises:
        OutputWriteError: the output could not be written (the audit stops; finished units are kept).
        KeyboardInterrupt: interrupted; the unit in progress is discarded and the summary written.
    """
    import sys

    options = options or RunOptions()
    shard = shard or ShardInfo()
    root = Path(out)
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    cwd = os.getcwd()
    units = [u if u.base_dir else dataclasses.replace(u, base_dir=cwd) for u in shard_units(manifest.units, shard)]
    (root / "units").mkdir(parents=True, exist_ok=True)
    try:
        sweep_debris(root, units)
    except OSError as e:
        raise output_error(e, root / ".locks") from e
    run = AuditRun(root.resolve(), manifest, shard, units)
    threads0 = None
    if options.threads and engine == "local":
        import torch

        threads0 = torch.get_num_threads()
        torch.set_num_threads(options.threads)
    bar = None
    if progress and is_rank_zero() and units:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(units), desc=f"audit shard {shard.index + 1}/{shard.count}", unit="unit", dynamic_ncols=True
        )
    state = "finished"
    results: Iterable[UnitResult] = ()
    try:
        if engine == "local":
            results = _local_engine(units, root, options, cache)
        elif engine == "ray":
            from .ray_engine import run_units_ray

            results = run_units_ray(units, root, options, workers=workers, address=ray_address)
        else:
            raise ValueError(f"unknown engine {engine!r}: use 'local' or 'ray'")

        def say(msg: str) -> None:
            if bar is not None:
                bar.write(msg, file=sys.stderr)
            else:
                log(msg)

        for r in results:
            if r.status == "output-error":
                raise errors.OutputWriteError(errno.EIO, r.error or "cannot write output")
            if r.status == "busy":  # the engine comes back to it at the end, waiting for the lock
                say(f"unit {r.line}: being written by {r.error}; coming back to it at the end [{r.dirname}]")
                continue
            run.results.append(r)
            if r.redone:
                say(f"unit {r.line}: its finished result was damaged ({r.redone}); redone [{r.dirname}]")
            if r.status == "failed":
                say(f"unit {r.line}: {r.error} [{r.dirname}]")
            if bar is not None:
                bar.update(1)
                if r.fiber_loss_mean is not None:
                    bar.set_postfix_str(f"last fiber loss {r.fiber_loss_mean:.3g}")
    except KeyboardInterrupt:
        state = "interrupted"
        raise
    except OSError:
        state = "output-error"
        raise
    except BaseException:  # e.g. a Ray actor that died: report the state, keep everything written
        state = "error"
        raise
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()  # stops the Ray actors if the loop ended early
        if bar is not None:
            bar.close()
        if threads0 is not None:
            import torch

            torch.set_num_threads(threads0)
        if cache is not None:
            run.cache_loads = {"/".join(k[:2]): v for k, v in cache.loads.items()}
        try:
            # after an interrupt a second Ctrl-C must not cut the summary short: it is acted on afterwards
            with signals_deferred() if state == "interrupted" else contextlib.nullcontext():
                run.summary = write_summary(root, manifest, shard=shard, engine=engine, state=state)
            # with several shards the report is left to `fiberscope report OUT` once all are done:
            # every shard rewriting it would redo the whole page once per shard
            finished = any(r.status in ("done", "skipped") for r in run.results)
            if report and state == "finished" and shard.count == 1 and finished:
                from ..report.results import write_results_report

                run.report = write_results_report(root, title=f"fiberscope audit: {root.name}")
        except Exception as e:
            if state == "finished":  # otherwise the original error is the one to report
                if isinstance(e, OSError) and not isinstance(e, errors.OutputWriteError):
                    raise errors.OutputWriteError(e.errno, f"{e.strerror} (writing the summary in {root})") from e
                raise
    return run


__getattr__ = moved(__name__, {"OutputWriteError": "fiberscope.errors:OutputWriteError"})
