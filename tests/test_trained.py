"""Trained invariance models (fiberscope.trained) on tiny stand-ins: no zoo weights, a few training steps.

Stand-ins: a ``ConvVAE(latent_dim=4, width=8)`` codec, a 6-d colour-blind embedding, a tiny UNet on
8×8 images with ``TinyCNN``'s conv map as φ, and a tiny supervised VAE. Each model trains 2–3 steps
once per module (the first optimiser in a process imports torch._dynamo, a one-off cost).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import fiberscope as fs
from conftest import TinyCNN, tiny_unet
from fiberscope.errors import NotTrainedError
from fiberscope.models import ColorblindEmbed, ConvVAE, SmallCNN
from fiberscope.priors.latent import LatentPrior
from fiberscope.trained import (
    RECIPES,
    TRAIN_ORDER,
    Codec,
    ConditionalFlowMatching,
    ConditionalINN,
    FeatInvUNet,
    TrainedMethod,
    load_trained,
)
from fiberscope.trained import recipes as R
from fiberscope.trained.conditional_training import build_pairs
from fiberscope.training import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(steps: int = 3, batch: int = 16) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=batch, warmup=1, log_every=1, checkpoint_every=100)


def _quiet(s: str) -> None:
    pass


@pytest.fixture(scope="module")
def colour_pairs():
    torch.manual_seed(0)
    codec = Codec(ConvVAE(latent_dim=4, width=8), torch.zeros(4), torch.ones(4))
    subject = fs.load_subject(ColorblindEmbed(dim=6, width=4), name="tiny-colorblind")
    g = torch.Generator().manual_seed(0)
    ink = (torch.rand(48, 1, 28, 28, generator=g) > 0.7).float() * 2 - 1
    return build_pairs(codec, subject, ink[:40], ink[40:], colour=True, colourings=2)


def _cond_recipe(model: str, lam: float) -> dict:
    arch = (
        {"width": 16, "blocks": 1, "emb": 8, "ode_steps": 2}
        if model == "cfm"
        else {"blocks": 2, "width": 16, "embed": 4, "embed_width": 8}
    )
    return {
        "kind": "conditional",
        "model": model,
        "arch": arch,
        "lambda_fiber": lam,
        "fiber_batch": 4,
        "dataset": "colormnist",
        "subject": None,
        "pairs": [["toy-latent", "tiny-colorblind"]],
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory, colour_pairs):
    """Tiny conditional models (flow matching λ = 1, INN λ = 0), FeatInv from a tiny pretrained UNet, an SVAE."""
    root = tmp_path_factory.mktemp("trained")
    for model, lam in [("cfm", 1.0), ("inn", 0.0)]:
        meta = R.fit_conditional(f"t-{model}", _cond_recipe(model, lam), _cfg(), root / f"t-{model}", colour_pairs,
                                 log=_quiet)  # fmt: skip
        assert meta["finished"]
    g = torch.Generator().manual_seed(1)
    imgs = torch.rand(24, 1, 8, 8, generator=g) * 2 - 1
    subj = fs.load_subject(TinyCNN(), "conv")  # named "TinyCNN", as the bench names a module subject
    fi = {"kind": "featinv", "hint_channels": 2, "hint_width": 8, "p_uncond": 0.15, "dataset": "toy",
          "sampling": {"steps": 3, "guidance_scale": 2.0}, "pairs": [["toy-prior", "TinyCNN@conv"]]}  # fmt: skip
    assert R.fit_featinv("t-featinv", fi, _cfg(2, 8), root / "t-featinv", subj, imgs, imgs[:3],
                         init_unet=tiny_unet(), log=_quiet)["finished"]  # fmt: skip
    x28 = torch.rand(24, 1, 28, 28, generator=g) * 2 - 1
    y = torch.randint(0, 10, (24,), generator=g)
    sv = {"kind": "svae", "task_dims": 2, "nuisance_dims": 3, "width": 4, "beta": 1.0, "alpha": 1.0,
          "dataset": "mnist", "pairs": []}  # fmt: skip
    ref = fs.load_subject(SmallCNN(width=4, hidden=8).eval(), "logits", name="ref")
    assert R.fit_svae("svae-mnist", sv, _cfg(2, 8), root / "svae-mnist", x28, y, x28[:4], y[:4], reference=ref,
                      log=_quiet)["finished"]  # fmt: skip
    return {"root": root, "images8": imgs, "subject8": subj, "images28": x28}


# ---------------------------------------------------------------------------------------------------------------
# the networks


def test_conditional_inn_is_exactly_invertible_with_the_right_log_determinant():
    flow = ConditionalINN(dim=4, cond_dim=3, blocks=3, width=16, embed=5, embed_width=8)
    with torch.no_grad():  # non-trivial couplings (the last layers start at zero)
        for p in flow.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    x, c = torch.randn(3, 4), torch.randn(3, 3)
    z, logdet = flow(x, c)
    assert torch.allclose(flow.generate(c, z), x, atol=1e-5)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda v, i=i: flow(v[None], c[i : i + 1])[0][0], x[i])
        assert math.isclose(float(torch.linalg.slogdet(jac)[1]), float(logdet[i]), abs_tol=1e-4)
    nll = flow.nll(x, c)
    assert nll.shape == (3,) and torch.isfinite(nll).all()
    with pytest.raises(ValueError, match="dim"):
        ConditionalINN(dim=1, cond_dim=2)


def test_flow_matching_sampler_is_differentiable_and_validated():
    m = ConditionalFlowMatching(dim=3, cond_dim=2, width=8, blocks=1, emb=8, solver="midpoint", ode_steps=3)
    c, eps = torch.randn(4, 2), torch.randn(4, 3)
    m.generate(c, eps).pow(2).sum().backward()
    assert all(p.grad is not None for p in m.velocity.inp.parameters())
    assert m.evaluations() == 6 and m.evaluations(4, "euler") == 4
    assert m.loss(torch.randn(4, 3), c, torch.Generator().manual_seed(0)).dim() == 0
    with pytest.raises(ValueError, match="solver"):
        ConditionalFlowMatching(dim=3, cond_dim=2, solver="rk4")
    with pytest.raises(ValueError, match="steps"):
        m.generate(c, eps, steps=0)


def test_featinv_starts_at_the_pretrained_unconditional_unet():
    init = tiny_unet()
    net = FeatInvUNet(dict(init.config), feat_shape=(8, 8, 8), image_shape=(1, 8, 8), hint_channels=2, hint_width=8)
    net.load_unconditional(init)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 600])
    with torch.no_grad():
        assert (net(x, t, torch.randn(2, 8, 8, 8)) - init(x, t).sample).abs().max() < 1e-5
    vec = FeatInvUNet(dict(init.config), feat_shape=(5,), image_shape=(1, 8, 8), hint_channels=2, hint_width=8)
    assert vec.hint_map(torch.randn(3, 5)).shape == (3, 2, 8, 8)  # a vector φ is broadcast spatially
    with pytest.raises(ValueError, match="feats must have shape"):
        vec.sample(torch.randn(2, 4), fs.SampleNoise([0, 1]), steps=2)


# ---------------------------------------------------------------------------------------------------------------
# training: resumable, deterministic, recorded


def test_conditional_training_resumes_on_the_same_path(tmp_path, colour_pairs):
    recipe = _cond_recipe("cfm", 1.0)
    assert R.fit_conditional("a", recipe, _cfg(3), tmp_path / "a", colour_pairs, log=_quiet)["finished"]
    first = R.fit_conditional("b", recipe, _cfg(3), tmp_path / "b", colour_pairs, max_minutes=1e-9, log=_quiet)
    assert not first["finished"] and first["step"] == 1 and not (tmp_path / "b" / "model.safetensors").exists()
    resumed = R.fit_conditional("b", recipe, _cfg(3), tmp_path / "b", colour_pairs, log=_quiet)
    assert resumed["finished"] and resumed["step"] == 3
    a, b = load_trained(str(tmp_path / "a")).net.state_dict(), load_trained(str(tmp_path / "b")).net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rec = json.loads((tmp_path / "a" / "training.json").read_text())
    assert rec["steps"] == 3 and rec["hardware"] and rec["total_wall_seconds"] >= rec["wall_seconds"] > 0
    assert {"fiber_rms", "recon_fiber_rms", "test_loss"} <= set(rec["eval"]) and rec["command"]
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["codec"]["file"] == "ae.safetensors" and cfg["lambda_fiber"] == 1.0 and cfg["cond_shape"] == [6]
    assert not list((tmp_path / "a").rglob("*.pt")) and not list((tmp_path / "a").rglob("*.pkl"))
    # other settings in the same work directory are refused instead of silently resumed
    with pytest.raises(ValueError, match="other settings"):
        R.fit_conditional("a", {**recipe, "lambda_fiber": 10.0}, _cfg(3), tmp_path / "a", colour_pairs, log=_quiet)


def test_recipes_cover_the_issue_and_validate_their_settings(tmp_path):
    assert sorted(TRAIN_ORDER) == sorted(RECIPES)
    assert {RECIPES[f"{m}-l{lam}"]["lambda_fiber"] for m in ("cfm", "cflow") for lam in (0, 1, 10, 100)} == {
        0.0, 1.0, 10.0, 100.0,
    }  # fmt: skip
    assert RECIPES["featinv-mnist"]["layer"] == "features" and RECIPES["featinv-mnist"]["p_uncond"] == 0.15
    recipe, cfg = R.resolve_recipe("cfm-l10", {"lambda_fiber": 3.0}, {"steps": 7})
    assert recipe["lambda_fiber"] == 3.0 and cfg.steps == 7 and recipe["arch"]["width"] == 512
    h = R.recipe_hash(recipe, cfg)
    assert h == R.recipe_hash(recipe, TrainConfig(**{**cfg.__dict__, "threads": 1}))  # threads do not count
    assert h != R.recipe_hash(recipe, TrainConfig(**{**cfg.__dict__, "steps": 8}))
    assert h != R.recipe_hash(recipe, TrainConfig(**{**cfg.__dict__, "cooldown": 3}))
    assert h != R.recipe_hash(recipe, TrainConfig(**{**cfg.__dict__, "restarts": ((5, {"lr": 1e-4}),)}))
    # Pinned: a changed hash orphans every checkpoint already trained with the recipe (a new
    # TrainConfig field at its default did that once). Change a pin only with the recipe itself.
    pinned = {"svae-mnist": "07b27917dd12ecd1", "cfm-l0": "1bac7d01731a6577", "featinv-mnist": "bb82154891bd0592"}
    assert {n: R.recipe_hash(RECIPES[n], RECIPES[n]["train"]) for n in pinned} == pinned
    assert R.resolve_recipe("cinn-mnist-cnn", overrides={"steps": 5})[0]["ae"]["train"]["steps"] == 5
    for bad, match in [({"nope": 1}, "no setting"), ({"kind": "svae"}, "cannot be changed")]:
        with pytest.raises(ValueError, match=match):
            R.resolve_recipe("svae-mnist", bad)
    with pytest.raises(ValueError, match="unknown training override"):
        R.resolve_recipe("svae-mnist", overrides={"stepz": 1})
    with pytest.raises(ValueError, match="no recipe named"):
        R.train("cfm-l3", root=tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# sampling: per-sample determinism, the prior's state space, subject checks


@pytest.mark.parametrize("name", ["t-cfm", "t-inn"])
def test_latent_models_sample_per_sample_and_return_the_priors_states(trained, colour_pairs, name):
    d = str(trained["root"] / name)
    model = load_trained(d)
    method = TrainedMethod(d)
    subject = colour_pairs.subject
    q = colour_pairs.eval_images[:1]
    prior = model.output_prior()
    a = fs.sample_fiber(subject, q, prior, n=4, method=method, seed=3, batch_size=1, progress=False, metric="rms")
    b = fs.sample_fiber(subject, q, prior, n=4, method=method, seed=3, batch_size=4, progress=False, metric="rms")
    assert (a.images - b.images).abs().max() <= 1e-5 and a.seeds == b.seeds
    c = fs.sample_fiber(subject, q, prior, method=method, seeds=[a.seeds[2]], progress=False)
    assert (c.images[0] - a.images[2]).abs().max() <= 1e-5
    assert (a.states[0] - a.states[1]).abs().max() > 1e-4  # different seeds, different samples
    assert a.counts["prior_forwards"] == (4 if name == "t-cfm" else 1)  # the trained network's passes
    assert a.config["method"]["architecture"] in ("ConditionalFlowMatching", "ConditionalINN")
    # a latent prior over the same VAE with another normalisation gets its own (exact) states
    codec = model.codec
    other = LatentPrior(
        lambda z, t: torch.zeros_like(z), fs.VPSchedule.linear(), "eps", latent_shape=(4,), decoder=codec.vae.decode,
        image_shape=(3, 28, 28), shift=torch.full((4,), 0.5), scale=torch.full((4,), 2.0),
    )  # fmt: skip
    o = fs.sample_fiber(subject, q, other, n=4, method=method, seed=3, progress=False)
    assert (o.images - a.images).abs().max() <= 1e-5
    # a prior over another VAE is refused with a message that names the right prior
    foreign = LatentPrior(
        lambda z, t: torch.zeros_like(z), fs.VPSchedule.linear(), "eps", latent_shape=(4,),
        decoder=ConvVAE(latent_dim=4, width=8).decode, image_shape=(3, 28, 28),
    )  # fmt: skip
    with pytest.raises(ValueError, match="another latent space"):
        fs.sample_fiber(subject, q, foreign, n=2, method=method, progress=False)


def test_featinv_samples_per_sample_on_a_pixel_prior(trained):
    d = str(trained["root"] / "t-featinv")
    subj, imgs = trained["subject8"], trained["images8"]
    prior = fs.CallablePrior(tiny_unet(), fs.VPSchedule.linear(), "eps", state_shape=(1, 8, 8), name="toy-prior")
    m = TrainedMethod(d)
    a = fs.sample_fiber(subj, imgs[:1], prior, n=3, method=m, seed=1, batch_size=1, progress=False)
    b = fs.sample_fiber(subj, imgs[:1], prior, n=3, method=m, seed=1, batch_size=3, progress=False)
    assert (a.images - b.images).abs().max() <= 1e-4
    assert a.images.abs().max() <= 1.0 and a.counts["prior_forwards"] == 3 * 2  # 3 steps, CFG doubles
    one = TrainedMethod(d, steps=2, guidance_scale=1.0)
    assert fs.sample_fiber(subj, imgs[:1], prior, n=1, method=one, progress=False).counts["prior_forwards"] == 2
    # the subject it was trained on, and nothing else
    with pytest.raises(ValueError, match="trained on φ = TinyCNN@conv"):
        fs.sample_fiber(fs.load_subject(TinyCNN(), "pool"), imgs[:1], prior, n=1, method=m, progress=False)


def test_svae_fibers_keep_the_task_code_and_its_head_is_a_subject(trained):
    root = str(trained["root"])
    model = load_trained("svae-mnist", root=root)
    x = trained["images28"][:2]
    noise = fs.SampleNoise([5, 6])
    out, evals = model.sample(x, noise)
    net = model.net
    assert out.shape == (2, 1, 28, 28) and evals == 2
    g = [torch.Generator().manual_seed(s) for s in (5, 6)]
    nuis = torch.stack([torch.randn(net.nuisance_dims, generator=gi) for gi in g])
    with torch.no_grad():
        assert torch.allclose(out, net.vae.decode(torch.cat([net.task(x), nuis], 1)), atol=1e-6)
    head = fs.load_subject("trained:svae-mnist", root=root)
    assert head.name == "trained:svae-mnist" and head(x, (-1, 1)).shape == (2, 10)
    assert fs.load_subject("trained:svae-mnist", "task", root=root)(x, (-1, 1)).shape == (2, 2)
    prior = model.output_prior()
    res = fs.sample_fiber(head, x[:1], prior, n=3, method=TrainedMethod("svae-mnist", root=root), progress=False)
    assert res.fiber_loss.shape == (3,) and res.images.shape == (3, 1, 28, 28)
    rec = json.loads((trained["root"] / "svae-mnist" / "training.json").read_text())
    assert {"head_accuracy", "fiber_rms_own_head", "fiber_rms_reference"} <= set(rec["eval"])
    with pytest.raises(ValueError, match="no classifier of its own"):
        fs.load_subject(f"trained:{trained['root'] / 't-cfm'}")


def test_untrained_models_fail_early_with_the_training_command(tmp_path):
    with pytest.raises(NotTrainedError, match="fiberscope trained train cfm-l10"):
        TrainedMethod("cfm-l10", root=str(tmp_path))
    with pytest.raises(ValueError, match="model must name"):
        TrainedMethod("")
    with pytest.raises(NotTrainedError, match="fiberscope trained train"):
        load_trained("svae-mnist", root=tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# the bench and the CLI


def test_bench_runs_a_trained_model_on_its_own_pair_only(trained, tmp_path):
    from fiberscope.bench import run_bench
    from fiberscope.methods import method_from_spec

    d = str(trained["root"] / "t-featinv")
    assert isinstance(method_from_spec({"name": "trained", "model": d, "pairs": []}), TrainedMethod)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(30, 1, 8, 8, generator=g) * 2 - 1
    labels = torch.randint(0, 6, (30,), generator=g)
    prior = fs.CallablePrior(tiny_unet(), fs.VPSchedule.linear(), "eps", state_shape=(1, 8, 8), name="toy-prior")
    cfg = {
        "methods": {
            "dps": {"name": "dps", "steps": 3, "scale": 0.2},
            "featinv": {"name": "trained", "model": d, "pairs": [["toy-prior", "tiny-cnn@conv"]]},
        },
        "priors": ["toy-prior"],
        "subjects": ["tiny-cnn@conv", "tiny-cnn@head"],
        "queries": 2, "seeds": [0], "n": 2, "real": 10, "references": [], "metric": "rms",
        "datasets": {"toy-prior": "toy", "tiny-cnn": "toy"},
        "reference": {"toy": "toy-ref"}, "classifier": {"toy": "toy-ref"},
    }  # fmt: skip
    objects = {"toy-prior": prior, "tiny-cnn": TinyCNN(), "toy-ref": TinyCNN(seed=1)}
    res = run_bench(cfg, tmp_path, objects=objects, data={"toy": (images, labels)}, progress=False)
    ran = {(r["pair_key"], r["method"]) for r in res["rows"]}
    assert ran == {("toy-prior__tiny-cnn@conv", "dps"), ("toy-prior__tiny-cnn@conv", "featinv"),
                   ("toy-prior__tiny-cnn@head", "dps")}  # fmt: skip
    row = next(r for r in res["rows"] if r["method"] == "featinv")
    assert row["method_config"]["train_seconds"] > 0 and row["fiber_loss"]["rms"][0] > 0
    md = (tmp_path / "bench.md").read_text()
    assert "training (min)" in md and "s / fiber" in md and "| `featinv` |" in md


def test_cli_lists_shows_and_samples_a_trained_model(trained, tmp_path, capsys):
    from fiberscope.cli import main

    root = str(trained["root"])
    assert main(["trained", "list", "--root", root]) == 0
    out = capsys.readouterr().out
    assert "svae-mnist" in out and "min" in out and "not trained" in out
    assert main(["trained", "show", "svae-mnist", "--root", root]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 2
    rc = main(["trained", "sample", "svae-mnist", "--root", root, "--test-index", "0", "3", "--n", "2",
               "--out", str(tmp_path / "f"), "-q"])  # fmt: skip
    assert rc == 0 and (tmp_path / "f" / "test00003" / "record.json").exists()
    assert "fiber loss" in capsys.readouterr().out
    rc = main(["trained", "sample", "svae-mnist", "--root", root, "--test-index", "0", "--n", "2", "--subject",
               "builtin:mnist-cnn", "--layer", "logits", "--out", str(tmp_path / "g"), "-q"])  # fmt: skip
    assert rc == 0 and json.loads((tmp_path / "g" / "record.json").read_text())["config"]["subject"]["name"] == (
        "builtin:mnist-cnn"
    )
    assert main(["trained", "train", "nope", "--root", root]) == 2
    assert "no recipe named" in capsys.readouterr().err
    assert main(["trained", "sample", "cfm-l10", "--root", str(tmp_path), "--test-index", "0"]) == 7  # not trained
    assert "fiberscope trained train cfm-l10" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_trains_a_real_recipe_end_to_end(tmp_path, capsys):
    """`fiberscope trained train svae-mnist --steps 2` on the real MNIST training split (needs it cached)."""
    from fiberscope.cli import main
    from fiberscope.data.mnist import find_idx_dir

    if find_idx_dir("mnist", "train") is None:
        pytest.skip("the MNIST training split is not cached here (fiberscope data fetch mnist)")
    root = str(tmp_path)
    assert main(["trained", "train", "svae-mnist", "--steps", "2", "--threads", "1", "--root", root, "-q"]) == 0
    rec = json.loads((Path(root) / "svae-mnist" / "training.json").read_text())
    assert rec["command"] == "fiberscope trained train svae-mnist --steps 2" and rec["steps"] == 2
    assert main(["trained", "train", "svae-mnist", "--steps", "2", "--root", root]) == 0  # already trained
    assert "already trained" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------------
# the old names ("baseline" meant these models too, until issue 22): they work for one release and say so


def test_the_old_spellings_of_trained_models_still_work_and_say_so(trained, tmp_path, capsys, monkeypatch):
    import fiberscope.baselines as old_package
    from fiberscope.cli import main
    from fiberscope.trained.common import trained_root

    root = str(trained["root"])
    with pytest.warns(DeprecationWarning, match=r"fiberscope\.baselines\.TrainedBaseline has moved to "):
        assert old_package.TrainedBaseline is TrainedMethod
    with pytest.warns(DeprecationWarning, match=r"fiberscope\.trained\.model\.load_trained"):
        from fiberscope.baselines.model import load_baseline
    assert load_baseline is load_trained
    with pytest.warns(DeprecationWarning, match="spelled trained:svae-mnist now"):
        assert fs.load_subject("baseline:svae-mnist", root=root).name == "trained:svae-mnist"
    # the command group's old name runs it, hidden from --help, with one line on stderr
    assert main(["baselines", "show", "svae-mnist", "--root", root]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)["steps"] == 2
    assert "fiberscope: deprecated: `fiberscope baselines` is now `fiberscope trained`" in cap.err
    assert len(cap.err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        main(["--help"])
    listed = capsys.readouterr().out
    assert "trained invariance models" in listed and "    baselines" not in listed
    # the old environment variable and cache directory are still read
    monkeypatch.delenv("FIBERSCOPE_TRAINED_DIR", raising=False)
    monkeypatch.setenv("FIBERSCOPE_BASELINES_DIR", str(tmp_path / "old"))
    with pytest.warns(DeprecationWarning, match=r"use \$FIBERSCOPE_TRAINED_DIR"):
        assert trained_root() == tmp_path / "old"
    monkeypatch.delenv("FIBERSCOPE_BASELINES_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".cache" / "fiberscope" / "baselines").mkdir(parents=True)
    with pytest.warns(DeprecationWarning, match="move it there"):
        assert trained_root() == tmp_path / ".cache" / "fiberscope" / "baselines"
    (tmp_path / ".cache" / "fiberscope" / "trained").mkdir()
    assert trained_root() == tmp_path / ".cache" / "fiberscope" / "trained"
