"""The ``fiberscope`` command: its parser, its command groups and its exit codes.

Every command takes ``--config FILE`` (YAML or TOML, ``{option: value}``; flags given on the
command line win), ``--quiet`` (no progress bars) and ``--debug`` (full tracebacks), and its
``--help`` ends with examples. Errors are one line on stderr naming the problem and the fix.

Every value is checked before any model is loaded (types and bounds from
:mod:`fiberscope.validation`, the same rules as the API and manifests), and every message is
printed with terminal control characters escaped.

The in-tree command groups are listed in :data:`GROUPS`, in the order ``fiberscope --help`` shows
them; each is a module with ``add_commands(subs)``. Other packages add command groups through the
``fiberscope.commands`` entry-point group, e.g. in their ``pyproject.toml``::

    [project.entry-points."fiberscope.commands"]
    mytool = "mypackage.fiberscope_commands:add_commands"

where ``add_commands(subs)`` adds its commands with :func:`fiberscope.cli.common.add_command`. A group
that fails to import or to add its commands is named on stderr and left out; the other commands work.

:func:`main` runs the command and maps any exception to its exit code and one line on stderr
(:func:`fiberscope.errors.classify`); the library never raises exit codes itself.

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
       zoo entry or trained model, a path that holds no model
    8  bad model files: corrupt, truncated or mis-shaped weights, a broken or out-of-bounds
       config.json / scheduler config, pickled weights without --trust-pickle
    130 interrupted (Ctrl-C, or SIGTERM during an audit): finished results are kept, the unit in
       progress is discarded cleanly; run the same command again to resume
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from .._deprecated import REMOVED_IN
from .._version import __version__
from ..errors import EXIT, classify, printable
from . import audit, bench, compare, demo, info, sample, trained, zoo
from .common import Formatter, Parser, config_defaults, say

__all__ = ["ENTRY_POINT_GROUP", "GROUPS", "build_parser", "check_args", "main", "register_command"]

#: The in-tree command groups, in the order of ``fiberscope --help``.
GROUPS = (sample, demo, zoo, info, audit, bench, trained, compare)

#: The entry-point group through which other packages add command groups.
ENTRY_POINT_GROUP = "fiberscope.commands"

_LEGACY: list[Callable[[Any], None]] = []


def register_command(fn: Callable[[Any], None]) -> Callable[[Any], None]:
    """Deprecated: declare the command group in the ``fiberscope.commands`` entry-point group instead."""
    warnings.warn(
        "fiberscope.cli.register_command is deprecated (removed in fiberscope 0.2): declare the command group as "
        f"an entry point in the {ENTRY_POINT_GROUP!r} group (see fiberscope.cli.app)",
        DeprecationWarning,
        stacklevel=2,
    )
    _LEGACY.append(fn)
    return fn


def _left_out(name: str, what: str, e: BaseException) -> None:
    """Name a command group that could not be added, on stderr; the other commands go on working."""
    print(
        printable(
            f"fiberscope: the command group {name!r} ({what}) failed to load and is left out: "
            f"{type(e).__name__}: {' '.join(str(e).split())}; fix or uninstall the package that provides it"
        ),
        file=sys.stderr,
    )


def _plugins() -> list[tuple[str, str, Callable[[Any], None]]]:
    """``(name, where, add_commands)`` of every command group of the ``fiberscope.commands`` entry points."""
    from importlib.metadata import entry_points

    out = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(getattr(ep, "dist", None), "name", None)
        where = f"{ep.value}" + (f" from {dist}" if dist else "")
        try:
            add = ep.load()
            if not callable(add):
                raise TypeError(f"{ep.value} is {type(add).__name__}, not a function add_commands(subs)")
        except Exception as e:  # a broken plugin must not break the command
            _left_out(ep.name, where, e)
            continue
        out.append((ep.name, where, add))
    return out


def _add_plugin(subs: Any, name: str, where: str, add: Callable[[Any], None]) -> None:
    """Run a plugin's ``add_commands``; on failure, remove what it added half-way and name it on stderr."""
    before = set(subs.choices)
    try:
        add(subs)
    except Exception as e:
        for cmd in set(subs.choices) - before:
            del subs.choices[cmd]
        subs._choices_actions[:] = [a for a in subs._choices_actions if a.dest in before]
        _left_out(name, where, e)


def build_parser() -> argparse.ArgumentParser:
    """The ``fiberscope`` parser: the in-tree command groups, then those of installed plugins."""
    ap = Parser(
        prog="fiberscope",
        description="Show what a model does not see: sample images a model cannot tell apart from a query.",
        formatter_class=Formatter,
        epilog=textwrap.dedent(__doc__.split("Exit codes:")[1]).join(["exit codes:", ""]) if __doc__ else None,
    )
    ap.add_argument("--version", action="version", version=f"fiberscope {__version__}")
    subs = ap.add_subparsers(dest="command", metavar="COMMAND")
    for group in GROUPS:
        group.add_commands(subs)
    for name, where, add in _plugins():
        _add_plugin(subs, name, where, add)
    for fn in _LEGACY:
        _add_plugin(subs, getattr(fn, "__name__", "?"), getattr(fn, "__module__", "?"), fn)
    # nested commands (`zoo train`, `trained sample`, ...) take --config/--quiet/--debug too
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


def _command_name(args: argparse.Namespace) -> str:
    """``"sample"``, ``"zoo train"``, ``"trained sample"``, ...: the command and its subcommand (by today's name)."""
    name = str(getattr(args, "command", "") or "")
    name = trained.RENAMED_COMMANDS.get(name, name)
    for dest in ("zoo_cmd", "trained_cmd"):
        sub = getattr(args, dest, None)
        if sub:
            name += f" {sub}"
    return name


def check_args(args: argparse.Namespace) -> None:
    """Check every flag that has a typed, bounded spec (:mod:`fiberscope.validation`) before any work starts.

    Raises:
        ParameterError: naming the flag, its bounds and the value given.
    """
    from ..validation import check_flags

    check_flags(vars(args), _command_name(args))


def _subparser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (innermost) parser of the command ``args`` was parsed for, e.g. that of ``zoo train``."""
    p = parser
    while True:
        sub = next((a for a in p._actions if isinstance(a, argparse._SubParsersAction)), None)
        chosen = getattr(args, sub.dest, None) if sub is not None else None
        if sub is None or chosen is None:
            return p
        p = sub.choices[chosen]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fiberscope ARGV``; returns the exit code (see ``fiberscope --help``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with warnings.catch_warnings():
        _note_deprecations()
        return _run(argv)


def _note_deprecations() -> None:
    """Show each of fiberscope's own deprecations once, as one line on stderr (an old flag, command, spec or key).

    Python hides a ``DeprecationWarning`` raised inside a library; a command-line user should still
    learn that an old spelling goes away. Other warnings are left to Python's filters.
    """
    ours = rf"(?s).*fiberscope {re.escape(REMOVED_IN)}"
    warnings.filterwarnings("once", message=ours, category=DeprecationWarning)
    show = warnings.showwarning

    def note(message: Warning | str, category: type[Warning], *rest: Any, **kw: Any) -> None:
        if issubclass(category, DeprecationWarning) and re.match(ours, str(message)):
            say(f"fiberscope: deprecated: {message}")
        else:
            show(message, category, *rest, **kw)

    warnings.showwarning = note


def _run(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "fn", None):
        parser.print_help()
        return EXIT["usage"]
    try:
        if getattr(args, "config", None):
            config_defaults(_subparser(parser, args), args.config)
            args = parser.parse_args(argv)  # again: the file's values are now defaults, flags win
        check_args(args)
        return int(args.fn(args) or 0)
    except KeyboardInterrupt:
        say("fiberscope: interrupted; finished results are kept")
        return EXIT["interrupt"]
    except Exception as e:
        if getattr(args, "debug", False):
            raise
        code, msg = classify(e)
        say(f"fiberscope {args.command}: error: {msg}")
        return code
