"""Fiber losses (per sample, known values) and what the NDTM presets mean (their values: guidance/presets.py)."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

import fiberscope as fs
from fiberscope.guidance.presets import PRESETS
from fiberscope.losses import LOSSES, fiber_loss


def test_loss_values():
    phi = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    y = torch.zeros(1, 2)
    assert fiber_loss(phi, y, "l2").tolist() == pytest.approx([5.0, math.sqrt(2)])
    assert fiber_loss(phi, y, "sq_l2").tolist() == pytest.approx([25.0, 2.0])
    assert fiber_loss(phi, y, "l1").tolist() == pytest.approx([7.0, 2.0])
    assert fiber_loss(phi, y, "rms").tolist() == pytest.approx([math.sqrt(12.5), 1.0])
    assert fiber_loss(phi, torch.tensor([[6.0, 8.0]]), "cosine").tolist() == pytest.approx(
        [0.0, 1 - 7 / (5 * math.sqrt(2))], abs=1e-6
    )
    logits = torch.tensor([[0.0, 0.0]])
    assert fiber_loss(logits, torch.tensor([[0.0, 0.0]]), "cross_entropy").item() == pytest.approx(math.log(2))
    p = torch.softmax(torch.tensor([2.0, 0.0]), 0)
    assert fiber_loss(torch.tensor([[2.0, 0.0]]), logits, "prob_dist").item() == pytest.approx(
        100 * 2 * (p[0] - 0.5).item()
    )


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_are_per_sample(name):
    g = torch.Generator().manual_seed(0)
    phi, y = torch.randn(5, 3, 2, generator=g), torch.randn(1, 3, 2, generator=g)
    batch = fiber_loss(phi, y, name)
    alone = torch.cat([fiber_loss(phi[i : i + 1], y, name) for i in range(5)])
    assert batch.shape == (5,) and torch.allclose(batch, alone)
    x = phi.clone().requires_grad_(True)
    fiber_loss(x, y, name)[2].backward()
    assert x.grad[[0, 1, 3, 4]].abs().max() == 0  # sample 2's loss touches only sample 2


def test_l2_gradient_is_finite_at_zero():
    x = torch.zeros(1, 3, requires_grad=True)
    fiber_loss(x, torch.zeros(1, 3), "l2").sum().backward()
    assert torch.isfinite(x.grad).all()


# ---- presets: what they mean, not what they hold (the values themselves: guidance/presets.py) ----
def test_presets_hold_only_what_differs_from_the_defaults():
    """A preset lists only the settings it changes; every other setting is NDTM's default."""
    defaults = {k: json.dumps(v) for k, v in fs.NDTM().config().items()}
    for name, p in PRESETS.items():
        for k, v in p["settings"].items():
            assert json.dumps(v) != defaults[k], f"{name}: {k}={v!r} restates NDTM's default"
        built = fs.NDTM.preset(name).config()
        assert {k for k, v in built.items() if json.dumps(v) != defaults[k]} == set(p["settings"]) - {"method"}
    assert fs.NDTM.preset("builtin-mnist") == fs.NDTM.preset("builtin-fashion")  # one setting, two names


def test_paper_presets_reproduce_the_reference_code():
    """Every paper-* preset takes the reference code's branches (docs/method.md): its terminal cost's
    reduction, and the rescaled ancestral schedule (valid at its K on a linear-β prior with T = 1000, as
    the paper's) or the reference's DDIM branch; a per-timestep target is always clipped."""
    linear = fs.GaussianPrior(dim=2)
    papers = [n for n in PRESETS if n.startswith("paper-")]
    assert len(papers) == 8
    for name in papers:
        m = fs.NDTM.preset(name)
        assert m.loss == "l2_per_token", name
        if m.sampler == "ancestral":
            assert m.ancestral_rescaled and float(m.rule.rescaled_betas(linear, m.steps).max()) < 1, name
        else:
            assert m.sampler == "ddim" and m.reference_ddim, name
        assert not m.per_timestep_target or m.clip is not None, name


def test_every_preset_anchors_cover_the_whole_trajectory():
    """γ anchors run from t = 1000 to 0 without gaps, so no step falls outside every anchor."""
    for name in PRESETS:
        anchors = sorted(fs.NDTM.preset(name).gamma, key=lambda a: -a[2])
        assert anchors[0][2] == 1000 and anchors[-1][3] == 0, name
        assert all(a[3] == b[2] for a, b in itertools.pairwise(anchors)), name


def test_constant_gamma_presets_take_a_level():
    """``gamma=<number>`` on a preset with ``gamma_start`` sets the level after the start: its own level
    gives the preset back, another level changes only the level."""
    grid = range(0, 1001, 10)
    constant = {n: p["gamma_start"] for n, p in PRESETS.items() if p.get("gamma_start") is not None}
    assert set(constant) == {"builtin-colormnist", "paper-colormnist", "paper-htru2"}
    for name, start in constant.items():
        m = fs.NDTM.preset(name)
        level = m.gamma_at(0)
        assert level > 0 and all(m.gamma_at(t) == (level if t < start else 0) for t in grid), name
        assert [fs.NDTM.preset(name, gamma=level).gamma_at(t) for t in grid] == [m.gamma_at(t) for t in grid]
        assert fs.NDTM.preset(name, gamma=2 * level).gamma_at(start - 1) == 2 * level
    # other presets take the number as a constant γ from the start
    assert fs.NDTM.preset("paper-chexpert", gamma=3).gamma_at(900) == 3


def test_zoo_presets_sample_with_their_priors_rule():
    """Each zoo prior's registered preset exists and uses the update rule the prior samples with."""
    from fiberscope.zoo.registry import ZOO

    priors = [e for e in ZOO.values() if e.kind == "prior"]
    assert priors and all(e.preset in PRESETS for e in priors)
    for e in priors:
        assert fs.NDTM.preset(e.preset).sampler == e.sampling["sampler"], e.name


def test_gamma_anchor_semantics():
    # the first anchor holding t wins: NDTM's default ramp is 0 at t = 800 and 3 at t = 600
    d = fs.NDTM()
    assert [d.gamma_at(t) for t in (900, 800, 700, 600, 500)] == pytest.approx(
        [0, 0, 3, 3, 0.5 + 0.25 * (1 + math.cos(math.pi / 4))]
    )
    assert d.gamma_at(200) == pytest.approx(0.5) and d.gamma_at(100) == pytest.approx(6) and d.gamma_at(0) == 10
    m = fs.NDTM(gamma=[(0, 4, 1000, 0)])
    assert m.gamma_at(1000) == 0 and m.gamma_at(0) == pytest.approx(4) and m.gamma_at(500) == pytest.approx(2)
    assert fs.NDTM(gamma=lambda t: t / 1000).gamma_at(250) == 0.25
    assert fs.NDTM(gamma=[(1, 1, 500, 100)]).gamma_at(700) == 0.0  # outside every anchor


def test_gamma_zero_skips_the_inner_loop():
    prior = fs.GaussianPrior(dim=2)
    out = fs.sample_fiber(
        lambda x: x[:, :1],
        torch.zeros(1, 2),
        prior,
        n=2,
        progress=False,
        method=fs.NDTM(steps=10, inner_steps=3, gamma=0.0),
    )
    assert out.counts["prior_backwards"] == 0 and out.counts["prior_forwards"] == 10
