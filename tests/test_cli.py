"""The `fiberscope` command: examples in every --help, config files, progress bars, documented exit codes."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

import fiberscope.cli as cli
import fiberscope.cli.app as cli_app
import fiberscope.cli.info as cli_info
from audit_assets import Assets, make_assets, one_thread, write_jsonl
from fiberscope.cli import EXIT, main

_one_thread = pytest.fixture(autouse=True)(one_thread)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    return make_assets(tmp_path_factory.mktemp("cli-assets"))


@pytest.fixture(autouse=True)
def _zoo(assets: Assets, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIBERSCOPE_ZOO_DIR", str(assets.zoo))


def _all_parsers() -> dict[str, argparse.ArgumentParser]:
    out: dict[str, argparse.ArgumentParser] = {}

    def walk(p: argparse.ArgumentParser, prefix: str) -> None:
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    out[f"{prefix}{name}"] = sub
                    walk(sub, f"{prefix}{name} ")

    walk(cli.build_parser(), "")
    return out


def test_every_command_has_an_example_in_its_help(capsys) -> None:
    parsers = _all_parsers()
    for required in ("sample", "audit", "report", "demo", "zoo", "zoo list", "zoo train", "layers"):
        assert required in parsers, sorted(parsers)
    for name, p in parsers.items():
        text = p.format_help()
        assert "example" in text and "fiberscope" in text.split("example", 1)[1], f"`fiberscope {name} --help`"
    with pytest.raises(SystemExit) as e:
        main(["audit", "--help"])
    assert e.value.code == 0 and '"query"' in capsys.readouterr().out  # shows a manifest line too


def test_the_documented_exit_codes_are_the_ones_used() -> None:
    doc = cli_app.__doc__ or ""
    documented = {int(c) for c in re.findall(r"^\s{4}(\d+)\s", doc.split("Exit codes:")[1], re.M)}
    assert documented == set(EXIT.values())
    assert "exit codes:" in cli.build_parser().format_help()  # and `fiberscope --help` shows them


def test_exit_codes_0_1_2_and_130(assets: Assets, tmp_path: Path, capsys, monkeypatch) -> None:
    assert main(["presets"]) == EXIT["ok"]

    def boom(args):
        raise RuntimeError("boom\n  with a second line")

    monkeypatch.setattr(cli_info, "cmd_presets", boom)
    assert main(["presets"]) == EXIT["internal"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error RuntimeError: boom with a second line" in err and "--debug" in err
    with pytest.raises(RuntimeError):
        main(["presets", "--debug"])

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_info, "cmd_presets", interrupted)
    assert main(["presets"]) == EXIT["interrupt"]
    assert "interrupted" in capsys.readouterr().err

    with pytest.raises(SystemExit) as e:  # argparse's own usage errors exit with 2 as well
        main(["sample", "--no-such-flag"])
    assert e.value.code == EXIT["usage"]
    assert main(["audit"]) == EXIT["usage"]  # no manifest
    manifest = write_jsonl(tmp_path / "m.jsonl", [assets.unit(0)])
    assert main(["audit", str(manifest), "--num-shards", "2"]) == EXIT["usage"]  # --shard-index missing
    assert "--shard-index" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "suffix", "needle"),
    [
        ("steps: [1, 2\n", ".yaml", "not valid YAML"),
        ("steps = \n", ".toml", "not valid TOML"),
        ("- 1\n- 2\n", ".yaml", "mapping"),
        ("no_such_option: 1\n", ".yaml", "unknown option"),
        ("n: many\n", ".yaml", "not a valid value for --n"),
        ("sampler: leapfrog\n", ".yaml", "choose from"),
        ("report: sometimes\n", ".yaml", "true or false"),
    ],
)
def test_bad_config_files_are_usage_errors(text, suffix, needle, tmp_path: Path, capsys) -> None:
    cfg = tmp_path / f"cfg{suffix}"
    cfg.write_text(text)
    assert main(["sample", "q.png", "--config", str(cfg)]) == EXIT["usage"]
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert main(["sample", "q.png", "--config", str(tmp_path / "missing.yaml")]) == EXIT["usage"]


def test_options_from_yaml_and_toml_with_flags_winning(assets: Assets, tmp_path: Path, capsys) -> None:
    yaml_cfg = tmp_path / "sample.yaml"
    yaml_cfg.write_text(
        f"subject: builtin:mnist-cnn\nprior: {assets.prior}\nn: 3\nsteps: 3\ninner-steps: 1\n"
        f"device: cpu\nreport: false\nquiet: true\nout: {tmp_path / 'from-config'}\n"
    )
    assert main(["sample", str(assets.queries[0]), "--config", str(yaml_cfg)]) == 0
    rec = json.loads((tmp_path / "from-config" / "record.json").read_text())
    assert rec["n"] == 3 and rec["config"]["method"]["steps"] == 3 and rec["config"]["method"]["inner_steps"] == 1
    assert not (tmp_path / "from-config" / "report.html").exists()
    # flags on the command line win, including --no-X / --X switches
    argv = ["sample", str(assets.queries[0]), "--config", str(yaml_cfg), "--n", "2", "--report"]
    assert main([*argv, "--out", str(tmp_path / "flags")]) == 0
    assert json.loads((tmp_path / "flags" / "record.json").read_text())["n"] == 2
    assert (tmp_path / "flags" / "report.html").is_file()

    manifest = write_jsonl(tmp_path / "m.jsonl", [assets.unit(0), assets.unit(1)])
    toml_cfg = tmp_path / "audit.toml"
    toml_cfg.write_text(
        f'manifest = "{manifest}"\nout = "{tmp_path / "audit-out"}"\nnum-shards = 2\nshard_index = 1\n'
        'device = "cpu"\nquiet = true\nreport = false\n'
    )
    capsys.readouterr()
    assert main(["audit", "--config", str(toml_cfg)]) == 0
    assert "shard 2/2" in capsys.readouterr().out
    assert len(list((tmp_path / "audit-out" / "units").iterdir())) == 1
    assert main(["audit", "--config", str(toml_cfg), "--shard-index", "0"]) == 0
    assert len(list((tmp_path / "audit-out" / "units").iterdir())) == 2


def test_audit_progress_bar_dry_run_and_shards_from_the_environment(
    assets: Assets, tmp_path: Path, capsys, monkeypatch
) -> None:
    manifest = write_jsonl(tmp_path / "m.jsonl", [assets.unit(i) for i in range(3)])
    out = tmp_path / "out"
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    assert main(["audit", str(manifest), "--out", str(out), "--dry-run"]) == 0
    listed = capsys.readouterr().out.strip().splitlines()
    assert len(listed) == 1 and "to run" in listed[0]  # one of three units in this array task
    assert main(["audit", str(manifest), "--out", str(out), "--device", "cpu", "--no-report"]) == 0
    captured = capsys.readouterr()
    assert "audit shard 1/3" in captured.err and "unit" in captured.err  # the tqdm bar over units
    assert "shard 1/3, SLURM array" in captured.out
    assert main(["audit", str(manifest), "--out", str(out), "--dry-run"]) == 0
    assert " done " in capsys.readouterr().out
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    assert main(["audit", str(manifest), "--out", str(out), "-q", "--device", "cpu", "--no-report"]) == 0
    assert capsys.readouterr().err == ""  # --quiet: no bar
    assert len(list((out / "units").iterdir())) == 3

    assert main(["report", str(out)]) == 0  # rebuilds the HTML report of an audit
    assert (out / "report.html").is_file()


def test_sigterm_during_an_audit_is_handled_like_ctrl_c() -> None:
    from fiberscope.utils import sigterm_as_interrupt as _sigterm_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), _sigterm_as_interrupt():  # e.g. SLURM pre-emption
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) == before
