"""Library subjects (torchvision, timm, open_clip, transformers, Qwen2-VL) built tiny, random and offline.

Each adapter is loaded by spec, checked (eval mode, frozen, differentiable, preprocessing from the
library's config, layer choices) and run end to end through ``sample_fiber`` on a tiny RGB prior.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import fiberscope as fs
from conftest import tiny_unet
from fiberscope.loading import subject_layers
from fiberscope.subjects.library import LibrarySubject

METHOD = fs.NDTM(steps=2, inner_steps=1, lr=0.05, gamma=1.0)


@pytest.fixture(scope="module")
def rgb_prior(tmp_path_factory):
    from diffusers import DDPMPipeline, DDPMScheduler

    d = tmp_path_factory.mktemp("prior") / "rgb-ddpm"
    DDPMPipeline(unet=tiny_unet(channels=3, size=16), scheduler=DDPMScheduler()).save_pretrained(str(d))
    return fs.load_prior(d)


@pytest.fixture(scope="module")
def query():
    skimage_data = pytest.importorskip("skimage.data")
    return skimage_data.chelsea()  # a photograph; converted to the prior's 3×16×16 by load_query


def _frozen_eval(subject) -> None:
    assert isinstance(subject, LibrarySubject) and subject.input_range == (0.0, 1.0)
    mods = list(subject.modules())
    assert all(not m.training for m in mods)
    assert all(not p.requires_grad for p in subject.parameters())


def _end_to_end(subject, prior, query, n: int = 1):
    out = fs.sample_fiber(subject, query, prior, n=n, method=METHOD, progress=False)
    assert out.images.shape == (n, 3, 16, 16)
    assert torch.isfinite(out.fiber_loss).all() and out.counts["subject_backwards"] > 0
    assert out.config["subject"]["preprocess"]["source"]
    return out


# --- torchvision -------------------------------------------------------------------------------------------------


def test_torchvision_nodes_hooks_and_sampling(rgb_prior, query):
    pytest.importorskip("torchvision")
    phi = fs.load_subject("torchvision:mobilenet_v3_small", layer="features.3.block.0", weights=None)
    _frozen_eval(phi)
    pre = phi.describe()["preprocess"]
    assert pre["resize"] == ["shortest", 256] and pre["crop"] == [224, 224] and pre["interpolation"] == "bilinear"
    assert phi.describe()["extractor"] == "fx"
    x = torch.rand(2, 3, 16, 16)
    assert phi(x, (0, 1)).shape == (2, 88, 28, 28)
    nodes = fs.load_subject("torchvision:mobilenet_v3_small", layer={"features.2": 1.0, "flatten": 2.0}, weights=None)
    assert nodes(x, (0, 1)).shape == (2, 24 * 28 * 28 + 576)
    _end_to_end(phi, rgb_prior, query)


def test_torchvision_cached_weights_are_read_with_weights_only(tmp_path, monkeypatch):
    tv = pytest.importorskip("torchvision")
    from fiberscope.subjects.torchvision import cached_weights_path

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(fs.ModelNotAvailableError, match="not cached"):
        fs.load_subject("torchvision:mobilenet_v3_small")
    w = tv.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1
    torch.manual_seed(0)
    state = tv.models.mobilenet_v3_small().state_dict()
    path = cached_weights_path(w)
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    phi = fs.load_subject("torchvision:mobilenet_v3_small/IMAGENET1K_V1")
    assert torch.equal(phi.fn.classifier[3].weight, state["classifier.3.weight"])
    assert phi.describe()["weights"] == str(w)


def test_torchvision_falls_back_to_hooks_when_tracing_fails():
    pytest.importorskip("torchvision")
    from torch import nn

    from fiberscope.subjects.torchvision import NodeFeatures

    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)

        def forward(self, x):
            if int(x.shape[-1]) > 0 and float(x.mean()) > -1e9:  # data-dependent control flow
                x = self.a(x)
            return self.b(x)

    f = NodeFeatures(Untraceable(), ["a"], [1.0])
    assert f.mode == "hooks" and f(torch.rand(2, 3, 8, 8)).shape == (2, 4, 6, 6)
    with pytest.raises(ValueError, match="not graph nodes or module paths"):
        NodeFeatures(Untraceable(), ["c"], [1.0])


# --- timm --------------------------------------------------------------------------------------------------------


def test_timm_layers_and_sampling(rgb_prior, query):
    timm = pytest.importorskip("timm")
    phi = fs.load_subject("timm:test_resnet", layer=3, pretrained=False)
    _frozen_eval(phi)
    model = phi.fn.inner.model
    cfg = timm.data.resolve_model_data_config(model)
    assert phi.describe()["preprocess"]["crop"] == list(cfg["input_size"][1:])
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        ref = model.forward_intermediates(phi.preprocess(x), indices=[3], intermediates_only=True)[0]
    assert torch.allclose(phi(x, (0, 1)), ref, atol=1e-6)
    pre = fs.load_subject("timm:test_resnet", layer="pre_logits", pretrained=False)
    assert pre(x, (0, 1)).shape == (2, model.num_features)
    hooked = fs.load_subject("timm:test_resnet", layer=["layer1", "layer2.0"], pretrained=False)
    assert hooked(x, (0, 1)).dim() == 2
    _end_to_end(phi, rgb_prior, query)


def test_timm_local_dir_weights_and_pickles(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False)
    d = tmp_path / "tiny-timm"
    d.mkdir()
    (d / "config.json").write_text(
        json.dumps({"architecture": "test_resnet", "num_classes": 1000, "pretrained_cfg": dict(model.pretrained_cfg)})
    )
    save_file(model.state_dict(), str(d / "model.safetensors"))
    phi = fs.load_subject(f"timm:local-dir:{d}", layer="pre_logits")
    assert torch.equal(phi.fn.inner.model.fc.weight, model.fc.weight)
    (d / "model.safetensors").unlink()
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    with pytest.raises(ValueError, match="does not unpickle"):
        fs.load_subject(f"timm:local-dir:{d}")
    phi = fs.load_subject(f"timm:local-dir:{d}", trust_pickle=True)
    assert torch.equal(phi.fn.inner.model.fc.weight, model.fc.weight)


# --- open_clip ---------------------------------------------------------------------------------------------------

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}
TINY_TIMM_CLIP = {  # a timm image tower, as BiomedCLIP's
    "embed_dim": 16,
    "vision_cfg": {
        "timm_model_name": "test_vit",
        "timm_model_pretrained": False,
        "timm_pool": "token",
        "timm_proj": "linear",
        "image_size": 160,
    },
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def open_clip_configs(tmp_path_factory):
    open_clip = pytest.importorskip("open_clip")
    d = tmp_path_factory.mktemp("oc")
    for name, cfg in (("fs-tiny-clip", TINY_CLIP), ("fs-tiny-timm-clip", TINY_TIMM_CLIP)):
        (d / f"{name}.json").write_text(json.dumps(cfg))
        open_clip.add_model_config(str(d / f"{name}.json"))
    return open_clip


def test_open_clip_encode_image_and_sampling(open_clip_configs, rgb_prior, query):
    phi = fs.load_subject("open_clip:fs-tiny-clip", pretrained=False)
    _frozen_eval(phi)
    model = phi.fn.model
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        ref = model.encode_image(phi.preprocess(x))
    assert torch.allclose(phi(x, (0, 1)), ref, atol=1e-6)
    assert phi.describe()["preprocess"]["interpolation"] == "bicubic"
    block = fs.load_subject("open_clip:fs-tiny-clip", layer="transformer.resblocks.0", pretrained=False)
    assert block(x, (0, 1)).shape == (2, 17, 32)
    with pytest.raises(ValueError, match="pretrained tag"):
        fs.load_subject("open_clip:fs-tiny-clip")
    _end_to_end(phi, rgb_prior, query)


def test_open_clip_timm_tower_from_a_local_dir(open_clip_configs, tmp_path, rgb_prior, query):
    """BiomedCLIP's layout: open_clip_config.json + weights via ``local-dir:`` (what ``hf-hub:`` resolves to)."""
    from safetensors.torch import save_file

    oc = open_clip_configs
    torch.manual_seed(0)
    model = oc.create_model("fs-tiny-timm-clip", pretrained=None)
    d = tmp_path / "biomedclip-like"
    d.mkdir()
    pre_cfg = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear"}
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_TIMM_CLIP, "preprocess_cfg": pre_cfg}))
    torch.save(model.state_dict(), d / "open_clip_pytorch_model.bin")
    with pytest.raises(ValueError, match="does not unpickle"):
        fs.load_subject(f"open_clip:local-dir:{d}")
    phi = fs.load_subject(f"open_clip:local-dir:{d}", trust_pickle=True)
    _frozen_eval(phi)
    assert torch.equal(phi.fn.model.visual.trunk.patch_embed.proj.weight, model.visual.trunk.patch_embed.proj.weight)
    assert phi.describe()["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    assert phi.describe()["preprocess"]["interpolation"] == "bilinear"
    save_file(model.state_dict(), str(d / "open_clip_model.safetensors"))
    blocks = fs.load_subject(f"open_clip:local-dir:{d}", layer=0)  # trunk.forward_intermediates index
    assert blocks(torch.rand(1, 3, 16, 16), (0, 1)).shape == (1, 64, 10, 10)
    _end_to_end(phi, rgb_prior, query)


def test_open_clip_hf_hub_spec_reads_the_local_cache(open_clip_configs, tmp_path, monkeypatch):
    """``open_clip:hf-hub:org/name`` (BiomedCLIP's spec) resolves to a cached snapshot, never the network."""
    from huggingface_hub import constants
    from safetensors.torch import save_file

    repo = tmp_path / "hub" / "models--fs-test--biomedclip-like"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    torch.manual_seed(0)
    model = open_clip_configs.create_model("fs-tiny-timm-clip", pretrained=None)
    (snapshot / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_TIMM_CLIP, "preprocess_cfg": {}}))
    save_file(model.state_dict(), str(snapshot / "open_clip_model.safetensors"))
    phi = fs.load_subject("open_clip:hf-hub:fs-test/biomedclip-like")
    _frozen_eval(phi)
    assert torch.equal(phi.fn.model.visual.trunk.patch_embed.proj.weight, model.visual.trunk.patch_embed.proj.weight)
    assert phi(torch.rand(2, 3, 16, 16), (0, 1)).shape == (2, 16)
    with pytest.raises(fs.ModelNotAvailableError, match="fs-test/not-cached"):
        fs.load_subject("open_clip:hf-hub:fs-test/not-cached")


# --- transformers --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    tr = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    dino = tr.Dinov2Config(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, image_size=28, patch_size=14
    )
    tr.Dinov2Model(dino).save_pretrained(root / "dinov2")
    tr.BitImageProcessor(  # DINOv2's processor, scaled down: shortest edge 32, centre crop 28, bicubic
        size={"shortest_edge": 32},
        crop_size={"height": 28, "width": 28},
        do_center_crop=True,
        resample=3,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(root / "dinov2")
    vision = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_attention_heads": 2,
        "num_hidden_layers": 1,
        "image_size": 28,
        "patch_size": 14,
    }
    text = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_attention_heads": 2,
        "num_hidden_layers": 1,
        "vocab_size": 64,
        "max_position_embeddings": 8,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 1,
    }
    tr.CLIPModel(tr.CLIPConfig(vision_config=vision, text_config=text, projection_dim=8)).save_pretrained(root / "clip")
    tr.CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}).save_pretrained(
        root / "clip"
    )
    vit = tr.ViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=28, patch_size=14
    )
    tr.ViTModel(vit).save_pretrained(root / "vit")
    tr.ViTImageProcessor(size={"height": 28, "width": 28}).save_pretrained(root / "vit")
    return root


def test_dinov2_layers_match_the_model(hf_dirs, rgb_prior, query):
    phi = fs.load_subject(f"hf:{hf_dirs / 'dinov2'}")  # default: cls
    _frozen_eval(phi)
    assert phi.layer == "cls"
    pre = phi.describe()["preprocess"]
    assert pre["resize"] == ["shortest", 32] and pre["crop"] == [28, 28] and pre["interpolation"] == "bicubic"
    x = torch.rand(2, 3, 16, 16)
    model = phi.fn.model
    with torch.no_grad():
        out = model(pixel_values=phi.preprocess(x), output_hidden_states=True)
    expect = {
        "cls": out.last_hidden_state[:, 0],
        "mean": out.last_hidden_state[:, 1:].mean(1),
        "pooler": out.pooler_output,
        "hidden:1": out.hidden_states[1],
        "hidden:-1:mean": out.hidden_states[-1][:, 1:].mean(1),
        "encoder.layer.0": out.hidden_states[1],
    }
    for layer, ref in expect.items():
        got = fs.load_subject(f"hf:{hf_dirs / 'dinov2'}", layer=layer)(x, (0, 1))
        assert torch.allclose(got, ref, atol=1e-5), layer
    with pytest.raises(ValueError, match="hidden:N"):
        fs.load_subject(f"hf:{hf_dirs / 'dinov2'}", layer="hidden:x")
    _end_to_end(fs.load_subject(f"hf:{hf_dirs / 'dinov2'}", layer="mean"), rgb_prior, query)


def test_clip_and_vit_towers(hf_dirs, rgb_prior, query):
    clip = fs.load_subject(f"hf:{hf_dirs / 'clip'}")  # default: the projected image embedding
    assert clip.layer == "embeds"
    x = torch.rand(2, 3, 16, 16)
    model = clip.fn.model
    with torch.no_grad():
        ref = model.get_image_features(pixel_values=clip.preprocess(x))
    ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
    assert torch.allclose(clip(x, (0, 1)), ref, atol=1e-5) and ref.shape == (2, 8)
    assert fs.load_subject(f"hf:{hf_dirs / 'clip'}", layer="pooler")(x, (0, 1)).shape == (2, 16)
    vit = fs.load_subject(f"hf:{hf_dirs / 'vit'}", layer="mean")
    assert vit.describe()["preprocess"]["resize"] == ["exact", [28, 28]]
    _end_to_end(clip, rgb_prior, query)
    _end_to_end(vit, rgb_prior, query)


def test_qwen2vl_image_features_mean_pooled(tmp_path, rgb_prior, query):
    tr = pytest.importorskip("transformers")
    if not hasattr(tr, "Qwen2VLForConditionalGeneration"):
        pytest.skip("this transformers has no Qwen2-VL")
    torch.manual_seed(0)
    cfg = tr.Qwen2VLConfig(
        vision_config={
            "depth": 1,
            "embed_dim": 16,
            "hidden_size": 24,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        text_config={
            "hidden_size": 24,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "vocab_size": 64,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 2, 2]},
        },
    )
    d = tmp_path / "tiny-qwen2-vl"
    tr.Qwen2VLForConditionalGeneration(cfg).save_pretrained(d)
    proc_cls = getattr(tr, "Qwen2VLImageProcessorPil", None) or tr.Qwen2VLImageProcessor
    proc = proc_cls(min_pixels=56 * 56, max_pixels=56 * 56 * 4)
    proc.save_pretrained(d)
    phi = fs.load_subject(f"hf:{d}")
    _frozen_eval(phi)
    assert phi.layer == "mean" and phi.describe()["features"] == "get_image_features"
    # the processor's own output, through the model, equals the rebuilt differentiable path
    from PIL import Image

    img = (torch.rand(3, 40, 60, generator=torch.Generator().manual_seed(1)) * 255).round().to(torch.uint8)
    inputs = proc(images=Image.fromarray(img.permute(1, 2, 0).numpy()), return_tensors="pt")
    model = phi.fn.model
    with torch.no_grad():
        ref = model.get_image_features(pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"])
    ref = ref.pooler_output if hasattr(ref, "pooler_output") else ref
    ref = (ref[0] if isinstance(ref, (tuple, list)) else ref).mean(0)
    ours = phi(img[None].float() / 255, (0, 1))[0]
    assert ours.shape == ref.shape == (24,)
    assert torch.allclose(ours, ref, atol=0.05), float((ours - ref).abs().max())  # 8-bit rounding in PIL only
    assert fs.load_subject(f"hf:{d}", layer="tokens")(torch.rand(2, 3, 56, 56), (0, 1)).shape == (2, 4, 24)
    _end_to_end(phi, rgb_prior, query)


# --- registry, CLI, optional imports ----------------------------------------------------------------------------------


def test_layer_listings(hf_dirs, open_clip_configs, capsys):
    pytest.importorskip("timm")
    rows = dict(subject_layers("torchvision:resnet18"))
    assert "layer3.1.relu_1" in rows and rows["logits"].endswith("(default)")
    rows = dict(subject_layers("timm:test_resnet"))
    assert rows["3"].startswith("forward_intermediates index: layer3") and "pre_logits" in rows
    rows = dict(subject_layers(f"hf:{hf_dirs / 'dinov2'}"))
    assert {"cls", "mean", "pooler", "hidden:0", "hidden:2", "encoder.layer.1"} <= set(rows)
    assert "trunk.blocks.0" in dict(subject_layers("open_clip:fs-tiny-timm-clip"))
    from fiberscope.cli import main

    assert main(["layers", "timm:test_resnet", "--filter", "layer4"]) == 0
    out = capsys.readouterr().out
    assert "layer4  (" in out and "4  (forward_intermediates index: layer4" in out


def test_missing_optional_package_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match=r"pip install 'fiberscope\[timm\]'"):
        fs.load_subject("timm:resnet18")
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(ImportError, match=r"pip install 'fiberscope\[clip\]'"):
        fs.load_subject("open_clip:ViT-B-32/openai")
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"subject 'hf:.*' needs the transformers package: pip install"):
        fs.load_subject(f"hf:{tmp_path}")


def test_core_import_loads_no_optional_library():
    code = (
        "import sys, fiberscope, fiberscope.subjects, fiberscope.priors, fiberscope.cli\n"
        "print(sorted(m for m in ('timm', 'open_clip', 'transformers', 'torchvision') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_unknown_options_and_specs_fail_clearly():
    with pytest.raises(TypeError, match="apply to named subjects"):
        fs.load_subject(torch.nn.Identity(), weights=None)
    with pytest.raises(ValueError, match="names no model"):
        fs.load_subject("timm:")
    pytest.importorskip("timm")
    with pytest.raises(ValueError, match="did you mean"):
        fs.load_subject("timm:resnet5O", pretrained=False)


def test_preprocess_can_be_replaced(hf_dirs, tmp_path):
    import shutil

    from fiberscope.subjects import Preprocess

    d = tmp_path / "no-processor"
    shutil.copytree(hf_dirs / "dinov2", d)
    (d / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="preprocess="):
        fs.load_subject(f"hf:{d}")
    pre = Preprocess(resize=("exact", (28, 28)), interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3)
    phi = fs.load_subject(f"hf:{d}", layer="mean", preprocess=pre)
    assert phi.preprocess is pre and phi(torch.rand(1, 3, 16, 16), (0, 1)).shape == (1, 16)
    timm_phi = fs.load_subject("timm:test_resnet", pretrained=False, preprocess=pre)
    assert timm_phi.preprocess is pre
