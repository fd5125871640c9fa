"""What every command group shares: the parser classes, option files, the method flags, output checks.

A command group (in-tree, or a plugin from the ``fiberscope.commands`` entry-point group) adds its
commands with :func:`add_command`, so that each takes ``--config``, ``--quiet`` and ``--debug`` and
ends its ``--help`` with an example.

Example:
    >>> import argparse
    >>> from fiberscope.cli.common import add_command
    >>> subs = argparse.ArgumentParser(prog="fiberscope").add_subparsers(dest="command")
    >>> p = add_command(subs, "hello", "say hello", "fiberscope hello", lambda args: 0)
    >>> sorted(a.dest for a in p._actions if a.dest != "help")
    ['config', 'debug', 'quiet']
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from ..errors import EXIT, CLIError, printable
from ..methods import method_from_spec
from ..utils import load_config_file

__all__ = [
    "Formatter",
    "Parser",
    "add_command",
    "add_method_args",
    "check_writable",
    "config_defaults",
    "method_from_args",
    "say",
]


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Help text as written (examples keep their line breaks)."""


class Parser(argparse.ArgumentParser):
    """argparse, with terminal control characters in its error messages escaped (they quote user input)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT["usage"], f"{self.prog}: error: {printable(message)}\n")


def add_command(
    subs: Any, name: str, help: str, example: str, fn: Callable[[argparse.Namespace], int], *, hidden: bool = False
) -> Any:
    """Add the command ``name`` running ``fn(args)`` (its exit code), with ``--config``, ``--quiet``, ``--debug``.

    Args:
        subs: the ``add_subparsers()`` action of the ``fiberscope`` parser.
        name: the command's name.
        help: one line for ``fiberscope --help`` and the command's own description.
        example: one or more example command lines, shown at the end of its ``--help``.
        fn: the command; returns the exit code (see :data:`fiberscope.errors.EXIT`).
        hidden: leave it out of ``fiberscope --help`` (an old name kept for one release).
    """
    listed = {} if hidden else {"help": help}  # argparse lists only the commands given a help line
    p = subs.add_parser(
        name,
        **listed,
        description=help,
        formatter_class=Formatter,
        epilog="example:\n" + textwrap.indent(example.strip(), "  "),
    )
    p.set_defaults(fn=fn)
    p.add_argument("--config", help="read options from a YAML or TOML file (flags given here win)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p


def say(msg: str) -> None:
    """Print one error line, with whitespace collapsed and terminal control characters escaped."""
    print(printable(" ".join(str(msg).split())), file=sys.stderr)


# ---------------------------------------------------------------------------------------------------------------
# option files: every command's options can come from YAML or TOML; flags on the command line win


def config_defaults(parser: argparse.ArgumentParser, path: str | os.PathLike[str]) -> None:
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
# method options shared by sample / audit / manifest / compare


def add_method_args(p: argparse.ArgumentParser) -> None:
    """``--method`` and the NDTM settings that can be given as flags."""
    g = p.add_argument_group("guidance method")
    g.add_argument(
        "--method",
        default=None,
        help="ndtm, auto, unguided, a training-free baseline (dps, freedom, ugd, mpgd, tfg) or an NDTM preset name "
        "(see `fiberscope presets`); default: the "
        "scale-free auto (AutoNDTM), which needs no tuning (with NDTM-only flags such as --lr: the prior's "
        "registered NDTM preset fills the rest)",
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
            from ..validation import loads_json

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


# ---------------------------------------------------------------------------------------------------------------
# output


def check_writable(out: Path) -> None:
    """Create ``out`` and write a probe file into it, or raise a :class:`CLIError` with exit code 6."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".fiberscope-write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise CLIError(
            f"cannot write to {out}: {e.strerror}; choose another --out or fix its permissions", EXIT["output"]
        ) from None
