"""NDTM against priors whose answer is known in closed form."""

from __future__ import annotations

import pytest
import torch

import fiberscope as fs

D = 8


def _linear_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(2, D, generator=g)
    query = torch.randn(1, D, generator=g)
    P = A.T @ torch.linalg.inv(A @ A.T) @ A  # projector onto the row space of A
    return A, query, P


@pytest.mark.parametrize("schedule", [fs.VPSchedule.linear(), fs.FlowSchedule()], ids=["vp", "flow"])
def test_linear_subject_gaussian_prior(schedule):
    """φ(x) = Ax on N(0, I): the fiber is an affine subspace and p(x | Ax = y) is Gaussian with
    covariance I − P on the null space of A. NDTM must hit the subspace and keep that spread."""
    A, query, P = _linear_problem()
    y = query @ A.T
    prior = fs.GaussianPrior(dim=D, schedule=schedule)
    phi = lambda x: x @ A.T  # noqa: E731
    res = {}
    nulls = {}
    for name, method in [
        ("unguided", fs.Unguided(steps=50)),
        ("ndtm", fs.NDTM(steps=50, inner_steps=5, lr=0.05, gamma=1.0, clip=None)),
    ]:
        out = fs.sample_fiber(phi, query, prior, n=256, method=method, progress=False)
        x = out.images
        res[name] = (x @ A.T - y).norm(dim=1).mean().item()
        nulls[name] = x @ (torch.eye(D) - P)
    assert res["ndtm"] * 20 < res["unguided"], res
    # spread along the null space: the exact conditional has variance 1 in each of its D-2 directions
    var_null = nulls["ndtm"].var(0).sum().item() / (D - 2)
    assert 0.6 < var_null < 1.5, var_null
    # and the samples do not collapse: pairwise distances comparable to the unguided ones
    assert torch.pdist(nulls["ndtm"]).mean() > 0.7 * torch.pdist(nulls["unguided"]).mean()


@pytest.mark.parametrize("schedule", [fs.VPSchedule.linear(), fs.FlowSchedule()], ids=["vp", "flow"])
def test_gaussian_mixture_fiber_stays_on_support(schedule):
    """Four modes at (±2, ±2); φ = first coordinate; the fiber of (2, 2) holds two modes."""
    means = torch.tensor([[2.0, 2.0], [-2.0, 2.0], [2.0, -2.0], [-2.0, -2.0]])
    prior = fs.GaussianMixturePrior(means, stds=0.2, schedule=schedule)
    phi = lambda x: x[:, :1]  # noqa: E731
    query = torch.tensor([[2.0, 2.0]])
    m = fs.NDTM(
        steps=50, inner_steps=5, lr=0.05, lr_schedule="constant", gamma=[(0, 0, 1000, 700), (1, 1, 700, 0)], clip=None
    )
    out = fs.sample_fiber(phi, query, prior, n=256, method=m, progress=False)
    ung = fs.sample_fiber(phi, query, prior, n=256, method=fs.Unguided(steps=50), progress=False)
    x = out.images
    resid = (x[:, 0] - 2).abs()
    assert resid.median() < 0.05 and resid.max() < 0.1
    assert (ung.images[:, 0] - 2).abs().median() > 1.0
    # near the support: log density as high as the prior's own samples, within 1 nat
    assert prior.log_density(x).mean() > prior.log_density(ung.images).mean() - 1.0
    # both modes of the fiber are visited, with the within-mode spread of the data (std 0.2)
    frac_up = (x[:, 1] > 0).float().mean().item()
    assert 0.3 < frac_up < 0.7
    assert 0.1 < (x[:, 1].abs() - 2).std().item() < 0.4
