"""``fiberscope bench`` on tiny models: a 2 methods × 1 prior × 1 subject × 1 query × 2 seeds matrix."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import fiberscope as fs
from conftest import TinyCNN, tiny_unet
from fiberscope.bench import BenchConfig, run_bench
from fiberscope.methods import method_from_spec

#: The cache keys of the toy bench's units, as fiberscope computed them before the bench became a package (issue 22).
UNIT_HASHES = {
    "augment__seed0": "5658cc1f2c94f04b",
    "augment__seed1": "e54448e016186f30",
    "dps__seed0": "d9cb2a2a0ab83549",
    "dps__seed1": "a3ae63eaa7c5f397",
    "ndtm__seed0": "a90adf9e987cdba8",
    "ndtm__seed1": "1343a5d23613f427",
    "nn__seed0": "1ed371884d2ef1c7",
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def toy():
    prior = fs.CallablePrior(tiny_unet(), fs.VPSchedule.linear(), "eps", state_shape=(1, 8, 8), name="toy-prior")
    g = torch.Generator().manual_seed(0)
    images = torch.rand(40, 1, 8, 8, generator=g) * 2 - 1
    labels = torch.randint(0, 6, (40,), generator=g)
    objects = {"toy-prior": prior, "toy-cnn": TinyCNN(), "toy-ref": TinyCNN(seed=1)}
    cfg = {
        "methods": {
            "ndtm": {"name": "ndtm", "steps": 4, "inner_steps": 1, "lr": 0.05, "gamma": 1.0},
            "dps": {"name": "dps", "steps": 4, "scale": 0.2},
        },
        "priors": ["toy-prior"],
        "subjects": ["toy-cnn@head"],
        "queries": 1,
        "seeds": [0, 1],
        "n": 3,
        "real": 20,
        "datasets": {"toy-prior": "toy", "toy-cnn": "toy"},
        "reference": {"toy": "toy-ref"},
        "classifier": {"toy": "toy-ref"},
        "augment": {"toy": {"kind": "geometric", "shift": 1.0}},
    }
    return cfg, objects, {"toy": (images, labels)}


def test_bench_matrix_tables_plots_and_resume(toy, tmp_path):
    cfg, objects, data = toy
    lines: list[str] = []
    res = run_bench(cfg, tmp_path, objects=objects, data=data, log=lines.append)
    rows = {r["method"]: r for r in res["rows"]}
    assert set(rows) == {"ndtm", "dps", "nn", "augment"}
    for name in ("ndtm", "dps", "augment"):
        r = rows[name]
        assert r["seeds"] == [0, 1]
        mean, std = r["fiber_loss"]["sq_l2"]
        assert mean > 0 and std >= 0
        assert r["realism_fd"][0] >= 0 and r["diversity_pixel"][0] > 0 and r["diversity_feature"][0] >= 0
        assert 0 <= r["label_agreement"][0] <= 1 and 0 <= r["prediction_agreement"][0] <= 1
        assert r["nn_loss"] > 0 and r["loss_over_nn"] > 0
    assert rows["nn"]["seeds"] == [0]
    # "below NN": per (query, seed), recomputed here from the unit files and the pair's per-query NN losses
    nn_q = [d["sq_l2"] for d in res["pairs"][0]["nn_losses"]]
    unit_dir = tmp_path / "units" / "toy-prior__toy-cnn@head"
    per = [json.loads((unit_dir / f"dps__seed{s}.json").read_text())["fiber_loss_per_query"]["sq_l2"] for s in (0, 1)]
    wins = sum(a < b for p in per for a, b in zip(p, nn_q))
    assert rows["dps"]["below_nn"] == [wins, 2 * len(nn_q)]
    assert rows["dps"]["median_loss"] == pytest.approx(float(np.median([a for p in per for a in p])))
    assert rows["dps"]["forward_equivalents"][0] > rows["augment"]["forward_equivalents"][0] == 0
    assert rows["ndtm"]["method_config"]["inner_steps"] == 1
    for f in ("bench.md", "results.json", "loss_vs_cost.png", "loss_vs_realism.png", "config.json"):
        assert (tmp_path / f).stat().st_size > 0
    md = (tmp_path / "bench.md").read_text()
    assert "| `ndtm` |" in md and "toy-prior × toy-cnn@head" in md and "±" in md and "below NN" in md
    assert json.loads((tmp_path / "results.json").read_text())["rows"]
    pair = res["pairs"][0]
    assert len(pair["query_indices"]) == 1 and pair["nn_indices"][0] != pair["query_indices"][0]
    unit = tmp_path / "units" / "toy-prior__toy-cnn@head"
    assert {p.name for p in unit.glob("dps__seed*")} >= {"dps__seed0.json", "dps__seed0.npz", "dps__seed0.png"}

    # resume: nothing is recomputed; a changed setting recomputes that method only
    mtimes = {p: p.stat().st_mtime_ns for p in unit.glob("*.json")}
    lines.clear()
    run_bench(cfg, tmp_path, objects=objects, data=data, log=lines.append)
    assert all("cached" in ln for ln in lines if ln.startswith("[bench]"))
    assert {p: p.stat().st_mtime_ns for p in unit.glob("*.json")} == mtimes
    cfg["methods"]["dps"]["scale"] = 0.3
    lines.clear()
    run_bench(cfg, tmp_path, objects=objects, data=data, log=lines.append)
    fresh = [ln for ln in lines if ln.startswith("[bench]") and "cached" not in ln]
    assert len(fresh) == 2 and all(" dps " in ln for ln in fresh)


def test_bench_samples_equal_sample_fiber(toy, tmp_path):
    """A unit's samples are sample_fiber's for the recorded run seed: at the unit's batch shape bit for bit, at
    another batch shape up to floating-point rounding."""
    cfg, objects, data = toy
    cfg = {**cfg, "queries": 2, "seeds": [0], "references": [], "methods": {"dps": cfg["methods"]["dps"]}}
    run_bench(cfg, tmp_path, objects=objects, data=data, progress=False)
    rec = json.loads((tmp_path / "units" / "toy-prior__toy-cnn@head" / "dps__seed0.json").read_text())
    with np.load(tmp_path / "units" / "toy-prior__toy-cnn@head" / "dps__seed0.npz") as z:
        images, qidx = torch.from_numpy(z["images"]), z["query_indices"]
    assert rec["batch_size"] == 6  # 2 queries × 3 samples, fewer than the bench's batch_size: one batch, no padding
    q = 1
    query = data["toy"][0][int(qidx[q]) : int(qidx[q]) + 1]
    subject = fs.load_subject(objects["toy-cnn"], "head")
    method = method_from_spec(cfg["methods"]["dps"])
    for bs in (rec["batch_size"], None):
        ref = fs.sample_fiber(subject, query, objects["toy-prior"], n=3, method=method, seed=rec["run_seeds"][q],
                              batch_size=bs, progress=False)  # fmt: skip
        if bs is not None:
            assert torch.equal(ref.images, images[3:6])
        assert (ref.images - images[3:6]).abs().max() <= 1e-4


def test_a_bench_unit_is_sample_fiber_bit_for_bit_on_the_zoo(tmp_path):
    """Sample (q, j) of a bench unit is sample j of ``sample_fiber`` for query q at the unit's batch shape, bit for
    bit, over 25 NDTM steps on the zoo's MNIST DDPM, and costs the same per sample: query 1 shares its batch with
    query 0, query 2 sits in a last batch padded with its own rows (both go through the one batch driver)."""
    from fiberscope.zoo.evaluate import real_images

    spec = {"name": "builtin-mnist", "steps": 25}
    cfg = {
        "methods": {"ndtm": spec}, "priors": ["builtin:mnist-ddpm"], "subjects": ["builtin:mnist-cnn@penultimate"],
        "queries": 3, "n": 2, "seeds": [0], "batch_size": 4, "references": [], "bank": 40, "real": 20,
    }  # fmt: skip
    run_bench(cfg, tmp_path, progress=False)
    unit = tmp_path / "units" / "mnist-ddpm__mnist-cnn@penultimate" / "ndtm__seed0"
    rec = json.loads(unit.with_suffix(".json").read_text())
    assert rec["batch_size"] == 4 and rec["method_config"]["steps"] == 25
    with np.load(unit.with_suffix(".npz")) as z:
        images, qidx = torch.from_numpy(z["images"]), z["query_indices"]
    test_images = real_images("mnist", "test")[0].float()
    prior, subject = fs.load_prior("builtin:mnist-ddpm"), fs.load_subject("builtin:mnist-cnn", "penultimate")
    method = method_from_spec(spec, None, "builtin:mnist-ddpm")
    for q in (1, 2):
        query = test_images[int(qidx[q]) : int(qidx[q]) + 1]
        ref = fs.sample_fiber(subject, query, prior, n=2, method=method, seed=rec["run_seeds"][q], batch_size=4,
                              progress=False)  # fmt: skip
        assert torch.equal(ref.images, images[2 * q : 2 * q + 2]), q
        assert ref.config["method"]["steps"] == 25 and len(ref.loss_history[0]) > 10  # its guided steps
        for k, v in rec["counts"].items():  # per sample: the guidance, the final decoding and φ, φ(query) / n
            assert v == pytest.approx(ref.counts[k], rel=1e-12), k
        assert rec["forward_equivalents"] == pytest.approx(ref.counts["forward_equivalents"], rel=1e-12)


def test_unit_hashes_do_not_change_so_a_finished_bench_resumes(toy, tmp_path):
    """The cache keys of units (and of the pair's statistics) are those fiberscope computed before the bench became
    a package: a bench finished then resumes without recomputing anything."""
    cfg, objects, data = toy
    run_bench(cfg, tmp_path, objects=objects, data=data, progress=False)
    unit = tmp_path / "units" / "toy-prior__toy-cnn@head"
    hashes = {p.stem: json.loads(p.read_text())["hash"] for p in sorted(unit.glob("*.json"))}
    assert hashes == UNIT_HASHES
    assert json.loads((tmp_path / "pairs" / "toy-prior__toy-cnn@head.json").read_text())["hash"] == "74b68f5edd46d5b3"


#: The cache keys of a bench with a trained model's head as subject, as fiberscope computed them before trained models
#: were renamed from "baseline" (issue 22): ``baseline:toy-cnn@head``, references ``[nn]``.
TRAINED_SUBJECT_HASHES = {"dps__seed0": "3a32c4cf6579b4c6", "nn__seed0": "3c691bcdac50077c", "pair": "80a486aa83055fac"}


def test_a_bench_finished_before_the_rename_resumes_under_either_spelling(toy, tmp_path, recwarn):
    """``baseline:NAME`` → ``trained:NAME`` and ``baselines:`` → ``references:`` change no unit's key or hash: a bench
    finished with the old spelling resumes, with the old or the new spelling, without recomputing anything."""
    cfg, objects, data = toy
    objects = {**objects, "trained:toy-cnn": objects["toy-cnn"]}
    old = {**cfg, "methods": {"dps": cfg["methods"]["dps"]}, "seeds": [0], "subjects": ["baseline:toy-cnn@head"],
           "datasets": {"toy-prior": "toy", "baseline:toy-cnn": "toy"}, "baselines": ["nn"]}  # fmt: skip
    lines: list[str] = []
    with pytest.warns(DeprecationWarning, match="spelled trained:toy-cnn now"):
        run_bench(old, tmp_path, objects=objects, data=data, log=lines.append)
    key = "toy-prior__baseline-toy-cnn@head"  # keys and hashes keep the spelling they were first computed with
    got = {p.stem: json.loads(p.read_text())["hash"] for p in sorted((tmp_path / "units" / key).glob("*.json"))}
    got["pair"] = json.loads((tmp_path / "pairs" / f"{key}.json").read_text())["hash"]
    assert got == TRAINED_SUBJECT_HASHES
    new = {**old, "subjects": ["trained:toy-cnn@head"], "datasets": {"toy-prior": "toy", "trained:toy-cnn": "toy"}}
    new["references"] = new.pop("baselines")
    for again in (old, new):
        lines.clear()
        res = run_bench(again, tmp_path, objects=objects, data=data, log=lines.append)
        assert [ln for ln in lines if ln.startswith("[bench]")] and all(
            "cached" in ln for ln in lines if ln.startswith("[bench]")
        )
        assert {r["pair"]["subject"] for r in res["rows"]} == {"trained:toy-cnn"}  # results spell it the new way
    md = (tmp_path / "bench.md").read_text()
    assert "toy-prior × trained:toy-cnn@head" in md and "baseline:" not in md


def test_config_validation_and_pairs():
    base = {"methods": {"ndtm": "ndtm"}, "priors": ["builtin:mnist-ddpm", "builtin:colormnist-latent"]}
    cfg = BenchConfig.from_dict({**base, "subjects": ["builtin:mnist-cnn@logits", "builtin:colorblind-mnist"]})
    assert [(p.prior, p.subject_name) for p in cfg.resolved_pairs()] == [
        ("builtin:mnist-ddpm", "builtin:mnist-cnn@logits"),
        ("builtin:colormnist-latent", "builtin:colorblind-mnist"),
    ]
    for bad, match in [
        ({"n": 0}, "n must be"),
        ({"seeds": []}, "seeds"),
        ({"metric": "l3"}, "metric"),
        ({"references": ["knn"]}, "references"),
        ({"methods": {"nn": "ndtm"}}, "reserved"),
        ({"queries": -1}, "queries"),
        ({"colour": True}, "unknown bench setting"),
    ]:
        with pytest.raises(ValueError, match=match):
            BenchConfig.from_dict({**base, "subjects": ["builtin:mnist-cnn"], **bad})
    with pytest.raises(ValueError, match="unknown method"):
        method_from_spec("dsp")
    with pytest.raises(ValueError, match="scale"):
        method_from_spec({"name": "mpgd", "scale": -1})
    m = method_from_spec({"name": "paper-colormnist", "gamma": 10})
    assert m.gamma_at(100) == 10.0 and m.gamma_at(700) == 0.0


def test_cli_reads_the_config_and_filters_methods(tmp_path, capsys):
    from fiberscope.cli import main

    (tmp_path / "b.yaml").write_text(
        "methods:\n  ndtm: builtin-mnist\n  dps: {name: dps, scale: 0.5}\n"
        "priors: [builtin:mnist-ddpm]\nsubjects: [builtin:mnist-cnn@logits]\nseeds: [0, 1]\n"
    )
    rc = main(["bench", "--config", str(tmp_path / "b.yaml"), "--out", str(tmp_path / "o"), "--dry-run"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and len(lines) == 2 * 2 + 2 + 1  # 2 methods × 2 seeds, augment × 2, nn × 1
    rc = main(["bench", "--config", str(tmp_path / "b.yaml"), "--out", str(tmp_path / "o"), "--dry-run",
               "--methods", "dps,nn", "--seeds", "3"])  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and [ln.split()[1] for ln in lines] == ["dps", "nn"] and "seed 3" in lines[0]
    rc = main(["bench", "--config", str(tmp_path / "b.yaml"), "--out", str(tmp_path / "o"), "--n", "0"])
    assert rc == 2 and "n must be" in capsys.readouterr().err


def test_the_old_name_of_references_works_on_the_command_line_and_says_so_once(tmp_path, capsys):
    from fiberscope.cli import main

    (tmp_path / "b.yaml").write_text(
        "methods:\n  dps: {name: dps, scale: 0.5}\npriors: [builtin:mnist-ddpm]\n"
        "subjects: [builtin:mnist-cnn@logits]\nseeds: [0]\nbaselines: [nn]\n"
    )
    rc = main(["bench", "--config", str(tmp_path / "b.yaml"), "--out", str(tmp_path / "o"), "--dry-run"])
    cap = capsys.readouterr()
    assert rc == 0 and [ln.split()[1] for ln in cap.out.strip().splitlines()] == ["dps", "nn"]
    assert cap.err.count("deprecated") == 1 and "'baselines'" in cap.err and "'references'" in cap.err
    rc = main(["bench", "--config", str(tmp_path / "b.yaml"), "--out", str(tmp_path / "o"), "--dry-run",
               "--references", "augment"])  # fmt: skip
    assert rc == 0 and [ln.split()[1] for ln in capsys.readouterr().out.strip().splitlines()] == ["dps", "augment"]


def test_the_shipped_bench_files_read_without_a_deprecation(recwarn):
    """Every bench file in benchmarks/ but bench_default.yaml (rerun by the lead with the old key) uses new names."""
    from pathlib import Path

    for f in sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("bench_*.yaml")):
        cfg = BenchConfig.from_file(f)
        assert cfg.resolved_pairs(), f.name
        if f.name != "bench_default.yaml":
            assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)], f.name
        recwarn.clear()


def test_trained_tradeoff_script_plots_a_bench_and_names_a_missing_one(tmp_path, capsys):
    """benchmarks/trained_tradeoff.py: a plot from results.json, and a one-line error without it."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "trained_tradeoff.py"
    spec = importlib.util.spec_from_file_location("trained_tradeoff", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main([str(tmp_path / "nowhere")]) == 2
    assert "fiberscope bench --config benchmarks/bench_trained.yaml" in capsys.readouterr().err
    row = {"pair_key": mod.PAIR, "nn_loss": 0.7, "diversity_pixel": [20.0, 1.0], "colour_kl": [1.4, 0.2]}
    rows = [{**row, "method": m, "fiber_loss": {"rms": [v, 0.01]}} for m, v in (("ndtm", 0.4), ("cfm-l10", 0.3))]
    (tmp_path / "results.json").write_text(json.dumps({"rows": rows}))
    plot, grids = tmp_path / "p.png", tmp_path / "g.png"
    assert mod.main([str(tmp_path), "--plot", str(plot), "--grids", str(grids)]) == 0
    assert plot.stat().st_size > 10_000 and not grids.exists()  # no unit grids in this bench: skipped, said so
    assert "no side-by-side grids" in capsys.readouterr().err


def test_unit_cache_keys_follow_the_models_weights(tmp_path, monkeypatch):
    """Retraining a prior or subject must rerun its units, not reuse numbers of the old weights."""
    import os
    import shutil

    from fiberscope.bench import weights_fingerprint
    from fiberscope.zoo import weights_dir

    shipped = weights_fingerprint("builtin:mnist-cnn@logits")
    assert shipped is not None and shipped == weights_fingerprint("builtin:mnist-cnn")  # the layer does not count
    zoo = tmp_path / "zoo"
    shutil.copytree(weights_dir("mnist-cnn"), zoo / "mnist-cnn")
    monkeypatch.setenv("FIBERSCOPE_ZOO_DIR", str(zoo))
    assert weights_fingerprint("builtin:mnist-cnn") == shipped  # same bytes, same key
    f = next((zoo / "mnist-cnn").glob("*.safetensors"))
    f.write_bytes(f.read_bytes()[:-1] + b"\x00")  # "retrained"
    assert weights_fingerprint("builtin:mnist-cnn") not in (None, shipped)
    local = tmp_path / "ckpt"
    local.mkdir()
    (local / "model.safetensors").write_bytes(b"x" * 10)
    before = weights_fingerprint(str(local))
    os.utime(local / "model.safetensors", ns=(1, 1))
    assert before is not None and weights_fingerprint(str(local)) != before
    assert weights_fingerprint("google/ddpm-cifar10-32") is None  # a hub id: its revision identifies it


def test_plot_labels_of_crowded_points_neither_overlap_nor_leave_the_axes():
    """The bench plots name every method; a cluster of nearby points must still give readable labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fiberscope.report.plotting import label_points

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.set_xscale("log")
    ax.set_yscale("log")
    points = [(name, 800 * 1.05**i, 8 * 1.04**i) for i, name in enumerate(["dps", "freedom", "tfg", "ugd", "mpgd"])]
    points += [("nn", 2500.0, 0.5), ("unguided", 50.0, 60.0), ("augment", 1.0, 10.0)]
    ax.scatter([p[1] for p in points], [p[2] for p in points])
    fig.tight_layout()
    label_points(ax, points, size=7)
    from matplotlib.text import Text

    renderer = fig.canvas.get_renderer()
    for t in ax.texts:
        t.update_positions(renderer)
    boxes = [Text.get_window_extent(t, renderer) for t in ax.texts]  # the text alone, not its leader line
    assert sorted(t.get_text() for t in ax.texts) == sorted(p[0] for p in points)
    frame = ax.get_window_extent(renderer)
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    plt.close(fig)


def test_plot_error_bars_stay_on_a_log_axis_when_the_spread_exceeds_the_mean(tmp_path, monkeypatch):
    """A mean set by one failing seed has std > mean; its bar must not run to zero on the log y axis."""
    from matplotlib.axes import Axes

    from fiberscope.report.bench import plot

    bars = []
    real_errorbar = Axes.errorbar

    def spy(self, x, y, *args, yerr=None, **kwargs):
        bars.append((y, yerr))
        return real_errorbar(self, x, y, *args, yerr=yerr, **kwargs)

    monkeypatch.setattr(Axes, "errorbar", spy)

    def row(method, calls, fd, loss, sd):
        return {
            "pair_key": "p",
            "method": method,
            "forward_equivalents": [calls, 0.0],
            "realism_fd": fd,
            "fiber_loss": {"sq_l2": [loss, sd]},
            "nn_loss": 0.35,
        }

    rows = [row("ndtm", 680.0, [27.6, 0.8], 0.245, 0.28), row("dps", 300.0, [30.2, 5.5], 8.8, 2.0)]
    written = plot({"config": {"metric": "sq_l2"}, "rows": rows}, tmp_path)
    assert [p.name for p in written] == ["loss_vs_cost.png", "loss_vs_realism.png"]
    assert len(bars) == 4
    for y, ((lo,), (hi,)) in bars:
        assert y - lo > 0 and hi > 0
    assert (0.245, [[0.9 * 0.245], [0.28]]) in [(y, [list(a) for a in e]) for y, e in bars]
    assert (8.8, [[2.0], [2.0]]) in [(y, [list(a) for a in e]) for y, e in bars]


def test_efficiency_script_front_target_and_replot(tmp_path, capsys):
    """benchmarks/efficiency.py: the Pareto front, the cheapest point at a loss, and a plot redrawn from JSON."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "efficiency.py"
    spec = importlib.util.spec_from_file_location("efficiency", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def pt(label, fe, mean):
        return {"label": label, "forward_equivalents": fe, "fiber_loss_mean": mean, "fiber_loss_median": mean / 3}

    ref = [pt("a", 100, 1.0), pt("b", 200, 2.0), pt("c", 300, 0.1), pt("d", 400, 0.1), pt("e", 900, 0.01)]
    assert [p["label"] for p in mod.pareto(ref)] == ["a", "c", "e"]  # b is beaten by a, d ties c at a higher cost
    assert mod.cheapest_at(ref, 0.1)["label"] == "c"
    assert mod.cheapest_at(ref, 1e-3) is None
    new = [pt("x", 150, 0.5), pt("y", 250, 0.02)]
    matched = {"label": None, "at_new_best": {"loss": 0.02, "cost_ratio": 250 / 900}}
    assert "did not reach the target" in mod._verdict(matched) and "0.28" in mod._verdict(matched)
    assert "cost ratio 0.3 at matched loss" in mod._verdict({"label": "y", "cost_ratio": 0.3, "realism_ratio": 1.0})
    res = {
        "pair": "p:s@l",
        "reference": ref,
        "new": new,
        "reference_front": ["a", "c", "e"],
        "new_front": ["x", "y"],
        "target": {"fiber_loss_mean": 0.01, "forward_equivalents": 900, "label": "e"},
        "matched": matched,
    }
    (tmp_path / "efficiency.json").write_text(json.dumps({"pairs": [res, res]}))
    assert mod.main(["--replot", str(tmp_path / "efficiency.json"), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "efficiency.png").stat().st_size > 10_000
    assert "2 pairs" in capsys.readouterr().out


def test_efficiency_tables_verdicts_and_reference_reuse(tmp_path, capsys):
    """efficiency.py --tables prints item 4's verdict per pair; --reference-from refuses another grid or query set."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "efficiency.py"
    spec = importlib.util.spec_from_file_location("efficiency", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    assert mod._item4({"cost_ratio": 0.2, "realism_ratio": 0.8, "diversity_ratio": 0.95}) == "yes"
    assert mod._item4({"cost_ratio": 0.2, "realism_ratio": 0.8, "diversity_ratio": 0.84}) == "no (diversity)"
    assert mod._item4({"cost_ratio": 0.5, "realism_ratio": 1.2, "diversity_ratio": 1.0}) == "no (cost, realism)"

    def pt(label, fe, mean, **extra):
        return {
            "label": label,
            "forward_equivalents": fe,
            "fiber_loss_mean": mean,
            "fiber_loss_median": mean / 3,
            "class_kept": 1.0,
            "realism_fd": 50.0,
            "diversity": 10.0,
            **extra,
        }

    confirmed = {k: pt(k, 1, 0.1) for k in ("target", "matched")}
    res = {
        "pair": "mnist-ddpm:mnist-cnn@logits",
        "preset": "builtin-mnist",
        "queries": 8,
        "n": 2,
        "seed": 0,
        "confirm_queries": 24,
        "reference": [pt("NDTM K=25 N=1", 100, 1.0, lr=0.15), pt("NDTM K=200 N=5", 4400, 0.01, lr=0.15)],
        "new": [pt("AutoNDTM K=100 N=1 P=2 G=32", 1000, 0.005), pt("AutoNDTM K=100 N=2 P=2 G=32", 1100, 0.006)],
        "reference_front": ["NDTM K=25 N=1", "NDTM K=200 N=5"],
        "new_front": ["AutoNDTM K=100 N=1 P=2 G=32"],
        "target": {"fiber_loss_mean": 0.01, "forward_equivalents": 4400, "label": "NDTM K=200 N=5"},
        "matched": {
            "label": "AutoNDTM K=100 N=1 P=2 G=32",
            "cost_ratio": 1000 / 4400,
            "realism_ratio": 0.9,
            "diversity_ratio": 0.85,
        },
        "confirmed": confirmed,
    }
    # a confirmed candidate off the front (1,100 fe for a higher mean than the 1,000 one) is listed too
    off = {**pt("AutoNDTM K=100 N=2 P=2 G=32", 1, 0.1), "realism_ratio": 0.8, "diversity_ratio": 0.87}
    confirmed["candidates"] = [off]
    record = {"grid": mod.FULL, "lr_factors": list(mod.LR_FACTORS), "pairs": [res]}
    path = tmp_path / "efficiency.json"
    path.write_text(json.dumps(record))
    assert mod.main(["--tables", str(path)]) == 0
    out = capsys.readouterr().out
    assert "reached by K=100 N=1 P=2 G=32 at 1,000 | 0.23 | 0.90 | 0.85 | no (diversity) |" in out
    assert "K=200 N=5 (lr 0.15) **target**" in out
    assert "| K=100 N=2 P=2 G=32 (confirmed: realism 0.80, diversity 0.87) (off the front) | 1,100 |" in out

    grid = mod.FULL
    assert mod.earlier_reference(path, res["pair"], grid, 8, 2, 0, 24) is not None
    with pytest.raises(SystemExit, match="another grid, query set or seed"):
        mod.earlier_reference(path, res["pair"], grid, 4, 2, 0, 24)
    with pytest.raises(SystemExit, match="no run of"):
        mod.earlier_reference(path, "mnist-flow:mnist-cnn@logits", grid, 8, 2, 0, 24)


def test_efficiency_grid_points_and_reuse_by_settings():
    """efficiency.py: a variant's label and resampling; --new-from reuses a point only with equal settings."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "efficiency.py"
    spec = importlib.util.spec_from_file_location("efficiency", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    default = fs.AutoNDTM()
    m, resample, label = mod.auto_point(default, 40, 2, 2, 32, {"start": 0.55, "resample": 3}, 3e-4)
    assert (m.steps, m.inner_steps, m.polish_steps, m.project_steps, m.start) == (40, 2, 2, 32, 0.55)
    assert resample == {"rounds": 3, "tolerance": 3e-4}
    assert label == "AutoNDTM K=40 N=2 P=2 G=32 start=0.55 resample=3"
    assert mod._redraws(resample) == {"tolerance": 3e-4, "resample": 3} and mod._redraws(None) == {}
    m2, none, label2 = mod.auto_point(default, 40, 2, 2, 32, {"rho": 0.3}, 3e-4)
    assert none is None and m2.rho == 0.3 and label2 == "AutoNDTM K=40 N=2 P=2 G=32 ρ=0.3"
    m3, at3, label3 = mod.auto_point(default, 40, 2, 2, 32, {"start": 0.55, "resample": 3, "resample_at": 3}, 3e-4)
    assert m3.config() == m.config() and at3 == {"rounds": 3, "tolerance": 9e-4}
    assert label3 == "AutoNDTM K=40 N=2 P=2 G=32 start=0.55 resample=3 above 3×target"
    assert all(set(v) <= {"rho", "start", "resample", "resample_at"} for v in mod.FULL["auto_variants"])

    earlier = {"new": [{"label": label2, "settings": m2.config(), "fiber_loss_mean": 0.1}]}
    assert mod.reused(earlier, m2.config(), None)["fiber_loss_mean"] == 0.1
    assert mod.reused(earlier, m.config(), None) is None  # another start
    assert mod.reused(earlier, m2.config(), {"rounds": 3, "tolerance": 3e-4}) is None  # resampled: not the same point
    assert mod.reused(None, m2.config(), None) is None

    # a confirmation is reused only for a point of the same settings and resampling
    conf = {k: 1.0 for k in mod.CONFIRMED_KEYS} | {"label": label2, "realism_ratio": 0.5}
    earlier["confirmed"] = {"candidates": [conf]}
    point = {"label": label2, "settings": m2.config(), "resample": None}
    assert mod.reused_confirmation(earlier, point) == {k: conf[k] for k in mod.CONFIRMED_KEYS}
    assert mod.reused_confirmation(earlier, {**point, "settings": m.config()}) is None
    assert mod.reused_confirmation(earlier, {**point, "resample": {"rounds": 3, "tolerance": 1.0}}) is None
    assert mod.reused_confirmation(None, point) is None
    assert mod.auto_settings(["sampler=euler", "rho=0.3"]) == {"sampler": "euler", "rho": 0.3}
    with pytest.raises(SystemExit, match="an AutoNDTM setting"):
        mod.auto_settings(["lr=0.1"])
