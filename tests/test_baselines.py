"""The training-free baselines (DPS, FreeDoM, UGD, MPGD, TFG) and pixel optimisation.

Ground truth: φ(x) = Ax on a Gaussian prior, where the fiber is an affine subspace (as in
test_ground_truth.py). Settings per method (tuned on this problem, squared-L2 loss so the step
shrinks as the residual does; unguided leaves ‖Ax − y‖ ≈ 3.2):

    DPS(scale=0.06)  FreeDoM(scale=0.04)  UGD(scale=0.4, backward_scale=0.04)
    MPGD(scale=0.04)  TFG(rho=0.02, mu=0.02)  PixelOptimization(iterations=50, lr=0.1)

all at 50 steps; each reaches a residual of 0.02–0.13, at least 10× below unguided.
"""

from __future__ import annotations

import pytest
import torch

import fiberscope as fs
from conftest import TinyCNN, tiny_unet

D = 8


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny_prior():
    """A tiny random UNet as an ε-prediction DDPM prior on 1×8×8 images."""
    return fs.CallablePrior(tiny_unet(), fs.VPSchedule.linear(), "eps", state_shape=(1, 8, 8), name="tiny-unet")


LINEAR_SETTINGS = {
    "dps": fs.DPS(steps=50, scale=0.06, loss="sq_l2"),
    "freedom": fs.FreeDoM(steps=50, scale=0.04, loss="sq_l2"),
    "ugd": fs.UGD(steps=50, scale=0.4, backward_scale=0.04, loss="sq_l2"),
    "mpgd": fs.MPGD(steps=50, scale=0.04, loss="sq_l2"),
    "tfg": fs.TFG(steps=50, rho=0.02, mu=0.02, loss="sq_l2"),
    "pixel_opt": fs.PixelOptimization(iterations=50, lr=0.1),
}


def _linear_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(2, D, generator=g)
    query = torch.randn(1, D, generator=g)
    P = A.T @ torch.linalg.inv(A @ A.T) @ A
    return A, query, P


@pytest.mark.parametrize("schedule", [fs.VPSchedule.linear(), fs.FlowSchedule()], ids=["vp", "flow"])
def test_every_baseline_reaches_the_linear_fiber(schedule):
    A, query, P = _linear_problem()
    y = query @ A.T
    prior = fs.GaussianPrior(dim=D, schedule=schedule)
    phi = lambda x: x @ A.T  # noqa: E731

    def resid(method):
        out = fs.sample_fiber(phi, query, prior, n=128, method=method, seed=1, progress=False)
        return (out.images @ A.T - y).norm(dim=1).mean().item(), out.images @ (torch.eye(D) - P)

    base, _ = resid(fs.Unguided(steps=50))
    assert base > 2.0
    for name, method in LINEAR_SETTINGS.items():
        r, null = resid(method)
        assert r * 10 < base, (name, r, base)
        if name != "pixel_opt":  # the prior keeps the spread along the fiber (exactly 1 per direction)
            var_null = null.var(0).sum().item() / (D - 2)
            assert 0.6 < var_null < 1.5, (name, var_null)


def _query(seed=1):
    return torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


DETERMINISM = [
    fs.DPS(steps=5, scale=0.3),
    fs.FreeDoM(steps=5, scale=0.3, recur_steps=2, recur_window=(0, 1000)),
    fs.UGD(steps=5, scale=0.3, backward_scale=0.1, backward_steps=2, recur_steps=2),
    fs.MPGD(steps=5, scale=0.3),
    fs.TFG(steps=5, rho=0.3, mu=0.3, sigma=0.1, mc_samples=2, recur_steps=2, eta=1.0),
    fs.TFG(steps=5, rho=0.3, mu=0.0, sampler="ancestral", init="sdedit", strength=0.7),
    fs.PixelOptimization(iterations=5, lr=0.05),
    fs.PixelOptimization(iterations=5, lr=0.05, init="query", lr_schedule="cosine"),
]


@pytest.mark.parametrize("method", DETERMINISM, ids=lambda m: m.name)
def test_same_seed_same_sample_at_batch_size_1_and_4(tiny_prior, method):
    q = _query()
    a = fs.sample_fiber(TinyCNN(), q, tiny_prior, n=4, method=method, seed=5, batch_size=1, progress=False)
    b = fs.sample_fiber(TinyCNN(), q, tiny_prior, n=4, method=method, seed=5, batch_size=4, progress=False)
    assert torch.isfinite(a.images).all()
    assert (a.images - b.images).abs().max() <= 1e-4
    c = fs.sample_fiber(TinyCNN(), q, tiny_prior, n=4, method=method, seed=6, batch_size=4, progress=False)
    assert (c.images - b.images).abs().max() > 1e-3  # and the seed matters


def test_call_counts(tiny_prior):
    q = _query()
    K = 4
    run = lambda m: fs.sample_fiber(TinyCNN(), q, tiny_prior, n=2, method=m, progress=False).counts  # noqa: E731
    mpgd = run(fs.MPGD(steps=K, scale=0.3, iter_steps=2))
    assert mpgd["prior_backwards"] == 0 and mpgd["prior_forwards"] == K
    assert mpgd["subject_backwards"] == 2 * K
    dps = run(fs.DPS(steps=K, scale=0.3))
    assert dps["prior_forwards"] == K and dps["prior_backwards"] == K and dps["subject_backwards"] == K
    # FreeDoM: every recurrence is a full step (forward + backward through the prior)
    fd = fs.FreeDoM(steps=K, scale=0.3, recur_steps=3, recur_window=(400, 1000))
    reps = sum(fd.recurrences(t) for t in fd.times(tiny_prior))
    c = run(fd)
    assert c["prior_forwards"] == reps and c["prior_backwards"] == reps
    # TFG's Monte-Carlo smoothing: mc_samples subject passes per gradient (x_t and x0 gradients)
    c = run(fs.TFG(steps=K, rho=0.3, mu=0.3, sigma=0.1, mc_samples=3))
    assert c["subject_backwards"] == 2 * 3 * K
    pix = run(fs.PixelOptimization(iterations=7))
    assert pix["prior_forwards"] == 0 and pix["prior_backwards"] == 0 and pix["subject_backwards"] == 7
    assert pix["forward_equivalents"] > 0


def test_mpgd_never_differentiates_the_prior():
    """MPGD calls the prior only with autograd off (and DPS does not)."""
    base = fs.GaussianPrior(dim=4)

    def frozen(x, t):
        if torch.is_grad_enabled():
            raise RuntimeError("the prior was called with autograd on")
        return base.network(x, t)

    prior = fs.CallablePrior(frozen, base.schedule, "eps", state_shape=(4,), data_range=None)
    phi = lambda x: x[:, :2]  # noqa: E731
    q = torch.ones(1, 4)
    out = fs.sample_fiber(phi, q, prior, n=8, method=fs.MPGD(steps=20, scale=0.1, loss="sq_l2"), progress=False)
    assert out.counts["prior_backwards"] == 0
    assert (out.images[:, :2] - 1).abs().mean() < 0.3
    with pytest.raises(RuntimeError):
        fs.sample_fiber(phi, q, prior, n=2, method=fs.DPS(steps=5), progress=False)


def test_pixel_optimisation_from_the_query_stays_near_it():
    prior = fs.GaussianPrior(dim=6, data_range=(-1, 1))
    A = torch.randn(2, 6, generator=torch.Generator().manual_seed(0))
    q = torch.rand(1, 6, generator=torch.Generator().manual_seed(1)) - 0.5
    m = fs.PixelOptimization(iterations=100, lr=0.02, init="query", init_std=0.1, clip=(-1, 1))
    out = fs.sample_fiber(lambda x: x @ A.T, q, prior, n=16, method=m, progress=False)
    assert ((out.images @ A.T) - q @ A.T).norm(dim=1).max() < 0.05
    assert (out.images - q).abs().max() < 0.6


def test_every_method_is_registered_and_exported():
    from fiberscope.guidance import METHODS
    from fiberscope.methods import method_from_spec

    for name, cls in [
        ("dps", fs.DPS),
        ("freedom", fs.FreeDoM),
        ("ugd", fs.UGD),
        ("mpgd", fs.MPGD),
        ("tfg", fs.TFG),
        ("pixel_opt", fs.PixelOptimization),
    ]:
        assert METHODS[name] is cls
        m = cls()
        assert m.config()["method"] == name
    m = method_from_spec({"name": "mpgd", "scale": 2.5, "steps": 20})
    assert isinstance(m, fs.MPGD) and m.scale == 2.5 and m.steps == 20


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (fs.DPS, dict(scale=-1), "scale"),
        (fs.DPS, dict(steps=0), "steps"),
        (fs.DPS, dict(sampler="heun"), "sampler"),
        (fs.DPS, dict(eta=2.0), "eta"),
        (fs.DPS, dict(loss="l3"), "loss"),
        (fs.DPS, dict(clip=(1, -1)), "clip"),
        (fs.FreeDoM, dict(recur_steps=0), "recur_steps"),
        (fs.FreeDoM, dict(recur_window=(800, 500)), "recur_window"),
        (fs.FreeDoM, dict(schedule="sometimes"), "schedule"),
        (fs.FreeDoM, dict(t_stop=float("nan")), "t_stop"),
        (fs.UGD, dict(backward_steps=0), "backward_steps"),
        (fs.UGD, dict(backward_scale=-0.1), "backward_scale"),
        (fs.MPGD, dict(iter_steps=0), "iter_steps"),
        (fs.MPGD, dict(output="both"), "output"),
        (fs.TFG, dict(mc_samples=0), "mc_samples"),
        (fs.TFG, dict(sigma=-0.1), "sigma"),
        (fs.TFG, dict(rho_schedule="up"), "rho_schedule"),
        (fs.TFG, dict(sigma_schedule="increase"), "sigma_schedule"),
        (fs.TFG, dict(init="query"), "init"),
        (fs.TFG, dict(strength=0), "strength"),
        (fs.PixelOptimization, dict(iterations=0), "iterations"),
        (fs.PixelOptimization, dict(lr=0), "lr"),
        (fs.PixelOptimization, dict(init="sdedit"), "init"),
        (fs.PixelOptimization, dict(lr_schedule="step"), "lr_schedule"),
        (fs.PixelOptimization, dict(adam_betas=(1.0, 0.9)), "adam_betas"),
    ],
)
def test_bad_settings_name_the_argument(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)
