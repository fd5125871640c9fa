"""Defaults that work on any prior (issue 21): scale-free AutoNDTM, per-prior resolution, the not-guided
warning, tolerance / in_fiber and resampling of misses."""

from __future__ import annotations

import dataclasses
import shutil
import warnings

import pytest
import torch

import fiberscope as fs
from fiberscope.guidance.auto import AutoNDTM, NotGuidedWarning, polyak_step
from fiberscope.guidance.ndtm import resolve_method
from fiberscope.priors import GaussianMixturePrior


def _mixture(scale: float, seed: int = 0):
    """A 16-d Gaussian mixture whose data scale is ``scale`` and a linear subject with 3 features."""
    g = torch.Generator().manual_seed(seed)
    prior = GaussianMixturePrior(torch.randn(4, 16, generator=g) * scale, stds=0.3 * scale)
    w = torch.randn(16, 3, generator=g)
    query = prior.sample_data(1, g)
    return prior, (lambda x: 5 * x @ w), query


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_default_reaches_the_fiber_at_any_data_scale(scale):
    prior, subject, q = _mixture(scale)
    ung = fs.sample_fiber(subject, q, prior, n=8, method=fs.Unguided(steps=50), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotGuidedWarning)  # the default must not warn
        out = fs.sample_fiber(subject, q, prior, n=8, progress=False)
    assert out.config["method_defaults"]["source"] == "scale-free"
    assert out.config["method"]["method"] == "auto"
    assert float(out.fiber_loss.mean()) <= float(ung.fiber_loss.mean()) / 50
    # fewer steps: the same settings still reach the fiber (nothing depends on K)
    short = fs.sample_fiber(subject, q, prior, n=8, method=fs.NDTM(steps=20), progress=False)
    assert float(short.fiber_loss.mean()) <= float(ung.fiber_loss.mean()) / 50
    # the unguided reference measured within the run is of the unguided run's order
    ref = out.config["unguided_reference"]
    assert 0.2 < ref / float(ung.fiber_loss.mean()) < 5


def test_absolute_settings_do_not_carry_over_and_say_so():
    """The paper's absolute lr at data scale 100: not guided, and a NotGuidedWarning names what to raise."""
    prior, subject, q = _mixture(100.0)
    m = fs.NDTM(steps=30, inner_steps=2, lr=2e-3, gamma=1.0)
    with pytest.warns(NotGuidedWarning, match="raise lr"):
        out = fs.sample_fiber(subject, q, prior, n=4, method=m, progress=False)
    assert out.warnings and "did not guide" in out.warnings[0]
    assert out.config["method_defaults"]["source"] == "given"


def test_polyak_step_is_scale_equivariant():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, generator=g)
    loss, grad = x.norm(dim=1), x / x.norm(dim=1, keepdim=True)
    one = torch.ones(3)
    a = polyak_step(loss, grad, one, 0.5, 10.0)
    # data × 100: the loss keeps its value, the gradient shrinks by 100, the state's scale grows by 100
    b = polyak_step(loss, grad / 100, 100 * one, 0.5, 10.0)
    torch.testing.assert_close(b, 100 * a)
    # features × 7: loss and gradient grow alike, the step is unchanged
    torch.testing.assert_close(polyak_step(7 * loss, 7 * grad, one, 0.5, 10.0), a)
    capped = polyak_step(loss, grad, one, 1.0, 0.01)
    assert torch.allclose(capped.pow(2).mean(1).sqrt(), torch.full((3,), 0.01))


def test_resolution_per_prior():
    gauss = fs.GaussianPrior(dim=2)
    m, how = resolve_method(None, gauss)
    assert isinstance(m, AutoNDTM) and how["source"] == "scale-free"
    # the scale-free default wins on the zoo too (docs/defaults.md): a registered preset no longer is the default
    m, how = resolve_method(None, "builtin:mnist-ddpm")
    assert isinstance(m, AutoNDTM) and how == {"source": "scale-free", "preset": None, "given": []}
    m, how = resolve_method(fs.NDTM(steps=12, inner_steps=1), "builtin:mnist-ddpm")  # settings AutoNDTM shares
    assert isinstance(m, AutoNDTM) and (m.steps, m.inner_steps) == (12, 1) and how["given"] == ["inner_steps", "steps"]
    m, how = resolve_method(fs.NDTM(steps=12, lr=0.02), "builtin:mnist-ddpm")  # tuning NDTM itself: the preset fills
    assert isinstance(m, fs.NDTM) and how == {"source": "preset", "preset": "builtin-mnist", "given": ["lr", "steps"]}
    assert (m.steps, m.lr, m.inner_steps) == (12, 0.02, fs.NDTM.preset("builtin-mnist").inner_steps)
    m, how = resolve_method(fs.NDTM(lr=0.1), gauss)  # tuning NDTM itself: its own defaults for the rest
    assert isinstance(m, fs.NDTM) and m.lr == 0.1 and how["source"] == "given" and not m.open_settings
    m, how = resolve_method(fs.NDTM.preset("builtin-fashion"), gauss)
    assert how["preset"] == "builtin-fashion" and m == fs.NDTM.preset("builtin-fashion")
    assert fs.NDTM(steps=5).open_settings == fs.NDTM().open_settings - {"steps"}
    copy = dataclasses.replace(fs.NDTM(steps=5), lr=0.3)  # every setting passed: none left open, NDTM's defaults
    assert not copy.open_settings and (copy.steps, copy.lr, copy.inner_steps) == (5, 0.3, fs.NDTM().inner_steps)
    assert resolve_method(fs.DPS(steps=5), gauss)[1]["source"] == "given"
    flow = fs.GaussianPrior(dim=2, schedule=fs.FlowSchedule())
    m, _ = resolve_method(None, flow)  # the stochastic DDIM step on flows too (kept the class more often than Euler)
    assert (m.sampler, m.eta) == ("ddim", 1.0)


def test_auto_phases_and_settings():
    m = AutoNDTM(steps=10, start=0.6, polish_start=0.3, inner_steps=1, polish_steps=3)
    assert [m.plan(t, 1000.0) for t in (900.0, 600.0, 301.0, 300.0, 0.0)] == [
        (0, 0.5),
        (1, 0.5),
        (1, 0.5),
        (3, 1.0),
        (3, 1.0),
    ]
    assert AutoNDTM(inner_steps=2, polish_steps=0).plan(0.0, 1000.0) == (2, 0.5)  # no polish: damped steps to the end
    for bad, match in [
        ({"rho": 0}, "rho must be"),
        ({"rho": 1.5}, "rho must be"),
        ({"start": 0}, "start must be"),
        ({"polish_start": 2}, "polish_start must be"),
        ({"polish_steps": -1}, "polish_steps must be"),
        ({"clip": (1, -1)}, "clip must be"),
        ({"output": "final"}, "output must be"),
    ]:
        with pytest.raises(ValueError, match=match):
            AutoNDTM(**bad)


def test_auto_costs_what_its_phases_say():
    """Forward-equivalents per sample: K prior steps + 6 per Polyak step (prior and subject, forward and backward)."""
    prior, subject, q = _mixture(1.0)
    # grid 950, 900 … 0: 15 steps ≤ 700, 5 of them ≤ 200
    m = AutoNDTM(steps=20, inner_steps=2, polish_steps=3, project_steps=0)
    t_max = float(prior.schedule.num_train_timesteps)
    polyak = sum(m.plan(t, t_max)[0] for t in m.times(prior))
    assert polyak == 10 * 2 + 5 * 3
    out = fs.sample_fiber(subject, q, prior, n=2, method=m, batch_size=2, progress=False)
    # + the final decoding's φ (1) and the query's φ, counted once and shared by the 2 samples (0.5)
    assert out.counts["forward_equivalents"] == pytest.approx(20 + 6 * polyak + 1 + 0.5)


def test_tolerance_marks_and_resampling_redraws(tmp_path):
    prior, subject, q = _mixture(1.0, seed=3)
    m = AutoNDTM(steps=8, inner_steps=1)
    first = fs.sample_fiber(subject, q, prior, n=6, method=m, seed=5, progress=False)
    tol = float(first.fiber_loss.median())
    judged = fs.sample_fiber(subject, q, prior, n=6, method=m, seed=5, tolerance=tol, progress=False)
    assert judged.in_fiber.tolist() == (first.fiber_loss <= tol).tolist() and judged.tolerance == tol
    res = fs.sample_fiber(subject, q, prior, n=6, method=m, seed=5, tolerance=tol, resample=4, progress=False)
    acc = res.acceptance
    assert acc["acceptance_first_draw"] == pytest.approx(float((first.fiber_loss <= tol).float().mean()))
    assert acc["acceptance"] >= acc["acceptance_first_draw"] and acc["redrawn_samples"] >= 1
    assert acc["extra_cost"] > 0 and res.counts["forward_equivalents"] > first.counts["forward_equivalents"]
    assert (res.fiber_loss <= first.fiber_loss + 1e-6).all()  # a redraw only replaces a worse sample
    changed = [i for i in range(6) if res.seeds[i] != first.seeds[i]]
    assert changed
    # a redrawn sample's recorded seed regenerates it alone
    again = fs.sample_fiber(subject, q, prior, method=m, seeds=[res.seeds[changed[0]]], progress=False)
    torch.testing.assert_close(again.fiber_loss[0], res.fiber_loss[changed[0]])
    back = fs.FiberSamples.load(res.save(tmp_path / "r", pngs=False))
    assert back.acceptance == acc and back.in_fiber.tolist() == res.in_fiber.tolist()


def test_nn_tolerance_uses_the_nearest_real_image():
    prior, subject, q = _mixture(1.0, seed=4)
    bank = prior.sample_data(50, torch.Generator().manual_seed(9))
    bank = torch.cat([bank, q])  # the query itself is excluded
    res = fs.sample_fiber(
        subject, q, prior, n=2, method=AutoNDTM(steps=6), tolerance="nn", reference_images=bank, progress=False
    )
    nn_loss = fs.fiber_loss(subject(bank[:50]), subject(q), "sq_l2").min()
    assert res.tolerance == pytest.approx(float(nn_loss), rel=1e-5)
    assert res.config["tolerance"]["source"] == "nn"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tolerance": "near"}, "number or 'nn'"),
        ({"tolerance": "nn"}, "needs reference_images"),
        ({"tolerance": -1.0}, "≥ 0"),
        ({"resample": 2}, "needs a tolerance"),
        ({"tolerance": 1.0, "resample": 1000}, r"\[0, 100\]"),
    ],
)
def test_bad_tolerance_and_resample_name_the_fix(kwargs, match):
    prior, subject, q = _mixture(1.0)
    with pytest.raises(fs.errors.ParameterError, match=match):
        fs.sample_fiber(subject, q, prior, n=2, progress=False, **kwargs)


def test_mnist_ddpm_from_a_plain_diffusers_folder_gets_the_scale_free_default(tmp_path):
    """The zoo's weights copied to a folder of their own: no preset is known, the default still guides."""
    from fiberscope.data.mnist import load_mnist
    from fiberscope.zoo.registry import weights_dir

    folder = tmp_path / "my-mnist-ddpm"
    shutil.copytree(weights_dir("mnist-ddpm"), folder)
    imgs, _ = load_mnist("test")
    q = torch.tensor(imgs[:1]).float()[:, None] / 127.5 - 1
    prior = fs.load_prior(str(folder))
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotGuidedWarning)
        out = fs.sample_fiber("builtin:mnist-cnn", q, prior, n=2, method=fs.NDTM(steps=15), progress=False)
    assert out.config["method_defaults"]["source"] == "scale-free"
    # the unguided level over 8 samples (2 could both happen to be the query's digit)
    ung = fs.sample_fiber(
        "builtin:mnist-cnn", q, prior, n=8, seed=1, method=fs.Unguided(steps=15, eta=0.5), progress=False
    )
    assert float(out.fiber_loss.mean()) <= float(ung.fiber_loss.mean()) / 50


def test_cli_prints_the_defaults_in_fiber_count_and_the_not_guided_warning(tmp_path, capsys, monkeypatch):
    from audit_assets import make_assets
    from fiberscope.cli import main

    assets = make_assets(tmp_path / "assets")
    monkeypatch.setenv("FIBERSCOPE_ZOO_DIR", str(assets.zoo))
    out = tmp_path / "out"
    argv = ["sample", str(assets.queries[0]), "--subject", "builtin:mnist-cnn", "--prior", str(assets.prior)]
    argv += ["--n", "2", "--steps", "4", "--inner-steps", "1", "--lr", "1e-12", "--tolerance", "0", "--quiet"]
    capsys.readouterr()
    with pytest.warns(NotGuidedWarning):
        assert main([*argv, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "0 of 2 samples in the fiber" in text and "warning: ndtm did not guide" in text and "raise lr" in text
    assert "did not guide" in (out / "report.html").read_text()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGuidedWarning)
        assert (
            main([*argv[:6], "--n", "1", "--steps", "4", "--quiet", "--no-report", "--out", str(tmp_path / "o2")]) == 0
        )
    assert "the scale-free default" in capsys.readouterr().out


def test_cli_tolerance_nn_takes_a_folder_of_real_images_or_names_the_fix(tmp_path, capsys, monkeypatch):
    from audit_assets import make_assets
    from fiberscope.cli import main

    assets = make_assets(tmp_path / "assets")
    monkeypatch.setenv("FIBERSCOPE_ZOO_DIR", str(assets.zoo))
    argv = ["sample", str(assets.queries[0]), "--subject", "builtin:mnist-cnn", "--prior", str(assets.prior)]
    argv += ["--n", "2", "--steps", "4", "--quiet", "--no-report"]
    capsys.readouterr()
    # a prior that is not builtin: knows no data set of its own
    assert main([*argv, "--tolerance", "nn", "--out", str(tmp_path / "a")]) == 2
    assert "--tolerance nn needs --reference-images" in capsys.readouterr().err
    assert main([*argv, "--tolerance", "near", "--out", str(tmp_path / "b")]) == 2
    assert "must be a number" in capsys.readouterr().err
    assert main([*argv, "--tolerance", "nn", "--reference-images", "mnist", "--out", str(tmp_path / "c")]) == 2
    assert "its images are (1, 28, 28), the prior's (1, 8, 8)" in capsys.readouterr().err
    # the other queries are the real images: the query itself is excluded from its own neighbours
    bank = tmp_path / "bank"
    bank.mkdir()
    for q in assets.queries:
        (bank / q.name).write_bytes(q.read_bytes())
    out = tmp_path / "d"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGuidedWarning)
        assert main([*argv, "--tolerance", "nn", "--reference-images", str(bank), "--out", str(out)]) == 0
    assert "of 2 samples in the fiber (fiber loss sq_l2 ≤" in capsys.readouterr().out
    rec = fs.FiberSamples.load(out)
    assert rec.config["tolerance"]["source"] == "nn" and rec.in_fiber is not None
