"""``fiberscope audit MANIFEST --out DIR``: registered into the main CLI by :func:`fiberscope.cli.register_command`.

Kept light: argparse only at import time (the CLI imports this module on every invocation).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..cli import EXIT, CLIError, _check_writable, _sub, register_command
from ..errors import printable

__all__ = ["add_audit_command", "cmd_audit"]

EXAMPLE = """
fiberscope audit audit.jsonl --out audit-out                 # resumable: run it again to finish
fiberscope audit audit.csv --out audit-out --config audit.toml
torchrun --nproc_per_node=4 -m fiberscope audit audit.jsonl --out audit-out --device cuda   # shards from RANK
sbatch --array=0-7 --wrap 'fiberscope audit audit.jsonl --out audit-out'           # shards from SLURM_ARRAY_*
fiberscope audit audit.jsonl --out audit-out --engine ray --workers 4              # Ray actors

audit.jsonl, one work unit per line:
  {"query": "q/3.png", "subject": "builtin:mnist-cnn", "layer": "penultimate", "prior": "builtin:mnist-ddpm",
   "method": {"name": "ndtm", "steps": 50, "inner_steps": 3}, "n": 8, "seed": 0}"""


@register_command
def add_audit_command(subs: Any) -> None:
    """Add ``audit`` to the ``fiberscope`` command."""
    p = _sub(
        subs,
        "audit",
        "run every work unit of a JSONL/CSV manifest: resumable, shardable, failures isolated per unit",
        EXAMPLE,
        cmd_audit,
    )
    p.add_argument("manifest", nargs="?", help="JSONL or CSV file of work units (see the example)")
    p.add_argument("--out", default="audit-out", help="output directory (default audit-out); reruns resume in it")
    p.add_argument("--format", choices=["jsonl", "csv"], help="manifest format (default: from the file suffix)")
    g = p.add_argument_group("scale-out (defaults: RANK/WORLD_SIZE, accelerate, SLURM_ARRAY_TASK_ID/COUNT, else 1)")
    g.add_argument("--num-shards", type=int, help="split the units into this many shards")
    g.add_argument("--shard-index", type=int, help="which shard this process runs (0-based)")
    g.add_argument("--engine", choices=["local", "ray"], default="local", help="local (default) or ray")
    g.add_argument("--workers", type=int, default=1, help="Ray actors (--engine ray; default 1)")
    g.add_argument("--ray-address", help="join an existing Ray cluster instead of starting a local one")
    r = p.add_argument_group("running")
    r.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda:$LOCAL_RANK if a GPU is visible, else cpu)")
    r.add_argument("--dtype", choices=["float32", "fp32", "float16", "fp16", "bfloat16", "bf16"])
    r.add_argument("--batch-size", type=int, help="samples per batch (results do not depend on it)")
    r.add_argument("--threads", type=int, help="torch CPU threads per worker")
    r.add_argument(
        "--cache-size",
        type=int,
        default=2,
        help="loaded priors (and subjects) kept per process (default 2; units are ordered by model)",
    )
    r.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow pickle checkpoints (they can run code: only for files you trust; safetensors never need it)",
    )
    r.add_argument("--report", action=argparse.BooleanOptionalAction, default=True, help="write report.html")
    r.add_argument("--dry-run", action="store_true", help="list this shard's units and their status; run nothing")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (SLURM pre-emption, ``kill``) is handled like Ctrl-C: the unit in progress is discarded cleanly."""
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


def _err(msg: str) -> None:
    """One line on stderr; manifest fields and file names in it have their control characters escaped."""
    print(printable(msg), file=sys.stderr, flush=True)


def cmd_audit(args: argparse.Namespace) -> int:
    """Run the audit; the exit code is 0, 5 (some units or manifest lines failed) or a failure's own code."""
    from .manifest import ManifestError, read_manifest
    from .runner import RunOptions, run_audit
    from .sharding import resolve_shard

    if not args.manifest:
        raise CLIError("audit needs a MANIFEST (a JSONL or CSV file of work units); see `fiberscope audit --help`", 2)
    try:
        man = read_manifest(args.manifest, args.format)
    except ManifestError as e:
        raise CLIError(str(e), EXIT["input"]) from None
    for bad in man.errors:
        _err(f"{args.manifest}:{bad.line}: bad manifest line skipped: {bad.message}")
    for line, first in man.duplicates:
        _err(f"{args.manifest}:{line}: repeats the unit on line {first}; it runs once")
    if not man.units:
        raise CLIError(
            f"manifest {args.manifest} has no valid work units"
            + (f" ({len(man.errors)} bad line(s), see above)" if man.errors else " (it is empty)")
            + "; each line needs at least query, subject and prior",
            EXIT["input"],
        )
    shard = resolve_shard(args.num_shards, args.shard_index)
    out = Path(args.out)
    _check_writable(out)
    if args.dry_run:
        from .runner import _read_record
        from .sharding import shard_units

        for u in shard_units(man.units, shard):
            status = "done" if _read_record(out / "units" / u.dirname) is not None else "to run"
            print(printable(f"{u.line:>6}  {status:<6}  units/{u.dirname}  {u.describe()}"))
        return EXIT["partial"] if man.errors else EXIT["ok"]
    options = RunOptions(
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        trust_pickle=bool(args.trust_pickle),
        threads=args.threads,
        cache_size=max(1, args.cache_size),
    )
    if args.workers is not None and args.workers < 1:
        raise CLIError(f"--workers must be at least 1, got {args.workers}", EXIT["usage"])
    with _sigterm_as_interrupt():
        try:
            run = run_audit(
                man,
                out,
                shard=shard,
                engine=args.engine,
                options=options,
                workers=args.workers,
                ray_address=args.ray_address,
                progress=not args.quiet,
                report=args.report,
                log=_err,
            )
        except KeyboardInterrupt:
            _err(
                f"audit interrupted: finished units are kept in {out}/units, the unit in progress was discarded; "
                "run the same command again to resume"
            )
            raise
    c = run.counts()
    ok = c["done"] + c["skipped"]
    shard_note = f" (shard {shard.index + 1}/{shard.count}, {shard.source})" if shard.count > 1 else ""
    print(
        f"audit{shard_note}: {c['done']} done, {c['skipped']} already finished, {c['failed']} failed, "
        f"{len(man.errors)} bad manifest line(s); summary {out / 'summary.jsonl'}"
        + (f"; report {run.report}" if run.report else "")
    )
    if shard.count > 1 and args.report:
        print(f"when every shard has finished: fiberscope report {out}")
    if run.failed and ok == 0:
        return int(run.failed[0].code or EXIT["partial"])
    if run.failed or man.errors:
        return EXIT["partial"]
    return EXIT["ok"]
