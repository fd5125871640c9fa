"""OpenAI ADM (guided-diffusion) priors: our UNet, architecture inference, loading, precision, bad input.

Every published checkpoint family is built tiny (same structure, small widths, random weights),
saved as a ``.pt`` state dict and loaded back through ``fs.load_prior``; the real-size architectures
are checked on the meta device (no memory); parity with an independent implementation
(``deepinv.models.DiffUNet``) at the real 256×256 size is a slow test.
"""

from __future__ import annotations

import dataclasses
import gc
import math

import pytest
import torch
from torch import nn

import fiberscope as fs
from conftest import TinyCNN
from fiberscope.cli import EXIT, main
from fiberscope.priors import adm as A
from fiberscope.priors import adm_checkpoint
from fiberscope.priors import adm_unet as U
from fiberscope.priors.adm import ADM_FAMILIES, ADMConfig, ADMUNet

# (model_channels, image size, overrides of the family's settings) of the tiny stand-in of each family
TINY = {
    "adm-64": (32, 8, {"num_head_channels": 32}),  # 96-channel level: heads of 64 do not divide it
    "adm-128": (32, 16, {}),
    "adm-256": (32, 32, {}),
    "adm-256-uncond": (32, 32, {}),
    "lsun-256": (32, 32, {}),
    "adm-512": (64, 64, {}),  # its 0.5 multiplier needs 64 channels for a 32-group GroupNorm
    "ffhq-256": (32, 32, {}),
}
VPS = {"linear": fs.VPSchedule.linear(1000, 1e-4, 0.02), "cosine": fs.VPSchedule.cosine(1000)}
SMALL = ADMConfig(image_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_ds=(2,))


def tiny_config(family: str) -> ADMConfig:
    mc, size, kw = TINY[family]
    return dataclasses.replace(ADM_FAMILIES[family]["config"], model_channels=mc, image_size=size, **kw)


def randomize(net: nn.Module, seed: int = 0) -> nn.Module:
    """Every tensor random (no zero-initialised output convolution left), activations of order one."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.normal_(1, 0.1, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
            elif isinstance(m, nn.Embedding):
                m.weight.normal_(0, 1, generator=g)
            elif isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                m.weight.normal_(0, 1 / math.sqrt(m.weight[0].numel()), generator=g)
                if m.bias is not None:
                    m.bias.normal_(0, 0.1, generator=g)
    for name, p in net.named_parameters():
        assert bool(p.detach().abs().gt(0).any()), f"{name} is all zero"
    return net


def save(net: nn.Module, path) -> str:
    torch.save(net.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``{family: (config, network, path of its saved state dict)}``, built once."""
    root = tmp_path_factory.mktemp("adm")
    out = {}
    for i, fam in enumerate(TINY):
        cfg = tiny_config(fam)
        if fam == "lsun-256":  # the architecture of adm-256-uncond: only the file name tells them apart
            out[fam] = (cfg, out["adm-256-uncond"][1], save(out["adm-256-uncond"][1], root / "lsun_cat.pt"))
            continue
        with torch.device("meta"):  # no default initialisation: every tensor is drawn by randomize
            net = ADMUNet(cfg)
        net = randomize(net.to_empty(device="cpu"), seed=i).eval()
        out[fam] = (cfg, net, save(net, root / f"{fam}.pt"))
    return out


@pytest.fixture(scope="module")
def loaded(tiny):
    """``loaded(family)``: the tiny family's float32 prior, loaded once (tests must not change it)."""
    cache: dict[str, A.ADMPrior] = {}

    def get(fam: str) -> A.ADMPrior:
        if fam not in cache:
            cache[fam] = _load(tiny, fam)
        return cache[fam]

    return get


def _load(tiny, fam: str, **kw):
    cfg, _, path = tiny[fam]
    overrides = {"image_size": cfg.image_size, **TINY[fam][2]}
    label = kw.pop("class_label", 3 if cfg.num_classes else None)
    return fs.load_prior(path, adm_config=overrides, class_label=label, **kw)


def _inputs(cfg: ADMConfig, b: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g), torch.tensor([17.0, 640.0])


# --- architecture inference -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(ADM_FAMILIES))
def test_published_architectures_are_recognised_exactly(family):
    """The real-size networks (built on the meta device: shapes only) are recognised with their README flags."""
    entry = ADM_FAMILIES[family]
    with torch.device("meta"):
        net = ADMUNet(entry["config"])
    cfg, info = A.infer_adm_config(net.state_dict(), entry["checkpoints"][0])
    assert cfg == entry["config"]
    assert (info["family"], info["family_match"]) == (family, "exact")
    if family == "adm-256-uncond":
        assert sum(p.numel() for p in net.parameters()) == 552_814_086  # the "552 M" of the paper's prior


def test_readme_flags_of_the_published_checkpoints():
    """Spot checks of the settings the weights cannot tell, as in guided-diffusion's README."""
    f = {k: v["config"] for k, v in ADM_FAMILIES.items()}
    assert (f["adm-64"].noise_schedule, f["adm-64"].use_new_attention_order, f["adm-64"].num_head_channels) == (
        "cosine",
        True,
        64,
    )
    assert (f["adm-64"].model_channels, f["adm-64"].num_res_blocks) == (192, 3)
    assert (f["adm-128"].num_heads, f["adm-128"].num_head_channels) == (4, -1)
    assert f["adm-256-uncond"].attention_resolutions == (32, 16, 8)
    assert f["adm-512"].channel_mult[0] == 0.5 and f["adm-512"].attention_resolutions == (32, 16, 8)
    assert all(c.learn_sigma and c.resblock_updown and c.use_scale_shift_norm for c in f.values())
    assert f["adm-256"].num_classes == 1000 and f["adm-256-uncond"].num_classes is None


@pytest.mark.parametrize("family", list(TINY))
def test_tiny_family_round_trips_through_load_prior(tiny, loaded, family):
    cfg, net, _ = tiny[family]
    prior = loaded(family)
    assert isinstance(prior, fs.priors.ADMPrior)
    assert prior.config == cfg
    d = prior.describe()["adm"]
    assert (d["family"], d["family_match"]) == (family, "structure")
    assert d["config"]["channel_mult"] == list(cfg.channel_mult)
    assert prior.state_shape == (3, cfg.image_size, cfg.image_size)
    assert prior.learned_variance and prior.parameterization == "eps"
    expected = VPS[cfg.noise_schedule]
    assert torch.equal(prior.schedule.alphas_cumprod, expected.alphas_cumprod)
    x, t = _inputs(cfg)
    y = torch.full((2,), 3) if cfg.num_classes else None
    with torch.no_grad():
        assert torch.equal(prior.network(x, t), net(x, t, y))
        den = prior.denoise(x, 640)
        raw = net(x, torch.tensor([640.0, 640.0]), y)
    a, s = prior.schedule.alpha_sigma(640)
    assert torch.equal(den.eps, raw[:, :3]) and torch.equal(den.v, raw[:, 3:])
    assert torch.allclose(den.x0, (x - float(s) * raw[:, :3]) / float(a), atol=1e-5)


def test_inference_covers_every_structural_option(tmp_path):
    """No attention levels besides the middle, avg-pool/nearest resampling, additive time embedding, ε only."""
    cfgs = [
        dataclasses.replace(SMALL, attention_ds=(), conv_resample=False, use_scale_shift_norm=False, out_channels=3),
        dataclasses.replace(SMALL, channel_mult=(1, 2, 2), num_res_blocks=2, attention_ds=(1, 4), conv_resample=True),
        dataclasses.replace(SMALL, resblock_updown=True, num_classes=10, in_channels=1, out_channels=2),
        dataclasses.replace(SMALL, channel_mult=(1,), num_res_blocks=3, attention_ds=(1,)),
    ]
    for i, cfg in enumerate(cfgs):
        net = randomize(ADMUNet(cfg), i)
        got, info = A.infer_adm_config(net.state_dict())
        assert got.image_size == 2 ** (cfg.levels + 2)  # not in the weights: guided-diffusion's size for the levels
        assert dataclasses.replace(got, image_size=8) == cfg, (i, got)
        assert info["family"] is None
        label = 1 if cfg.num_classes else None
        prior = fs.load_prior(save(net, tmp_path / f"{i}.pt"), class_label=label, adm_config={"image_size": 8})
        assert prior.config == cfg and prior.learned_variance == (cfg.out_channels == 2 * cfg.in_channels)
        x = torch.randn(1, cfg.in_channels, 8, 8)
        with torch.no_grad():
            y = torch.ones(1, dtype=torch.long) if cfg.num_classes else None
            assert torch.equal(prior.network(x, torch.tensor([5.0])), net(x, torch.tensor([5.0]), y))


def test_unrecognised_architecture_gets_guided_diffusion_defaults(tmp_path):
    prior = fs.load_prior(save(randomize(ADMUNet(SMALL)), tmp_path / "mine.pt"))
    d = prior.describe()["adm"]
    assert d["family"] is None and "num_heads" in d["defaulted"] and "noise_schedule" in d["defaulted"]
    c = prior.config
    assert (c.num_heads, c.num_head_channels, c.use_new_attention_order, c.noise_schedule) == (4, -1, False, "linear")
    assert c.image_size == 16  # 2^(levels+2): guided-diffusion's default channel multipliers by size


def test_overrides_dict_and_model_flags_string(tiny, tmp_path):
    cfg, _, path = tiny["adm-256-uncond"]
    flags = (
        "--attention_resolutions 4,2,1 --class_cond False --diffusion_steps 1000 --image_size 32 --learn_sigma True "
        "--noise_schedule cosine --num_channels 32 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True "
        "--use_fp16 True --use_scale_shift_norm True --dropout 0.1"
    )
    prior = fs.load_prior(path, adm_config=flags)
    assert prior.config == dataclasses.replace(cfg, noise_schedule="cosine")
    assert torch.equal(prior.schedule.alphas_cumprod, VPS["cosine"].alphas_cumprod)
    assert prior.describe()["adm"]["overridden"] == ["image_size", "noise_schedule"]  # the others repeat the family
    with pytest.raises(ValueError, match="num_res_blocks=3 contradicts the checkpoint"):
        fs.load_prior(path, adm_config={"num_res_blocks": 3})
    inferred, info = A.infer_adm_config(tiny["adm-256-uncond"][1].state_dict())
    for bad, match in [
        ("--num_channels 256", "model_channels=256 contradicts"),
        ({"class_cond": True}, "class_cond=True contradicts"),
        ({"learn_sigma": False}, "learn_sigma=False contradicts"),
        ({"num_chanels": 32}, "unknown key 'num_chanels'"),
        ({"noise_schedule": "sigmoid"}, "noise_schedule must be one of"),
        ("--image_size", "'--name value' pairs"),
    ]:
        with pytest.raises(ValueError, match=match):
            A.apply_overrides(inferred, info, bad)
    with pytest.raises(ValueError, match="heads of 48"):
        A.apply_overrides(inferred, info, {"num_head_channels": 48})[0].validate()
    new, changed = A.apply_overrides(inferred, info, {"attention_resolutions": "32,16,8", "image_size": 256})
    assert new.attention_ds == inferred.attention_ds and changed == []


def test_safetensors_file_and_wrapped_state_dicts(tiny, tmp_path):
    from safetensors.torch import save_file

    cfg, net, _ = tiny["ffhq-256"]
    sd = net.state_dict()
    save_file(sd, str(tmp_path / "ffhq.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "step": 3}, tmp_path / "wrapped.pt")
    x, t = _inputs(cfg)
    ref = net(x, t)
    for name in ("ffhq.safetensors", "wrapped.pt"):
        prior = fs.load_prior(tmp_path / name, adm_config={"image_size": 32})
        assert prior.config == cfg
        with torch.no_grad():  # safetensors' buffers are only 8-byte aligned: kernels may round differently
            assert torch.allclose(prior.network(x, t), ref, rtol=0, atol=1e-5)


# --- class conditioning -----------------------------------------------------------------------------------------------


def test_class_label(tiny):
    cfg, net, path = tiny["adm-256"]
    with pytest.raises(ValueError, match=r"class-conditional ADM \(1000 classes\): pass class_label=N"):
        fs.load_prior(path, adm_config={"image_size": 32})
    with pytest.raises(ValueError, match=r"class_label must be an integer in 0\.\.999"):
        fs.load_prior(path, adm_config={"image_size": 32}, class_label=1000)
    with pytest.raises(ValueError, match="unconditional ADM: it takes no class_label"):
        fs.load_prior(tiny["adm-256-uncond"][2], adm_config={"image_size": 32}, class_label=3)
    with pytest.raises(ValueError, match="apply to OpenAI guided-diffusion checkpoint files"):
        fs.load_prior("builtin:mnist-ddpm", class_label=3)
    a = _load(tiny, "adm-256", class_label=207)
    b = _load(tiny, "adm-256", class_label=208)
    assert a.describe()["adm"]["class_label"] == 207
    x, t = _inputs(cfg)
    with torch.no_grad():
        ya, yb = a.network(x, t), b.network(x, t)
        assert torch.equal(ya, net(x, t, torch.full((2,), 207)))
        assert not torch.allclose(ya, yb)
        b.class_label = 207
        assert torch.equal(b.network(x, t), ya)


# --- attention --------------------------------------------------------------------------------------------------------


def _einsum_attention(qkv: torch.Tensor, heads: int, new_order: bool) -> torch.Tensor:
    """Straightforward reference: per head, softmax(q·k / √ch) applied to v, with either channel layout."""
    b, c3, t = qkv.shape
    ch = c3 // (3 * heads)
    if new_order:  # [q | k | v], each [heads · ch]
        q, k, v = (z.reshape(b * heads, ch, t) for z in qkv.chunk(3, dim=1))
    else:  # per head [q k v]
        q, k, v = qkv.reshape(b * heads, 3 * ch, t).split(ch, dim=1)
    w = torch.einsum("nct,ncs->nts", q, k) / math.sqrt(ch)
    w = torch.softmax(w.float(), dim=-1).to(q.dtype)
    return torch.einsum("nts,ncs->nct", w, v).reshape(b, heads * ch, t)


def test_attention_orders_match_the_einsum_reference_and_differ():
    torch.manual_seed(0)
    qkv = torch.randn(2, 3 * 4 * 16, 25)
    legacy, new = U.attention(qkv, 4, False), U.attention(qkv, 4, True)
    assert torch.allclose(legacy, _einsum_attention(qkv, 4, False), atol=1e-5)
    assert torch.allclose(new, _einsum_attention(qkv, 4, True), atol=1e-5)
    assert (legacy - new).abs().max() > 0.1  # the order matters, so the checks above are not vacuous
    block = randomize(U.AttentionBlock(64, 4, new_order=False))
    x = torch.randn(2, 64, 5, 5)
    ref = x.flatten(2) + block.proj_out(_einsum_attention(block.qkv(block.norm(x.flatten(2))), 4, False))
    assert torch.allclose(block(x), ref.view_as(x), atol=1e-5)
    block.new_order = True
    assert not torch.allclose(block(x), ref.view_as(x), atol=1e-3)


def test_network_attention_order_changes_the_output(tiny, loaded):
    cfg, _, path = tiny["ffhq-256"]
    legacy = loaded("ffhq-256")
    new = fs.load_prior(path, adm_config={"image_size": 32, "use_new_attention_order": True})
    x, t = _inputs(cfg)
    with torch.no_grad():
        assert (legacy.network(x, t) - new.network(x, t)).abs().max() > 1e-3


# --- precision and memory ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float16, 0.02), (torch.bfloat16, 0.1)])
def test_half_weights_keep_groupnorm_softmax_and_embeddings_in_fp32(tiny, loaded, monkeypatch, dtype, tol):
    cfg, _, _ = tiny["adm-64"]
    ref = loaded("adm-64")
    half = _load(tiny, "adm-64", dtype=dtype)
    u = half.unet
    assert u.input_blocks[1][0].in_layers[2].weight.dtype == dtype  # block convolutions converted
    assert u.middle_block[1].qkv.weight.dtype == dtype
    kept = (u.time_embed[0], u.label_emb, u.out[2], u.input_blocks[1][0].emb_layers[1], u.middle_block[0].in_layers[0])
    for m in kept:
        assert m.weight.dtype == torch.float32  # as the original's convert_to_fp16
    seen: dict[str, set[torch.dtype]] = {"group_norm": set(), "sdpa": set()}
    gn, sdpa = torch.nn.functional.group_norm, torch.nn.functional.scaled_dot_product_attention

    def group_norm(x, *a, **k):
        seen["group_norm"].add(x.dtype)
        return gn(x, *a, **k)

    def attention(q, *a, **k):
        seen["sdpa"].add(q.dtype)
        return sdpa(q, *a, **k)

    monkeypatch.setattr(torch.nn.functional, "group_norm", group_norm)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", attention)
    x, t = _inputs(cfg)
    with torch.no_grad():
        a = ref.network(x, t)
        for v in seen.values():
            v.clear()  # only the half-precision run counts
        b = half.network(x, t)
    assert seen == {"group_norm": {torch.float32}, "sdpa": {dtype}}
    assert b.dtype == torch.float32
    err = float((a - b).abs().max() / a.abs().max())
    assert 0 < err < tol, err


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_attention_is_as_accurate_as_the_originals_fp32_softmax(dtype):
    """SDPA in half precision (fp32 accumulation) against the original recipe (half einsums, fp32 softmax)."""
    torch.manual_seed(1)
    qkv = (3 * torch.randn(2, 3 * 2 * 64, 49)).to(dtype)
    exact = _einsum_attention(qkv.double(), 2, False)
    ours = (U.attention(qkv, 2, False).double() - exact).abs().max()
    original = (_einsum_attention(qkv, 2, False).double() - exact).abs().max()
    assert ours <= original


def test_gradient_checkpointing_gives_the_same_gradients(tiny, loaded, monkeypatch):
    cfg, _, _ = tiny["ffhq-256"]
    plain = loaded("ffhq-256")
    ckpt = _load(tiny, "ffhq-256", gradient_checkpointing=True)
    calls = []
    real = U.checkpoint

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(U, "checkpoint", counting)
    x, t = _inputs(cfg)
    grads = []
    for prior in (plain, ckpt):
        xi = x.clone().requires_grad_(True)
        (prior.network(xi, t) ** 2).sum().backward()
        grads.append(xi.grad)
    n_blocks = sum(isinstance(m, (U.ResBlock, U.AttentionBlock)) for m in ckpt.unet.modules())
    assert len(calls) == n_blocks  # every residual and attention block, once, in the checkpointed run only
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # no recomputation needed without gradients
        ckpt.network(x, t)
    assert len(calls) == n_blocks


# --- the paper's preset -----------------------------------------------------------------------------------------------


def test_paper_imagenet_preset_runs_on_an_adm_prior(tmp_path):
    """learned_range variance, the ancestral sampler with ancestral_rescaled, per-timestep targets; fewer steps."""
    prior = fs.load_prior(save(randomize(ADMUNet(SMALL)), tmp_path / "small.pt"), adm_config={"image_size": 8})
    method = fs.NDTM.preset("paper-imagenet-dinov2", steps=21, inner_steps=1)
    q = torch.rand(1, 3, 8, 8) * 2 - 1
    out = fs.sample_fiber(TinyCNN(channels=3), q, prior, n=2, method=method, seed=0, progress=False)
    assert out.images.shape == (2, 3, 8, 8) and torch.isfinite(out.fiber_loss).all()
    assert out.config["method"]["variance"] == "learned_range" and out.config["method"]["ancestral_rescaled"]
    assert out.counts["prior_forwards"] > 0 and out.counts["prior_backwards"] > 0
    assert out.images.abs().max() <= 1


@pytest.mark.slow
def test_paper_imagenet_preset_unchanged_on_an_adm_prior(loaded):
    prior = loaded("adm-256-uncond")
    method = fs.NDTM.preset("paper-imagenet-dinov2")
    q = torch.rand(1, 3, 32, 32) * 2 - 1
    out = fs.sample_fiber(TinyCNN(channels=3), q, prior, n=1, method=method, seed=0, progress=False)
    assert method.steps == 200 and method.inner_steps == 5
    assert torch.isfinite(out.fiber_loss).all() and out.images.abs().max() <= 1


# --- bad input --------------------------------------------------------------------------------------------------------


def test_not_an_adm_state_dict(tmp_path):
    torch.save({"conv.weight": torch.zeros(3, 3, 3, 3), "fc.bias": torch.zeros(3)}, tmp_path / "resnet.pt")
    with pytest.raises(fs.errors.CheckpointError, match=r"resnet\.pt.*not an ADM .*first keys are 'conv\.weight'"):
        fs.load_prior(tmp_path / "resnet.pt")
    torch.save({"out.2.qkv_proj.weight": torch.zeros(1), "time_embed.0.weight": torch.zeros(4, 1)}, tmp_path / "c.pt")
    with pytest.raises(fs.errors.CheckpointError, match="classifier"):
        fs.load_prior(tmp_path / "c.pt")
    torch.save({}, tmp_path / "empty.pt")
    with pytest.raises(fs.errors.CheckpointError, match="empty"):
        fs.load_prior(tmp_path / "empty.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint" * 8)
    with pytest.raises(fs.errors.CheckpointError, match=r"junk\.pt: not a torch checkpoint"):
        fs.load_prior(tmp_path / "junk.pt")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(fs.errors.CheckpointError, match="only prior files fiberscope reads"):
        fs.load_prior(tmp_path / "notes.txt")


def test_missing_unexpected_and_misshaped_keys_are_named(tiny, tmp_path):
    _, net, _ = tiny["ffhq-256"]
    sd = dict(net.state_dict())
    del sd["input_blocks.2.0.out_layers.3.bias"]
    sd["input_blocks.1.0.extra.weight"] = torch.zeros(2)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(fs.errors.CheckpointError) as e:
        fs.load_prior(tmp_path / "bad.pt")
    msg = str(e.value)
    assert "\n" not in msg and "bad.pt" in msg
    assert "1 missing key(s): input_blocks.2.0.out_layers.3.bias" in msg
    assert "1 unexpected key(s): input_blocks.1.0.extra.weight" in msg
    sd = dict(net.state_dict())
    sd["middle_block.1.proj_out.weight"] = torch.zeros(3, 3, 1)
    sd["deepinv_buffer"] = torch.zeros(1)
    torch.save(sd, tmp_path / "shape.pt")
    with pytest.raises(fs.errors.CheckpointError, match=r"unexpected key\(s\) 'deepinv_buffer'"):
        fs.load_prior(tmp_path / "shape.pt")
    del sd["deepinv_buffer"]
    torch.save(sd, tmp_path / "shape.pt")
    with pytest.raises(fs.errors.CheckpointError, match=r"middle_block\.1\.proj_out\.weight is \[3, 3, 1\], expected"):
        fs.load_prior(tmp_path / "shape.pt")


def test_pickle_needing_full_unpickling_is_refused(tiny, tmp_path):
    import fractions

    _, net, _ = tiny["ffhq-256"]
    torch.save({"state_dict": net.state_dict(), "args": fractions.Fraction(1, 3)}, tmp_path / "full.pt")
    with pytest.raises(fs.errors.PickleRefusedError, match=r"full\.pt.*weights_only=True.*fractions\.Fraction"):
        fs.load_prior(tmp_path / "full.pt")


def test_image_sizes_the_adm_cannot_take(tiny, loaded):
    path = tiny["adm-256-uncond"][2]
    with pytest.raises(ValueError, match=r"image_size 40: .* multiples of 32 \(32, 64, 128, 256, \.\.\."):
        fs.load_prior(path, adm_config={"image_size": 40})
    prior = loaded("adm-256-uncond")
    with pytest.raises(ValueError, match=r"input 48×40: .*multiples of 32"):
        prior.denoise(torch.zeros(1, 3, 48, 40), 10)
    other, _ = A.apply_overrides(prior.config, prior.info, {"image_size": 64})  # widths differ: any multiple works
    assert other.image_size == 64
    # a recognised published checkpoint runs at its native size unless asked otherwise
    with torch.device("meta"):
        sd = ADMUNet(ADM_FAMILIES["adm-256-uncond"]["config"]).state_dict()
    config, info = A.infer_adm_config(sd, "256x256_diffusion_uncond.pt")
    with pytest.raises(ValueError, match=r"trained at 256×256.*'allow_other_size': True"):
        A.apply_overrides(config, info, {"image_size": 128})
    other, _ = A.apply_overrides(config, info, {"image_size": 128, "allow_other_size": True})
    assert other.image_size == 128
    with pytest.raises(ValueError, match="multiples of 32"):
        A.apply_overrides(config, info, {"image_size": 100, "allow_other_size": True})


def test_super_resolution_checkpoints_are_refused_clearly(tmp_path):
    net = ADMUNet(dataclasses.replace(SMALL, in_channels=6, out_channels=6))
    with pytest.raises(fs.errors.CheckpointError, match="super-resolution"):
        fs.load_prior(save(net, tmp_path / "64_256_upsampler.pt"))


def test_cli_maps_a_bad_checkpoint_to_exit_8(tmp_path, capsys):
    torch.save({"w": torch.zeros(2)}, tmp_path / "bad.pt")
    (tmp_path / "q.npy").write_bytes(b"")
    args = ["sample", str(tmp_path / "q.npy"), "--prior", str(tmp_path / "bad.pt"), "--subject", "x:y"]
    code = main([*args, "--out", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err
    assert code == EXIT["weights"], err
    assert err.count("\n") == 1 and "bad.pt" in err and "first keys are 'w'" in err


# --- parity with an independent implementation (slow: the real 552 M-parameter architecture) -------------------------


def _deepinv_parity(tmp_path, large_model: bool, family: str) -> None:
    dinv = pytest.importorskip("deepinv")
    torch.manual_seed(0)
    ref = dinv.models.DiffUNet(in_channels=3, out_channels=3, large_model=large_model, pretrained=None).eval()
    randomize(ref, seed=1)  # its output convolutions start at zero: a test on that init would prove nothing
    sd = ref.state_dict()
    extra = sorted(k for k in sd if not k.startswith(adm_checkpoint._TOP))
    assert extra == ["sqrt_1m_alphas_cumprod", "sqrt_alphas_cumprod"]  # deepinv's schedule buffers, not the UNet's
    path = tmp_path / "model.pt"
    torch.save({k: v for k, v in sd.items() if k not in extra}, path)
    del sd
    prior = fs.load_prior(path)
    assert prior.describe()["adm"]["family"] == family and prior.describe()["adm"]["family_match"] == "exact"
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    try:
        for t in (3, 420, 999):
            with torch.no_grad():
                want = ref.forward_diffusion(x, torch.tensor([t]))
                den = prior.denoise(x, t)
            assert want.abs().max() > 0.1
            d_eps = float((den.eps - want[:, :3]).abs().max())
            d_v = float((den.v - want[:, 3:]).abs().max())
            print(f"deepinv parity, {family}, t={t}: max |Δε| {d_eps:.2e}, max |Δv| {d_v:.2e}")
            assert d_eps <= 1e-4 and d_v <= 1e-4, (t, d_eps, d_v)
    finally:
        del ref, prior
        gc.collect()


@pytest.mark.slow
def test_parity_with_deepinv_diffunet_at_the_256_uncond_size(tmp_path):
    _deepinv_parity(tmp_path, large_model=True, family="adm-256-uncond")


@pytest.mark.slow
def test_parity_with_deepinv_diffunet_small_is_the_ffhq_model(tmp_path):
    _deepinv_parity(tmp_path, large_model=False, family="ffhq-256")


# --- the CLI and manifests name an ADM checkpoint by a string --------------------------------------------------------


def test_options_in_the_prior_spec(tiny):
    cfg, net, path = tiny["adm-256"]
    spec = f"{path}?class_label=207&image_size=32"
    prior = fs.load_prior(spec)
    assert (prior.class_label, prior.config.image_size, prior.name) == (207, 32, spec)
    x, t = _inputs(cfg)
    with torch.no_grad():
        assert torch.equal(prior.network(x, t), net(x, t, torch.full((2,), 207)))
    assert A.parse_spec_options("use_new_attention_order=true&noise_schedule=cosine") == (
        {"use_new_attention_order": True, "noise_schedule": "cosine"},
        None,
    )
    with pytest.raises(ValueError, match="carries options; do not pass adm_config/class_label as well"):
        fs.load_prior(f"{path}?class_label=1&image_size=32", class_label=2)
    with pytest.raises(ValueError, match="'name=value' pairs"):
        fs.load_prior(f"{path}?class_label")
    with pytest.raises(ValueError, match="class_label must be an integer, got 'dog'"):
        fs.load_prior(f"{path}?class_label=dog")
    with pytest.raises(fs.ModelNotAvailableError):
        fs.load_prior(f"{path}.missing?class_label=1")


def test_audit_model_cache_passes_gradient_checkpointing():
    from fiberscope.audit.unit import ModelCache, RunOptions

    seen = []

    def loader(spec, **kw):
        seen.append(kw)
        return object()

    ModelCache(RunOptions(device="cpu"), load_prior=loader).prior("a.pt")
    ModelCache(RunOptions(device="cpu", gradient_checkpointing=True), load_prior=loader).prior("a.pt")
    assert "gradient_checkpointing" not in seen[0] and seen[1]["gradient_checkpointing"] is True


def test_the_adm_module_keeps_its_names_and_the_moved_parts_warn():
    """priors/adm.py was split into the network (adm_unet), checkpoint reading (adm_checkpoint) and the prior."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from fiberscope.priors.adm import (  # noqa: F401
            ADM_FAMILIES,
            ADMConfig,
            ADMPrior,
            ADMUNet,
            apply_overrides,
            build_adm,
            infer_adm_config,
            load_adm_prior,
            parse_spec_options,
            read_state_dict,
        )
    assert ADMUNet is U.ADMUNet and infer_adm_config is adm_checkpoint.infer_adm_config
    for name in ("attention", "AttentionBlock", "ResBlock", "GroupNorm32", "timestep_embedding", "NOISE_SCHEDULES"):
        with pytest.warns(DeprecationWarning, match=rf"adm\.{name} has moved to fiberscope\.priors\.adm_unet\.{name}"):
            assert getattr(A, name) is getattr(U, name)
    with pytest.warns(DeprecationWarning, match="adm_checkpoint.INFERRED"):
        assert A.INFERRED is adm_checkpoint.INFERRED
