"""One work unit of an audit: the model cache, running the unit into its atomic result directory, its status.

A unit is finished when ``units/<slug>-<key>/record.json`` is sound and every file it lists has
its recorded size (and, with ``--verify``, its SHA-256). :func:`run_unit` writes it into a staging
directory owned by this process (see :mod:`fiberscope.audit.store`) while the unit's lock is held,
and renames it into place only when every file is complete, so a process killed at any moment
(SIGKILL included) leaves either a finished unit or a staging directory that a later run deletes
once its owner is provably gone. A finished unit is never rewritten; a damaged one is redone.

Both engines run units through :func:`run_unit` with a :class:`ModelCache` (the local engine of
:mod:`fiberscope.audit.runner`, and each actor of :mod:`fiberscope.audit.ray_engine`), so results
do not depend on the engine.

Example:
    >>> from fiberscope.audit.unit import ModelCache, RunOptions, run_unit     # doctest: +SKIP
    >>> cache = ModelCache(RunOptions(device="cpu"))                           # doctest: +SKIP
    >>> run_unit(manifest.units[0], "audit-out", cache).status                 # doctest: +SKIP
    'done'
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import time
import traceback
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import errors
from ..utils import atomic_write_json, is_rank_zero, signals_deferred
from .manifest import WorkUnit, query_digest
from .store import (
    Check,
    Staging,
    check_result,
    commit,
    describe_writers,
    discard_dir,
    expected_files,
    lock_for,
    remove_stale_staging,
    remove_tree,
    seal,
    try_acquire,
)

__all__ = [
    "ModelCache",
    "RunOptions",
    "UnitResult",
    "failure_path",
    "one_line",
    "output_error",
    "result_mean",
    "run_unit",
    "sweep_debris",
    "unit_status",
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


def failure_path(out: Path, unit: WorkUnit) -> Path:
    """Where why ``unit`` failed is recorded: ``OUT/failed/<slug>-<key>.json``."""
    return out / "failed" / f"{unit.dirname}.json"


def output_error(e: OSError, where: Path | str) -> errors.OutputWriteError:
    """An :class:`OSError` met while writing ``where``, as the audit's output error (exit code 6)."""
    return errors.OutputWriteError(e.errno, f"{e.strerror} (writing {e.filename or where})")


def _write_failure(root: Path, unit: WorkUnit, record: dict[str, Any]) -> None:
    try:
        atomic_write_json(failure_path(root, unit), record)
    except OSError as w:
        raise output_error(w, failure_path(root, unit)) from w


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
        raise output_error(e, final) from e
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
        return UnitResult(unit.key, unit.dirname, unit.line, "skipped", result_mean(check.record))
    try:
        lock = lock_for(root, unit.key)
        got = try_acquire(lock, wait)
    except OSError as e:
        raise output_error(e, root / ".locks") from e
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
        return UnitResult(unit.key, unit.dirname, unit.line, "skipped", result_mean(check.record))
    _remove_debris(units_dir, unit)
    if check.status == "missing" and _adopt_legacy(unit, units_dir, final):
        rec = check_result(final, n=unit.n).record or {}
        return UnitResult(unit.key, unit.dirname, unit.line, "skipped", result_mean(rec), adopted=True)
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
            raise output_error(e, units_dir) from e
        try:
            res.save(staging.path)
            seal(staging, len(res))
            committed = commit(staging, final, n=unit.n)
            break
        except errors.StagingLostError as e:  # only without working locks between hosts: write it again
            staging.discard()
            if attempt:
                raise output_error(e, staging.path) from e
        except OSError as e:
            staging.discard()
            raise output_error(e, staging.path) from e
        except BaseException:
            staging.discard()
            raise
    with contextlib.suppress(FileNotFoundError):
        failure_path(root, unit).unlink()
    mean = float(res.fiber_loss.mean())
    status = "done" if committed else "skipped"
    return UnitResult(unit.key, unit.dirname, unit.line, status, mean, seconds=time.perf_counter() - t0, redone=redone)


def result_mean(rec: dict[str, Any] | None) -> float | None:
    """A unit record's ``fiber_loss_mean``, or None."""
    v = (rec or {}).get("fiber_loss_mean")
    return float(v) if isinstance(v, (int, float)) else None


def unit_status(out: str | os.PathLike[str], unit: WorkUnit, *, digests: bool = False) -> Check:
    """What is on disk for ``unit``: ``ok`` (finished), ``missing`` or ``damaged`` (with the problem)."""
    return check_result(Path(out) / "units" / unit.dirname, n=unit.n, digests=digests)
