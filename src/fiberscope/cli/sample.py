"""``fiberscope sample``: the fiber of one query image, several, or a folder of them."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from ..errors import EXIT, CLIError, printable
from ..runtime import add_runtime_args
from .common import add_command, add_method_args, check_writable, method_from_args

__all__ = ["add_commands", "cmd_sample"]


def add_commands(subs: Any) -> None:
    """Add ``sample`` to the ``fiberscope`` command."""
    p = add_command(
        subs,
        "sample",
        "sample the fiber of one query image, several, or a folder of them",
        """
fiberscope sample digit.png --subject builtin:mnist-cnn --layer penultimate --prior builtin:mnist-ddpm --n 8 --out fib/
fiberscope sample queries/ --subject timm:resnet50.a1_in1k --layer layer4 --prior google/ddpm-cifar10-32 \\
    --method ndtm --steps 100 --inner-steps 5 --lr 0.002 --gamma 3 --device cuda --out fibers/
fiberscope sample q.png --config audit.yaml     # options from a file
fiberscope sample digit.png --subject builtin:mnist-cnn --prior builtin:mnist-ddpm --tolerance nn --resample 2""",
        cmd_sample,
    )
    p.add_argument("query", nargs="+", help="image files (PNG/JPEG/...), .npy arrays, or folders of them")
    p.add_argument("--subject", required=False, help="subject spec, e.g. builtin:mnist-cnn, timm:NAME, hf:ID")
    p.add_argument("--layer", help="layer of the subject to use as φ (see `fiberscope layers SPEC`)")
    p.add_argument(
        "--prior",
        required=False,
        help="prior spec: builtin:NAME, a diffusers directory, a cached hub id or an ADM .pt checkpoint",
    )
    p.add_argument("--n", type=int, default=8, help="samples per query (default 8)")
    p.add_argument("--seed", type=int, default=0)
    add_runtime_args(p)
    p.add_argument("--device")
    p.add_argument("--dtype", choices=["float32", "fp32", "float16", "fp16", "bfloat16", "bf16"])
    p.add_argument(
        "--tolerance",
        help="fiber loss (sq_l2) at or below which a sample is in the fiber (marked in the grid and the report): a "
        "number, or nn = the fiber loss of the query's nearest real image among --reference-images",
    )
    p.add_argument(
        "--reference-images",
        help="real images for --tolerance nn: a folder of images, or a data set (mnist, fashion-mnist, colormnist: "
        "its test split); default for a builtin: prior, the test split of the data set it was trained on",
    )
    p.add_argument(
        "--resample", type=int, default=0, help="redraw samples outside --tolerance with new seeds, up to K rounds"
    )
    p.add_argument(
        "--out",
        default="fiber-out",
        help="output directory (default fiber-out): one query's result is written into it, several queries get "
        "OUT/<name>-<first 8 hex of the file's SHA-256>/ each; a folder holding another query's result is refused",
    )
    p.add_argument("--report", action=argparse.BooleanOptionalAction, default=True, help="write report.html")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow pickle checkpoints (they can run code: only for files you trust; safetensors never need it)",
    )
    p.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute the prior's activations in the backward pass: less memory, same results",
    )
    add_method_args(p)


def _sample_conflict(target: Path, digest: str, query: Any) -> str | None:
    """Why ``target`` must not receive this query's result (it holds another query's), or None."""
    import numpy as np

    try:
        rec = json.loads((target / "record.json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # an unreadable record: a damaged result, replaced
    if not isinstance(rec, dict):
        return None
    qf = (rec.get("config") or {}).get("query_file") if isinstance(rec.get("config"), dict) else None
    if isinstance(qf, dict) and isinstance(qf.get("sha256"), str):
        if qf["sha256"] == digest:
            return None
        return f"{qf.get('path')} (sha256 {qf['sha256'][:12]}…)"
    try:  # written before records named their query file: compare the query as the prior saw it
        with np.load(target / "samples.npz", allow_pickle=False) as z:
            same = np.array_equal(z["query"], query.cpu().numpy())
    except Exception:
        return None  # no readable samples: nothing of value is replaced
    return None if same else "another query"


def cmd_sample(args: argparse.Namespace) -> int:
    """Sample each query into its own folder (one query: ``--out`` itself; several: ``OUT/<stem>-<sha8>``).

    Never overwrites silently: a folder holding another query's result is refused before any
    sampling; a rerun of the same query replaces its result, with no stale files left behind
    (each result is written into a staging folder and installed with its ``record.json`` last).
    SIGTERM is handled like Ctrl-C: the result being written is discarded, finished ones are kept.
    """
    from ..api import sample_fiber
    from ..audit.manifest import query_digest
    from ..audit.store import Staging, held, install, lock_for, remove_stale_staging, seal
    from ..audit.unit import ModelCache, RunOptions
    from ..data.query import IMAGE_SUFFIXES, load_query
    from ..runtime import runtime_kwargs
    from ..utils import sigterm_as_interrupt

    if not args.subject or not args.prior:
        raise CLIError("sample needs --subject and --prior (on the command line or in --config)", EXIT["usage"])
    queries: list[Path] = []
    for q in args.query:
        p = Path(q)
        try:
            is_dir = p.is_dir()
        except OSError as e:  # e.g. a name too long for the file system
            raise CLIError(f"query {q!r}: {e.strerror}; check the path") from None
        if is_dir:
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES | {".npy"})
            if not found:
                raise CLIError(f"{p} holds no images (PNG, JPEG, ... or .npy)")
            queries += found
        else:
            queries.append(p)
    method = method_from_args(args, args.prior)  # every setting checked before anything is written or loaded
    tolerance = _tolerance(getattr(args, "tolerance", None))
    out = Path(args.out)
    check_writable(out)
    # models are loaded once for all queries; every query is checked before any sampling starts
    cache = ModelCache(
        RunOptions(
            device=args.device,
            dtype=args.dtype,
            trust_pickle=bool(getattr(args, "trust_pickle", False)),
            gradient_checkpointing=bool(getattr(args, "gradient_checkpointing", False)),
        )
    )
    prior = cache.prior(args.prior)
    subject = cache.subject(args.subject, args.layer)
    shape = tuple(prior.image_shape)
    loaded = [load_query(q, image_shape=shape, data_range=prior.data_range) for q in queries]
    reference = _reference_images(args, prior, shape) if tolerance == "nn" else None
    digests = [query_digest(q) or "" for q in queries]
    # one folder per query content: the same file name from two folders cannot collide
    jobs: dict[Path, tuple[Path, str, Any]] = {}
    for q, d, t in zip(queries, digests, loaded):
        name = re.sub(r"[^A-Za-z0-9.+-]+", "-", q.stem).strip(".-")[:60] or "query"
        target = out if len(queries) == 1 else out / f"{name}-{d[:8]}"
        if target in jobs:
            print(printable(f"{q}: the same image as {jobs[target][0]}; sampled once into {target}"))
            continue
        jobs[target] = (q, d, t)
    for target, (q, d, t) in jobs.items():
        other = _sample_conflict(target, d, t)
        if other is not None:
            raise CLIError(
                f"{target} already holds the fiber of {other}, not of {q}; choose another --out, or delete "
                f"{target} to replace it",
                EXIT["output"],
            )
    lock = lock_for(out, "sample")

    def waiting() -> None:
        print(printable(f"waiting for another `fiberscope sample` writing to {out}"), file=sys.stderr, flush=True)

    with sigterm_as_interrupt():
        with held(lock, waiting):
            remove_stale_staging(out, ".partial-sample-")
        for target, (q, d, _t) in jobs.items():
            res = sample_fiber(
                subject,
                q,
                prior,
                n=args.n,
                method=method,
                seed=args.seed,
                device=cache.device,
                progress=not args.quiet,
                **runtime_kwargs(args),
                tolerance=tolerance,
                reference_images=reference,
                resample=getattr(args, "resample", 0) or 0,
            )
            staging = Staging(out, ".partial-sample-")
            try:
                res.save(staging.path)
                seal(staging, len(res), extra={"query_file": {"path": str(q), "sha256": d}})
                with held(lock, waiting):
                    replaced = install(staging, target)
            except BaseException:
                staging.discard()
                raise
            print(
                printable(
                    f"{q}: fiber loss {res.metric} mean {float(res.fiber_loss.mean()):.4g} "
                    f"(min {float(res.fiber_loss.min()):.4g}) -> {target}"
                    + (" (replaces the earlier result)" if replaced else "")
                )
            )
            for line in _sample_notes(res):
                print(printable(f"{q}: {line}"))
        if args.report:
            from ..report.results import write_results_report

            path = write_results_report(out)
            print(printable(f"report: {path}"))
    return 0


def _tolerance(value: str | None) -> float | str | None:
    """``--tolerance``: a number or ``nn``, refused with the fix before any model is loaded."""
    if value is None or value.strip().lower() == "nn":
        return None if value is None else "nn"
    try:
        return float(value)
    except ValueError:
        raise CLIError(
            f"--tolerance must be a number (a fiber loss, sq_l2) or nn (the nearest real image's), got {value!r}",
            EXIT["usage"],
        ) from None


#: Data sets ``--reference-images`` can name (their test splits ship with fiberscope).
REFERENCE_SETS = ("mnist", "fashion-mnist", "colormnist")


def _reference_images(args: argparse.Namespace, prior: Any, shape: tuple[int, ...]) -> Any:
    """The real images ``--tolerance nn`` searches: a folder, a data set's test split, or the zoo prior's own."""
    import torch

    from ..data.query import load_query

    spec = getattr(args, "reference_images", None)
    if spec is None:
        from ..zoo.registry import ZOO

        name = str(args.prior).removeprefix("builtin:") if str(args.prior).startswith("builtin:") else None
        if name is None or name not in ZOO:
            raise CLIError(
                "--tolerance nn needs --reference-images: a folder of real images, or one of "
                f"{', '.join(REFERENCE_SETS)} (only a builtin: prior knows its own data set)",
                EXIT["usage"],
            )
        spec = ZOO[name].dataset
    if spec in REFERENCE_SETS:
        from ..zoo.evaluate import real_images

        images, _ = real_images(spec, "test")
        if tuple(images.shape[1:]) != tuple(shape):
            raise CLIError(
                f"--reference-images {spec}: its images are {tuple(images.shape[1:])}, the prior's {tuple(shape)}; "
                "give a folder of images the prior's size",
                EXIT["usage"],
            )
        lo, hi = prior.data_range or (-1.0, 1.0)
        return (images + 1) / 2 * (hi - lo) + lo
    folder = Path(spec)
    if not folder.is_dir():
        raise CLIError(
            f"--reference-images {spec!r} is neither a folder nor one of {', '.join(REFERENCE_SETS)}", EXIT["usage"]
        )
    from ..audit.neighbours import bank_files

    files = bank_files(folder)
    if not files:
        raise CLIError(f"--reference-images {folder} holds no images (PNG, JPEG, ... or .npy)", EXIT["usage"])
    return torch.cat([load_query(f, image_shape=shape, data_range=prior.data_range) for f in files])


def _sample_notes(res: Any) -> list[str]:
    """The lines printed after a result: where its defaults came from, in/out of fiber, and its warnings."""
    out = []
    how = res.config.get("method_defaults") or {}
    if how.get("source") == "preset" and how.get("given") is not None:
        out.append(f"settings: the prior's preset {how['preset']} (given: {', '.join(how['given']) or 'none'})")
    elif how.get("source") == "scale-free":
        out.append("settings: the scale-free default (AutoNDTM, which needs no tuning per prior)")
    if res.in_fiber is not None:
        k = int(res.in_fiber.sum())
        line = f"{k} of {len(res)} samples in the fiber (fiber loss {res.metric} ≤ {res.tolerance:.4g})"
        acc = res.acceptance
        if acc:
            line += (
                f"; acceptance {acc['acceptance_first_draw']:.0%} at the first draw, {acc['acceptance']:.0%} after "
                f"{acc['rounds']} round(s) of redraws ({acc['redrawn_samples']} redrawn, +{acc['extra_cost']:.0%} cost)"
            )
        out.append(line)
    out += [f"warning: {w}" for w in res.warnings]
    return out
