"""Audits at scale: manifests of work units, sharding, resume, and the optional Ray engine.

``fiberscope audit MANIFEST --out DIR`` is the command; these are the pieces it is built from.

Example:
    >>> from fiberscope.audit import read_manifest, resolve_shard, run_audit     # doctest: +SKIP
    >>> man = read_manifest("audit.jsonl")                                       # doctest: +SKIP
    >>> run = run_audit(man, "audit-out", shard=resolve_shard())                 # doctest: +SKIP
    >>> run.counts(), [e.line for e in man.errors]                               # doctest: +SKIP
"""

from .._deprecated import moved
from .manifest import Manifest, ManifestError, ManifestLineError, WorkUnit, parse_manifest, read_manifest
from .runner import AuditRun, run_audit, write_summary
from .sharding import ShardInfo, resolve_shard, shard_units, split_units
from .unit import ModelCache, RunOptions, UnitResult, run_unit

__all__ = [
    "AuditRun",
    "Manifest",
    "ManifestError",
    "ManifestLineError",
    "ModelCache",
    "RunOptions",
    "ShardInfo",
    "UnitResult",
    "WorkUnit",
    "parse_manifest",
    "read_manifest",
    "resolve_shard",
    "run_audit",
    "run_unit",
    "shard_units",
    "split_units",
    "write_summary",
]

__getattr__ = moved(
    __name__,
    {"OutputWriteError": "fiberscope.errors:OutputWriteError", "ShardError": "fiberscope.errors:ShardError"},
)
