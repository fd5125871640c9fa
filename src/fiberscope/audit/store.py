"""How results are stored safely: owned staging directories, unit locks, file digests, checks, commits.

Used by ``fiberscope audit`` (one directory per work unit) and ``fiberscope sample`` (one directory
per query). The rules, also in ``docs/reliability.md``:

* **Staging is owned.** A result is written into a hidden staging directory
  (``.partial-<key>-<host>-<pid>-<random>``) holding ``owner.json``: host name, pid, the process's
  start time and boot id (from ``/proc``), its pid namespace. The owner touches that file every
  :data:`HEARTBEAT_SECONDS` while it writes.
* **One writer per unit.** A unit is worked on only while holding its lock,
  ``OUT/.locks/<key>.lock`` (:mod:`filelock`, ``flock``), from the check "is it finished?" to the
  rename into place. A second process skips a unit whose lock is held and comes back to it at the
  end of its run, waiting for the lock; by then the unit is usually finished and is skipped. Lock
  files are never deleted (deleting one would let two processes lock two different files).
* **Stale staging is removed only when its owner is provably gone**, and only by a process holding
  the lock that guards it: same machine (same host name, boot id and pid namespace) and the pid is
  dead, a zombie, or now a different process (another start time); for an owner on another
  machine, or with no readable ``owner.json``, only when its heartbeat is older than
  :func:`stale_seconds` (``FIBERSCOPE_STALE_STAGING_SECONDS``, default one hour). Holding the lock is
  not taken as proof on its own, because NFS mounts do not always enforce locks across clients
  (``local_lock=``, ``nolock``).
* **Every finished result lists its files** in ``record.json`` under ``"files"``: name, size,
  SHA-256. :func:`check_result` checks that the record is well formed and every listed file has
  its size (always) and its digest (``digests=True``, ``fiberscope audit --verify``).
* **Commit is a rename** of the complete staging directory after checking that it is still the
  one this process created (its ``owner.json``) and holds every file; a finished unit that is
  already there is never replaced unless it fails :func:`check_result`.

Example:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> st = Staging(out, ".partial-demo-")
    >>> (st.path / OWNER_FILE).is_file(), Owner.read(st.path) == st.owner
    (True, True)
    >>> st.discard(); st.path.exists()
    False
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import errors
from .._deprecated import moved
from ..utils import atomic_write_json, file_sha256, signals_deferred

__all__ = [
    "HEARTBEAT_SECONDS",
    "LOCK_DIR",
    "OWNER_FILE",
    "Check",
    "Owner",
    "Staging",
    "check_result",
    "commit",
    "expected_files",
    "install",
    "lock_for",
    "remove_stale_staging",
    "remove_stale_temps",
    "remove_tree",
    "seal",
    "stale_seconds",
]

OWNER_FILE = "owner.json"
LOCK_DIR = ".locks"
HEARTBEAT_SECONDS = 30.0
STALE_ENV = "FIBERSCOPE_STALE_STAGING_SECONDS"
DEFAULT_STALE_SECONDS = 3600.0
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_RESULT_FILE = re.compile(r"^(sample_\d{3,}\.png|grid\.png|query\.png|samples\.npz|record\.json)$")


def stale_seconds() -> float:
    """How old a heartbeat must be before staging of an owner on another machine counts as abandoned."""
    try:
        v = float(os.environ.get(STALE_ENV, DEFAULT_STALE_SECONDS))
    except ValueError:
        return DEFAULT_STALE_SECONDS
    return v if math.isfinite(v) and v > 0 else DEFAULT_STALE_SECONDS


# ---------------------------------------------------------------------------------------------------------------
# who owns a staging directory, and whether that process still exists


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of ``pid`` from ``/proc``, or None."""
    text = _read_text(f"/proc/{pid}/stat")
    if not text or ")" not in text:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return (fields[0], fields[19]) if len(fields) > 19 else None


_BOOT_ID = (_read_text("/proc/sys/kernel/random/boot_id") or "").strip() or None


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


@dataclass(frozen=True)
class Owner:
    """The process that writes a staging directory: enough to tell later whether it still exists."""

    host: str
    pid: int
    start: str | None = None  # start time in clock ticks since boot (Linux /proc), else None
    boot: str | None = None  # the kernel's boot id: a start time means nothing across reboots
    pidns: str | None = None  # pid namespace: containers on one host see different pids

    @classmethod
    def current(cls) -> Owner:
        pid = os.getpid()
        st = _proc_stat(pid)
        return cls(socket.gethostname(), pid, st[1] if st else None, _BOOT_ID, _pid_namespace())

    def same_machine(self) -> bool:
        """True when this process can see the owner's pid (same host, boot and pid namespace)."""
        return (self.host, self.boot, self.pidns) == (socket.gethostname(), _BOOT_ID, _pid_namespace())

    def gone(self) -> bool | None:
        """True: provably no longer running; False: running; None: cannot tell (another machine)."""
        if not self.same_machine() or self.pid <= 0:
            return None
        if not _pid_exists(self.pid):
            return True
        st = _proc_stat(self.pid)
        if st is None:  # no /proc, /proc mounted with hidepid, or it exited just now
            return not _pid_exists(self.pid)
        state, start = st
        if state in ("Z", "X"):  # a zombie writes nothing
            return True
        return self.start is not None and start != self.start  # the pid now belongs to another process

    def describe(self) -> str:
        return f"{self.host} pid {self.pid}"

    @classmethod
    def read(cls, staging: Path) -> Owner | None:
        try:
            d = json.loads((staging / OWNER_FILE).read_text())
            return cls(
                str(d["host"]),
                int(d["pid"]),
                None if d.get("start") is None else str(d["start"]),
                None if d.get("boot") is None else str(d["boot"]),
                None if d.get("pidns") is None else str(d["pidns"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _token(owner: Owner) -> str:
    host = re.sub(r"[^A-Za-z0-9-]+", "-", owner.host)[:40]
    return f"{host}-{owner.pid}-{secrets.token_hex(3)}"


def remove_tree(path: Path) -> None:
    """Delete a directory tree; a Ctrl-C arriving meanwhile is acted on once it is gone."""
    with signals_deferred():
        shutil.rmtree(path, ignore_errors=True)


def _heartbeat_age(p: Path, now: float) -> float:
    try:
        t = (p / OWNER_FILE).stat().st_mtime
    except OSError:
        try:
            t = p.stat().st_mtime
        except OSError:
            return 0.0
    return now - t


class Staging:
    """A hidden directory this process writes a result into, with its ``owner.json`` and a heartbeat.

    Args:
        parent: the directory it is created in (``OUT/units`` for an audit, ``OUT`` for ``sample``).
        prefix: the start of its name, e.g. ``.partial-<key>-``; the owner's token is appended.
        source: an existing directory to rename into the staging name instead of creating an empty one.

    Example:
        >>> import tempfile, pathlib
        >>> st = Staging(pathlib.Path(tempfile.mkdtemp()), ".partial-x-")
        >>> st.path.name.startswith(".partial-x-"), st.intact()
        (True, True)
        >>> st.discard()
    """

    def __init__(self, parent: Path, prefix: str, *, source: Path | None = None):
        self.owner = Owner.current()
        self.path = Path(parent) / f"{prefix}{_token(self.owner)}"
        if source is None:
            self.path.mkdir()
        else:  # take over an existing directory (a result being migrated)
            os.rename(source, self.path)
        try:
            atomic_write_json(self.path / OWNER_FILE, {**asdict(self.owner), "created": time.time()})
        except BaseException:
            remove_tree(self.path)
            raise
        self._stop = threading.Event()
        self._beat = threading.Thread(
            target=self._heartbeat, name=f"fiberscope-heartbeat-{self.path.name}", daemon=True
        )
        self._beat.start()

    def _heartbeat(self) -> None:
        f = self.path / OWNER_FILE
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                os.utime(f)
            except OSError:
                return

    def intact(self) -> bool:
        """True while the directory is still the one this process created (its ``owner.json`` is ours)."""
        return Owner.read(self.path) == self.owner

    def close(self) -> None:
        """Stop the heartbeat (the directory stays)."""
        self._stop.set()

    def discard(self) -> None:
        """Stop the heartbeat and delete the directory (whatever it holds)."""
        self.close()
        remove_tree(self.path)


def remove_stale_staging(parent: Path, prefix: str, *, now: float | None = None) -> list[str]:
    """Delete the staging directories ``parent/<prefix>*`` whose owners are provably gone.

    Call it only while holding the lock that guards these directories (the unit's lock for an
    audit, ``sample``'s lock for its output folder): a live owner holds that lock, so none of its
    directories is ever looked at. Returns the names removed.
    """
    removed: list[str] = []
    now = time.time() if now is None else now
    try:
        entries = list(Path(parent).iterdir())
    except OSError:
        return removed
    limit = stale_seconds()
    for p in entries:
        if not p.name.startswith(prefix):
            continue
        owner = Owner.read(p)
        gone = owner.gone() if owner is not None else None
        if gone is False or (gone is None and _heartbeat_age(p, now) <= limit):
            continue
        aside = p.with_name(f".stale-{p.name}")
        try:
            os.rename(p, aside)  # out of sight at once; the deletion may take a while on NFS
        except OSError:
            continue
        remove_tree(aside)
        removed.append(p.name)
    for p in entries:  # leftovers of an interrupted deletion
        if p.name.startswith(f".stale-{prefix}") and p.exists():
            remove_tree(p)
    return removed


_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9-]*)-(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")


def remove_stale_temps(directory: Path, names: tuple[str, ...], *, now: float | None = None) -> list[str]:
    """Delete temporary files of ``directory/<name>`` (from ``atomic_writer``) left by dead writers.

    Call it holding the lock every writer of those files holds (the audit's summary lock). A file
    goes when its writer was on this host and its pid is gone, or when it is older than
    :func:`stale_seconds`.
    """
    from ..utils import temp_owner_token

    removed: list[str] = []
    now = time.time() if now is None else now
    my_host = temp_owner_token().rsplit("-", 1)[0]
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TEMP.match(p.name)
        if not m or m["name"] not in names:
            continue
        pid = int(m["pid"])
        dead = m["host"] == my_host and pid > 0 and not _pid_exists(pid)
        try:
            old = now - p.stat().st_mtime > stale_seconds()
        except OSError:
            continue
        if dead or old:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
            removed.append(p.name)
    return removed


def describe_writers(parent: Path, prefix: str) -> str:
    """Who is writing ``parent/<prefix>*`` (for "waiting for ..." messages)."""
    owners = []
    with contextlib.suppress(OSError):
        for p in Path(parent).iterdir():
            if p.name.startswith(prefix):
                o = Owner.read(p)
                if o is not None:
                    owners.append(o.describe())
    return ", ".join(sorted(set(owners))) or "another process"


# ---------------------------------------------------------------------------------------------------------------
# locks


def lock_for(root: Path, name: str) -> Any:
    """The lock ``root/.locks/<name>.lock`` (a :class:`filelock.FileLock`; never deleted)."""
    from filelock import FileLock

    d = Path(root) / LOCK_DIR
    d.mkdir(parents=True, exist_ok=True)
    return FileLock(str(d / f"{name}.lock"))


def try_acquire(lock: Any, wait: bool) -> bool:
    """Acquire ``lock``: at once or not at all (``wait=False``), or waiting as long as it takes."""
    from filelock import Timeout

    try:
        lock.acquire(timeout=-1 if wait else 0)
    except Timeout:
        return False
    return True


@contextlib.contextmanager
def held(lock: Any, on_wait: Any = None) -> Iterator[None]:
    """Hold ``lock`` for the block, calling ``on_wait()`` once if it has to wait for it."""
    if not try_acquire(lock, False):
        if on_wait is not None:
            on_wait()
        try_acquire(lock, True)
    try:
        yield
    finally:
        with signals_deferred():
            lock.release()


# ---------------------------------------------------------------------------------------------------------------
# the file list of a finished result, and checking it


def expected_files(n: int, pngs: bool = True) -> list[str]:
    """The files a result of ``n`` samples has besides ``record.json`` (as written by ``FiberSamples.save``)."""
    names = ["samples.npz"]
    if pngs:
        names += [f"sample_{i:03d}.png" for i in range(n)] + ["query.png", "grid.png"]
    return names


def seal(staging: Staging, n: int, *, pngs: bool = True, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Add the file list (size, SHA-256 of every file) to the staging directory's ``record.json``.

    Args:
        staging: holding a complete result written by ``FiberSamples.save``.
        n: its number of samples.
        pngs: whether the PNGs were written.
        extra: keys to set in the record's ``config`` (e.g. the query file's digest).

    Raises:
        StagingLostError: the directory is no longer this process's, or a file is missing from it.
    """
    d = staging.path
    if not staging.intact():
        raise errors.StagingLostError(
            errno.ENOENT, f"staging directory {d} was removed or replaced while this process was writing it"
        )
    files: dict[str, dict[str, Any]] = {}
    for name in expected_files(n, pngs):
        try:
            files[name] = {"size": (d / name).stat().st_size, "sha256": file_sha256(d / name)}
        except FileNotFoundError:
            raise errors.StagingLostError(errno.ENOENT, f"{name} vanished from staging directory {d}") from None
    rec = json.loads((d / "record.json").read_text())
    if extra:
        rec["config"] = {**rec.get("config", {}), **extra}
    rec["files"] = files
    atomic_write_json(d / "record.json", rec)
    return rec


@dataclass
class Check:
    """What :func:`check_result` found: ``status`` is ``"ok"``, ``"missing"`` or ``"damaged"`` (see ``problem``)."""

    status: str
    problem: str | None = None
    record: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _loss(v: Any) -> bool:
    return _number(v) or v is None  # JSON null: a NaN or infinite loss, as written (redoing would not change it)


def _record_problem(rec: dict[str, Any], n: int | None) -> str | None:
    fl = rec.get("fiber_loss")
    if not isinstance(fl, list) or not fl or not all(_loss(v) for v in fl):
        return f"record.json: 'fiber_loss' is not a list of numbers ({str(fl)[:60]!r})"
    if n is not None and len(fl) != n:
        return f"record.json lists {len(fl)} fiber losses, the unit has n = {n}"
    if rec.get("n") != len(fl):
        return f"record.json: 'n' is {rec.get('n')!r} but it lists {len(fl)} fiber losses"
    if not _loss(rec.get("fiber_loss_mean")):
        return f"record.json: 'fiber_loss_mean' is not a number ({rec.get('fiber_loss_mean')!r})"
    seeds = rec.get("seeds")
    if not isinstance(seeds, list) or len(seeds) != len(fl) or not all(type(s) is int for s in seeds):
        return "record.json: 'seeds' is not one integer per sample"
    for k in ("config", "timings", "counts"):
        if not isinstance(rec.get(k), dict):
            return f"record.json: {k!r} is not an object"
    if not isinstance(rec.get("metric"), str):
        return "record.json: 'metric' is not a string"
    dr = rec.get("data_range")
    if dr is not None and not (isinstance(dr, list) and len(dr) == 2 and all(_number(v) for v in dr)):
        return "record.json: 'data_range' is not two numbers"
    losses = rec.get("losses", {})
    if not isinstance(losses, dict) or not all(isinstance(v, list) for v in losses.values()):
        return "record.json: 'losses' is not an object of lists"
    return None


def _files_problem(d: Path, rec: dict[str, Any], digests: bool) -> str | None:
    files = rec.get("files")
    if not isinstance(files, dict):
        return "record.json has no file list"
    for name in expected_files(len(rec["fiber_loss"])):
        if name not in files:
            return f"record.json's file list does not name {name}"
    for name, meta in files.items():
        if not isinstance(name, str) or not _SAFE_NAME.match(name):
            return f"record.json's file list names {str(name)[:60]!r}, not a plain file name"
        if not (
            isinstance(meta, dict)
            and type(meta.get("size")) is int
            and isinstance(meta.get("sha256"), str)
            and _SHA256.match(meta["sha256"])
        ):
            return f"record.json's entry for {name} is not {{size, sha256}}"
        try:
            size = os.stat(d / name).st_size
        except FileNotFoundError:
            return f"{name} is missing"
        except OSError as e:
            return f"{name} cannot be read ({e.strerror})"
        if size != meta["size"]:
            return f"{name} has {size} bytes, its record says {meta['size']}"
    if digests:
        for name, meta in files.items():
            try:
                if file_sha256(d / name) != meta["sha256"]:
                    return f"{name} does not match its SHA-256 digest"
            except OSError as e:
                return f"{name} cannot be read ({e.strerror})"
        return _arrays_problem(d, rec)
    return None


def _arrays_problem(d: Path, rec: dict[str, Any]) -> str | None:
    """With the npz's digest verified, the record's per-sample values must be the npz's."""
    import numpy as np

    try:
        with np.load(d / "samples.npz", allow_pickle=False) as z:
            fl = [float(v) for v in z["fiber_loss"]]
            seeds = [int(s) for s in z["seeds"]]
    except Exception as e:  # a zip/npy error of any kind: the file is not what it should be
        return f"samples.npz cannot be read ({type(e).__name__})"
    same = len(fl) == len(rec["fiber_loss"]) and all(
        (b is None and not math.isfinite(a)) or (b is not None and a == float(b)) for a, b in zip(fl, rec["fiber_loss"])
    )
    if not same or seeds != rec["seeds"]:
        return "record.json's fiber losses or seeds differ from those in samples.npz"
    return None


def check_result(d: Path, *, n: int | None = None, digests: bool = False, require_files: bool = True) -> Check:
    """Is ``d`` a complete, undamaged result?

    Args:
        d: a result directory (an audit unit, or a ``sample`` output).
        n: the number of samples it must hold (None: any).
        digests: also compare every file's SHA-256 with the record (reads every byte) and the
            record's fiber losses and seeds with ``samples.npz``.
        require_files: a record without a file list (written by fiberscope before file lists
            existed) counts as damaged; False accepts it after the record checks.

    Returns:
        :class:`Check`; ``status="missing"`` when ``d`` does not exist.
    """
    d = Path(d)
    try:
        text = (d / "record.json").read_bytes()
    except FileNotFoundError:
        return Check("damaged", "record.json is missing") if d.is_dir() else Check("missing")
    except OSError as e:
        return Check("damaged", f"record.json cannot be read ({e.strerror})")
    try:
        rec = json.loads(text)
    except (ValueError, RecursionError):
        return Check("damaged", "record.json is not valid JSON")
    if not isinstance(rec, dict):
        return Check("damaged", "record.json is not a JSON object")
    problem = _record_problem(rec, n)
    if problem is None and (require_files or "files" in rec):
        problem = _files_problem(d, rec, digests)
    return Check("damaged", problem, rec) if problem else Check("ok", None, rec)


# ---------------------------------------------------------------------------------------------------------------
# putting a finished result in place


def _fsync_dir(d: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def discard_dir(d: Path) -> None:
    """Remove a finished-but-damaged result directory (renamed out of sight first)."""
    aside = d.with_name(f".stale-{d.name}-{secrets.token_hex(3)}")
    try:
        os.rename(d, aside)
    except FileNotFoundError:
        return
    remove_tree(aside)


def commit(staging: Staging, final: Path, *, n: int | None = None) -> bool:
    """Rename the sealed staging directory to ``final``; False (and the staging removed) if a good one is there.

    Call it holding the unit's lock. A damaged ``final`` is replaced. Signals are held back for the
    duration, so an interrupt cannot land between the rename and the bookkeeping.

    Raises:
        StagingLostError: the staging directory is no longer this process's.
    """
    with signals_deferred():
        staging.close()
        if not staging.intact():
            raise errors.StagingLostError(
                errno.ENOENT, f"staging directory {staging.path} was removed while being written"
            )
        if final.exists():
            if check_result(final, n=n).ok:
                remove_tree(staging.path)
                return False
            discard_dir(final)
        with contextlib.suppress(FileNotFoundError):
            (staging.path / OWNER_FILE).unlink()
        try:
            os.rename(staging.path, final)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST) and check_result(final, n=n).ok:
                remove_tree(staging.path)
                return False
            raise
        _fsync_dir(final.parent)
    return True


def install(staging: Staging, target: Path) -> bool:
    """Put a sealed result into ``target`` (a ``sample`` output folder): True if it replaced an earlier one.

    A new folder is a rename. An existing one may hold other things (a report, other results'
    folders): only result files are touched, in an order that never leaves a ``record.json``
    beside files it does not describe: the old ``record.json`` goes first, then old result files
    the new result does not have, then the new files, the new ``record.json`` last. Signals are
    held back meanwhile.
    """
    with signals_deferred():
        staging.close()
        with contextlib.suppress(FileNotFoundError):
            (staging.path / OWNER_FILE).unlink()
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(staging.path, target)
            _fsync_dir(target.parent)
            return False
        old: set[str] = set()
        with contextlib.suppress(OSError, ValueError, AttributeError):
            listed = json.loads((target / "record.json").read_text()).get("files") or {}
            old |= {k for k in listed if isinstance(k, str) and _SAFE_NAME.match(k)}
        with contextlib.suppress(OSError):
            old |= {p.name for p in target.iterdir() if _RESULT_FILE.match(p.name) and p.is_file()}
        replaced = "record.json" in old
        new = {p.name for p in staging.path.iterdir() if p.is_file()}
        with contextlib.suppress(FileNotFoundError):
            (target / "record.json").unlink()
        for name in sorted(old - new):
            with contextlib.suppress(FileNotFoundError):
                (target / name).unlink()
        for name in sorted(new - {"record.json"}):
            os.replace(staging.path / name, target / name)
        os.replace(staging.path / "record.json", target / "record.json")
        _fsync_dir(target)
        remove_tree(staging.path)
    return replaced


__getattr__ = moved(__name__, {"StagingLostError": "fiberscope.errors:StagingLostError"})
