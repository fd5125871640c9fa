"""docs/examples/paper_imagenet.md end to end, on stand-ins: a tiny ADM saved as ``.pt``, a tiny DINOv2, six images.

The commands are those of the page: ``fiberscope manifest`` (queries from an image folder),
``fiberscope audit`` with the ``paper-imagenet-dinov2`` preset, ``fiberscope neighbours`` (the
nearest-neighbour baseline over the same images and the fiber-loss-vs-NN table). The default run
shortens the preset to 21 steps with one inner step; the slow variant runs the preset unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import fiberscope as fs
from fiberscope.cli import main
from fiberscope.data.query import load_query
from fiberscope.priors.adm import ADMConfig, ADMUNet

TINY_ADM = ADMConfig(image_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_ds=(2,))


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    tr = pytest.importorskip("transformers")
    from PIL import Image

    root = tmp_path_factory.mktemp("paper-imagenet")
    torch.manual_seed(0)
    net = ADMUNet(TINY_ADM)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))  # no all-zero tensor left
    torch.save(net.state_dict(), root / "256x256_diffusion_uncond_stand_in.pt")
    cfg = tr.Dinov2Config(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, image_size=28, patch_size=14
    )
    tr.Dinov2Model(cfg).save_pretrained(root / "dinov2")
    tr.BitImageProcessor(  # DINOv2's processor, scaled down: short side 32, centre crop 28, bicubic
        size={"shortest_edge": 32},
        crop_size={"height": 28, "width": 28},
        do_center_crop=True,
        resample=3,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(root / "dinov2")
    val = root / "val"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:20, 0:24]
    fields = [np.stack([np.sin(xx / (3 + i) + c) * np.cos(yy / (4 + i % 3)) for c in range(3)], -1) for i in range(5)]
    fields.append(fields[0] + 0.05 * rng.standard_normal(fields[0].shape))  # a near-copy of the first image
    for i, f in enumerate(fields):  # six small 24×20 colour images in two "class" folders
        img = ((f - f.min()) / (np.ptp(f) + 1e-9) * 255).astype(np.uint8)
        (val / f"n0{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(val / f"n0{i % 2}" / f"ILSVRC2012_val_{i:08d}.png")
    return root


def _pipeline(root, out, extra: list[str]):
    man = out / "audit.jsonl"
    # the real checkpoint is recognised as it is; the stand-in's size is not in its weights, so the spec says it
    prior = f"{root / '256x256_diffusion_uncond_stand_in.pt'}?image_size=8"
    args = ["manifest", str(root / "val"), "--recursive", "--shuffle-seed", "0", "--subject", f"hf:{root / 'dinov2'}"]
    args += ["--layer", "cls", "--prior", prior, "--method", "paper-imagenet-dinov2", *extra, "--out", str(man)]
    assert main([*args, "-q"]) == 0
    assert main(["audit", str(man), "--out", str(out / "audit-out"), "-q"]) == 0
    assert main(["neighbours", str(out / "audit-out"), "--bank", str(root / "val"), "-q"]) == 0
    return man, out / "audit-out"


def _check(root, man, audit_out, n: int, steps: int) -> dict:
    units = [json.loads(line) for line in man.read_text().splitlines()]
    assert len(units) == 6 and all(u["n"] == n for u in units)
    assert sorted(u["label"] for u in units) == sorted(
        f"n0{i % 2}/ILSVRC2012_val_{i:08d}.png" for i in range(6)
    )  # every image once, in the seeded order
    order = torch.randperm(6, generator=torch.Generator().manual_seed(0)).tolist()
    files = sorted((root / "val").rglob("*.png"))
    assert [u["label"] for u in units] == [files[i].relative_to(root / "val").as_posix() for i in order]
    table = json.loads((audit_out / "neighbours.json").read_text())
    rows = table["rows"]
    assert len(rows) == 6 and table["bank_size"] == 6
    # the baseline, recomputed here from the subject and the images alone
    subject = fs.load_subject(f"hf:{root / 'dinov2'}", "cls")
    imgs = torch.cat([load_query(f, image_shape=(3, 8, 8), data_range=(-1, 1)) for f in files])
    with torch.no_grad():
        feats = subject(imgs, (-1, 1))
    names = [f.relative_to(root / "val").as_posix() for f in files]
    for r in rows:
        rec = json.loads((audit_out / r["dir"] / "record.json").read_text())
        assert rec["config"]["method"]["steps"] == steps and rec["config"]["prior"]["class"] == "ADMPrior"
        assert rec["config"]["prior"]["state_shape"] == [3, 8, 8]
        q = names.index(next(u["label"] for u in units if u["query"] == r["query"]))
        d = ((feats - feats[q]) ** 2).sum(1)
        d[q] = float("inf")
        j = int(d.argmin())
        assert r["excluded"] == 1 and r["nn_image"] == names[j] != names[q]
        assert r["nn_loss"] == pytest.approx(float(d[j]), rel=1e-4)
        assert r["fiber_loss_mean"] == pytest.approx(float(np.mean(rec["fiber_loss"])), rel=1e-6)
        assert r["metric"] == "sq_l2" and r["n"] == n
    s = table["summary"][0]
    assert s["queries"] == 6 and s["fiber_loss_mean"] == pytest.approx(np.mean([r["fiber_loss_mean"] for r in rows]))
    assert s["nn_loss_mean"] == pytest.approx(np.mean([r["nn_loss"] for r in rows]))
    md = (audit_out / "neighbours.md").read_text()
    assert "| fiber loss (mean) | nearest neighbour (mean) |" in md and md.count("ILSVRC2012_val_") >= 12
    assert (audit_out / "report.html").is_file()
    return table


def test_paper_imagenet_pipeline_on_stand_ins(stand_ins, tmp_path, capsys):
    man, audit_out = _pipeline(stand_ins, tmp_path, ["--steps", "21", "--inner-steps", "1", "--n", "1"])
    printed = capsys.readouterr().out
    assert "6 work unit(s)" in printed and "fiber loss (mean)" in printed
    table = _check(stand_ins, man, audit_out, n=1, steps=21)
    assert all(np.isfinite(r["fiber_loss_mean"]) for r in table["rows"])


def test_neighbours_bad_input(stand_ins, tmp_path, capsys):
    from fiberscope.cli import EXIT

    assert main(["neighbours", str(tmp_path), "--bank", str(stand_ins / "val"), "-q"]) == EXIT["input"]
    assert "holds no finished fiber results" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["manifest", str(tmp_path / "empty"), "--subject", "x", "--prior", "y", "-q"]) == EXIT["input"]
    assert "no images" in capsys.readouterr().err
    assert main(["manifest", str(stand_ins / "val"), "--prior", "y", "-q"]) == EXIT["usage"]


@pytest.mark.slow
def test_paper_imagenet_pipeline_with_the_preset_unchanged(stand_ins, tmp_path):
    man, audit_out = _pipeline(stand_ins, tmp_path, ["--n", "1"])
    _check(stand_ins, man, audit_out, n=1, steps=200)


def test_manifest_paths_order_limit_and_method(stand_ins, tmp_path):
    from fiberscope.audit.manifest import ManifestError, manifest_from_images, read_manifest, write_manifest

    prior = stand_ins / "256x256_diffusion_uncond_stand_in.pt"
    units = manifest_from_images(
        [stand_ins / "val"],
        subject="builtin:mnist-cnn",
        prior=f"{prior}?image_size=8",
        out=stand_ins / "m.jsonl",
        method={"name": "paper-imagenet-dinov2", "steps": 21},
        n=1,
        recursive=True,
        limit=4,
    )
    assert [u.label for u in units] == [f"n0{i % 2}/ILSVRC2012_val_{i:08d}.png" for i in (0, 2, 4, 1)]
    assert units[0].query == "val/n00/ILSVRC2012_val_00000000.png"  # relative to the manifest's folder
    assert units[0].prior == f"{prior.resolve()}?image_size=8"
    back = read_manifest(write_manifest(units, stand_ins / "m.jsonl"))
    assert back.units == units and not back.errors
    assert all(u.query_path.is_file() for u in back.units)
    elsewhere = manifest_from_images(
        [stand_ins / "val" / "n00"], subject="builtin:mnist-cnn", prior="builtin:mnist-ddpm", out=tmp_path / "m.jsonl"
    )
    assert len(elsewhere) == 3 and all(Path(u.query).is_absolute() for u in elsewhere)  # not under the manifest
    assert elsewhere[0].prior == "builtin:mnist-ddpm"
    with pytest.raises(ManifestError, match="method"):
        manifest_from_images([stand_ins / "val" / "n00"], subject="s", prior="p", out=tmp_path / "m.jsonl", method="x")
    with pytest.raises(ManifestError, match="limit must be at least 1"):
        manifest_from_images([stand_ins / "val" / "n00"], subject="s", prior="p", out=tmp_path / "m.jsonl", limit=0)
