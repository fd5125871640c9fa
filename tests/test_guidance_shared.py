"""What the guidance methods share (guidance/base.py): settings declared and checked once, one Adam
step, one clip range, one signature for ``run`` and the documented step-callback keys."""

from __future__ import annotations

import hashlib
import json
import warnings

import pytest
import torch

import fiberscope as fs
from fiberscope.guidance import METHODS
from fiberscope.guidance.base import SamplingSettings, adam_step, check_clip, clip_range
from fiberscope.guidance.presets import PRESETS

GRID_METHODS = [fs.NDTM, fs.Unguided, fs.DPS, fs.FreeDoM, fs.UGD, fs.MPGD, fs.TFG]
SHARED = ("steps", "sampler", "eta", "variance", "clip", "output", "init", "strength")


# ---- one Adam step, one clip range ------------------------------------------------------------------
def test_adam_step_is_torch_adam():
    g = torch.Generator().manual_seed(0)
    start = torch.randn(3, 4, generator=g)
    ours, m, v = start.clone(), torch.zeros(3, 4), torch.zeros(3, 4)
    ref = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([ref], lr=0.05, betas=(0.8, 0.99), eps=1e-6)
    for k in range(1, 6):
        grad = torch.randn(3, 4, generator=g)
        adam_step(ours, grad, m, v, k, 0.05, (0.8, 0.99), 1e-6)
        ref.grad = grad.clone()
        opt.step()
    torch.testing.assert_close(ours, ref.detach(), atol=1e-6, rtol=1e-6)


def test_clip_range_and_its_check():
    prior = fs.GaussianPrior(dim=2)
    assert clip_range("auto", prior) is None  # an analytic prior's data are unbounded
    prior.clip_range = (0.0, 1.0)
    assert clip_range("auto", prior) == (0.0, 1.0)
    assert clip_range((-5, 5), prior) == (-5.0, 5.0) and clip_range(None, prior) is None
    for ok in ("auto", None, (-1, 1), [0.0, 2.5]):
        check_clip(ok)
    for bad in ("none", (1, 0), (0, 1, 2), 3.0):
        with pytest.raises(ValueError, match="clip must be 'auto', None or"):
            check_clip(bad)


@pytest.mark.parametrize("cls", [*GRID_METHODS, fs.PixelOptimization])
def test_every_method_checks_clip_the_same_way(cls):
    with pytest.raises(ValueError, match="clip must be 'auto', None or"):
        cls(clip=(1.0, -1.0))


# ---- shared settings: declared once, checked once ---------------------------------------------------
@pytest.mark.parametrize("cls", GRID_METHODS)
def test_grid_methods_share_the_sampling_settings(cls):
    """The same setting means the same in every method: one declaration, one check."""
    assert issubclass(cls, SamplingSettings)
    names = list(cls.__dataclass_fields__)
    assert names[: len(SHARED)] == list(SHARED)
    for bad, msg in [
        (dict(output="final"), "output must be"),
        (dict(init="query"), "init must be"),
        (dict(sampler="heun"), "sampler must be"),
        (dict(variance="huge"), "variance must be"),
        (dict(strength=0.0), "strength must be"),
        (dict(steps=0), "steps must be"),
    ]:
        with pytest.raises(ValueError, match=msg):
            cls(**bad)


def test_loss_and_adam_settings_are_checked_once():
    for cls in (fs.NDTM, fs.DPS, fs.TFG, fs.PixelOptimization):
        with pytest.raises(ValueError, match="loss must be one of"):
            cls(loss="l3")
    for cls in (fs.NDTM, fs.PixelOptimization):
        with pytest.raises(ValueError, match=r"adam_betas must be two numbers in \[0, 1\)"):
            cls(adam_betas=(0.9, 1.0))


# The sha256 of each method's default config and of every preset's: bench and audit hash configs to
# decide which cached units to recompute, so a change here recomputes them (update the pins knowingly).
CONFIG_PINS = {
    "ndtm": "64db0f7568b07f09",
    "auto": "806926216160cc50",  # issue 21: AutoNDTM phases, η = 1, the projection (K=50, N=1, P=1, G=10)
    "unguided": "9b843ce7847b9297",
    "dps": "8a588362f52397f4",
    "freedom": "853215b81702e4f5",
    "ugd": "09653a2ffe887d32",
    "mpgd": "6e56ebbc1e05832e",
    "tfg": "5c2b3ffb57c3c0aa",
    "pixel_opt": "85789c2119910648",
    "presets": "cec346af08841111",
}


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def test_recorded_configs_are_stable():
    got = {name: _digest(cls().config()) for name, cls in METHODS.items()}
    got["presets"] = _digest({n: fs.NDTM.preset(n).config() for n in PRESETS})
    assert got == CONFIG_PINS


def test_ndtm_settings_are_keywords():
    assert fs.NDTM(20).steps == 20 and fs.NDTM(20).open_settings == fs.NDTM(steps=20).open_settings
    with pytest.raises(TypeError, match="keyword arguments"):
        fs.NDTM(50, 3, 0.05)


def test_presets_moved_from_ndtm_with_a_warning():
    from fiberscope.guidance import ndtm

    with pytest.warns(DeprecationWarning, match="fiberscope.guidance.presets"):
        assert ndtm.PRESETS is PRESETS is fs.guidance.PRESETS


# ---- run(prior, objective, x_init, noise, callback) and the callback keys ----------------------------
COMMON = {"step", "t", "x", "x0", "cost", "steps"}
EXTRA = {
    "ndtm": {"gamma", "lr", "w_control", "w_score"},
    "auto": {"polyak_steps", "rho"},
    "unguided": set(),  # no guidance, no step size: nothing beyond the common keys
    "dps": {"rho", "mu"},
    "freedom": {"rho", "mu"},
    "ugd": {"rho", "mu"},
    "mpgd": {"rho", "mu"},
    "tfg": {"rho", "mu"},
    "pixel_opt": {"lr"},
}


def _method(name: str) -> fs.GuidanceMethod:
    """A three-step configuration of each method (NDTM fully given, so that it runs as itself)."""
    if name == "ndtm":
        return fs.NDTM.preset("builtin-mnist", steps=3)
    return METHODS[name](iterations=3) if name == "pixel_opt" else METHODS[name](steps=3)


def _setup():
    prior = fs.GaussianPrior(shape=(1, 2, 2), mean=0.1, std=0.5)
    subject = fs.load_subject(lambda x: x.flatten(1)[:, :3])
    objective = fs.FiberObjective(prior, subject, torch.full((1, 1, 2, 2), 0.3))
    return prior, objective


@pytest.mark.parametrize("name", list(METHODS))
def test_callback_keys_are_the_documented_ones(name):
    m = _method(name)
    prior, objective = _setup()
    noise = fs.SampleNoise([1, 2])
    seen: list[dict] = []
    m.run(prior, objective, m.initial_state(prior, objective, noise), noise, seen.append)
    assert seen and all(set(info) == COMMON | EXTRA[name] for info in seen), (name, set(seen[0]))


def test_tfg_reports_rho_and_mu_not_gamma():
    prior, objective = _setup()
    m = fs.TFG(steps=4, rho=0.7, mu=0.0)
    noise = fs.SampleNoise([1])
    seen: list[dict] = []
    m.run(prior, objective, m.initial_state(prior, objective, noise), noise, seen.append)
    plan = m.plan(prior, m.times(prior), m.rule.prepare(prior, m.times(prior)))
    assert [i["rho"] for i in seen] == [p.rho for p in plan] and all(i["mu"] == 0 for i in seen)


@pytest.mark.parametrize("name", ["ndtm", "tfg", "unguided", "pixel_opt"])
def test_run_takes_noise_and_the_old_generator_keyword(name):
    m = _method(name)
    prior, objective = _setup()
    x = m.initial_state(prior, objective, fs.SampleNoise([5, 6]))
    by_position = m.run(prior, objective, x, fs.SampleNoise([7, 8])).sample
    by_keyword = m.run(prior, objective, x, noise=fs.SampleNoise([7, 8])).sample
    with pytest.warns(DeprecationWarning, match="now named noise"):
        old = m.run(prior, objective, x, generator=fs.SampleNoise([7, 8])).sample
    assert torch.equal(by_position, by_keyword) and torch.equal(by_position, old)
    with warnings.catch_warnings(), pytest.raises(TypeError, match="both noise and generator"):
        warnings.simplefilter("ignore", DeprecationWarning)
        m.run(prior, objective, x, fs.SampleNoise([7, 8]), generator=fs.SampleNoise([7, 8]))
