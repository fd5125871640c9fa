"""Each library's preprocessing, rebuilt as tensor ops, against the library's own PIL/NumPy transform.

Real photographs: scikit-image's astronaut, chelsea and coffee, scikit-learn's china and flower.
The libraries resize 8-bit PIL images and round after each resampling pass; the rebuilt ops work
in float, so the remaining difference is that rounding: at most about 1/255 per pixel. The check
is therefore made in pixel units (the output with its normalisation undone, ``Δ·std``): max abs
≤ 1e-2 (observed ≤ 0.0043, i.e. ≤ 1.1/255), and mean abs ≤ 1.5e-3 (rounding noise averages 0.25/255).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fiberscope.subjects import preprocess as P

skimage_data = pytest.importorskip("skimage.data")
sklearn_datasets = pytest.importorskip("sklearn.datasets")


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {
        "astronaut": skimage_data.astronaut(),
        "chelsea": skimage_data.chelsea(),
        "coffee": skimage_data.coffee(),
        "china": sklearn_datasets.load_sample_image("china.jpg"),
        "flower": sklearn_datasets.load_sample_image("flower.jpg"),
    }


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.astype(np.float32) / 255.0).permute(2, 0, 1)[None]


def _check(pre: P.Preprocess, library, photos, *, pixel_tol: float = 1e-2, mean_tol: float = 1.5e-3) -> float:
    from PIL import Image

    worst = 0.0
    for name, a in photos.items():
        ref = library(Image.fromarray(a))
        ref = torch.as_tensor(np.asarray(ref, dtype=np.float32))
        if ref.dim() == 4:
            ref = ref[0]
        ours = pre(_tensor(a))[0]
        assert ours.shape == ref.shape, (name, tuple(ours.shape), tuple(ref.shape))
        diff = (ours - ref).abs() * pre.std.view(-1, 1, 1)  # in pixel units
        in_pixels = float(diff.max())
        assert in_pixels <= pixel_tol, f"{name}: max |Δ| = {in_pixels:.4f} in pixel units ({pre.config()})"
        assert float(diff.mean()) <= mean_tol, f"{name}: mean |Δ| = {float(diff.mean()):.5f} ({pre.config()})"
        worst = max(worst, in_pixels)
    return worst


# --- the resampling itself: exact against Pillow's float images --------------------------------------------------


@pytest.mark.parametrize("filt", ["bilinear", "bicubic", "box", "hamming", "lanczos"])
@pytest.mark.parametrize("size", [(224, 224), (300, 173), (700, 900), (37, 51)])
def test_resize_matches_pillow_float_resampling(photos, filt, size):
    from PIL import Image

    grey = photos["astronaut"][..., 0].astype(np.float32) / 255.0
    code = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "box": Image.BOX}.get(filt)
    code = code if code is not None else {"hamming": Image.HAMMING, "lanczos": Image.LANCZOS}[filt]
    ref = np.asarray(Image.fromarray(grey, mode="F").resize(size[::-1], code))
    ours = P.pil_resize(torch.from_numpy(grey)[None, None], size, filt, clamp=False)[0, 0].numpy()
    assert np.abs(ours - ref).max() < 1e-4


def test_preprocess_is_differentiable_and_batch_invariant():
    pre = P.Preprocess(resize=("shortest", 40), crop=(32, 32), interpolation="lanczos", mean=(0.5,) * 3, std=(0.2,) * 3)
    x = torch.rand(4, 1, 50, 70, generator=torch.Generator().manual_seed(0), requires_grad=True)
    y = pre(x)
    assert y.shape == (4, 3, 32, 32)
    (g,) = torch.autograd.grad((y * torch.randn_like(y)).sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    for i in range(4):
        assert torch.equal(pre(x[i : i + 1]), y[i : i + 1])


def test_channel_conversion_and_crop_rules():
    rgb = torch.rand(1, 3, 5, 6)
    grey = P.to_channels(rgb, 1)
    assert torch.allclose(grey[0, 0], 0.299 * rgb[0, 0] + 0.587 * rgb[0, 1] + 0.114 * rgb[0, 2])
    assert P.to_channels(grey, 3).shape == (1, 3, 5, 6)
    x = torch.arange(7.0).view(1, 1, 1, 7).expand(1, 1, 7, 7)
    assert P.center_crop(x, (4, 4), "round")[0, 0, 0].tolist() == [2.0, 3.0, 4.0, 5.0]  # round(1.5) = 2
    assert P.center_crop(x, (4, 4), "floor")[0, 0, 0].tolist() == [1.0, 2.0, 3.0, 4.0]
    padded = P.center_crop(torch.ones(1, 1, 2, 2), (5, 5), fill=0.0)
    assert padded.shape == (1, 1, 5, 5) and float(padded.sum()) == 4.0
    assert P.resized_size((300, 451), ("shortest", 224)) == (224, 336)
    assert P.resized_size((300, 451), ("keep_ratio", (224, 224), 1.0)) == (149, 224)
    assert P.smart_resize(300, 451, 28, 56 * 56, 28 * 28 * 64) == (168, 252)


# --- each library ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # test_resnet: bilinear, crop_pct 0.95
        {"interpolation": "bicubic", "crop_pct": 0.875},
        {"interpolation": "bicubic", "crop_pct": 1.0, "input_size": (3, 224, 224)},  # DINOv2 in timm
        {"crop_mode": "squash"},
        {"crop_mode": "border", "interpolation": "bicubic"},
        {"input_size": (3, 160, 128)},
    ],
)
def test_timm_transform(photos, overrides):
    timm = pytest.importorskip("timm")
    model = timm.create_model("test_resnet", pretrained=False)
    cfg = {**timm.data.resolve_model_data_config(model), **overrides}
    _check(P.from_timm_config(cfg), timm.data.create_transform(**cfg), photos)


@pytest.mark.parametrize("name", ["resnet50", "efficientnet_b3", "vit_b_16", "swin_t"])
def test_torchvision_weights_transforms(photos, name):
    tv = pytest.importorskip("torchvision")
    weights = tv.models.get_model_weights(name).DEFAULT
    _check(P.from_torchvision_weights(weights), weights.transforms(), photos)


@pytest.mark.parametrize("mode", ["shortest", "longest", "squash"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_open_clip_preprocess(photos, mode, interpolation):
    open_clip = pytest.importorskip("open_clip")
    cfg = {
        "size": 224,
        "mean": open_clip.OPENAI_DATASET_MEAN,
        "std": open_clip.OPENAI_DATASET_STD,
        "interpolation": interpolation,
        "resize_mode": mode,
        "fill_color": 0,
    }
    lib = open_clip.image_transform(
        224, is_train=False, mean=cfg["mean"], std=cfg["std"], resize_mode=mode, interpolation=interpolation
    )
    _check(P.from_open_clip(cfg), lib, photos)


def _pil_processor(transformers, name: str, **kw):
    cls = getattr(transformers, name + "Pil", None) or getattr(transformers, name)
    proc = cls(**kw)
    if hasattr(proc, "backend") and getattr(proc, "backend", "pil") != "pil":  # pragma: no cover - old versions
        pytest.skip(f"no PIL backend for {name}")
    return proc


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("CLIPImageProcessor", {}),
        (  # what facebook/dinov2-* ship
            "BitImageProcessor",
            {
                "size": {"shortest_edge": 256},
                "crop_size": {"height": 224, "width": 224},
                "do_center_crop": True,
                "resample": 3,
                "image_mean": [0.485, 0.456, 0.406],
                "image_std": [0.229, 0.224, 0.225],
            },
        ),
        ("ViTImageProcessor", {}),
        ("SiglipImageProcessor", {}),
    ],
)
def test_transformers_image_processors(photos, name, kw):
    transformers = pytest.importorskip("transformers")
    proc = _pil_processor(transformers, name, **kw)
    _check(P.from_hf_processor(proc), lambda im: proc(images=im, return_tensors="np")["pixel_values"], photos)


def test_qwen2vl_processor_patches(photos):
    transformers = pytest.importorskip("transformers")
    from PIL import Image

    from fiberscope.subjects.vlm import patchify, qwen2vl_preprocess

    proc = _pil_processor(transformers, "Qwen2VLImageProcessor", min_pixels=56 * 56, max_pixels=28 * 28 * 64)
    pre = qwen2vl_preprocess(proc)
    std = torch.tensor(proc.image_std).view(1, 3, 1, 1)
    for name, a in photos.items():
        ref = proc(images=Image.fromarray(a), return_tensors="np")
        x = pre(_tensor(a))
        pv, grid = patchify(x, proc.patch_size, proc.merge_size, proc.temporal_patch_size)
        assert grid.tolist() == ref["image_grid_thw"].tolist(), name
        # undo the normalisation patch-wise to compare in pixel units
        c, t, p = 3, proc.temporal_patch_size, proc.patch_size
        diff = (pv - torch.from_numpy(np.asarray(ref["pixel_values"]))).abs().view(-1, c, t, p, p)
        diff = diff * std.view(1, 3, 1, 1, 1)
        assert float(diff.max()) <= 1e-2, name
        assert float(diff.mean()) <= 1.5e-3, name
