"""Small shared helpers: atomic file writes, file digests, signal handling, JSON of numpy/torch values,
option files (YAML or TOML).

Files written here honour the process's umask like any ``open()``: the temporary file is created
with mode ``0o666`` and the kernel applies the umask (and a directory's default ACL), so a team's
shared output folder stays readable to the team.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .errors import UsageError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_writer",
    "file_sha256",
    "is_rank_zero",
    "jsonable",
    "load_config_file",
    "signals_deferred",
    "sigterm_as_interrupt",
    "temp_owner_token",
]


@contextlib.contextmanager
def signals_deferred(signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[list[int]]:
    """Hold back SIGINT/SIGTERM while the block runs; act on the first one afterwards.

    For clean-up that must not be cut short (removing a half-written result, renaming a finished
    one into place): a second Ctrl-C would otherwise interrupt the clean-up of the first. A signal
    that arrived is passed to the handler that was in place when the block ends (Python's default
    SIGINT handler raises ``KeyboardInterrupt``); a signal whose handler was the system default is
    re-sent so that it takes its default action. Outside the main thread (where Python cannot set
    handlers) the block simply runs.

    Example:
        >>> with signals_deferred() as pending:
        ...     pass            # a Ctrl-C here is acted on after the block
        >>> pending
        []
    """
    pending: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield pending
        return

    def hold(signum: int, frame: Any) -> None:
        pending.append(signum)

    old: dict[int, Any] = {}
    try:
        for s in signums:
            old[s] = signal.signal(s, hold)
        yield pending
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if pending:
            s = pending[0]
            h = old.get(s)
            if callable(h):
                h(s, None)
            elif h == signal.SIG_DFL:
                os.kill(os.getpid(), s)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (SLURM pre-emption, ``kill``) raises ``KeyboardInterrupt`` like Ctrl-C, so clean-up code runs.

    The previous handler is restored afterwards; outside the main thread this does nothing.

    Example:
        >>> with sigterm_as_interrupt():
        ...     pass
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def temp_owner_token() -> str:
    """``<host>-<pid>`` as it appears in this process's temporary file names (so debris can be traced)."""
    host = re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname())[:16]
    return f"{host}-{os.getpid()}"


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new, empty temporary file next to ``path``, created with mode 0o666 so that the umask applies.

    Its name is ``.<name>.<host>-<pid>-<random>.tmp``: whoever finds it left behind can tell whose it was.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{temp_owner_token()}-{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file next to {path}")  # pragma: no cover


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success fsync and rename it over ``path``.

    A crash (or SIGKILL) at any point leaves either the old file or the new one, never a torn one;
    an exception or interrupt removes the temporary file (a second Ctrl-C cannot cut that short).
    The file gets the permissions any ``open()`` would give it (``0o666`` less the umask).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
        >>> with atomic_writer(p) as f:
        ...     _ = f.write("hello")
        >>> p.read_text()
        'hello'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with signals_deferred(), contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x"; _ = p.write_bytes(b"abc")
        >>> file_sha256(p)[:16]
        'ba7816bf8f01cfea'
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_writer(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_writer(path, "w") as f:
        f.write(text)


def jsonable(obj: Any) -> Any:
    """Convert tensors, numpy values, paths and dataclasses into plain JSON types."""
    import dataclasses

    import numpy as np

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    try:
        import torch

        if isinstance(obj, torch.Tensor):
            return jsonable(obj.detach().cpu().tolist())
        if isinstance(obj, (torch.dtype, torch.device)):
            return str(obj)
    except ImportError:  # pragma: no cover
        pass
    return repr(obj)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(jsonable(obj), indent=2) + "\n")


def is_rank_zero() -> bool:
    """True unless a launcher (torchrun, SLURM, accelerate) says this is a non-zero rank."""
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        v = os.environ.get(var)
        if v not in (None, "", "0"):
            return False
    return True


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read options from a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file: ``{option: value}``.

    Option names have ``-`` replaced by ``_`` (``inner-steps`` and ``inner_steps`` are the same).

    Raises:
        UsageError: the file is missing, not valid YAML/TOML, or not a mapping (exit code 2).

    Example:
        >>> load_config_file("bench.yaml")["methods"]                 # doctest: +SKIP
        {'ndtm': 'builtin-mnist'}
    """
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"config file {p} does not exist")
    text = p.read_text()
    try:
        if p.suffix.lower() == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as e:
        raise UsageError(f"config file {p} is not valid {'TOML' if p.suffix == '.toml' else 'YAML'}: {e}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config file {p} must hold a mapping of option names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}
