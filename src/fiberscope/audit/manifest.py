"""Audit manifests: one work unit per line, as JSONL or CSV.

A work unit is one fiber to draw: a query image, a subject (and layer), a prior, a guidance method,
the number of samples and a seed. Its identity is the canonical JSON of those fields (defaults
filled in, keys sorted) plus the SHA-256 of the query file's bytes, so the same unit always maps
to the same output directory whatever the line it sits on, the shard that runs it or the engine,
and two manifests naming ``q/x.png`` for different images give different units.

JSONL (blank lines and lines starting with ``#`` are skipped)::

    {"query": "digits/3.png", "subject": "builtin:mnist-cnn", "layer": "penultimate",
     "prior": "builtin:mnist-ddpm", "method": {"name": "ndtm", "steps": 50, "inner_steps": 3}, "n": 8, "seed": 0}

CSV (a header line, then one unit per physical line; ``layer`` and ``method`` cells may hold JSON)::

    query,subject,layer,prior,method,n,seed
    digits/3.png,builtin:mnist-cnn,penultimate,builtin:mnist-ddpm,builtin-mnist,8,0

Relative query paths are resolved against the manifest's own directory. A line that cannot be
read becomes a :class:`ManifestLineError` (with its line number) and the other lines still count.

Example:
    >>> from fiberscope.audit.manifest import parse_manifest
    >>> m = parse_manifest('{"query": "q.png", "subject": "builtin:mnist-cnn", "prior": "builtin:mnist-ddpm"}\\n'
    ...                    '{"query": 3}\\n', fmt="jsonl")
    >>> len(m.units), m.errors[0].line
    (1, 2)
    >>> m.units[0].n, m.units[0].seed, len(m.units[0].key), m.units[0].query_sha256   # q.png does not exist
    (8, 0, 16, None)
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "FIELDS",
    "Manifest",
    "ManifestError",
    "ManifestLineError",
    "WorkUnit",
    "parse_manifest",
    "read_manifest",
]

#: The keys a work unit may have (``label`` is free text for reports and is not part of its identity).
FIELDS = ("query", "subject", "layer", "prior", "method", "n", "seed", "label")
REQUIRED = ("query", "subject", "prior")
DEFAULT_N = 8
DEFAULT_SEED = 0
MAX_SEED = 2**64 - 1
_MAX_LINE = 1_000_000  # characters; longer lines are refused rather than parsed
_MAX_HASHED = 1 << 30  # bytes: a larger "query" is not hashed (the image loader refuses it anyway)


def query_digest(path: str | os.PathLike[str]) -> str | None:
    """SHA-256 of a query file's bytes; None when it is not a readable regular file (the unit then fails).

    Only regular files are read (never a FIFO, a device or ``/proc``), and only up to 1 GiB.
    """
    from ..utils import file_sha256

    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_HASHED:
            return None
        return file_sha256(path)
    except (OSError, ValueError):
        return None


class ManifestError(ValueError):
    """A manifest that cannot be read at all (missing, not text, no header): names the file and the fix."""


@dataclass(frozen=True)
class ManifestLineError:
    """One bad line: its 1-based number and what is wrong with it."""

    line: int
    message: str
    text: str = ""

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True)
class WorkUnit:
    """One fiber to draw.

    Attributes:
        query: path of the query image (relative paths are resolved against ``base_dir``).
        subject: subject spec, e.g. ``builtin:mnist-cnn`` or ``timm:resnet50.a1_in1k``.
        prior: prior spec, e.g. ``builtin:mnist-ddpm``, a diffusers directory or a cached hub id.
        layer: layer(s) of the subject (a name, a list of names or ``{name: weight}``), or None.
        method: a method or preset name, ``{"name": ..., **params}``, or None (the prior's default).
        n: number of samples.
        seed: the unit's run seed (sample i's seed is derived from it).
        label: free text shown in reports (not part of the unit's identity).
        line: the manifest line it came from (not part of its identity).
        base_dir: directory that relative query paths are taken from (not part of its identity).
        query_sha256: SHA-256 of the query file's bytes when the manifest was read (part of the
            identity; None if it could not be read). :func:`parse_manifest` fills it in.
    """

    query: str
    subject: str
    prior: str
    layer: Any = None
    method: Any = None
    n: int = DEFAULT_N
    seed: int = DEFAULT_SEED
    label: str | None = field(default=None, compare=False)
    line: int = field(default=0, compare=False)
    base_dir: str = field(default="", compare=False)
    query_sha256: str | None = None

    def identity(self) -> dict[str, Any]:
        """The fields that define the unit (its hash and output directory derive from these)."""
        return {
            "query": self.query,
            "query_sha256": self.query_sha256,
            "subject": self.subject,
            "layer": self.layer,
            "prior": self.prior,
            "method": self.method,
            "n": self.n,
            "seed": self.seed,
        }

    def canonical_json(self) -> str:
        """Canonical JSON of :meth:`identity`: sorted keys, no spaces, ASCII only."""
        return json.dumps(self.identity(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    @property
    def key(self) -> str:
        """16 hex digits of the SHA-256 of :meth:`canonical_json` (stable across runs and machines)."""
        return hashlib.sha256(self.canonical_json().encode("ascii")).hexdigest()[:16]

    @property
    def legacy_key(self) -> str:
        """The key this unit had before the query's digest was part of it (to adopt results written then)."""
        old = {k: v for k, v in self.identity().items() if k != "query_sha256"}
        text = json.dumps(old, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]

    @property
    def legacy_dirname(self) -> str:
        """The output directory name of this unit before the query's digest was part of its key."""
        return f"{self.slug}-{self.legacy_key}"

    def with_query_digest(self) -> WorkUnit:
        """This unit with :attr:`query_sha256` read from its query file now."""
        return dataclasses.replace(self, query_sha256=query_digest(self.query_path))

    @property
    def slug(self) -> str:
        """A readable, file-system-safe name: query stem, subject, layer and method."""
        method = self.method.get("name") if isinstance(self.method, dict) else self.method
        layer = self.layer if isinstance(self.layer, str) else ("multi" if self.layer else None)
        parts = [Path(self.query).stem, self.subject.rsplit("/", 1)[-1], layer, method]
        text = "_".join(str(p) for p in parts if p)
        text = re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip(".-")
        return text[:60].strip(".-") or "unit"

    @property
    def dirname(self) -> str:
        """The unit's output directory name, ``<slug>-<key>``."""
        return f"{self.slug}-{self.key}"

    @property
    def query_path(self) -> Path:
        """The query path, resolved against the manifest's directory if relative."""
        p = Path(self.query).expanduser()
        return p if p.is_absolute() or not self.base_dir else Path(self.base_dir) / p

    @property
    def model_key(self) -> tuple[str, str, str]:
        """(prior, subject, layer): units sharing it share loaded models."""
        return (self.prior, self.subject, json.dumps(self.layer, sort_keys=True))

    def describe(self) -> str:
        """One line naming the unit for messages."""
        where = f"line {self.line} " if self.line else ""
        return f"{where}({self.query}, {self.subject}{'@' + str(self.layer) if self.layer else ''}, {self.prior})"

    def to_dict(self) -> dict[str, Any]:
        """Everything, including ``label``, ``line`` and ``base_dir`` (for shipping to workers)."""
        return {**self.identity(), "label": self.label, "line": self.line, "base_dir": self.base_dir}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorkUnit:
        return cls(**d)


@dataclass
class Manifest:
    """The readable units of a manifest, its bad lines, and lines that repeat an earlier unit."""

    units: list[WorkUnit]
    errors: list[ManifestLineError] = field(default_factory=list)
    duplicates: list[tuple[int, int]] = field(default_factory=list)  # (line, line of the first occurrence)
    path: str | None = None


# ---------------------------------------------------------------------------------------------------------------
# validation of one record


def _nonempty_str(rec: dict[str, Any], k: str) -> str:
    v = rec.get(k)
    if not isinstance(v, str) or not v.strip():
        raise ValueError(f"'{k}' must be a non-empty string, got {v!r}"[:300])
    if "\x00" in v:
        raise ValueError(f"'{k}' contains a NUL character")
    return v.strip()


def _int(rec: dict[str, Any], k: str, default: int, lo: int, hi: int) -> int:
    v = rec.get(k)
    if v is None:
        return default
    if isinstance(v, str):
        try:
            v = int(v.strip())
        except ValueError:
            raise ValueError(f"'{k}' must be an integer, got {v!r}"[:300]) from None
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"'{k}' must be an integer, got {v!r}"[:300])
    if not lo <= v <= hi:
        raise ValueError(f"'{k}' must be between {lo} and {hi}, got {v}")
    return v


def _layer(v: Any) -> Any:
    if v is None or v == "":
        return None
    if isinstance(v, str):
        return v.strip()
    if isinstance(v, list) and v and all(isinstance(x, str) and x for x in v):
        return list(v)
    if (
        isinstance(v, dict)
        and v
        and all(
            isinstance(k, str) and k and isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w)
            for k, w in v.items()
        )
    ):
        return {k: v[k] for k in sorted(v)}
    raise ValueError(f"'layer' must be a layer name, a list of names or an object {{name: weight}}, got {v!r}"[:300])


def _method(v: Any, prior: str) -> Any:
    """Normalise and check a method spec (it is built once here, so bad parameters fail at parse time)."""
    if v is None or v == "":
        spec: Any = None
    elif isinstance(v, str):
        spec = v.strip().lower()
    elif isinstance(v, dict):
        name = v.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(
                f"'method' object needs a 'name' (ndtm, unguided, a baseline or a preset), got {v!r}"[:300]
            )
        spec = {k: v[k] for k in sorted(v)}
        spec["name"] = name.strip().lower()
        if len(spec) == 1:
            spec = spec["name"]
    else:
        raise ValueError(f"'method' must be a name or an object with 'name' and parameters, got {v!r}"[:300])
    from ..cli import method_from_spec

    try:
        method_from_spec(spec, None, prior)
    except Exception as e:  # any constructor complaint becomes this line's error
        raise ValueError(f"'method' {spec!r}: {e}"[:400]) from None
    return spec


def unit_from_record(rec: Any, line: int = 0, base_dir: str = "") -> WorkUnit:
    """Validate one parsed record into a :class:`WorkUnit`.

    Raises:
        ValueError: naming the field that is wrong and what it should be.
    """
    if not isinstance(rec, dict):
        raise ValueError(f"expected an object with keys {list(FIELDS[:-1])}, got {type(rec).__name__}")
    unknown = sorted(str(k) for k in rec if k not in FIELDS)
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown}; a unit has {list(FIELDS)} (method parameters go inside "
            '"method": {"name": ..., ...})'
        )
    for k in REQUIRED:
        if rec.get(k) in (None, ""):
            raise ValueError(f"missing '{k}'; every unit needs {list(REQUIRED)}")
    prior = _nonempty_str(rec, "prior")
    label = rec.get("label")
    if label is not None and not isinstance(label, str):
        label = json.dumps(label)
    return WorkUnit(
        query=_nonempty_str(rec, "query"),
        subject=_nonempty_str(rec, "subject"),
        prior=prior,
        layer=_layer(rec.get("layer")),
        method=_method(rec.get("method"), prior),
        n=_int(rec, "n", DEFAULT_N, 1, 10**7),
        seed=_int(rec, "seed", DEFAULT_SEED, 0, MAX_SEED),
        label=label,
        line=line,
        base_dir=base_dir,
    )


# ---------------------------------------------------------------------------------------------------------------
# formats


def _lines(data: bytes) -> list[tuple[int, bytes]]:
    raw = data.split(b"\n")
    if raw and raw[-1] == b"":
        raw.pop()
    if raw and raw[0].startswith(b"\xef\xbb\xbf"):  # UTF-8 byte-order mark
        raw[0] = raw[0][3:]
    return [(i + 1, r.rstrip(b"\r")) for i, r in enumerate(raw)]


def _decode(b: bytes) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text (byte {e.start}); save the manifest as UTF-8") from None


def _cell_json(v: str | None) -> Any:
    if v is None:
        return None
    s = v.strip()
    if s.startswith(("{", "[")):
        try:
            return json.loads(s)
        except (ValueError, RecursionError):
            raise ValueError(f"cell {s[:80]!r} starts like JSON but is not valid JSON") from None
    return s or None


def _jsonl_records(data: bytes) -> list[tuple[int, Any, str]]:
    out: list[tuple[int, Any, str]] = []
    for no, b in _lines(data):
        if not b.strip() or b.lstrip().startswith(b"#"):
            continue
        if len(b) > _MAX_LINE:
            out.append((no, ValueError(f"line is {len(b)} bytes long; a unit fits on far fewer"), ""))
            continue
        try:
            text = _decode(b)
            rec: Any = json.loads(text)
        except (ValueError, RecursionError) as e:
            msg = str(e) if not isinstance(e, RecursionError) else "JSON nested too deeply"
            if isinstance(e, json.JSONDecodeError):
                msg = f"not valid JSON ({e.msg} at column {e.colno}); each line must be one JSON object"
            out.append((no, ValueError(msg), b[:200].decode("utf-8", "replace")))
            continue
        out.append((no, rec, text[:200]))
    return out


def _csv_records(data: bytes) -> list[tuple[int, Any, str]]:
    lines = [(no, b) for no, b in _lines(data) if b.strip() and not b.lstrip().startswith(b"#")]
    if not lines:
        return []
    head_no, head_b = lines[0]
    try:
        header = next(csv.reader([_decode(head_b)]))
    except (ValueError, csv.Error) as e:
        raise ManifestError(f"CSV header (line {head_no}) cannot be read: {e}") from None
    header = [h.strip() for h in header]
    unknown = [h for h in header if h not in FIELDS]
    if unknown or not set(REQUIRED) <= set(header):
        raise ManifestError(
            f"CSV header (line {head_no}) must name the columns {list(FIELDS)} (query, subject and prior "
            f"required); got {header}"[:500]
        )
    out: list[tuple[int, Any, str]] = []
    for no, b in lines[1:]:
        try:
            if len(b) > _MAX_LINE:
                raise ValueError(f"line is {len(b)} bytes long; a unit fits on far fewer")
            text = _decode(b)
            row = next(csv.reader([text]))
            if len(row) != len(header):
                raise ValueError(f"{len(row)} cells but the header has {len(header)} columns")
            rec = {h: (_cell_json(v) if h in ("layer", "method") else (v.strip() or None)) for h, v in zip(header, row)}
        except (ValueError, csv.Error) as e:
            out.append((no, ValueError(str(e)), b[:200].decode("utf-8", "replace")))
            continue
        out.append((no, rec, text[:200]))
    return out


def _sniff(data: bytes) -> str:
    for _, b in _lines(data):
        s = b.strip()
        if s and not s.startswith(b"#"):
            return "jsonl" if s.startswith(b"{") else "csv"
    return "jsonl"


def parse_manifest(data: bytes | str, fmt: str | None = None, base_dir: str | os.PathLike[str] = "") -> Manifest:
    """Parse manifest text into units and per-line errors.

    Args:
        data: the manifest's bytes (or text).
        fmt: ``"jsonl"`` or ``"csv"``; None guesses from the first non-blank line.
        base_dir: directory that relative query paths are resolved against.

    Returns:
        :class:`Manifest`; a unit repeated on a later line is listed once (see ``duplicates``).
        Each unit's ``query_sha256`` is read from its query file (relative paths against
        ``base_dir``, else the working directory).

    Raises:
        ManifestError: only when the file as a whole cannot be read (e.g. a CSV without a valid header).
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    fmt = (fmt or _sniff(data)).lower()
    if fmt not in ("jsonl", "csv"):
        raise ManifestError(f"unknown manifest format {fmt!r}; use JSONL (.jsonl) or CSV (.csv)")
    records = _jsonl_records(data) if fmt == "jsonl" else _csv_records(data)
    man = Manifest(units=[])
    seen: dict[str, int] = {}
    for no, rec, text in records:
        try:
            if isinstance(rec, Exception):
                raise rec
            unit = unit_from_record(rec, no, os.fspath(base_dir)).with_query_digest()
            key = unit.key
        except (ValueError, TypeError, RecursionError) as e:
            msg = " ".join(str(e).split()) or type(e).__name__
            man.errors.append(ManifestLineError(no, msg, text))
            continue
        if key in seen:
            man.duplicates.append((no, seen[key]))
            continue
        seen[key] = no
        man.units.append(unit)
    return man


def read_manifest(path: str | os.PathLike[str], fmt: str | None = None) -> Manifest:
    """Read a JSONL or CSV manifest file (format from the suffix, else guessed).

    Raises:
        ManifestError: the file is missing, unreadable or has no usable header.
    """
    p = Path(path)
    if not p.is_file():
        raise ManifestError(f"manifest {p} does not exist or is not a file; pass a JSONL or CSV file of work units")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ManifestError(f"manifest {p} cannot be read: {e.strerror}") from None
    if fmt is None:
        suffix = p.suffix.lower()
        fmt = "csv" if suffix == ".csv" else ("jsonl" if suffix in (".jsonl", ".ndjson", ".json") else None)
    man = parse_manifest(data, fmt, base_dir=p.resolve().parent)
    man.path = str(p)
    return man
