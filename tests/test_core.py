"""sample_fiber end to end on a tiny diffusers UNet: determinism, gradients, errors, results."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import fiberscope as fs
from conftest import TinyCNN
from fiberscope.guidance.base import FiberObjective


def _query(seed=1, shape=(1, 1, 8, 8)):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


FAST = dict(steps=6, inner_steps=2, lr=0.05, gamma=1.0)


def test_same_seed_same_sample_at_any_batch_size(tiny_prior):
    subject = TinyCNN()
    q = _query()
    m = fs.NDTM(**FAST, sampler="ddim", eta=0.5, per_timestep_target=True)
    a = fs.sample_fiber(subject, q, tiny_prior, n=4, method=m, seed=3, batch_size=1, progress=False)
    b = fs.sample_fiber(subject, q, tiny_prior, n=4, method=m, seed=3, batch_size=4, progress=False)
    assert a.seeds == b.seeds
    assert (a.images - b.images).abs().max() <= 1e-4
    # one sample regenerated alone from its recorded seed
    c = fs.sample_fiber(subject, q, tiny_prior, method=m, seeds=[a.seeds[2]], progress=False)
    assert (c.images[0] - a.images[2]).abs().max() <= 1e-4
    # different seeds give different samples
    d = fs.sample_fiber(subject, q, tiny_prior, n=4, method=m, seed=4, progress=False)
    assert (d.images - a.images).abs().max() > 1e-2
    assert len(set(a.seeds)) == 4


def test_ancestral_rescaled_and_sdedit_paths_are_deterministic(tiny_prior):
    q = _query()
    m = fs.NDTM(
        steps=25,
        inner_steps=1,
        lr=0.05,
        gamma=1.0,
        sampler="ancestral",
        ancestral_rescaled=True,
        init="sdedit",
        strength=0.6,
        w_control="ddim",
        w_score="ddpm",
        warm_start=True,
    )
    a = fs.sample_fiber(TinyCNN(), q, tiny_prior, n=2, method=m, batch_size=1, progress=False)
    b = fs.sample_fiber(TinyCNN(), q, tiny_prior, n=2, method=m, batch_size=2, progress=False)
    assert (a.images - b.images).abs().max() <= 1e-4
    assert torch.isfinite(a.images).all()


def test_gradients_reach_the_control(tiny_prior):
    q = _query()
    subject = fs.load_subject(TinyCNN())
    obj = FiberObjective(tiny_prior, subject, q)
    x = torch.randn(3, 1, 8, 8)
    u = torch.zeros_like(x, requires_grad=True)
    d = tiny_prior.denoise(x + 1.0 * u, 400.0)
    loss = obj.loss(d.x0.clamp(-1, 1))
    (g,) = torch.autograd.grad(loss.sum(), u)
    assert torch.isfinite(g).all()
    assert (g.flatten(1).norm(dim=1) > 0).all()  # every sample's control gets a gradient


def test_guidance_lowers_the_fiber_loss(tiny_prior):
    q = _query()
    ung = fs.sample_fiber(TinyCNN(), q, tiny_prior, n=4, method=fs.Unguided(steps=10), progress=False)
    ndtm = fs.sample_fiber(
        TinyCNN(),
        q,
        tiny_prior,
        n=4,
        progress=False,
        method=fs.NDTM(steps=10, inner_steps=5, lr=0.2, gamma=2.0, lr_schedule="constant"),
    )
    assert ndtm.fiber_loss.mean() < 0.5 * ung.fiber_loss.mean()


def test_counts_match_the_algorithm(tiny_prior):
    q = _query()
    K, N = 6, 2
    m = fs.NDTM(steps=K, inner_steps=N, lr=0.05, gamma=[(0, 0, 1000, 500), (1, 1, 500, 0)], per_timestep_target=True)
    out = fs.sample_fiber(TinyCNN(), q, tiny_prior, n=2, method=m, progress=False)
    guided = sum(1 for t in m.times(tiny_prior) if m.gamma_at(t) > 0)
    # per sample: K target forwards, N guided forwards (+ backwards) per guided step, K final forwards
    assert out.counts["prior_forwards"] == K + K + N * guided
    assert out.counts["prior_backwards"] == N * guided
    assert out.counts["subject_backwards"] == N * guided
    # subject: K per-step targets, N per guided step, the final features, plus the query once per run
    assert out.counts["subject_forwards"] == K + N * guided + 1 + 1 / 2


def test_subject_without_gradient_fails_before_sampling(tiny_prior):
    calls = []

    def blocked(x):
        with torch.no_grad():
            return x.flatten(1)[:, :4] * 2

    with pytest.raises(fs.SubjectGradientError, match="no gradient"):
        fs.sample_fiber(
            blocked, _query(), tiny_prior, n=2, method=fs.NDTM(**FAST), progress=False, callback=calls.append
        )
    assert calls == []  # refused before the first denoising step

    def argmax_subject(x):
        return (x.flatten(1) > 0).float() + 0 * x.flatten(1)

    with pytest.raises(fs.SubjectGradientError, match="all-zero"):
        fs.sample_fiber(argmax_subject, _query(), tiny_prior, n=2, method=fs.NDTM(**FAST), progress=False)


def test_nan_in_the_loss_is_reported_with_the_step(tiny_prior):
    def nan_late(x):
        f = x.flatten(1)[:, :4]
        return f / (f.detach().abs().sum() > 1e9).float()  # 0/0 → NaN, but with a gradient path

    class Flaky(torch.nn.Module):
        calls = 0

        def forward(self, x):
            Flaky.calls += 1
            f = x.flatten(1)[:, :4]
            return f * torch.nan if Flaky.calls > 3 else f

    with pytest.raises(fs.GuidanceError, match=r"step \d+ \(t=\d+"):
        fs.sample_fiber(Flaky(), _query(), tiny_prior, n=2, method=fs.NDTM(**FAST), progress=False)
    del nan_late


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(steps=0), "steps"),
        (dict(steps=2.5), "steps"),
        (dict(inner_steps=-1), "inner_steps"),
        (dict(gamma=[(1, 2, 3)]), "gamma"),
        (dict(gamma=[(1, 2, 100, 500)]), "t_start < t_end"),
        (dict(gamma="lots"), "gamma"),
        (dict(gamma=-1.0), "gamma"),
        (dict(gamma=[]), "gamma"),
        (dict(lr=0), "lr"),
        (dict(w_control="sometimes"), "w_control"),
        (dict(sampler="heun"), "sampler"),
        (dict(variance="tiny"), "variance"),
        (dict(output="both"), "output"),
        (dict(strength=0), "strength"),
        (dict(lr_schedule="cos"), "'cosine'"),
        (dict(init_control="warm"), "init_control"),
        (dict(warm_start=True, init_control="random"), "causal_zero"),
    ],
)
def test_bad_settings_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fs.NDTM(**kwargs)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="paper-colormnist"):
        fs.NDTM.preset("paper-imagenet-dino")
    with pytest.raises(ValueError, match="unknown NDTM setting"):
        fs.NDTM.preset("paper-chexpert", inner_step=3)


def test_bad_query_names_the_problem(tiny_prior):
    m = fs.NDTM(**FAST)
    with pytest.raises(ValueError, match=r"shape \(1, 16, 16\)"):
        fs.sample_fiber(TinyCNN(), torch.zeros(1, 1, 16, 16), tiny_prior, n=1, method=m, progress=False)
    with pytest.raises(ValueError, match=r"data range is \[-1, 1\]"):
        fs.sample_fiber(TinyCNN(), torch.full((1, 1, 8, 8), 200.0), tiny_prior, n=1, method=m, progress=False)
    with pytest.raises(ValueError, match="NaN"):
        fs.sample_fiber(TinyCNN(), torch.full((1, 1, 8, 8), float("nan")), tiny_prior, n=1, method=m, progress=False)
    with pytest.raises(ValueError, match="n must be"):
        fs.sample_fiber(TinyCNN(), _query(), tiny_prior, n=0, method=m, progress=False)
    with pytest.raises(ValueError, match="metric"):
        fs.sample_fiber(TinyCNN(), _query(), tiny_prior, n=1, method=m, progress=False, metric="l3")


def test_uint8_array_and_file_queries_are_converted(tiny_prior, tmp_path):
    from PIL import Image

    arr = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)  # RGB, wrong size
    Image.fromarray(arr).save(tmp_path / "q.png")
    out = fs.sample_fiber(TinyCNN(), tmp_path / "q.png", tiny_prior, n=1, method=fs.Unguided(steps=2), progress=False)
    assert out.query.shape == (1, 1, 8, 8) and out.query.min() >= -1 and out.query.max() <= 1


def test_result_fields_and_save(tiny_prior, tmp_path):
    out = fs.sample_fiber(TinyCNN(), _query(), tiny_prior, n=3, method=fs.NDTM(**FAST), progress=False, layer="pool")
    assert out.images.shape == (3, 1, 8, 8) and out.features.shape == (3, 32) and out.target.shape == (1, 32)
    assert out.fiber_loss.shape == (3,) and out.metric == "sq_l2"
    assert torch.allclose(out.fiber_loss, ((out.features - out.target) ** 2).sum(1))
    assert set(out.losses) >= {"sq_l2", "l2", "rms", "l1", "cosine"}
    assert out.config["method"]["method"] == "ndtm" and out.config["method"]["inner_steps"] == 2
    assert out.config["subject"]["layer"] == "pool"
    assert out.timings["total"] >= out.timings["sampling"] > 0
    assert out.counts["prior_backwards"] > 0
    d = out.save(tmp_path / "res")
    names = {p.name for p in d.iterdir()}
    assert {"record.json", "samples.npz", "grid.png", "query.png", "sample_000.png"} <= names
    rec = json.loads((d / "record.json").read_text())
    assert rec["fiber_loss"] == pytest.approx(out.fiber_loss.tolist())
    back = fs.FiberSamples.load(d)
    assert torch.equal(back.images, out.images) and back.seeds == out.seeds
    assert len(out.to_pil()) == 3


def test_layer_dict_weights_the_squared_loss(tiny_prior):
    net = TinyCNN()
    subject = fs.load_subject(net, layer={"pool": 1.0, "head": 4.0})
    x = torch.randn(2, 1, 8, 8)
    f = subject(x)
    assert f.shape == (2, 32 + 6)
    assert torch.allclose(f[:, 32:], 2.0 * net(x))


def test_unknown_layer_suggests_names():
    with pytest.raises(ValueError, match="fiberscope layers"):
        fs.load_subject(TinyCNN(), layer="conv9")
