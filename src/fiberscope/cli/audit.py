"""``fiberscope audit`` (run a manifest of work units), ``manifest`` (write one from a folder of images) and
``neighbours`` (the nearest-neighbour reference of an audit's queries).

Kept light: argparse only at import time (the CLI imports this module on every invocation).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import EXIT, CLIError, printable
from ..runtime import add_runtime_args
from ..utils import sigterm_as_interrupt
from .common import add_command, add_method_args, check_writable, method_from_args

__all__ = [
    "add_audit_command",
    "add_commands",
    "add_manifest_command",
    "add_neighbours_command",
    "cmd_audit",
    "cmd_manifest",
    "cmd_neighbours",
]


def add_commands(subs: Any) -> None:
    """Add ``audit``, ``manifest`` and ``neighbours`` to the ``fiberscope`` command."""
    add_audit_command(subs)
    add_manifest_command(subs)
    add_neighbours_command(subs)


EXAMPLE = """
fiberscope audit audit.jsonl --out audit-out                 # resumable: run it again to finish
fiberscope audit audit.csv --out audit-out --config audit.toml
torchrun --nproc_per_node=4 -m fiberscope audit audit.jsonl --out audit-out --device cuda   # shards from RANK
sbatch --array=0-7 --wrap 'fiberscope audit audit.jsonl --out audit-out'           # shards from SLURM_ARRAY_*
fiberscope audit audit.jsonl --out audit-out --engine ray --workers 4              # Ray actors

audit.jsonl, one work unit per line:
  {"query": "q/3.png", "subject": "builtin:mnist-cnn", "layer": "penultimate", "prior": "builtin:mnist-ddpm",
   "method": {"name": "ndtm", "steps": 50, "inner_steps": 3}, "n": 8, "seed": 0}"""


def add_audit_command(subs: Any) -> None:
    """Add ``audit`` to the ``fiberscope`` command."""
    p = add_command(
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
    add_runtime_args(r)
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
    r.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute the prior's activations in the backward pass: less memory, same results",
    )
    r.add_argument("--report", action=argparse.BooleanOptionalAction, default=True, help="write report.html")
    r.add_argument(
        "--verify",
        action="store_true",
        help="check every finished unit's files against their SHA-256 digests (sizes are always checked); "
        "damaged units are redone",
    )
    r.add_argument("--dry-run", action="store_true", help="list this shard's units and their status; run nothing")


def _err(msg: str) -> None:
    """One line on stderr; manifest fields and file names in it have their control characters escaped."""
    print(printable(msg), file=sys.stderr, flush=True)


def cmd_audit(args: argparse.Namespace) -> int:
    """Run the audit; the exit code is 0, 5 (some units or manifest lines failed) or a failure's own code."""
    from ..audit.manifest import ManifestError, read_manifest
    from ..audit.runner import RunOptions, run_audit
    from ..audit.sharding import resolve_shard

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
    check_writable(out)
    if args.dry_run:
        from ..audit.sharding import shard_units
        from ..audit.unit import unit_status

        for u in shard_units(man.units, shard):
            check = unit_status(out, u, digests=bool(args.verify))
            status = {"ok": "done", "missing": "to run"}.get(check.status, "damaged")
            why = f"  ({check.problem}: it will be redone)" if check.problem else ""
            print(printable(f"{u.line:>6}  {status:<7}  units/{u.dirname}  {u.describe()}{why}"))
        return EXIT["partial"] if man.errors else EXIT["ok"]
    options = RunOptions(
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        autocast=args.autocast,
        channels_last=bool(args.channels_last),
        compile=args.compile,
        trust_pickle=bool(args.trust_pickle),
        threads=args.threads,
        cache_size=max(1, args.cache_size),
        gradient_checkpointing=bool(args.gradient_checkpointing),
        verify=bool(args.verify),
    )
    if args.workers is not None and args.workers < 1:
        raise CLIError(f"--workers must be at least 1, got {args.workers}", EXIT["usage"])
    with sigterm_as_interrupt():
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
    notes = []
    if run.redone:
        notes.append(f"{len(run.redone)} damaged and redone")
    if run.adopted:
        notes.append(f"{len(run.adopted)} adopted from an older layout")
    print(
        f"audit{shard_note}: {c['done']} done, {c['skipped']} already finished, {c['failed']} failed, "
        f"{len(man.errors)} bad manifest line(s)"
        + (f" ({'; '.join(notes)})" if notes else "")
        + f"; summary {out / 'summary.jsonl'}"
        + (f"; report {run.report}" if run.report else "")
    )
    if shard.count > 1 and args.report:
        print(f"when every shard has finished: fiberscope report {out}")
    if run.failed and ok == 0:
        return int(run.failed[0].code or EXIT["partial"])
    if run.failed or man.errors:
        return EXIT["partial"]
    return EXIT["ok"]


# ---------------------------------------------------------------------------------------------------------------
# fiberscope manifest: one work unit per image of a folder

MANIFEST_EXAMPLE = """
fiberscope manifest imagenet/val --recursive --shuffle-seed 0 --limit 1000 \\
    --subject hf:facebook/dinov2-base --layer cls --prior 256x256_diffusion_uncond.pt \\
    --method paper-imagenet-dinov2 --n 1 --out audit.jsonl
fiberscope manifest queries/ --subject builtin:mnist-cnn --layer penultimate --prior builtin:mnist-ddpm --out a.jsonl"""


def add_manifest_command(subs: Any) -> None:
    """Add ``manifest`` to the ``fiberscope`` command."""
    p = add_command(
        subs,
        "manifest",
        "write an audit manifest (JSONL): one work unit per image of a folder, for `fiberscope audit`",
        MANIFEST_EXAMPLE,
        cmd_manifest,
    )
    p.add_argument("images", nargs="*", help="image files and/or folders of them")
    p.add_argument("--subject", help="subject spec, e.g. hf:facebook/dinov2-base, timm:NAME, builtin:mnist-cnn")
    p.add_argument("--layer", help="layer of the subject (see `fiberscope layers SPEC`); JSON for several")
    p.add_argument("--prior", help="prior spec: builtin:NAME, a diffusers directory, an ADM .pt checkpoint, a hub id")
    p.add_argument("--n", type=int, default=8, help="samples per query (default 8; the paper's ImageNet runs use 1)")
    p.add_argument("--seed", type=int, default=0, help="run seed of every unit (default 0)")
    p.add_argument("--recursive", action="store_true", help="also look into sub-folders (ImageNet's val/<wnid>/)")
    p.add_argument("--shuffle-seed", type=int, help="take the images in a seeded random order (torch.randperm), e.g. 0")
    p.add_argument("--limit", type=int, help="at most this many units (after shuffling)")
    p.add_argument("--out", default="audit.jsonl", help="manifest to write (default audit.jsonl)")
    add_method_args(p)


def cmd_manifest(args: argparse.Namespace) -> int:
    import json

    from ..audit.manifest import ManifestError, manifest_from_images, write_manifest

    if not args.images or not args.subject or not args.prior:
        raise CLIError("manifest needs IMAGES, --subject and --prior (see `fiberscope manifest --help`)", EXIT["usage"])
    method_from_args(args, args.prior)  # checks the method and its options here, with the CLI's messages
    overrides = {
        k: getattr(args, k)
        for k in ("steps", "inner_steps", "lr", "loss", "sampler", "eta", "per_timestep_target")
        if getattr(args, k, None) is not None
    }
    if getattr(args, "gamma", None) is not None:
        try:
            overrides["gamma"] = float(args.gamma)
        except ValueError:
            overrides["gamma"] = json.loads(args.gamma)
    method: Any = args.method
    if overrides:
        method = {"name": args.method or "ndtm", **overrides}
    layer: Any = args.layer
    if isinstance(layer, str) and layer.strip().startswith(("[", "{")):
        try:
            layer = json.loads(layer)
        except ValueError:
            raise CLIError(f"--layer {layer!r} starts like JSON but is not valid JSON", EXIT["usage"]) from None
    try:
        units = manifest_from_images(
            args.images,
            subject=args.subject,
            prior=args.prior,
            out=args.out,
            layer=layer,
            method=method,
            n=args.n,
            seed=args.seed,
            recursive=args.recursive,
            shuffle_seed=args.shuffle_seed,
            limit=args.limit,
        )
    except ManifestError as e:
        raise CLIError(str(e), EXIT["input"]) from None
    try:
        path = write_manifest(units, args.out)
    except OSError as e:
        raise CLIError(f"cannot write {args.out}: {e.strerror}; choose another --out", EXIT["output"]) from None
    print(f"{path}: {len(units)} work unit(s); run them with: fiberscope audit {path} --out audit-out")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# fiberscope neighbours: the nearest-neighbour reference and the fiber-loss-vs-NN table

NEIGHBOURS_EXAMPLE = """
fiberscope neighbours audit-out --bank imagenet/val --device cuda     # writes audit-out/neighbours.{json,md}
fiberscope neighbours fibers/ --bank digits/ --subject builtin:mnist-cnn --layer penultimate"""


def add_neighbours_command(subs: Any) -> None:
    """Add ``neighbours`` to the ``fiberscope`` command."""
    p = add_command(
        subs,
        "neighbours",
        "the nearest-neighbour reference of an audit's queries over a folder of real images, and the "
        "fiber-loss-vs-nearest-neighbour table",
        NEIGHBOURS_EXAMPLE,
        cmd_neighbours,
    )
    p.add_argument(
        "results", nargs="?", help="an audit's output directory (or a folder of `fiberscope sample` results)"
    )
    p.add_argument("--bank", help="folder of real images searched for each query's nearest neighbour (recursively)")
    p.add_argument("--subject", help="embed with this subject instead of each unit's own")
    p.add_argument("--layer", help="with --subject: its layer")
    p.add_argument("--device", help="cpu, cuda, ... (default cpu)")
    p.add_argument("--batch-size", type=int, default=32, help="bank images per forward pass (default 32)")
    p.add_argument(
        "--identity-threshold",
        type=float,
        default=1e-4,
        help="bank images closer than this to the query (mean |Δ| in the prior's data space) are the query itself",
    )
    p.add_argument("--rows", type=int, default=20, help="per-query rows to print (all are written; default 20)")


def cmd_neighbours(args: argparse.Namespace) -> int:
    from ..audit.neighbours import audit_neighbours, neighbours_markdown

    if not args.results or not args.bank:
        raise CLIError("neighbours needs RESULTS and --bank FOLDER (see `fiberscope neighbours --help`)", EXIT["usage"])
    if args.layer is not None and args.subject is None:
        raise CLIError("--layer goes with --subject (units otherwise use their own subject and layer)", EXIT["usage"])
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be at least 1, got {args.batch_size}", EXIT["usage"])
    check_writable(Path(args.results))
    table = audit_neighbours(
        args.results,
        args.bank,
        subject=args.subject,
        layer=args.layer,
        device=args.device,
        batch_size=args.batch_size,
        identity_threshold=args.identity_threshold,
        progress=not args.quiet,
    )
    print(neighbours_markdown(table, max_rows=args.rows), end="")
    print(f"written: {Path(args.results) / 'neighbours.md'} and neighbours.json")
    return 0
