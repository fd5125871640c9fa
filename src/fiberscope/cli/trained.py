"""``fiberscope trained list|train|sample|show``: the trained invariance models (:mod:`fiberscope.trained`).

Kept light: the models are imported inside the commands.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .._deprecated import REMOVED_IN, warn_deprecated
from ..errors import EXIT, CLIError
from .common import Formatter, add_command, check_writable

__all__ = ["RENAMED_COMMANDS", "add_commands", "cmd_trained"]

EXAMPLE = """
fiberscope trained list                                  # every recipe, trained or not, training time
fiberscope trained train all --threads 1                 # every model in sequence; rerun to resume
fiberscope trained train cfm-l10 --max-minutes 20        # one; run again to continue
fiberscope trained train featinv-mnist --set init=none   # change a recipe setting
fiberscope trained sample cfm-l10 --test-index 0 3 --n 8 --out fibers-cfm
fiberscope trained sample svae-mnist --query digit.png --subject builtin:mnist-cnn --layer logits"""

#: ``--root`` of every ``trained`` subcommand.
ROOT_HELP = "where trained models live (default $FIBERSCOPE_TRAINED_DIR or ~/.cache/...)"


def _parse_set(items: list[str] | None) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for it in items or []:
        key, sep, value = it.partition("=")
        if not sep or not key:
            raise CLIError(f"--set takes KEY=VALUE (e.g. init=none), got {it!r}", EXIT["usage"])
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise CLIError(f"--set {key}: cannot read {value!r} ({e})", EXIT["usage"]) from None
    return out


#: Command groups renamed in issue 22 ("baseline" names only the training-free guidance methods): the old
#: name still runs the group until fiberscope 0.2, hidden from ``--help``, with a one-line note on stderr.
RENAMED_COMMANDS = {"baselines": "trained"}


def add_commands(subs: Any) -> None:
    """Add ``trained`` (and its old name ``baselines``, hidden) to the ``fiberscope`` command."""
    _add_group(subs, "trained")
    for old in RENAMED_COMMANDS:
        _add_group(subs, old, hidden=True)


def _add_group(subs: Any, name: str, hidden: bool = False) -> None:
    what = "trained invariance models: train them and sample their fibers"
    p = add_command(subs, name, what, EXAMPLE, cmd_trained, hidden=hidden)
    bs = p.add_subparsers(dest="trained_cmd", metavar="TRAINED_COMMAND")
    ls = bs.add_parser(
        "list",
        help="list the recipes and whether they are trained",
        epilog="example:\n  fiberscope trained list",
        formatter_class=Formatter,
    )
    ls.add_argument("--root", help=ROOT_HELP)

    t = bs.add_parser(
        "train",
        help="train (or continue training) one model, or all of them in sequence",
        epilog="example:\n  fiberscope trained train all --threads 1   # run again to continue",
        formatter_class=Formatter,
    )
    t.add_argument("name", help="a recipe name (see `fiberscope trained list`) or 'all'")
    t.add_argument("--root", help=ROOT_HELP)
    t.add_argument("--data", help="directory with the MNIST idx files (default: searched)")
    t.add_argument("--max-minutes", type=float, help="stop after this long (all: in total); run again to resume")
    t.add_argument("--steps", type=int, help="override the recipe's number of training steps (smoke tests)")
    t.add_argument("--threads", type=int, help="CPU threads for torch (1 on a busy machine)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="change a recipe setting (repeatable)")
    t.add_argument("--quiet", "-q", action="store_true")

    s = bs.add_parser(
        "sample",
        help="sample fibers of queries with a trained model",
        epilog="example:\n  fiberscope trained sample cfm-l10 --test-index 0 --n 8 --out fibers",
        formatter_class=Formatter,
    )
    s.add_argument("name", help="a trained model (name or directory)")
    s.add_argument("--query", nargs="+", default=[], help="query images (PNG, .npy, ...)")
    s.add_argument("--test-index", nargs="+", type=int, default=[], help="queries from the test split, by index")
    s.add_argument("--n", type=int, default=8, help="samples per query")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--batch-size", type=int)
    s.add_argument("--out", default="trained-fibers", help="output directory")
    s.add_argument("--root", help=ROOT_HELP)
    s.add_argument("--steps", type=int, help="ODE / denoising steps (default: as trained)")
    s.add_argument("--temperature", type=float, default=1.0, help="scale of the Gaussian codes")
    s.add_argument("--guidance-scale", type=float, help="FeatInv classifier-free guidance weight")
    s.add_argument("--subject", help="φ under which the fiber loss is reported (default: the trained one)")
    s.add_argument("--layer", help="layer of --subject")
    s.add_argument("--metric", default="sq_l2", help="fiber-loss form of the result (sq_l2, rms, ...)")
    s.add_argument("--device")
    s.add_argument("--quiet", "-q", action="store_true")

    sh = bs.add_parser(
        "show",
        help="print a trained model's training record",
        epilog="example:\n  fiberscope trained show cfm-l10",
        formatter_class=Formatter,
    )
    sh.add_argument("name")
    sh.add_argument("--root", help=ROOT_HELP)


def _list(args: argparse.Namespace) -> int:
    from ..trained.common import model_dir, read_json
    from ..trained.recipes import RECIPES, TRAIN_ORDER

    rows = []
    for name in TRAIN_ORDER:
        rec = read_json(model_dir(name, args.root) / "training.json")
        if rec is not None:
            status = f"{rec.get('total_wall_seconds', 0) / 60:.1f} min"
        else:
            st = read_json(model_dir(name, args.root) / "train" / "state.json")
            status = f"step {st['step']}" if st else "not trained"
        rows.append((name, status, RECIPES[name]["summary"]))
    w = max(len(r[0]) for r in rows)
    for name, status, summary in rows:
        print(f"{name:<{w}}  {status:>11}  {summary}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from ..trained.recipes import train, train_all

    overrides: dict[str, Any] = {}
    if args.steps:
        overrides["steps"] = args.steps
    if args.threads:
        overrides["threads"] = args.threads
    settings = _parse_set(args.set)
    log = (lambda s: None) if args.quiet else print
    if args.name == "all":
        if settings:
            raise CLIError("--set changes one recipe; use it with a recipe name, not 'all'", EXIT["usage"])
        res = train_all(root=args.root, data_root=args.data, max_minutes=args.max_minutes, overrides=overrides, log=log)
        done = [n for n, r in res.items() if r.get("finished")]
        skipped = {n: r["skipped"] for n, r in res.items() if "skipped" in r}
        unfinished = [n for n, r in res.items() if not r.get("finished") and "skipped" not in r]
        print(f"finished: {', '.join(done) or '—'}")
        if unfinished:
            print(f"not finished yet (run again to continue): {', '.join(unfinished)}")
        for n, why in skipped.items():
            print(f"skipped {n}: {why}")
        return EXIT["partial"] if (skipped or unfinished) else 0
    parts = ["fiberscope trained train", args.name] + [f"--set {x}" for x in args.set or []]
    if args.steps:
        parts.append(f"--steps {args.steps}")
    meta = train(
        args.name,
        root=args.root,
        data_root=args.data,
        max_minutes=args.max_minutes,
        overrides=overrides,
        settings=settings,
        log=log,
        command=" ".join(parts),
    )
    state = "finished" if meta.get("finished") else "not finished (run again to continue)"
    print(f"{args.name}: step {meta.get('step')}, {float(meta.get('wall_seconds') or 0) / 60:.1f} min, {state}")
    return 0 if meta.get("finished") else EXIT["partial"]


def _sample(args: argparse.Namespace) -> int:
    from ..api import sample_fiber
    from ..loading import current_spec, load_subject
    from ..trained.model import TrainedMethod, load_trained

    if not args.query and not args.test_index:
        raise CLIError("sample needs --query PATH... or --test-index N...", EXIT["usage"])
    method = TrainedMethod(
        args.name, root=args.root, steps=args.steps, temperature=args.temperature, guidance_scale=args.guidance_scale
    )
    model = load_trained(args.name, args.root)
    prior = model.output_prior()
    if args.subject:
        subject_spec, layer = args.subject, args.layer
        if model.condition == "features":  # the condition must come from the trained φ
            raise CLIError(
                f"{args.name} is conditioned on φ = {model.config['subject']['name']}; --subject applies to the "
                "supervised VAE (query-conditioned) only",
                EXIT["usage"],
            )
    elif model.condition == "features":
        sub = model.config["subject"]
        if not sub.get("spec"):
            raise CLIError(f"{args.name} was trained on a subject without a spec; use the Python API", EXIT["usage"])
        subject_spec, layer = sub["spec"], sub.get("layer")
    else:  # its own classifier (recorded as baseline:NAME by models trained before the rename)
        own = str(model.config.get("own_subject") or f"trained:{model.name}")
        subject_spec, layer = current_spec(own, warn=False), None
    subject_spec = current_spec(subject_spec)
    if subject_spec.startswith("trained:") and args.root:
        subject: Any = load_subject(subject_spec, layer, root=args.root)
    else:
        subject = load_subject(subject_spec, layer)
    queries: list[tuple[str, Any]] = [(Path(q).stem, q) for q in args.query]
    if args.test_index:
        from ..zoo.evaluate import real_images

        images, _ = real_images(str(model.config.get("dataset") or "mnist"), "test")
        for i in args.test_index:
            if not 0 <= i < len(images):
                raise CLIError(f"--test-index {i} is outside the test split (0 … {len(images) - 1})", EXIT["usage"])
            queries.append((f"test{i:05d}", images[i : i + 1]))
    out = Path(args.out)
    check_writable(out)
    for label, q in queries:
        res = sample_fiber(
            subject, q, prior, n=args.n, method=method, seed=args.seed, batch_size=args.batch_size,
            device=args.device, progress=not args.quiet, metric=args.metric,
        )  # fmt: skip
        saved = res.save(out / label if len(queries) > 1 else out)
        print(
            f"{label}: fiber loss {res.metric} mean {float(res.fiber_loss.mean()):.4g}, "
            f"{res.timings['per_sample'] * 1000:.1f} ms per sample -> {saved}"
        )
    return 0


def cmd_trained(args: argparse.Namespace) -> int:
    if args.command in RENAMED_COMMANDS:
        warn_deprecated(
            f"`fiberscope {args.command}` is now `fiberscope {RENAMED_COMMANDS[args.command]}` "
            f"(the old name is removed in fiberscope {REMOVED_IN})"
        )
    if args.trained_cmd == "list":
        return _list(args)
    if args.trained_cmd == "train":
        return _train(args)
    if args.trained_cmd == "sample":
        return _sample(args)
    if args.trained_cmd == "show":
        from ..trained.common import model_dir, read_json

        rec = read_json(model_dir(args.name, args.root) / "training.json")
        if rec is None:
            raise CLIError(
                f"{args.name} is not trained (no training.json in {model_dir(args.name, args.root)})", EXIT["model"]
            )
        print(json.dumps({k: v for k, v in rec.items() if k != "loss_curve"}, indent=2))
        return 0
    raise CLIError(f"{args.command} needs a subcommand: list, train, sample, show", EXIT["usage"])
