"""docs/architecture.md names only what exists: its paths, the tests it tells you to copy, its modules and functions.

What is checked: every repository path on the page (``src/fiberscope/...``, ``tests/...``, ``docs/...``,
``benchmarks/...``) exists, and every ``tests/FILE.py::test_name`` is a test in that file; every module
of the layers table is a module or package of ``src/fiberscope``; every dotted name that starts with a
fiberscope module (``sampling.draw_rows``, ``fiberscope.errors.NotTrainedError``, ``guidance.base.StepRule.step``)
or with a public name of ``fiberscope`` (``Prior.denoise``) resolves, old names through their deprecated
aliases included. A placeholder (``src/fiberscope/priors/<library>.py``) is not a path.
"""

from __future__ import annotations

import ast
import importlib
import re
import warnings
from pathlib import Path
from typing import Any

import fiberscope as fs

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "architecture.md"
PACKAGE = ROOT / "src" / "fiberscope"

#: Dotted words on the page that are not Python names (an entry-point group).
NOT_NAMES = {"fiberscope.commands"}
FILE_SUFFIXES = {"py", "md", "toml", "yaml", "yml", "png", "json", "jsonl", "npz", "safetensors", "pt"}


def _text() -> str:
    return PAGE.read_text()


def _top_level() -> set[str]:
    """The modules and packages directly under ``src/fiberscope``."""
    return {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}


def _resolve(dotted: str) -> Any:
    """Import the longest module prefix of ``fiberscope.<dotted>`` and look the rest up as attributes."""
    parts = dotted.replace(":", ".").split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def test_every_path_on_the_page_exists() -> None:
    paths = re.findall(r"(?<![\w/.])((?:src/fiberscope|tests|docs|benchmarks)/[\w/.<>-]+)(?:::(\w+))?", _text())
    assert len(paths) > 20
    for path, test in paths:
        path = path.rstrip(".")
        if "<" in path:  # a placeholder in a recipe
            assert (ROOT / path.split("<")[0]).is_dir(), path
            continue
        assert (ROOT / path).exists(), f"docs/architecture.md names {path}, which does not exist"
        if test:
            names = {n.name for n in ast.walk(ast.parse((ROOT / path).read_text())) if isinstance(n, ast.FunctionDef)}
            assert test in names, f"docs/architecture.md names {path}::{test}, which is not a test there"


def test_every_module_of_the_layers_table_exists() -> None:
    table = _text().split("## The layers", 1)[1].split("\n\n", 2)[1]
    checked = 0
    for row in table.splitlines()[2:]:
        modules = row.split("|")[2]
        for token in re.findall(r"`([^`]+)`", modules):
            head, brace, rest = token.partition("{")
            names = [head + n for n in rest.rstrip("}").split(",")] if brace else [token]
            for name in names:
                p = PACKAGE / name.rstrip("/")
                assert p.with_suffix(".py").is_file() or (p / "__init__.py").is_file(), f"layers table: {name}"
                checked += 1
    assert checked > 40


def test_every_dotted_name_on_the_page_resolves() -> None:
    text = re.sub(r"\bfiberscope\.(?=[a-z_])", "", _text().replace("fiberscope.commands", ""))
    top, public = _top_level(), set(fs.__all__)
    found = set(re.findall(r"(?<![\w./-])([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+(?::\w+)?)", text))
    checked = []
    for name in sorted(found - NOT_NAMES):
        first, last = name.split(".")[0], re.split(r"[.:]", name)[-1]
        if last in FILE_SUFFIXES:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # old names resolve through their aliases
            if first in top:
                assert _resolve(f"fiberscope.{name}") is not None, name
            elif first in public:
                obj: Any = getattr(fs, first)
                for attr in name.split(".")[1:]:
                    obj = getattr(obj, attr)
            else:
                continue
        checked.append(name)
    # the data flow names a function at every arrow: these must be among the names checked
    for must in ("api.sample_fiber", "loading.load_prior", "guidance.ndtm.resolve_method", "sampling.draw_rows",
                 "priors.base.Prior.denoise", "guidance.base.StepRule.step", "api.FiberSamples",
                 "report.results.write_results_report", "loading.load_subject", "data.query.load_query"):  # fmt: skip
        assert must in checked, must
    assert len(checked) > 40
