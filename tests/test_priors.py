"""Schedules, stateless update rules and prior adapters, checked against diffusers and closed forms."""

from __future__ import annotations

import pytest
import torch

import fiberscope as fs
from conftest import tiny_unet
from fiberscope.guidance import StepRule
from fiberscope.priors import Denoised
from fiberscope.priors.steps import ancestral_step, ddim_step


def _ddpm_sched(**kw):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, **kw)


def test_vp_schedule_matches_diffusers_and_reference_grid():
    s = fs.VPSchedule.linear()
    ref = _ddpm_sched().alphas_cumprod.double()
    assert torch.allclose(s.alphas_cumprod, ref, atol=1e-6)
    assert s.grid(200)[:3] == [995.0, 990.0, 985.0] and s.grid(200)[-1] == 0.0
    a, sig = s.alpha_sigma(None)
    assert float(a) == 1.0 and float(sig) == 0.0
    cos = fs.VPSchedule.cosine()
    ref_cos = _ddpm_sched(beta_schedule="squaredcos_cap_v2").alphas_cumprod.double()
    assert torch.allclose(cos.alphas_cumprod, ref_cos, atol=1e-5)


def test_flow_schedule_is_linear_interpolant():
    f = fs.FlowSchedule()
    a, s = f.alpha_sigma(250.0)
    assert float(a) == pytest.approx(0.75) and float(s) == pytest.approx(0.25)
    assert f.grid(4) == [1000.0, 750.0, 500.0, 250.0]


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_step_matches_diffusers(eta):
    from diffusers import DDIMScheduler

    sch = DDIMScheduler(num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=True)
    sch.set_timesteps(10)
    t, s = int(sch.timesteps[3]), int(sch.timesteps[4])
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)
    noise = torch.randn(2, 3, generator=g)
    ref = sch.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
    vp = fs.VPSchedule(sch.alphas_cumprod)
    (a_t, s_t), (a_s, s_s) = (p.float() for p in vp.alpha_sigma(t)), (p.float() for p in vp.alpha_sigma(s))
    x0 = (x - s_t * eps) / a_t
    ours = ddim_step(x0, eps, a_t, s_t, a_s, s_s, eta, noise, "small")
    assert torch.allclose(ours, ref, atol=1e-5)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ancestral_step_matches_ddpm_scheduler(variance):
    sch = _ddpm_sched(variance_type=variance, clip_sample=False)
    t = 600
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)
    ref = sch.step(eps, t, x, generator=torch.Generator().manual_seed(5)).prev_sample
    noise = torch.randn(2, 3, generator=torch.Generator().manual_seed(5))
    vp = fs.VPSchedule(sch.alphas_cumprod)
    (a_t, s_t), (a_s, s_s) = (p.float() for p in vp.alpha_sigma(t)), (p.float() for p in vp.alpha_sigma(t - 1))
    x0 = (x - s_t * eps) / a_t
    ours = ancestral_step(x, x0, a_t, s_t, a_s, s_s, noise, "small" if variance == "fixed_small" else "large")
    assert torch.allclose(ours, ref, atol=1e-5)


def test_euler_rule_matches_flow_match_scheduler():
    """The Euler rule (DDIM at η = 0 on the flow interpolant) is diffusers' flow-matching Euler step."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sch = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
    sch.set_timesteps(8)
    x, v = torch.randn(2, 3), torch.randn(2, 3)
    t = sch.timesteps[2]
    ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
    ref.set_timesteps(8)
    ref._step_index = 2
    out = ref.step(v, t, x).prev_sample
    s_t, s_s = sch.sigmas[2], sch.sigmas[3]
    x0, eps = x - s_t * v, x + (1 - s_t) * v
    assert torch.allclose(ddim_step(x0, eps, 1 - s_t, s_t, 1 - s_s, s_s, 0.0), out, atol=1e-5)
    # the rule the samplers use: StepRule("euler") ignores η and draws no noise
    rule = StepRule("euler", eta=1.0)
    got = rule.step(x, x0, Denoised(x0, eps), (1 - s_t, s_t), (1 - s_s, s_s), fs.SampleNoise([0, 1]))
    assert torch.allclose(got, out, atol=1e-5)


@pytest.mark.parametrize("sampler", ["ddim", "euler"])
def test_ddim_with_noise_on_a_flow_schedule_samples_the_data(sampler):
    """DDIM with η = 1 on a rectified-flow schedule (the default sampler's rule on flows, as on DDPMs) keeps the
    marginals of the interpolant x_t = (1 − t)·x0 + t·ε: from pure noise, with the exact denoiser of Gaussian
    data N(μ, s²), its samples are N(μ, s²) up to the discretisation — as the Euler ODE's are — though every
    step adds fresh noise (30 steps shrink the spread by 9 %, 200 by 2 %; VP DDIM at 30 steps by 16 %). The
    data are isotropic, so the 64 coordinates of 500 samples pool into one estimate of μ and s."""
    prior = fs.GaussianPrior(dim=64, mean=0.3, std=0.5, schedule=fs.FlowSchedule())
    rule = StepRule(sampler, eta=1.0)
    times = prior.schedule.grid(200)
    table = rule.prepare(prior, times)

    def run(seed_offset: int) -> torch.Tensor:
        n = 500
        x = fs.SampleNoise(list(range(n))).randn_like(torch.zeros(n, 64))  # the same start for both runs
        noise = fs.SampleNoise([i + seed_offset for i in range(n)])
        for i, t in enumerate(times):
            d = prior.denoise(x, t)
            x = rule.step(x, rule.tweedie(prior, d, x, *table[i]), d, table[i], table[i + 1], noise)
        return x

    x = run(10**6)
    assert abs(float(x.mean()) - 0.3) < 0.01 and abs(float(x.std()) - 0.5) < 0.015
    # η = 1 draws fresh noise at every step (other step noise: other samples); Euler draws none
    assert torch.equal(run(2 * 10**6), x) == (sampler == "euler")


@pytest.mark.parametrize("pred", ["epsilon", "sample", "v_prediction"])
def test_diffusers_adapter_parameterisations_are_consistent(tmp_path, pred):
    from diffusers import DDPMPipeline, DDPMScheduler

    DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(prediction_type=pred)).save_pretrained(str(tmp_path / "p"))
    prior = fs.load_prior(tmp_path / "p")
    assert prior.parameterization == {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}[pred]
    assert prior.state_shape == (1, 8, 8) and prior.schedule.kind == "vp"
    x = torch.randn(2, 1, 8, 8)
    d = prior.denoise(x, 300)
    a, s = (p.float() for p in prior.schedule.alpha_sigma(300))
    assert torch.allclose(a * d.x0 + s * d.eps, x, atol=1e-4)  # x_t = α x̂0 + σ ε̂ whatever is predicted
    raw = prior.model(x, torch.full((2,), 300)).sample
    expect = {"epsilon": d.eps, "sample": d.x0, "v_prediction": a * d.eps - s * d.x0}[pred]
    assert torch.allclose(raw, expect, atol=1e-4)


def test_flow_match_config_gives_a_velocity_prior(tmp_path):
    from diffusers import DDPMPipeline, FlowMatchEulerDiscreteScheduler

    DDPMPipeline(unet=tiny_unet(), scheduler=FlowMatchEulerDiscreteScheduler()).save_pretrained(str(tmp_path / "f"))
    prior = fs.load_prior(tmp_path / "f")
    assert prior.schedule.kind == "flow" and prior.parameterization == "velocity"
    x = torch.randn(2, 1, 8, 8)
    d = prior.denoise(x, 400.0)
    assert torch.allclose(0.6 * d.x0 + 0.4 * d.eps, x, atol=1e-4)
    out = fs.sample_fiber(
        lambda z: z.flatten(1)[:, :5],
        torch.zeros(1, 1, 8, 8),
        prior,
        n=2,
        progress=False,
        method=fs.NDTM(steps=4, inner_steps=1, lr=0.05, gamma=1.0, sampler="euler"),
    )
    assert torch.isfinite(out.images).all()


def test_learned_variance_unet_is_detected(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler

    DDPMPipeline(
        unet=tiny_unet(out_channels=2), scheduler=DDPMScheduler(variance_type="learned_range")
    ).save_pretrained(str(tmp_path / "lv"))
    prior = fs.load_prior(tmp_path / "lv")
    assert prior.learned_variance
    d = prior.denoise(torch.randn(2, 1, 8, 8), 500)
    assert d.v is not None and d.x0.shape == (2, 1, 8, 8)
    out = fs.sample_fiber(
        lambda z: z.flatten(1)[:, :3],
        torch.zeros(1, 1, 8, 8),
        prior,
        n=1,
        progress=False,
        method=fs.NDTM(
            steps=25, inner_steps=1, gamma=1.0, sampler="ancestral", variance="learned_range", ancestral_rescaled=True
        ),
    )
    assert torch.isfinite(out.images).all()


def test_learned_range_on_a_plain_prior_is_refused(tiny_prior):
    with pytest.raises(ValueError, match="learned_range"):
        fs.sample_fiber(
            lambda z: z.flatten(1),
            torch.zeros(1, 1, 8, 8),
            tiny_prior,
            n=1,
            progress=False,
            method=fs.NDTM(steps=3, inner_steps=1, variance="learned_range"),
        )


def test_missing_prior_and_pickle_only_dirs_fail_clearly(tmp_path):
    with pytest.raises(fs.ModelNotAvailableError, match="huggingface-cli download"):
        fs.load_prior("google/this-model-is-not-cached-32")
    with pytest.raises(fs.ModelNotAvailableError, match="no such directory"):
        fs.load_prior(str(tmp_path / "nowhere"))
    (tmp_path / "bin" / "unet").mkdir(parents=True)
    (tmp_path / "bin" / "scheduler").mkdir()
    (tmp_path / "bin" / "scheduler" / "scheduler_config.json").write_text("{}")
    (tmp_path / "bin" / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="does not unpickle"):
        fs.load_prior(tmp_path / "bin")


def test_callable_prior_with_declared_parameterisation():
    prior = fs.CallablePrior(
        lambda x, t: torch.zeros_like(x), fs.VPSchedule.linear(), "x0", state_shape=(3,), data_range=None
    )
    d = prior.denoise(torch.ones(2, 3), 100)
    assert torch.equal(d.x0, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="FlowSchedule"):
        fs.CallablePrior(lambda x, t: x, fs.VPSchedule.linear(), "velocity", state_shape=(3,))


def test_every_prior_names_its_state_shape_and_its_image_shape():
    """``state_shape`` is what the sampler walks in, ``image_shape`` what ``decode`` returns."""
    pixel = fs.CallablePrior(lambda x, t: torch.zeros_like(x), fs.VPSchedule.linear(), "eps", state_shape=(1, 4, 4))
    assert pixel.state_shape == pixel.image_shape == (1, 4, 4) and not pixel.is_latent
    latent = fs.CallablePrior(
        lambda z, t: torch.zeros_like(z), fs.VPSchedule.linear(), "eps", state_shape=(2,), data_range=None,
        decode=lambda z: z.repeat(1, 3), image_shape=(6,),
    )  # fmt: skip
    assert latent.state_shape == (2,) and latent.image_shape == (6,)
    assert latent.decode(torch.zeros(5, *latent.state_shape)).shape == (5, *latent.image_shape)
    assert fs.GaussianPrior(dim=3).state_shape == fs.GaussianPrior(dim=3).image_shape == (3,)
    d = latent.describe()
    assert d["state_shape"] == [2] and d["image_shape"] == [6] and d["data_shape"] == [2]  # old key, old meaning


def test_data_shape_still_works_for_one_release_with_a_warning():
    prior = fs.GaussianPrior(dim=3)
    with pytest.warns(DeprecationWarning, match="state_shape"):
        assert prior.data_shape == (3,)
    with pytest.warns(DeprecationWarning, match=r"CallablePrior\(data_shape=...\) is deprecated: pass state_shape"):
        old = fs.CallablePrior(lambda x, t: torch.zeros_like(x), fs.VPSchedule.linear(), "eps", data_shape=(2,))
    assert old.state_shape == old.image_shape == (2,)
    with pytest.raises(TypeError, match="state_shape"):
        fs.CallablePrior(lambda x, t: x, fs.VPSchedule.linear(), "eps")


def test_a_users_prior_subclass_that_sets_data_shape_still_samples():
    """Subclasses written against the old contract set ``self.data_shape`` (or declare it): both still work."""

    class OldStylePrior(fs.Prior):
        def __init__(self) -> None:
            super().__init__()
            self.schedule = fs.VPSchedule.linear()
            self.data_shape = (2,)  # the old name: sets the state shape
            self.data_range = None

        def network(self, x_t: torch.Tensor, t_model: torch.Tensor) -> torch.Tensor:
            return torch.zeros_like(x_t)

    with pytest.warns(DeprecationWarning, match="set state_shape"):
        prior = OldStylePrior()
    assert prior.state_shape == prior.image_shape == (2,)
    out = fs.sample_fiber(lambda x: x[:, :1], torch.ones(1, 2), prior, n=2, method=fs.DPS(steps=4), progress=False)
    assert out.images.shape == (2, 2)

    with pytest.warns(DeprecationWarning, match="declare state_shape"):

        class DeclaredPrior(OldStylePrior):
            data_shape = (1, 2, 2)
            image_shape = None

            def __init__(self) -> None:
                fs.Prior.__init__(self)
                self.schedule = fs.VPSchedule.linear()

    declared = DeclaredPrior()
    assert declared.state_shape == declared.image_shape == (1, 2, 2)


def test_latent_prior_decodes_before_the_subject():
    """A latent prior: state z in R^2, decode(z) = W z; the subject sees decoded data."""
    W = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    base = fs.GaussianPrior(dim=2)
    prior = fs.CallablePrior(
        base.network,
        base.schedule,
        "eps",
        state_shape=(2,),
        data_range=None,
        decode=lambda z: z @ W.T,
        encode=lambda x: torch.linalg.lstsq(W, x.T).solution.T,
        image_shape=(3,),
    )
    query = torch.tensor([[1.0, 2.0, 2.0]])  # = decode([1, 1])
    out = fs.sample_fiber(
        lambda x: x[:, 1:2],
        query,
        prior,
        n=16,
        progress=False,
        method=fs.NDTM(steps=40, inner_steps=5, lr=0.05, lr_schedule="constant", gamma=1.0),
    )
    assert out.images.shape == (16, 3) and out.states.shape == (16, 2)
    assert (out.images[:, 1] - 2.0).abs().max() < 0.1
    assert out.counts["decoder_backwards"] > 0
    sd = fs.sample_fiber(
        lambda x: x[:, 1:2],
        query,
        prior,
        n=4,
        progress=False,
        method=fs.NDTM(steps=10, inner_steps=2, gamma=1.0, init="sdedit", strength=0.3),
    )
    assert torch.isfinite(sd.images).all()


def test_analytic_gaussian_posterior_mean_is_exact():
    prior = fs.GaussianPrior(dim=1, mean=1.0, std=0.5)
    a, s = (p.float() for p in prior.schedule.alpha_sigma(500))
    x = torch.tensor([[0.3]])
    expect = 1.0 + a * 0.25 / (a * a * 0.25 + s * s) * (0.3 - a * 1.0)
    assert torch.allclose(prior.denoise(x, 500).x0, expect.reshape(1, 1), atol=1e-6)
    img = fs.GaussianPrior(shape=(1, 4, 4))
    assert img.denoise(torch.randn(2, 1, 4, 4), 10).x0.shape == (2, 1, 4, 4)
