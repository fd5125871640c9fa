"""Latent and transformer priors from diffusers pipeline directories, built tiny and saved locally.

Layouts: ``LDMPipeline`` (VQModel + UNet2DModel), Stable Diffusion (AutoencoderKL + UNet2DConditionModel
+ CLIP text encoder/tokenizer built from a small local vocabulary) and SD3 (AutoencoderKL +
SD3Transformer2DModel + FlowMatch scheduler + two CLIP text encoders). Each is loaded by directory,
checked against the diffusers components, and sampled end to end with ``sample_fiber``.
"""

from __future__ import annotations

import json
import socket
import string
import time

import pytest
import torch

import fiberscope as fs
from conftest import TinyCNN, tiny_unet

NDTM = fs.NDTM(steps=3, inner_steps=1, lr=0.05, gamma=1.0)


def _vae(latent_channels: int = 4, **kw):
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 8),
        latent_channels=latent_channels,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=16,
        **kw,
    ).eval()


def _tokenizer(directory):
    """A CLIP tokenizer with a character-level vocabulary, written and loaded locally (no hub)."""
    from transformers import CLIPTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits + ".,!?'-")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars + [c + "</w>" for c in chars]:
        vocab[c] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(str(directory), model_max_length=12)


def _text_config(tok, **kw):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_attention_heads=2,
        num_hidden_layers=1,
        max_position_embeddings=12,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        **kw,
    )


@pytest.fixture(scope="module")
def ldm_dir(tmp_path_factory):
    from diffusers import DDIMScheduler, LDMPipeline, VQModel

    torch.manual_seed(0)
    vq = VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 8),
        latent_channels=3,
        num_vq_embeddings=16,
        vq_embed_dim=3,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=16,
    ).eval()
    d = tmp_path_factory.mktemp("ldm") / "tiny-ldm"
    LDMPipeline(vqvae=vq, unet=tiny_unet(channels=3, size=8), scheduler=DDIMScheduler()).save_pretrained(str(d))
    return d


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    root = tmp_path_factory.mktemp("sd")
    tok = _tokenizer(root / "vocab")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=2,
        norm_num_groups=4,
    ).eval()
    pipe = StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(_text_config(tok)).eval(),
        tokenizer=tok,
        unet=unet,
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    d = root / "tiny-sd"
    pipe.save_pretrained(str(d))
    return d


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    root = tmp_path_factory.mktemp("sd3")
    tok = _tokenizer(root / "vocab")
    torch.manual_seed(0)
    cfg = _text_config(tok, projection_dim=8)
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        caption_projection_dim=16,
        pooled_projection_dim=16,
        out_channels=4,
        pos_embed_max_size=8,
    ).eval()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(shift_factor=0.1, scaling_factor=1.5),
        text_encoder=CLIPTextModelWithProjection(cfg).eval(),
        tokenizer=tok,
        text_encoder_2=CLIPTextModelWithProjection(cfg).eval(),
        tokenizer_2=tok,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    d = root / "tiny-sd3"
    pipe.save_pretrained(str(d))
    return d


def _query() -> torch.Tensor:
    return torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1


def test_ldm_vq_prior_from_directory(ldm_dir):
    from diffusers import LDMPipeline

    prior = fs.load_prior(ldm_dir)
    ref = LDMPipeline.from_pretrained(str(ldm_dir))
    assert prior.is_latent and prior.state_shape == (3, 8, 8) and prior.image_shape == (3, 16, 16)
    assert prior.schedule.kind == "vp" and prior.parameterization == "eps"
    assert prior.describe()["autoencoder_class"] == "VQModel" and prior.describe()["latent_scale"] == 1.0
    z = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(prior.decode(z), ref.vqvae.decode(z).sample, atol=1e-5)  # unscaled, as LDMPipeline
        eps = ref.unet(z, torch.full((2,), 500)).sample
    assert torch.allclose(prior.denoise(z, 500).eps, eps, atol=1e-5)
    x = torch.zeros(1, 3, 16, 16, requires_grad=True)
    (g,) = torch.autograd.grad(prior.decode(prior.encode(x)).sum(), x)  # straight-through VQ: gradients pass
    assert g.abs().sum() > 0
    out = fs.sample_fiber(TinyCNN(channels=3), _query(), prior, n=2, method=NDTM, progress=False)
    assert out.images.shape == (2, 3, 16, 16) and out.states.shape == (2, 3, 8, 8)
    assert torch.isfinite(out.fiber_loss).all() and out.counts["decoder_backwards"] > 0


def test_stable_diffusion_prior_with_a_fixed_prompt(sd_dir):
    from diffusers import StableDiffusionPipeline

    prior = fs.load_prior(sd_dir, prompt="a photo of a cat")
    ref = StableDiffusionPipeline.from_pretrained(str(sd_dir), safety_checker=None)
    emb, _ = ref.encode_prompt("a photo of a cat", "cpu", 1, False)
    assert torch.equal(prior.denoiser.embeds, emb.float())  # computed once, by the pipeline's own encode_prompt
    assert prior.state_shape == (4, 8, 8) and prior.image_shape == (3, 16, 16)
    d = prior.describe()
    assert d["prompt"] == "a photo of a cat" and d["denoiser_class"] == "UNet2DConditionModel"
    assert float(prior.scale) == pytest.approx(ref.vae.config.scaling_factor)
    z = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        eps = ref.unet(z, torch.full((2,), 300), encoder_hidden_states=emb.expand(2, -1, -1)).sample
        dec = ref.vae.decode(z / ref.vae.config.scaling_factor).sample
    assert torch.allclose(prior.denoise(z, 300).eps, eps, atol=1e-5)
    assert torch.allclose(prior.decode(z), dec, atol=1e-5)
    given = fs.load_prior(sd_dir, prompt_embeds=emb)  # a given embedding instead of a prompt
    assert torch.allclose(given.denoise(z, 300).eps, eps, atol=1e-5)
    out = fs.sample_fiber(TinyCNN(channels=3), _query(), prior, n=2, method=NDTM, progress=False)
    assert out.images.shape == (2, 3, 16, 16) and torch.isfinite(out.fiber_loss).all()
    assert out.config["prior"]["prompt"] == "a photo of a cat"


def test_stable_diffusion_classifier_free_guidance_and_checkpointing(sd_dir):
    from diffusers import StableDiffusionPipeline

    prior = fs.load_prior(sd_dir, prompt="a cat", guidance_scale=3.0, gradient_checkpointing=True)
    ref = StableDiffusionPipeline.from_pretrained(str(sd_dir), safety_checker=None)
    c, u = ref.encode_prompt("a cat", "cpu", 1, True, negative_prompt="")
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        ec = ref.unet(z, torch.full((1,), 700), encoder_hidden_states=c).sample
        eu = ref.unet(z, torch.full((1,), 700), encoder_hidden_states=u).sample
    assert torch.allclose(prior.denoise(z, 700).eps, eu + 3.0 * (ec - eu), atol=1e-5)
    assert prior.denoiser.model.is_gradient_checkpointing
    zz = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(prior.decode(prior.denoise(zz, 700).x0).sum(), zz)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    with pytest.raises(ValueError, match="not to a Prior"):
        fs.load_prior(prior, prompt="a dog")


def test_sd3_transformer_flow_prior(sd3_dir):
    prior = fs.load_prior(sd3_dir, prompt="a dog")
    assert prior.schedule.kind == "flow" and prior.parameterization == "velocity"
    assert prior.schedule.shift == 3.0 and prior.state_shape == (4, 8, 8)
    assert float(prior.scale) == 1.5 and float(prior.shift) == pytest.approx(0.1)
    enc = prior.denoiser
    assert enc.embeds.shape[-1] == 32 and enc.pooled.shape == (1, 16)
    given = fs.load_prior(sd3_dir, prompt_embeds=(enc.embeds, enc.pooled))
    z = torch.randn(2, 4, 8, 8)
    assert torch.allclose(prior.denoise(z, 600.0).x0, given.denoise(z, 600.0).x0, atol=1e-6)
    with torch.no_grad():
        v = prior.denoiser.model(
            hidden_states=z,
            timestep=torch.full((2,), 600.0),
            encoder_hidden_states=enc.embeds.expand(2, -1, -1),
            pooled_projections=enc.pooled.expand(2, -1),
        ).sample
    assert torch.allclose(prior.denoise(z, 600.0).x0, z - 0.6 * v, atol=1e-5)  # x̂0 = x_t − σ·v
    method = fs.NDTM(steps=3, inner_steps=1, lr=0.05, gamma=1.0, sampler="euler")
    out = fs.sample_fiber(TinyCNN(channels=3), _query(), prior, n=2, method=method, progress=False)
    assert out.images.shape == (2, 3, 16, 16) and torch.isfinite(out.fiber_loss).all()


def test_dtype_and_bad_prompt_arguments(ldm_dir, sd_dir):
    prior = fs.load_prior(ldm_dir, dtype="bf16")
    assert prior.compute_dtype == torch.bfloat16
    assert next(prior.denoiser.parameters()).dtype == torch.bfloat16
    d = prior.denoise(torch.randn(1, 3, 8, 8), 400)
    assert d.x0.dtype == torch.float32 and prior.decode(d.x0).dtype == torch.float32
    with pytest.raises(ValueError, match="unconditional"):
        fs.load_prior(ldm_dir, prompt="a face")
    with pytest.raises(ValueError, match="not both"):
        fs.load_prior(sd_dir, prompt="a", prompt_embeds=torch.zeros(1, 12, 16))


def test_pickled_weights_need_trust(tmp_path):
    from diffusers import DDIMScheduler, LDMPipeline, VQModel

    vq = VQModel(
        block_out_channels=(8,),
        norm_num_groups=4,
        latent_channels=3,
        num_vq_embeddings=8,
        vq_embed_dim=3,
        layers_per_block=1,
    )
    d = tmp_path / "pickled"
    LDMPipeline(vqvae=vq, unet=tiny_unet(channels=3, size=8), scheduler=DDIMScheduler()).save_pretrained(
        str(d), safe_serialization=False
    )
    assert not list(d.rglob("*.safetensors"))
    with pytest.raises(ValueError, match="does not unpickle"):
        fs.load_prior(d)
    prior = fs.load_prior(d, trust_pickle=True)  # read with torch.load(weights_only=True)
    assert prior.is_latent and prior.image_shape == (3, 8, 8)


def _fake_hub_cache(monkeypatch, tmp_path, repo_id: str):
    """An empty snapshot of ``repo_id`` in a Hugging Face cache laid out as ``hf download`` leaves it."""
    from huggingface_hub import constants

    cache = tmp_path / "hub-cache"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return snapshot


def test_flat_google_ddpm_layout_loads_from_a_cached_hub_id(monkeypatch, tmp_path):
    """google/ddpm-cifar10-32 and google/ddpm-ema-celebahq-256 keep the UNet and scheduler configs at the top."""
    from diffusers import DDPMScheduler

    snapshot = _fake_hub_cache(monkeypatch, tmp_path, "fs-test/ddpm-flat-16")
    unet = tiny_unet(channels=3, size=16)
    unet.save_pretrained(str(snapshot))
    DDPMScheduler(prediction_type="v_prediction").save_pretrained(str(snapshot))
    (snapshot / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "DDPMPipeline",
                "scheduler": ["diffusers", "DDPMScheduler"],
                "unet": ["diffusers", "UNet2DModel"],
            }
        )
    )
    assert (snapshot / "config.json").is_file() and (snapshot / "scheduler_config.json").is_file()
    prior = fs.load_prior("fs-test/ddpm-flat-16")  # a hub id, resolved in the (local) cache only
    assert prior.state_shape == (3, 16, 16) and prior.parameterization == "v" and not prior.is_latent
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(
            prior.model(x, torch.full((2,), 250)).sample, unet(x, torch.full((2,), 250)).sample, atol=1e-5
        )
    out = fs.sample_fiber(TinyCNN(channels=3), _query(), prior, n=1, method=NDTM, progress=False)
    assert out.images.shape == (1, 3, 16, 16) and torch.isfinite(out.fiber_loss).all()


def test_uncached_hub_id_fails_at_once_without_network(monkeypatch):
    attempts: list[object] = []

    def no_network(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    t0 = time.perf_counter()
    with pytest.raises(fs.ModelNotAvailableError) as info:
        fs.load_prior("CompVis/ldm-not-cached-here-256")
    message = str(info.value)
    assert time.perf_counter() - t0 < 10
    assert attempts == []  # offline by construction, not by a timeout
    assert "\n" not in message and "CompVis/ldm-not-cached-here-256" in message
    assert "hf download CompVis/ldm-not-cached-here-256" in message and "huggingface-cli download" in message
    with pytest.raises(fs.ModelNotAvailableError, match="huggingface-cli download"):
        fs.load_subject("hf:facebook/not-cached-dinov2")
    assert attempts == []
