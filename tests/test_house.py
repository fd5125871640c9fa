"""One house (issue 22): layers without import cycles, one error module, one spec loader, the CLI as a package.

What is checked here: the layer contract in pyproject.toml holds (``lint-imports``) and covers every
module; no module-level import cycle; nothing below the CLI imports it; old import paths still work for
one release, with a DeprecationWarning, and give the very same object; the public names of
``fiberscope`` stay where they are, without a warning; ``trained:`` subjects (and their old spelling
``baseline:``) load in a fresh interpreter with nothing registered by import; the CLI's command groups
are explicit and a broken third-party command group is named on stderr while the other commands work.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import fiberscope as fs
from fiberscope._deprecated import ALIASES

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "fiberscope"

#: ``fiberscope.baselines`` and its modules: only deprecated aliases of ``fiberscope.trained`` now.
OLD_BASELINES = (
    "fiberscope.baselines",
    *(
        f"fiberscope.baselines.{m}"
        for m in (
            "cfm",
            "common",
            "conditional_training",
            "featinv",
            "featinv_training",
            "flows",
            "model",
            "recipes",
            "svae",
            "svae_training",
            "training_common",
        )
    ),
)

#: Modules that carry only deprecated aliases, and package ``__init__`` files that re-export their
#: submodules: outside the layers (a layer cannot contain another), checked through the chains they are on.
UNLAYERED = {
    *OLD_BASELINES,
    "fiberscope",
    "fiberscope.trained",
    "fiberscope.priors",
    "fiberscope.priors.loading",
    "fiberscope.report",
    "fiberscope.subjects",
    "fiberscope.subjects.registry",
    "fiberscope.zoo",
    "fiberscope.zoo.models",
    "fiberscope.zoo.training",
}

#: Every module that serves deprecated aliases (importing them fills ``fiberscope._deprecated.ALIASES``).
ALIAS_MODULES = (
    "fiberscope.analysis.invariances",
    "fiberscope.api",
    "fiberscope.audit",
    "fiberscope.audit.runner",
    "fiberscope.audit.sharding",
    "fiberscope.audit.store",
    *OLD_BASELINES,
    "fiberscope.bench",
    "fiberscope.bench.config",
    "fiberscope.cli",
    "fiberscope.errors",
    "fiberscope.guidance.registry",
    "fiberscope.priors",
    "fiberscope.priors.adm",
    "fiberscope.priors.base",
    "fiberscope.priors.loading",
    "fiberscope.subjects",
    "fiberscope.subjects.base",
    "fiberscope.subjects.registry",
    "fiberscope.zoo",
    "fiberscope.zoo.models",
    "fiberscope.zoo.registry",
    "fiberscope.zoo.training",
)


def _env() -> dict[str, str]:
    """The environment of a subprocess that imports this checkout's fiberscope."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the package: name -> (file, is a package ``__init__``)."""
    out = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return out


def _module_level_imports(name: str, path: Path, is_pkg: bool, modules: set[str], lazy: bool = False) -> set[str]:
    """The fiberscope modules ``name`` imports when it is imported (not inside ``TYPE_CHECKING``; with ``lazy``,
    inside its functions too)."""
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and not lazy:
                continue
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                out.update(a.name for a in child.names if a.name in modules)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - child.level + 1]
                    mod = ".".join(base + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                for a in child.names:
                    sub = f"{mod}.{a.name}"
                    out.add(sub if sub in modules else mod)
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in out if m in modules and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


# ---------------------------------------------------------------------------------------------------------------
# layers and cycles


def test_no_module_level_import_cycle_and_nothing_below_the_cli_imports_it() -> None:
    modules = _modules()
    graph = {m: _module_level_imports(m, p, pkg, set(modules)) for m, (p, pkg) in modules.items()}
    assert _cycles(graph) == []
    assert graph["fiberscope.priors.base"] >= {"fiberscope.counting"}  # the scan sees relative imports
    # nor through the imports inside functions (a lazy import is still a dependency)
    lazy = {m: _module_level_imports(m, p, pkg, set(modules), lazy=True) for m, (p, pkg) in modules.items()}
    assert _cycles(lazy) == []
    auto = "fiberscope.guidance.auto"  # imports its Unguided inside unguided_reference(): the scan sees it
    assert "fiberscope.guidance.unguided" in lazy[auto] and "fiberscope.guidance.unguided" not in graph[auto]
    # lazy imports too: only the command line itself and `python -m fiberscope` import fiberscope.cli
    for m, (p, _) in modules.items():
        if m == "fiberscope.__main__" or m == "fiberscope.cli" or m.startswith("fiberscope.cli."):
            continue
        text = p.read_text()
        assert "from .cli" not in text and "from ..cli" not in text and "fiberscope.cli" not in text, m


def test_every_module_is_in_one_layer_of_the_contract() -> None:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in cfg["contracts"] if c["type"] == "layers")["layers"]
    listed = [m.strip() for layer in layers for m in layer.replace("|", ":").split(":")]
    assert len(listed) == len(set(listed))
    for m in _modules():
        inside = [x for x in listed if m == x or m.startswith(x + ".")]
        if m in UNLAYERED:
            assert not inside, f"{m} is listed as a layer and as unlayered"
        else:
            assert len(inside) == 1, f"{m} is in no layer of [tool.importlinter] (or in several): {inside}"


@pytest.mark.skipif(importlib.util.find_spec("importlinter") is None, reason="import-linter not installed (dev)")
def test_the_import_contracts_hold() -> None:
    exe = Path(sys.executable).with_name("lint-imports")
    run_it = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", run_it]
    r = subprocess.run([*cmd, "--no-cache"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


# ---------------------------------------------------------------------------------------------------------------
# deprecated aliases and the public API


def test_old_import_paths_warn_and_give_the_same_object() -> None:
    for m in ALIAS_MODULES:
        importlib.import_module(m)
    expected = {
        "fiberscope.priors.loading.offline_hub": "fiberscope.hub:offline_hub",
        "fiberscope.priors.loading.load_prior": "fiberscope.loading:load_prior",
        "fiberscope.priors.base.CallCounter": "fiberscope.counting:CallCounter",
        "fiberscope.cli.method_from_spec": "fiberscope.methods:method_from_spec",
        "fiberscope.guidance.registry.method_from_spec": "fiberscope.methods:method_from_spec",
        "fiberscope.bench.resolve_method": "fiberscope.methods:method_from_spec",
        "fiberscope.bench.plot": "fiberscope.report.bench:plot",
        "fiberscope.api.real_rows": "fiberscope.sampling:real_rows",
        "fiberscope.audit.runner.OutputWriteError": "fiberscope.errors:OutputWriteError",
        "fiberscope.subjects.load_subject": "fiberscope.loading:load_subject",
        "fiberscope.zoo.registry.load_builtin_prior": "fiberscope.loading:load_builtin_prior",
        "fiberscope.baselines.common.BaselineNotTrainedError": "fiberscope.errors:NotTrainedError",
        "fiberscope.errors.BaselineNotTrainedError": "fiberscope.errors:NotTrainedError",
        "fiberscope.baselines.TrainedBaseline": "fiberscope.trained:TrainedMethod",
        "fiberscope.baselines.model.load_baseline": "fiberscope.trained.model:load_trained",
        "fiberscope.baselines.recipes.build_pairs": "fiberscope.trained.conditional_training:build_pairs",
        "fiberscope.bench.BASELINES": "fiberscope.bench.config:REFERENCES",
    }
    assert expected.items() <= ALIASES.items()
    for old, new in ALIASES.items():
        module, _, name = old.rpartition(".")
        home, _, attr = new.partition(":")
        with pytest.warns(DeprecationWarning, match=rf"{name} has moved to {home}\.{attr}.*removed in fiberscope 0\.2"):
            got = getattr(sys.modules[module], name)
        assert got is getattr(importlib.import_module(home), attr), old
    # `from OLD import NAME` works the same way
    with pytest.warns(DeprecationWarning, match="fiberscope.hub"):
        from fiberscope.priors.loading import resolve_hub_dir
    from fiberscope.hub import resolve_hub_dir as new

    assert resolve_hub_dir is new
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fs.priors.loading.nope  # noqa: B018


def test_public_names_stay_where_they_are_without_a_warning() -> None:
    assert sorted(fs.__all__) == sorted(
        ["DPS", "LOSSES", "MPGD", "NDTM", "TFG", "UGD", "AutoNDTM", "CallablePrior", "ComparisonResult", "Denoised",
         "FiberObjective", "FiberSamples", "FlowSchedule", "FreeDoM", "GaussianMixturePrior", "GaussianPrior",
         "GuidanceError", "GuidanceMethod", "InvarianceReport", "ModelNotAvailableError", "NotGuidedWarning",
         "PixelOptimization", "Prior", "SampleNoise", "Subject", "SubjectGradientError", "Trajectory",
         "Transformation", "Unguided", "VPSchedule", "__version__", "compare_subjects", "fiber_loss", "load_prior",
         "load_subject", "probe_invariances", "sample_fiber"]
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in fs.__all__:
            assert getattr(fs, name) is not None
        from fiberscope import ModelNotAvailableError, load_prior, load_subject  # noqa: F401
    assert (
        fs.load_prior.__module__ == "fiberscope.loading" and fs.ModelNotAvailableError.__module__ == "fiberscope.errors"
    )


def test_every_exception_raised_on_purpose_is_defined_in_the_error_module() -> None:
    """No module but fiberscope.errors defines a public exception class (private control-flow signals such as
    ``api._ProbeDone`` never reach a caller; warnings are not errors)."""
    for m, (p, _) in _modules().items():
        if m == "fiberscope.errors":
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                bases = {ast.unparse(b) for b in node.bases}
                assert not any(b.endswith(("Error", "Exception")) for b in bases), f"{m}.{node.name}({bases})"


# ---------------------------------------------------------------------------------------------------------------
# one spec loader


def test_a_trained_subject_loads_in_a_fresh_interpreter(tmp_path: Path) -> None:
    """``trained:`` is known without importing fiberscope.trained first (nothing registers by import); its old
    spelling ``baseline:`` still loads, with a DeprecationWarning naming the new one."""
    from fiberscope.models import SmallCNN
    from fiberscope.trained import recipes as R
    from fiberscope.training import TrainConfig

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 1, 28, 28, generator=g) * 2 - 1
    y = torch.randint(0, 10, (16,), generator=g)
    recipe = {"kind": "svae", "task_dims": 2, "nuisance_dims": 3, "width": 4, "beta": 1.0, "alpha": 1.0,
              "dataset": "mnist", "pairs": []}  # fmt: skip
    cfg = TrainConfig(steps=2, batch_size=8, warmup=1, log_every=1, checkpoint_every=100)
    ref = fs.load_subject(SmallCNN(width=4, hidden=8).eval(), "logits", name="ref")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        meta = R.fit_svae("svae-mnist", recipe, cfg, tmp_path / "svae-mnist", x, y, x[:4], y[:4], reference=ref,
                          log=lambda s: None)  # fmt: skip
    finally:
        torch.set_num_threads(n)
    assert meta["finished"]
    code = textwrap.dedent(
        """
        import sys, torch
        import fiberscope as fs
        assert "fiberscope.trained" not in sys.modules, "imported by `import fiberscope`"
        head = fs.load_subject("trained:svae-mnist")
        print(head.name, tuple(head(torch.zeros(2, 1, 28, 28), (-1, 1)).shape))
        """
    )
    env = {**_env(), "FIBERSCOPE_TRAINED_DIR": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["trained:svae-mnist", "(2,", "10)"]
    with pytest.raises(ValueError, match=r"'timm:', 'torchvision:', 'trained:'"):  # the prefixes are one table
        fs.load_subject("nope:x")
    with pytest.warns(DeprecationWarning, match=r"'baseline:svae-mnist' is spelled trained:svae-mnist now"):
        old = fs.load_subject("baseline:svae-mnist", root=str(tmp_path))
    assert old.name == "trained:svae-mnist"


def test_the_zoo_is_a_table_and_a_builtin_prior_carries_its_preset() -> None:
    from fiberscope.guidance.auto import registered_preset
    from fiberscope.guidance.ndtm import resolve_method
    from fiberscope.zoo import registry

    src = Path(registry.__file__).read_text()
    assert "from ..priors" not in src and "from ..subjects" not in src and "from ..loading" not in src
    prior = fs.load_prior("builtin:mnist-ddpm")
    assert prior.preset == "builtin-mnist" and registered_preset(prior) == "builtin-mnist"
    assert resolve_method(fs.NDTM(lr=0.1), "builtin:mnist-ddpm")[1]["preset"] == "builtin-mnist"  # a string spec
    assert resolve_method(fs.NDTM(lr=0.1), prior)[1]["preset"] == "builtin-mnist"
    assert registered_preset(fs.GaussianPrior(dim=2)) is None


# ---------------------------------------------------------------------------------------------------------------
# the CLI as a package


def test_the_cli_has_the_same_commands_in_the_same_order() -> None:
    import argparse

    from fiberscope.cli import build_parser

    subs = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(subs.choices) == [
        "sample", "demo", "zoo", "layers", "report", "presets", "data", "audit", "manifest", "neighbours", "bench",
        "trained", "baselines", "compare",
    ]  # fmt: skip


def _plugin_dist(root: Path) -> None:
    """A fake installed distribution with four ``fiberscope.commands`` entry points, two of them broken."""
    info = root / "fiberscope_test_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fiberscope-test-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[fiberscope.commands]\n"
        "missing = fiberscope_test_plugin_not_installed:add_commands\n"
        "hello = fiberscope_test_plugin:add_commands\n"
        "halfway = fiberscope_test_plugin:add_halfway\n"
        "constant = fiberscope_test_plugin:CONSTANT\n"
    )
    (root / "fiberscope_test_plugin.py").write_text(
        textwrap.dedent(
            """
            from fiberscope.cli.common import add_command

            CONSTANT = 3


            def _hello(args):
                print(f"hello {args.who}")
                return 0


            def add_commands(subs):
                p = add_command(subs, "hello", "say hello", "fiberscope hello --who you", _hello)
                p.add_argument("--who", default="world")


            def add_halfway(subs):
                add_command(subs, "halfway", "added, then its group fails", "fiberscope halfway", _hello)
                raise RuntimeError("the group broke after adding a command")
            """
        )
    )


def test_a_broken_plugin_is_named_on_stderr_and_the_cli_still_runs(tmp_path, monkeypatch, capsys) -> None:
    from fiberscope.cli import main

    _plugin_dist(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["presets"]) == 0
    cap = capsys.readouterr()
    assert "builtin-mnist" in cap.out
    err = cap.err
    assert "'missing' (fiberscope_test_plugin_not_installed:add_commands from fiberscope-test-plugin)" in err
    assert "ModuleNotFoundError" in err and "left out" in err
    assert "'halfway'" in err and "the group broke after adding a command" in err
    assert "'constant'" in err and "not a function" in err
    assert main(["hello", "--who", "plugins"]) == 0
    assert "hello plugins" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:  # what a failing group added half-way is removed again
        main(["halfway"])
    assert e.value.code == 2
    sys.modules.pop("fiberscope_test_plugin", None)


def test_python_m_fiberscope_and_the_legacy_register_command() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "fiberscope", "--version"], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0 and r.stdout.startswith("fiberscope ")
    import fiberscope.cli as cli
    from fiberscope.cli import app

    def add(subs):
        from fiberscope.cli.common import add_command

        add_command(subs, "legacy", "an old-style group", "fiberscope legacy", lambda args: 0)

    with pytest.warns(DeprecationWarning, match="fiberscope.commands"):
        cli.register_command(add)
    try:
        assert cli.main(["legacy"]) == 0
    finally:
        app._LEGACY.remove(add)
