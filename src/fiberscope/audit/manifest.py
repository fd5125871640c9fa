"""Audit manifests: one work unit per line, as JSONL or CSV.

A work unit is one fiber to draw: a query image, a subject (and layer), a prior, a guidance method,
the number of samples and a seed. Its identity is the canonical JSON of those fields (defaults
filled in, keys sorted) plus the SHA-256 of the query file's bytes, so the same unit always maps
to the same output directory whatever the line it sits on, the shard that runs it or the engine,
and two manifests naming ``q/x.png`` for different images give different units.

JSONL (blank lines and lines starting with ``#`` are skipped)::

    {"query": "digits/3.png", "subject": "builtin:mnist-cnn", "layer": "penultimate",
     "prior": "builtin:mnist-ddpm", "method": {"name": "ndtm", "steps": 50, "inner_steps": 3}, "n": 8, "seed": 0}

CSV (a header line, then one unit per row; ``layer`` and ``method`` cells may hold JSON; a quoted cell
may span several lines, as RFC 4180 allows)::

    query,subject,layer,prior,method,n,seed
    digits/3.png,builtin:mnist-cnn,penultimate,builtin:mnist-ddpm,builtin-mnist,8,0

Relative query paths are resolved against the manifest's own directory. A line that cannot be
read becomes a :class:`ManifestLineError` (with its line number) and the other lines still count.
Every field is checked by the same rules as the API and the command line
(:mod:`fiberscope.validation`): unknown keys are refused (in a unit and in its method), a key
repeated in one JSON object is refused, ``n`` and ``seed`` are integers within their documented
bounds (a bool is not an integer), and names may not hold control characters.

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

from .. import validation as _validation
from ..errors import ManifestError
from ..validation import loads_json

__all__ = [
    "FIELDS",
    "Manifest",
    "ManifestError",
    "ManifestLineError",
    "WorkUnit",
    "manifest_from_images",
    "parse_manifest",
    "read_manifest",
    "write_manifest",
]

#: The keys a work unit may have (``label`` is free text for reports and is not part of its identity).
FIELDS = ("query", "subject", "layer", "prior", "method", "n", "seed", "label")
REQUIRED = ("query", "subject", "prior")
DEFAULT_N = 8
DEFAULT_SEED = 0
MAX_SEED = _validation.MAX_SEED
MAX_LAYER_WEIGHT = 1e6
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


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _no_controls(k: str, v: str) -> str:
    m = _CONTROL.search(v)
    if m:
        raise ValueError(
            f"'{k}' contains the control character {m.group()!r}; names and paths may not hold control characters"
        )
    return v


def _nonempty_str(rec: dict[str, Any], k: str) -> str:
    v = rec.get(k)
    if not isinstance(v, str) or not v.strip():
        raise ValueError(f"'{k}' must be a non-empty string, got {v!r}"[:300])
    return _no_controls(k, v.strip())


def _int(rec: dict[str, Any], k: str, default: int, text: bool = True) -> int:
    v = rec.get(k)
    if v is None:
        return default
    try:
        return int(_validation.check(k, v, text=text, label=f"'{k}'"))
    except ValueError as e:  # a ParameterError: name the field, its bounds and the value
        raise ValueError(str(e)[:300]) from None


def _layer(v: Any) -> Any:
    if v is None or v == "":
        return None
    if isinstance(v, str):
        return _no_controls("layer", v.strip())
    if isinstance(v, list) and v and all(isinstance(x, str) and x for x in v):
        return [_no_controls("layer", x) for x in v]
    if (
        isinstance(v, dict)
        and v
        and all(
            isinstance(k, str)
            and k
            and isinstance(w, (int, float))
            and not isinstance(w, bool)
            and math.isfinite(w)
            and 0 <= w <= MAX_LAYER_WEIGHT
            for k, w in v.items()
        )
    ):
        return {_no_controls("layer", k): v[k] for k in sorted(v)}
    raise ValueError(
        "'layer' must be a layer name, a list of names or an object {name: weight} with weights in "
        f"[0, {MAX_LAYER_WEIGHT:g}], got {v!r}"[:300]
    )


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
                f"'method' object needs a 'name' (ndtm, unguided, a training-free baseline or a preset), got {v!r}"[
                    :300
                ]
            )
        spec = {k: v[k] for k in sorted(v)}
        spec["name"] = name.strip().lower()
        if len(spec) == 1:
            spec = spec["name"]
    else:
        raise ValueError(f"'method' must be a name or an object with 'name' and parameters, got {v!r}"[:300])
    from ..methods import method_from_spec

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
        n=_int(rec, "n", DEFAULT_N),
        seed=_int(rec, "seed", DEFAULT_SEED),
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
            return loads_json(s)
        except RecursionError:
            raise ValueError(f"cell {s[:80]!r}: JSON nested too deeply") from None
        except ValueError as e:
            why = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
            raise ValueError(f"cell {s[:80]!r} starts like JSON but is not valid JSON ({why})") from None
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
            rec: Any = loads_json(text)
        except (ValueError, RecursionError) as e:
            msg = str(e) if not isinstance(e, RecursionError) else "JSON nested too deeply"
            if isinstance(e, json.JSONDecodeError):
                msg = f"not valid JSON ({e.msg} at column {e.colno}); each line must be one JSON object"
            out.append((no, ValueError(msg), b[:200].decode("utf-8", "replace")))
            continue
        out.append((no, rec, text[:200]))
    return out


def _csv_rows(data: bytes) -> list[tuple[int, int, list[str] | Exception, str]]:
    """CSV rows as ``(first line, last line, cells or error, text)``; a quoted cell may span lines.

    Blank lines and lines starting with ``#`` between rows are skipped. Bytes that are not UTF-8
    make their row an error, not the whole file.
    """
    if data.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte-order mark
        data = data[3:]
    text = data.decode("utf-8", "surrogateescape")
    physical = text.split("\n")
    if physical and physical[-1] == "":
        physical.pop()
    state = {"i": 0, "at_start": True, "first": 0}

    def lines() -> Any:
        while state["i"] < len(physical):
            line = physical[state["i"]]
            state["i"] += 1
            if state["at_start"]:
                if not line.strip() or line.lstrip().startswith("#"):
                    continue  # blank or comment line between rows
                state["at_start"], state["first"] = False, state["i"]
            yield line.rstrip("\r") + "\n"

    reader = csv.reader(lines())
    rows: list[tuple[int, int, list[str] | Exception, str]] = []
    while True:
        state["at_start"] = True
        try:
            cells: list[str] | Exception = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            cells = ValueError(f"cannot be read as CSV: {e}")
        first, last = state["first"], state["i"]
        raw = "\n".join(physical[first - 1 : last])
        if isinstance(cells, list) and not any(c.strip() for c in cells):
            continue
        if len(raw) > _MAX_LINE:
            cells = ValueError(f"row is {len(raw)} characters long; a unit fits on far fewer")
        elif any("\udc80" <= ch <= "\udcff" for ch in raw):
            bad = next(i for i, ch in enumerate(raw) if "\udc80" <= ch <= "\udcff")
            cells = ValueError(f"not UTF-8 text (character {bad}); save the manifest as UTF-8")
        rows.append((first, last, cells, raw.encode("utf-8", "replace").decode("utf-8", "replace")[:200]))
    return rows


def _csv_records(data: bytes) -> list[tuple[int, Any, str]]:
    rows = _csv_rows(data)
    if not rows:
        return []
    head_no, _, header_cells, _ = rows[0]
    if isinstance(header_cells, Exception):
        raise ManifestError(f"CSV header (line {head_no}) cannot be read: {header_cells}") from None
    header = [h.strip() for h in header_cells]
    unknown = [h for h in header if h not in FIELDS]
    if unknown or not set(REQUIRED) <= set(header) or len(set(header)) != len(header):
        raise ManifestError(
            f"CSV header (line {head_no}) must name the columns {list(FIELDS)} (query, subject and prior "
            f"required), each once; got {header}"[:500]
        )
    out: list[tuple[int, Any, str]] = []
    for no, last, cells, text in rows[1:]:
        try:
            if isinstance(cells, Exception):
                raise cells
            if len(cells) != len(header):
                span = f" (its quoted cell runs from line {no} to line {last}: check for an unbalanced quote)"
                raise ValueError(
                    f"{len(cells)} cells but the header has {len(header)} columns" + (span if last > no else "")
                )
            rec = {
                h: (_cell_json(v) if h in ("layer", "method") else (v.strip() or None)) for h, v in zip(header, cells)
            }
        except (ValueError, csv.Error) as e:
            out.append((no, ValueError(str(e)), text))
            continue
        out.append((no, rec, text))
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
    try:
        st = p.stat()
    except OSError as e:
        why = "does not exist" if isinstance(e, FileNotFoundError) else f"cannot be read ({e.strerror})"
        raise ManifestError(f"manifest {p} {why}; pass a JSONL or CSV file of work units") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (a FIFO, device or socket)"
        raise ManifestError(f"manifest {p} is {kind}; pass a JSONL or CSV file of work units")
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


# ---------------------------------------------------------------------------------------------------------------
# writing manifests


def manifest_from_images(
    images: list[str | os.PathLike[str]],
    *,
    subject: str,
    prior: str,
    out: str | os.PathLike[str],
    layer: Any = None,
    method: Any = None,
    n: int = DEFAULT_N,
    seed: int = DEFAULT_SEED,
    recursive: bool = False,
    shuffle_seed: int | None = None,
    limit: int | None = None,
) -> list[WorkUnit]:
    """One work unit per query image (files, or folders of them), validated like a manifest line.

    Args:
        images: image files and/or folders (sorted; sub-folders too with ``recursive``).
        subject, prior, layer, method, n, seed: the unit fields (the same for every image).
        out: where the manifest will be written: query paths are written relative to its folder,
            and a prior given as a local path is made absolute, so the manifest runs from anywhere.
        recursive: look into sub-folders (e.g. ImageNet's ``val/<wnid>/`` layout).
        shuffle_seed: take the images in the order of ``torch.randperm`` with a generator seeded
            with it (the rule of the paper's ImageNet runs: a seeded permutation, then the first
            ``limit``); None keeps the sorted order.
        limit: at most this many units.

    Returns:
        The units; each has ``label`` = the image's path relative to the folder it was found in.

    Raises:
        ManifestError: no images, or a field that a manifest line could not hold (the reason named).
    """
    from ..data.query import IMAGE_SUFFIXES

    found: list[tuple[Path, str]] = []
    for item in images:
        p = Path(item).expanduser()
        if p.is_dir():
            it = p.rglob("*") if recursive else p.iterdir()
            files = sorted(
                f for f in it if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES | {".npy"} and f.name[0] != "."
            )
            found += [(f, f.relative_to(p).as_posix()) for f in files]
        elif p.is_file():
            found.append((p, p.name))
        else:
            raise ManifestError(f"{p} is neither an image file nor a folder")
    if not found:
        raise ManifestError(f"no images (PNG, JPEG, ... or .npy) in {', '.join(map(str, images))}")
    if shuffle_seed is not None:
        import torch

        order = torch.randperm(len(found), generator=torch.Generator().manual_seed(int(shuffle_seed))).tolist()
        found = [found[i] for i in order]
    if limit is not None:
        if limit < 1:
            raise ManifestError(f"limit must be at least 1, got {limit}")
        found = found[:limit]
    base = Path(out).expanduser().resolve().parent
    base_spec, sep, options = prior.partition("?")  # an ADM checkpoint may carry options: PATH.pt?class_label=207
    prior_path = Path(base_spec).expanduser()
    if not base_spec.startswith("builtin:") and prior_path.exists():
        prior = str(prior_path.resolve()) + sep + options
    units = []
    for f, label in found:
        fr = f.resolve()
        try:
            q = fr.relative_to(base).as_posix()
        except ValueError:
            q = str(fr)
        rec = {"query": q, "subject": subject, "prior": prior, "layer": layer, "method": method, "n": n, "seed": seed}
        try:
            unit = unit_from_record({k: v for k, v in rec.items() if v is not None} | {"label": label})
            units.append(dataclasses.replace(unit, query_sha256=query_digest(fr)))
        except ValueError as e:
            raise ManifestError(f"cannot write a unit for {f}: {e}") from None
    return units


def write_manifest(units: list[WorkUnit], path: str | os.PathLike[str]) -> Path:
    """Write units as a JSONL manifest (atomically): one line each, the fields that differ from the defaults."""
    from ..utils import atomic_write_text

    lines = []
    for u in units:
        rec: dict[str, Any] = {"query": u.query, "subject": u.subject, "prior": u.prior}
        if u.layer is not None:
            rec["layer"] = u.layer
        if u.method is not None:
            rec["method"] = u.method
        rec["n"], rec["seed"] = u.n, u.seed
        if u.label is not None:
            rec["label"] = u.label
        lines.append(json.dumps(rec, ensure_ascii=False))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(p, "".join(line + "\n" for line in lines))
    return p
