"""Run the work units of an audit: model cache, one atomic result directory per unit, resume, summary.

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
its recorded size (and, with ``--verify``, its SHA-256). It is written into a staging directory
owned by this process (see :mod:`fiberscope.audit.store`) while the unit's lock is held, and
renamed into place only when every file is complete, so a process killed at any moment (SIGKILL
included) leaves either a finished unit or a staging directory that a later run deletes once its
owner is provably gone. A finished unit is never rewritten; a damaged one is redone.

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
import inspect
import json
import os
import socket
import time
import traceback
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import errors
from .._deprecated import moved
from ..utils import atomic_write_json, atomic_write_text, is_rank_zero, jsonable, signals_deferred
from .manifest import Manifest, WorkUnit, query_digest
from .sharding import ShardInfo, shard_units
from .store import (
    Check,
    Staging,
    check_result,
    commit,
    describe_writers,
    discard_dir,
    expected_files,
    held,
    lock_for,
    remove_stale_staging,
    remove_stale_temps,
    remove_tree,
    seal,
    try_acquire,
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


@dataclass
class RunOptions:
    """How units run (the same for every engine, so results do not depend on it).

    Attributes:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``; None picks ``cuda:$LOCAL_RANK`` when a GPU is visible, else CPU.
        dtype: network dtype of the prior (``"fp16"``, ``"bf16"``; guidance stays float32).
        batch_size: samples per guidance batch (default 8, see :func:`~fiberscope.sample_fiber`; samples
            are bit-identical at the same batch size, equal up to rounding at another).
        autocast: ``"bf16"``/``"fp16"``: prior and subject under ``torch.autocast`` (fiber loss in fp32).
        channels_last: NHWC layout for the convolutions.
        compile: a ``torch.compile`` backend for the prior's network (None: off).
        trust_pickle: allow pickle checkpoints (only for files you trust; passed to the loaders).
        threads: torch CPU threads per worker (None: torch's default).
        progress: per-unit progress bars (the audit's own bar is separate).
        cache_size: loaded priors (and subjects) kept per process.
        gradient_checkpointing: load priors with activation recomputation in the backward pass
            (less memory, e.g. the 256×256 ADM; results are unchanged).
        verify: check the SHA-256 of every file of a finished unit before skipping it (sizes are
            always checked); a unit that fails is redone.
    """

    device: str | None = None
    dtype: str | None = None
    batch_size: int | str | None = None
    autocast: str | None = None
    channels_last: bool = False
    compile: str | None = None
    trust_pickle: bool = False
    threads: int | None = None
    progress: bool = False
    cache_size: int = 2
    gradient_checkpointing: bool = False
    verify: bool = False


@dataclass
class UnitResult:
    """What happened to one unit in this run.

    ``status``: ``"done"``, ``"skipped"`` (finished earlier, or by another process meanwhile),
    ``"failed"``, ``"output-error"``, or ``"busy"`` (another process holds the unit's lock; the
    engines come back to it, waiting). ``redone``: why the finished result on disk was damaged and
    redone; ``adopted``: a result written before unit keys had the query's digest, taken over.
    """

    key: str
    dirname: str
    line: int
    status: str
    fiber_loss_mean: float | None = None
    error: str | None = None
    code: int | None = None
    seconds: float = 0.0
    redone: str | None = None
    adopted: bool = False


def _default_device() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    except Exception:  # pragma: no cover - torch is a dependency; this only guards odd builds
        pass
    return "cpu"


def _with_trust(fn: Callable[..., Any], trust_pickle: bool, what: str) -> dict[str, Any]:
    """``{"trust_pickle": True}`` when asked for (refused if the loader cannot take it), else nothing.

    ``False`` is never passed: it is every loader's default, and some adapters take no options at all.
    """
    if not trust_pickle:
        return {}
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        params = []  # type: ignore[assignment]
    if any(p.name == "trust_pickle" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return {"trust_pickle": True}
    raise ValueError(
        f"--trust-pickle was given but this fiberscope's {what} loader reads only safetensors and "
        "weights_only checkpoints; convert the checkpoint to safetensors"
    )


class ModelCache:
    """Loaded priors and subjects by spec, kept for reuse across units (LRU of ``size`` each).

    Args:
        options: device, dtype and ``trust_pickle`` for loading.
        load_prior, load_subject: the loaders (default fiberscope's; tests pass counting ones).

    Attributes:
        loads: how many times each ``("prior"|"subject", spec...)`` was actually loaded.

    Example:
        >>> cache = ModelCache(RunOptions(device="cpu"))                 # doctest: +SKIP
        >>> p = cache.prior("builtin:mnist-ddpm"); p is cache.prior("builtin:mnist-ddpm")   # doctest: +SKIP
        True
    """

    def __init__(
        self,
        options: RunOptions | None = None,
        *,
        load_prior: Callable[..., Any] | None = None,
        load_subject: Callable[..., Any] | None = None,
    ):
        from .. import loading

        self.options = options or RunOptions()
        self.device = self.options.device or _default_device()
        self._load_prior = load_prior or loading.load_prior
        self._load_subject = load_subject or loading.load_subject
        self._priors: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._subjects: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self.loads: Counter[tuple[Any, ...]] = Counter()
        self._failed: dict[tuple[Any, ...], Exception] = {}

    def _get(self, store: OrderedDict[tuple[Any, ...], Any], key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
        if key in self._failed:  # a model that could not be loaded is not retried for every unit
            raise self._failed[key].with_traceback(None)
        if key in store:
            store.move_to_end(key)
            return store[key]
        try:
            obj = make()
        except Exception as e:
            self._failed[key] = e
            raise
        self.loads[key] += 1
        store[key] = obj
        while len(store) > max(1, self.options.cache_size):
            store.popitem(last=False)
        return obj

    def prior(self, spec: str) -> Any:
        """The prior named ``spec`` on this cache's device (loaded on first use)."""
        o = self.options

        def make() -> Any:
            kw = _with_trust(self._load_prior, o.trust_pickle, "prior")
            if o.gradient_checkpointing:  # only when asked: custom loaders need not take it
                kw["gradient_checkpointing"] = True
            return self._load_prior(spec, device=self.device, dtype=o.dtype, **kw)

        return self._get(self._priors, ("prior", spec), make)

    def subject(self, spec: str, layer: Any = None) -> Any:
        """The subject ``spec`` with ``layer`` applied, on this cache's device (loaded on first use)."""
        o = self.options
        lkey = json.dumps(layer, sort_keys=True)

        def make() -> Any:
            kw = _with_trust(self._load_subject, o.trust_pickle, "subject")
            return self._load_subject(spec, layer, device=self.device, **kw)

        return self._get(self._subjects, ("subject", spec, lkey), make)


# ---------------------------------------------------------------------------------------------------------------
# one unit


def one_line(text: str, limit: int = 600) -> str:
    """Collapse whitespace (tracebacks, multi-line messages) into one line of at most ``limit`` characters."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _failure_path(out: Path, unit: WorkUnit) -> Path:
    return out / "failed" / f"{unit.dirname}.json"


def _output_error(e: OSError, where: Path | str) -> errors.OutputWriteError:
    return errors.OutputWriteError(e.errno, f"{e.strerror} (writing {e.filename or where})")


def _write_failure(root: Path, unit: WorkUnit, record: dict[str, Any]) -> None:
    try:
        atomic_write_json(_failure_path(root, unit), record)
    except OSError as w:
        raise _output_error(w, _failure_path(root, unit)) from w


def _remove_debris(units_dir: Path, unit: WorkUnit) -> int:
    """Stale staging of ``unit`` (owners provably gone) and half-deleted leftovers; call holding its lock."""
    n = len(remove_stale_staging(units_dir, f".partial-{unit.key}-"))
    with contextlib.suppress(OSError):
        for p in units_dir.iterdir():
            if p.name.startswith(f".stale-{unit.dirname}-"):
                remove_tree(p)
                n += 1
    return n


def sweep_debris(out: str | os.PathLike[str], units: Iterable[WorkUnit]) -> int:
    """Remove what killed processes left of ``units``: staging directories whose owners are provably gone.

    Each unit with something to remove is looked at only if its lock is free at that moment (a
    unit being written by a live process is left alone). Returns how many directories went.
    """
    root = Path(out)
    units_dir = root / "units"
    try:
        names = [p.name for p in units_dir.iterdir() if p.name.startswith((".partial-", ".stale-"))]
    except OSError:
        return 0
    if not names:
        return 0
    removed = 0
    for u in units:
        if not any(u.key in n for n in names):
            continue
        lock = lock_for(root, u.key)
        if try_acquire(lock, False):
            try:
                removed += _remove_debris(units_dir, u)
            finally:
                with signals_deferred():
                    lock.release()
    return removed


def _adopt_legacy(unit: WorkUnit, units_dir: Path, final: Path) -> bool:
    """Take over a unit finished by a fiberscope whose keys had no query digest, if it is this unit.

    It is adopted only if its record is sound, it loads, and the query stored in its
    ``samples.npz`` is exactly the query file's content now (loaded as the sampler loads it);
    then it is renamed to the new name and its file list added. Call holding the unit's lock.
    """
    import numpy as np

    from ..api import FiberSamples
    from ..data.query import load_query

    legacy = units_dir / unit.legacy_dirname
    if legacy == final or unit.query_sha256 is None or not legacy.is_dir():
        return False
    c = check_result(legacy, n=unit.n, require_files=False)
    rec = c.record
    if not c.ok or rec is None or "files" in rec:
        return False
    audit = rec["config"].get("audit")
    if not isinstance(audit, dict) or audit.get("key") != unit.legacy_key:
        return False
    if not all((legacy / f).is_file() for f in expected_files(unit.n)):
        return False
    try:
        FiberSamples.load(legacy)
        with np.load(legacy / "samples.npz", allow_pickle=False) as z:
            stored = z["query"]
        dr = rec.get("data_range")
        now = load_query(unit.query_path, image_shape=tuple(stored.shape[1:]), data_range=tuple(dr) if dr else None)
        if now.shape != stored.shape or not np.array_equal(now.numpy(), stored):
            return False
    except Exception:  # anything unreadable: not adopted, the unit is simply run
        return False
    try:
        staging = Staging(units_dir, f".partial-{unit.key}-", source=legacy)
    except OSError:
        return False
    try:
        seal(staging, unit.n, extra={"audit": {**_audit_info(unit), "adopted_from": unit.legacy_dirname}})
        return commit(staging, final, n=unit.n)
    except OSError as e:
        staging.discard()
        raise _output_error(e, final) from e
    except BaseException:
        staging.discard()
        raise


def _audit_info(unit: WorkUnit) -> dict[str, Any]:
    return {"unit": unit.identity(), "key": unit.key, "label": unit.label}


def run_unit(
    unit: WorkUnit,
    out: str | os.PathLike[str],
    cache: ModelCache,
    options: RunOptions | None = None,
    *,
    wait: bool = True,
) -> UnitResult:
    """Run one unit unless it is already finished; write its result atomically.

    The unit's lock (``OUT/.locks/<key>.lock``) is held from the check "is it finished?" to the
    rename into place, so two processes never both work on it. A finished unit is checked first
    (its record and every file's size; the SHA-256 digests too with ``options.verify``): a
    damaged one is removed and redone, and the result's ``redone`` says why.

    Failures of the unit itself (a bad image, an unavailable model, a subject without gradient,
    NaN) are returned as ``status="failed"`` with a one-line message, and recorded under
    ``OUT/failed/``. A failure to *write* raises :class:`~fiberscope.errors.OutputWriteError`. On any interruption
    (Ctrl-C, SIGTERM turned into KeyboardInterrupt) the half-written staging directory is removed.

    Args:
        unit: the unit.
        out: the audit's output directory.
        cache: loaded models.
        options: how to run it (default ``cache.options``).
        wait: if another process holds the unit's lock, wait for it (True), or return at once
            with ``status="busy"`` and the writer in ``error`` (False).
    """
    options = options or cache.options
    root = Path(out)
    units_dir = root / "units"
    final = units_dir / unit.dirname
    check = check_result(final, n=unit.n, digests=options.verify)
    if check.ok:
        return UnitResult(unit.key, unit.dirname, unit.line, "skipped", _mean(check.record))
    try:
        lock = lock_for(root, unit.key)
        got = try_acquire(lock, wait)
    except OSError as e:
        raise _output_error(e, root / ".locks") from e
    if not got:
        writer = describe_writers(units_dir, f".partial-{unit.key}-")
        return UnitResult(unit.key, unit.dirname, unit.line, "busy", error=writer)
    try:
        return _run_locked(unit, root, cache, options)
    finally:
        with signals_deferred():
            lock.release()


def _run_locked(unit: WorkUnit, root: Path, cache: ModelCache, options: RunOptions) -> UnitResult:
    from ..api import sample_fiber
    from ..methods import method_from_spec

    units_dir = root / "units"
    final = units_dir / unit.dirname
    check = check_result(final, n=unit.n, digests=options.verify)  # again: it may have finished meanwhile
    if check.ok:
        return UnitResult(unit.key, unit.dirname, unit.line, "skipped", _mean(check.record))
    _remove_debris(units_dir, unit)
    if check.status == "missing" and _adopt_legacy(unit, units_dir, final):
        rec = check_result(final, n=unit.n).record or {}
        return UnitResult(unit.key, unit.dirname, unit.line, "skipped", _mean(rec), adopted=True)
    redone = check.problem if check.status == "damaged" else None
    if redone is not None:
        discard_dir(final)
    t0 = time.perf_counter()
    try:
        prior = cache.prior(unit.prior)
        subject = cache.subject(unit.subject, unit.layer)
        method = method_from_spec(unit.method, None, unit.prior)
        res = sample_fiber(
            subject,
            unit.query_path,
            prior,
            n=unit.n,
            method=method,
            seed=unit.seed,
            batch_size=options.batch_size,
            autocast=options.autocast,
            channels_last=options.channels_last,
            compile=options.compile or False,
            device=cache.device,
            progress=options.progress and is_rank_zero(),
        )
        if query_digest(unit.query_path) != unit.query_sha256:
            raise errors.InputError(
                f"query file {unit.query_path} changed while the audit ran (its SHA-256 is not the one read "
                "with the manifest); run the audit again"
            )
    except Exception as e:
        code, msg = errors.classify(e)
        msg = one_line(msg)
        _write_failure(
            root,
            unit,
            {
                "unit": unit.identity(),
                "line": unit.line,
                "error": msg,
                "code": code,
                "type": type(e).__name__,
                "redone": redone,
                "traceback": traceback.format_exc()[-20000:],
            },
        )
        return UnitResult(unit.key, unit.dirname, unit.line, "failed", error=msg, code=code, redone=redone)
    info = _audit_info(unit)
    if redone is not None:
        info["redone"] = redone
    res.config["audit"] = info
    committed = False
    for attempt in range(2):
        try:
            staging = Staging(units_dir, f".partial-{unit.key}-")
        except OSError as e:
            raise _output_error(e, units_dir) from e
        try:
            res.save(staging.path)
            seal(staging, len(res))
            committed = commit(staging, final, n=unit.n)
            break
        except errors.StagingLostError as e:  # only without working locks between hosts: write it again
            staging.discard()
            if attempt:
                raise _output_error(e, staging.path) from e
        except OSError as e:
            staging.discard()
            raise _output_error(e, staging.path) from e
        except BaseException:
            staging.discard()
            raise
    with contextlib.suppress(FileNotFoundError):
        _failure_path(root, unit).unlink()
    mean = float(res.fiber_loss.mean())
    status = "done" if committed else "skipped"
    return UnitResult(unit.key, unit.dirname, unit.line, status, mean, seconds=time.perf_counter() - t0, redone=redone)


def _mean(rec: dict[str, Any] | None) -> float | None:
    v = (rec or {}).get("fiber_loss_mean")
    return float(v) if isinstance(v, (int, float)) else None


def unit_status(out: str | os.PathLike[str], unit: WorkUnit, *, digests: bool = False) -> Check:
    """What is on disk for ``unit``: ``ok`` (finished), ``missing`` or ``damaged`` (with the problem)."""
    return check_result(Path(out) / "units" / unit.dirname, n=unit.n, digests=digests)


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
            row.update(status="done", fiber_loss_mean=_mean(rec), fiber_loss=rec.get("fiber_loss"))
            audit = rec["config"].get("audit")
            if isinstance(audit, dict) and audit.get("redone"):
                row["redone"] = audit["redone"]
        elif check.status == "damaged":
            row.update(
                status="damaged", error=f"finished result is damaged: {check.problem}; rerun the audit to redo it"
            )
        else:
            try:
                fail = json.loads(_failure_path(root, u).read_text())
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
        raise _output_error(e, root / ".locks") from e
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
