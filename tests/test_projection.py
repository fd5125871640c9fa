"""The Gauss-Newton projection onto the fiber (fiberscope.guidance.projection) and AutoNDTM's use of it."""

from __future__ import annotations

import pytest
import torch

import fiberscope as fs
from fiberscope.guidance.projection import project_to_fiber


def _linear(dim: int, m: int, seed: int = 0) -> tuple[torch.Tensor, fs.Subject]:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(m, dim, generator=g, dtype=torch.float64)
    return A, fs.load_subject(lambda x: x @ A.T)


def test_one_step_lands_on_the_nearest_point_of_a_linear_fiber() -> None:
    """With cg_steps = rank J, one step is the pseudo-inverse's minimum-norm correction, per sample."""
    torch.set_default_dtype(torch.float64)
    try:
        dim, m = 12, 4
        A, subject = _linear(dim, m)
        prior = fs.GaussianPrior(dim=dim)
        query = torch.randn(1, dim, generator=torch.Generator().manual_seed(1))
        obj = fs.FiberObjective(prior, subject, query)
        x = torch.randn(3, dim, generator=torch.Generator().manual_seed(2))
        out, info = project_to_fiber(obj, x, steps=1, cg_steps=m, max_step=1e6)
        expected = x - (x @ A.T - query @ A.T) @ torch.linalg.pinv(A).T
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        assert float(info.residual_after.max()) < 1e-5 * float(info.residual_before.min())
    finally:
        torch.set_default_dtype(torch.float32)


def test_rows_are_independent_and_the_cap_and_clip_hold() -> None:
    dim, m = 10, 3
    A, subject = _linear(dim, m)
    A32 = A.float()
    subject = fs.load_subject(lambda x: torch.tanh(x @ A32.T))  # non-linear: several steps, backtracking
    prior = fs.GaussianPrior(dim=dim)
    obj = fs.FiberObjective(prior, subject, 0.3 * torch.ones(1, dim))
    x = torch.rand(4, dim, generator=torch.Generator().manual_seed(3)) * 2 - 1
    x[0, :3] = 1.0  # at the clip bound: held fixed
    clip = (-1.0, 1.0)
    out, info = project_to_fiber(obj, x, steps=6, cg_steps=3, max_step=0.2, clip=clip)
    assert out.min() >= -1 and out.max() <= 1
    torch.testing.assert_close(out[0, :3], x[0, :3])
    assert (info.residual_after <= info.residual_before).all()
    assert (info.residual_after < 0.1 * info.residual_before).any()
    assert (info.moved <= 6 * 0.2 + 1e-6).all()
    alone, _ = project_to_fiber(obj, x[2:3], steps=6, cg_steps=3, max_step=0.2, clip=clip)
    torch.testing.assert_close(alone[0], out[2], rtol=1e-5, atol=1e-6)


def test_a_step_that_raises_the_residual_is_not_taken() -> None:
    """|sin| has kinks the linearisation does not see: every sample still ends no worse than it started."""
    prior = fs.GaussianPrior(dim=6)
    subject = fs.load_subject(lambda x: torch.sin(5 * x).abs().sum(1, keepdim=True))
    obj = fs.FiberObjective(prior, subject, torch.full((1, 6), 0.1))
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(4))
    _, info = project_to_fiber(obj, x, steps=5, cg_steps=2, max_step=5.0)
    assert (info.residual_after <= info.residual_before + 1e-6).all()


def test_autondtm_projection_reaches_the_fiber_and_is_counted_and_recorded() -> None:
    prior = fs.GaussianPrior(dim=8)
    A = torch.randn(3, 8, generator=torch.Generator().manual_seed(5))
    subject = fs.load_subject(lambda x: x @ A.T)
    query = torch.randn(1, 8, generator=torch.Generator().manual_seed(6))
    kw = dict(steps=10, inner_steps=1, polish_steps=0, rho=0.05, start=0.3)  # weak guidance: far from the fiber
    plain = fs.sample_fiber(
        subject, query, prior, n=4, seed=0, method=fs.AutoNDTM(**kw, project_steps=0), progress=False
    )
    proj = fs.sample_fiber(
        subject, query, prior, n=4, seed=0, method=fs.AutoNDTM(**kw, project_steps=8, project_cg=3), progress=False
    )
    assert float(proj.fiber_loss.max()) < 1e-3 * float(plain.fiber_loss.max())
    # per sample and outer step: one linearisation and one J·p per CG iteration; 2 Jᵀs backwards
    # (and one more linearisation after each step that was not taken)
    assert 8 * (1 + 3) <= proj.counts["subject_forwards"] - plain.counts["subject_forwards"] <= 8 * (1 + 3) + 7
    assert proj.counts["subject_backwards"] - plain.counts["subject_backwards"] == pytest.approx(8 * 3)
    assert proj.config["method"]["project_steps"] == 8
    again = fs.sample_fiber(
        subject, query, prior, n=4, seed=0, method=fs.AutoNDTM(**kw, project_steps=8, project_cg=3), progress=False
    )
    assert torch.equal(again.images, proj.images)


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_projection_settings_are_checked(bad: object) -> None:
    with pytest.raises(ValueError, match="project_steps"):
        fs.AutoNDTM(project_steps=bad)  # type: ignore[arg-type]


def test_projection_is_scale_equivariant() -> None:
    """Data ×100 (and its clip range): the projected samples are the same, ×100 — no absolute number inside."""
    torch.set_default_dtype(torch.float64)
    try:
        A = torch.randn(3, 10, generator=torch.Generator().manual_seed(7))
        x = torch.rand(4, 10, generator=torch.Generator().manual_seed(8)) * 2 - 1
        x[:, :2] = -1.0  # at the bound: held fixed at either scale
        out = {}
        for c in (1.0, 100.0):
            subject = fs.load_subject(lambda z, c=c: torch.tanh(z @ A.T / c))
            obj = fs.FiberObjective(fs.GaussianPrior(dim=10), subject, 0.2 * c * torch.ones(1, 10))
            out[c], _ = project_to_fiber(obj, c * x, steps=4, cg_steps=3, max_step=0.3, clip=(-c, c))
        # (forward differences round differently at the two scales: agreement to 1e-5 of the scale)
        torch.testing.assert_close(out[100.0], 100.0 * out[1.0], rtol=1e-4, atol=1e-3)
    finally:
        torch.set_default_dtype(torch.float32)
