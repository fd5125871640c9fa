"""Fiber losses (per sample, known values) and the paper's presets (values of method.md §1.5)."""

from __future__ import annotations

import math

import pytest
import torch

import fiberscope as fs
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


def test_paper_presets_hold_the_reference_values():
    im = fs.NDTM.preset("paper-imagenet-dinov2")
    assert (im.steps, im.inner_steps, im.lr, im.lr_schedule) == (200, 5, 2e-3, "linear")
    assert im.sampler == "ancestral" and im.ancestral_rescaled and im.variance == "learned_range"
    assert im.per_timestep_target and im.output == "x0" and im.loss == "l2_per_token"
    assert (im.w_control, im.w_score, im.w_terminal) == ("zero", "zero", 1.0)
    # the first anchor holding t wins: t = 800 belongs to (0, 0, 1000, 800), t = 600 to (3, 3, 800, 600)
    assert [im.gamma_at(t) for t in (900, 800, 700, 600, 500)] == pytest.approx(
        [0, 0, 3, 3, 0.5 + 0.25 * (1 + math.cos(math.pi / 4))]
    )
    assert im.gamma_at(200) == pytest.approx(0.5) and im.gamma_at(0) == pytest.approx(10)
    assert im.gamma_at(100) == pytest.approx(10 + 0.5 * (2 - 10) * (1 + math.cos(math.pi * 100 / 200)))  # = 6
    cx = fs.NDTM.preset("paper-chexpert")
    assert (cx.steps, cx.inner_steps, cx.sampler, cx.eta, cx.variance, cx.output) == (
        100,
        4,
        "ddim",
        0.5,
        "large",
        "state",
    )
    assert cx.gamma_at(600) == 0 and cx.gamma_at(0) == pytest.approx(10) and cx.per_timestep_target
    assert cx.reference_ddim and not im.reference_ddim
    cm = fs.NDTM.preset("paper-colormnist")
    assert (cm.steps, cm.inner_steps, cm.lr, cm.eta, cm.w_control, cm.clip) == (200, 10, 2e-2, 0.25, 3e-4, (-5.0, 5.0))
    assert cm.gamma_at(600) == 0 and cm.gamma_at(400) == 5 and not cm.per_timestep_target
    assert fs.NDTM.preset("paper-colormnist", gamma=10).gamma_at(499) == 10
    assert fs.NDTM.preset("paper-chexpert", steps=50).steps == 50


def test_gamma_anchor_semantics():
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
