"""``fiberscope zoo``: the built-in models: list, train, evaluate, write and show model cards, export."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import EXIT, CLIError, ModelNotAvailableError
from ..zoo.registry import ZOO, card_path, weights_dir
from .common import Formatter, add_command

__all__ = ["add_commands", "cmd_zoo"]


def add_commands(subs: Any) -> None:
    """Add ``zoo`` and its subcommands to the ``fiberscope`` command."""
    p = add_command(
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
        "list", help="list the built-in models", epilog="example:\n  fiberscope zoo list", formatter_class=Formatter
    )
    t = zs.add_parser(
        "train",
        help="train (or continue training) one entry",
        epilog="example:\n  fiberscope zoo train mnist-ddpm --max-minutes 60   # run again to continue",
        formatter_class=Formatter,
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
        formatter_class=Formatter,
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
        formatter_class=Formatter,
    )
    c.add_argument("name")
    x = zs.add_parser(
        "export",
        help="export the EMA weights of an unfinished pixel-prior training",
        epilog="example:\n  fiberscope zoo export mnist-ddpm --out my-mnist-ddpm/",
        formatter_class=Formatter,
    )
    x.add_argument("name")
    x.add_argument("--workdir")
    x.add_argument("--out")
    s = zs.add_parser(
        "show", help="print a model card", epilog="example:\n  fiberscope zoo show mnist-cnn", formatter_class=Formatter
    )
    s.add_argument("name")


def cmd_zoo(args: argparse.Namespace) -> int:

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
        from ..zoo.recipes import train

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
        from ..zoo.cards import evaluate_and_record

        res = evaluate_and_record(
            args.name, n=args.n, steps=args.steps, seed=args.seed, write=not args.no_write, progress=not args.quiet
        )
        print(json.dumps({k: v for k, v in res.items() if not k.startswith("_")}, indent=2))
        return 0
    if args.zoo_cmd == "card":
        from ..zoo.cards import write_card

        print(write_card(args.name))
        return 0
    if args.zoo_cmd == "export":
        from ..zoo.recipes import export_checkpoint

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
    n = name.removeprefix("builtin:")
    if n not in ZOO:
        raise ModelNotAvailableError(
            f"no built-in model named {name!r}; the zoo has {', '.join(sorted(ZOO))} (see `fiberscope zoo list`)"
        )
    return n
