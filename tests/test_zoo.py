"""The built-in zoo: every entry loads offline with the right shapes and ranges, the colour-blind
subject is exactly colour-invariant, the card figures are reproduced by their command, the demo runs."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

import fiberscope as fs
from fiberscope.data.colormnist import colorize
from fiberscope.zoo import ZOO, weights_dir
from fiberscope.zoo.evaluate import real_images

PRIORS = sorted(n for n, e in ZOO.items() if e.kind == "prior")
SUBJECTS = sorted(n for n, e in ZOO.items() if e.kind == "subject")


def test_zoo_weights_are_small_and_safetensors_only():
    total = 0
    for name in ZOO:
        d = weights_dir(name)
        files = [f for f in d.rglob("*") if f.is_file()]
        assert files, f"{name} has no weights"
        assert not [f for f in files if f.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")], name
        total += sum(f.stat().st_size for f in files)
    assert total <= 40e6, f"zoo weights take {total / 1e6:.1f} MB (budget 40 MB)"


@pytest.mark.parametrize("name", PRIORS)
def test_builtin_priors_load_and_denoise(name):
    prior = fs.load_prior(f"builtin:{name}")
    image_shape = prior.image_shape
    assert tuple(image_shape) == ((3, 28, 28) if ZOO[name].dataset == "colormnist" else (1, 28, 28))
    assert prior.data_range == (-1.0, 1.0)
    z = torch.randn(2, *prior.state_shape, generator=torch.Generator().manual_seed(0))
    t = prior.schedule.grid(10)[3]
    with torch.no_grad():
        d = prior.denoise(z, t)
        a, s = (v.float() for v in prior.schedule.alpha_sigma(t))
        assert torch.allclose(a * d.x0 + s * d.eps, z, atol=1e-3)
        img = prior.decode(d.x0.clamp(*(prior.clip_range or (-5, 5))))
    assert img.shape == (2, *image_shape) and torch.isfinite(img).all()
    out = fs.sample_fiber(
        lambda x: x.flatten(1)[:, :2],
        torch.zeros(1, *image_shape),
        prior,
        n=2,
        progress=False,
        method=fs.Unguided(steps=4),
    )
    assert out.images.shape == (2, *image_shape)
    assert out.images.min() >= -1.001 and out.images.max() <= 1.001


@pytest.mark.parametrize("name", SUBJECTS)
def test_builtin_subjects_load_with_their_layers(name):
    e = ZOO[name]
    x = real_images(e.dataset, "test")[0][:4]
    for layer in (None, *e.layers):
        subj = fs.load_subject(f"builtin:{name}", layer)
        f = subj(x, (-1.0, 1.0))
        assert f.shape[0] == 4 and torch.isfinite(f).all()
        assert not any(p.requires_grad for p in subj.parameters())
    if name.endswith("-cnn"):
        assert fs.load_subject(f"builtin:{name}", "logits")(x).shape == (4, 10)
        assert fs.load_subject(f"builtin:{name}", "penultimate")(x).shape == (4, 128)


def test_colorblind_subject_is_exactly_colour_invariant():
    ink = (real_images("mnist", "test")[0][:64] + 1) / 2
    subj = fs.load_subject("builtin:colorblind-mnist")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        a = subj(colorize(ink, generator=g) * 2 - 1)
        b = subj(colorize(ink, generator=g) * 2 - 1)
        other = subj(colorize(ink.roll(1, 0), generator=g) * 2 - 1)
    assert (a - b).abs().max() < 1e-4  # a recolouring changes nothing ...
    assert (a - other).abs().mean() > 100 * (a - b).abs().max()  # ... while another digit changes a lot


def _card_figures(name):
    return json.loads((weights_dir(name) / "quality.json").read_text())


@pytest.mark.parametrize("name", ["mnist-cnn", "fashion-cnn"])
def test_classifier_card_accuracy_is_reproduced(name):
    from fiberscope.zoo.evaluate import evaluate_subject

    card = _card_figures(name)
    assert evaluate_subject(name)["test_accuracy"] == pytest.approx(card["test_accuracy"], abs=2e-4)
    assert card["test_accuracy"] >= {"mnist-cnn": 0.985, "fashion-cnn": 0.89}[name]


# Entries whose recorded Fréchet ratio misses the ≤ 3× target: more CPU training is due (each card
# says so and by how much). Strict, so the suite flags the moment a retrained entry meets the target
# and this list must shrink.
BELOW_TARGET = {"fashion-ddpm"}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason="card records a Fréchet ratio above 3"))
        if n in BELOW_TARGET
        else n
        for n in PRIORS
    ],
)
def test_prior_card_meets_the_quality_target(name):
    card = _card_figures(name)
    assert card["n"] >= 1000
    assert card["fd_ratio"] <= 3.0, f"{name}: Fréchet ratio {card['fd_ratio']:.2f}"


@pytest.mark.parametrize("name", PRIORS)
def test_prior_card_figures_are_reproduced_on_a_small_sample(name):
    """The card's command, rerun on the recorded small sample, reproduces the recorded figures."""
    from fiberscope.zoo.cards import SMALL_CHECK
    from fiberscope.zoo.evaluate import evaluate_prior

    card = _card_figures(name)
    check = card["small_sample_check"]
    res = evaluate_prior(name, n=SMALL_CHECK["n"], steps=SMALL_CHECK["steps"], progress=False)
    assert res["fd_real_vs_real"] == pytest.approx(check["fd_real_vs_real"], rel=1e-4)
    assert res["fd_samples_vs_real"] == pytest.approx(check["fd_samples_vs_real"], rel=0.05, abs=0.01)


def test_demo_quick_run_writes_grids_json_and_report(tmp_path):
    from fiberscope.demo import run_demo

    rec = run_demo(tmp_path, quick=True, progress=False)
    assert len(rec["sections"]) >= 2
    keys = {s["subject"] for s in rec["sections"]}
    assert {"builtin:mnist-cnn", "builtin:colorblind-mnist"} <= keys
    for sec in rec["sections"]:
        for q in sec["queries"]:
            assert (tmp_path / q["grid"]).exists()
            assert q["nearest_neighbour"]["fiber_loss"] > 0
            assert q["ranking"] and all(0 <= s <= 1 for _, s in q["ranking"]) and q["summary"]
            assert set(q["invariances"]["references"]) == {"unguided", "augmented"}
    html = (tmp_path / "report.html").read_text()
    assert html.startswith("<!doctype html>") and html.count("<img") >= 4
    n_queries = sum(len(s["queries"]) for s in rec["sections"])
    assert html.count('class="ranking"') == html.count('class="summary"') == n_queries
    assert json.loads((tmp_path / "demo.json").read_text())["sections"]


def test_a_smoke_training_run_never_replaces_the_shipped_weights(tmp_path, monkeypatch):
    from fiberscope.zoo import recipes, trainers

    shipped = (weights_dir("mnist-cnn") / "model.safetensors").read_bytes()
    x = torch.rand(64, 1, 28, 28) * 2 - 1
    y = torch.randint(0, 10, (64,))
    monkeypatch.setattr(trainers, "image_tensors", lambda *a, **k: (x, y))
    recipes.train(
        "mnist-cnn", workdir=tmp_path, overrides={"steps": 2, "threads": 1, "batch_size": 8}, log=lambda m: None
    )
    assert (tmp_path / "weights" / "model.safetensors").is_file()
    assert (weights_dir("mnist-cnn") / "model.safetensors").read_bytes() == shipped


def test_cooldown_changes_only_the_tail_of_the_learning_rate_schedule():
    """A constant-rate run extended with a cool-down is what the revised recipe does from scratch."""
    from dataclasses import replace

    from fiberscope.training import TrainConfig, lr_at

    base = TrainConfig(steps=6_000, lr=5e-4, warmup=300, min_lr_ratio=1.0)
    revised = replace(base, steps=9_000, cooldown=3_000)
    assert all(lr_at(s, base) == lr_at(s, revised) for s in range(0, 6_000, 7))
    tail = [lr_at(s, revised) for s in range(6_000, 9_000)]
    assert all(a > b for a, b in itertools.pairwise(tail)), "the cool-down decreases monotonically"
    assert tail[0] == pytest.approx(5e-4) and 0 < tail[-1] < 1e-6
    with_cosine = TrainConfig(steps=1_000, lr=1e-3, warmup=10, min_lr_ratio=0.1)
    assert lr_at(500, replace(with_cosine, cooldown=100)) == lr_at(500, with_cosine)


def test_a_warm_restart_extends_a_finished_schedule_without_changing_its_steps():
    """mnist-flow's recipe: a run whose cool-down ended is extended by a restart, reproducibly."""
    from dataclasses import replace

    from fiberscope.training import TrainConfig, lr_at

    base = TrainConfig(steps=9_000, lr=5e-4, warmup=300, min_lr_ratio=1.0, cooldown=3_000)
    extended = replace(base, steps=13_500, restarts=((9_000, {"lr": 3e-4, "warmup": 200, "cooldown": 2_500}),))
    assert all(lr_at(s, base) == lr_at(s, extended) for s in range(9_000))
    assert lr_at(9_000, extended) == pytest.approx(3e-4 / 200)  # warm-up again from the restart
    assert lr_at(9_199, extended) == lr_at(10_999, extended) == pytest.approx(3e-4)
    tail = [lr_at(s, extended) for s in range(11_000, 13_500)]
    assert all(a > b for a, b in itertools.pairwise(tail)) and 0 < tail[-1] < 1e-6
    twice = replace(extended, steps=15_000, restarts=(*extended.restarts, (13_500, {"lr": 1e-4, "cooldown": 1_500})))
    assert all(lr_at(s, twice) == lr_at(s, extended) for s in range(0, 13_500, 5))
    assert lr_at(13_600, twice) == pytest.approx(1e-4 * 101 / 300)  # the warm-up of 300 steps is inherited
    for restarts, match in [(((9_000, {"steps": 5}),), "may change lr"), (((14_000, {}),), "must increase")]:
        with pytest.raises(ValueError, match=match):
            lr_at(0, replace(extended, restarts=restarts))  # a bad recipe fails at its first step


def test_colormnist_decoder_stage_retrains_only_the_decoder(tmp_path, monkeypatch):
    """Stage 3 of the colormnist-latent recipe must leave the encoder (the denoiser's latent space) as it was."""
    from safetensors.torch import load_file

    from fiberscope.zoo import recipes, trainers

    x = torch.rand(32, 1, 28, 28) * 2 - 1
    monkeypatch.setattr(trainers, "image_tensors", lambda *a, **k: (x, torch.zeros(32, dtype=torch.long)))
    small = {
        "steps": 2,
        "threads": 1,
        "batch_size": 8,
        "lr": 1e-2,
        "warmup": 0,
        "cooldown": 0,
        "ema": 0.0,
        "restarts": (),
    }
    shipped = (weights_dir("colormnist-latent") / "vae.safetensors").read_bytes()
    exported = {}
    for stage3 in (True, False):
        recipe = dict(recipes.RECIPES["colormnist-latent"])
        if not stage3:
            recipe.pop("decoder_finetune")
        monkeypatch.setitem(recipes.RECIPES, "colormnist-latent", recipe)
        wd = tmp_path / str(stage3)
        recipes.train("colormnist-latent", workdir=wd, overrides=small, log=lambda m: None)
        exported[stage3] = load_file(wd / "weights" / "vae.safetensors")
        assert (wd / "weights" / "denoiser.safetensors").is_file()
    with_stage, without = exported[True], exported[False]
    enc = [k for k in with_stage if k.startswith("enc")]
    dec = [k for k in with_stage if k.startswith("dec")]
    assert enc and dec and set(enc) | set(dec) == set(with_stage)
    assert all(torch.equal(with_stage[k], without[k]) for k in enc)
    assert any(not torch.equal(with_stage[k], without[k]) for k in dec)
    assert (weights_dir("colormnist-latent") / "vae.safetensors").read_bytes() == shipped


def test_a_continue_stage_starts_from_stage_one_and_can_be_carried_to_another_machine(tmp_path, monkeypatch):
    """fashion-ddpm's recipe: stage 2 trains on from stage 1's EMA weights; copying ``stage1/`` is enough."""
    import shutil

    from safetensors.torch import load_file

    from fiberscope.trained.common import file_digest
    from fiberscope.zoo import recipes, trainers

    x = torch.rand(32, 1, 28, 28) * 2 - 1
    monkeypatch.setattr(trainers, "image_tensors", lambda *a, **k: (x, torch.zeros(32, dtype=torch.long)))
    recipe = dict(recipes.RECIPES["fashion-ddpm"])
    recipe.setdefault("continue", recipes.TrainConfig(steps=10, lr=1e-4, seed=1))
    monkeypatch.setitem(recipes.RECIPES, "fashion-ddpm", recipe)
    small = {"steps": 2, "threads": 1, "batch_size": 4, "warmup": 0, "cooldown": 0, "restarts": (), "ema": 0.5}
    shipped = (weights_dir("fashion-ddpm") / recipes.PIXEL_WEIGHTS).read_bytes()
    wd = tmp_path / "first"
    recipes.train("fashion-ddpm", workdir=wd, overrides=small, log=lambda m: None)
    assert (weights_dir("fashion-ddpm") / recipes.PIXEL_WEIGHTS).read_bytes() == shipped
    rec = json.loads((wd / "weights" / "training.json").read_text())
    assert [s["name"] for s in rec["stages"]] == ["train", "continue"]
    assert rec["stages"][0]["weights_digest"] == file_digest(wd / "stage1" / recipes.PIXEL_WEIGHTS)
    assert rec["stages"][1]["config"]["seed"] == recipe["continue"].seed
    assert rec["steps"] == rec["planned_steps"] == 2 and not rec["interim"]
    stage1 = load_file(wd / "stage1" / recipes.PIXEL_WEIGHTS)
    final = load_file(wd / "weights" / recipes.PIXEL_WEIGHTS)
    assert any(not torch.equal(stage1[k], final[k]) for k in final), "stage 2 trained"
    # another machine: only stage 1's result, no checkpoint of either stage
    other = tmp_path / "other"
    shutil.copytree(wd / "stage1", other / "stage1")
    logs: list[str] = []
    recipes.train("fashion-ddpm", workdir=other, overrides=small, log=logs.append)
    assert any("stage 2: starting from stage 1" in m for m in logs)
    assert not (other / "state.json").exists(), "stage 1 was not run again"
    again = load_file(other / "weights" / recipes.PIXEL_WEIGHTS)
    assert all(torch.equal(final[k], again[k]) for k in final)
