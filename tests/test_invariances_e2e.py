"""End to end: real fibers from the zoo (with its tuned presets) rank the invariance built into the subject.

* ``builtin:colorblind-mnist`` on colour MNIST (``builtin:colormnist-latent``): ``colour`` first
  (in the default run: the cheapest real pair);
* a 7×7-thumbnail subject (4×4 average pooling) on MNIST (``builtin:mnist-ddpm``): ``fine_detail`` first;
* a subject that sees every pixel: every probe low;
* a colour-sensitive subject (the colour-blind embedding plus the background colour): ``colour`` not high;
* cross-model comparison on nested invariances: analytic (default run) and on the zoo (slow).

Invariances off the zoo's data manifold (mirrored or shifted digits) are validated with synthetic
fibers only (tests/test_invariances.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fiberscope as fs
from fiberscope.analysis.validation import colour_sensitive_subject, identity_subject, thumbnail_subject
from fiberscope.cli import EXIT, main


@pytest.fixture(scope="module")
def data():
    from fiberscope.zoo.evaluate import real_images

    grey, labels = real_images("mnist")
    colour, _ = real_images("colormnist")
    i3 = int((labels == 3).nonzero()[0])
    return {"grey": grey, "colour": colour, "q_grey": grey[i3 : i3 + 1], "q_colour": colour[i3 : i3 + 1]}


def _fiber(subject, query, prior, n, **overrides):
    preset = {"builtin:mnist-ddpm": "builtin-mnist", "builtin:colormnist-latent": "builtin-colormnist"}[prior]
    return fs.sample_fiber(
        subject, query, prior, n=n, seed=0, method=fs.NDTM.preset(preset, **overrides), progress=False
    )


def test_colour_blind_subject_on_colour_mnist_ranks_colour_first(data):
    res = _fiber("builtin:colorblind-mnist", data["q_colour"], "builtin:colormnist-latent", n=3)
    rep = fs.probe_invariances(res)
    assert rep.ranking[0][0] == "colour" and rep.score("colour") > 0.6, rep.ranking
    for name in ("translation", "rotation", "scale", "flip", "fine_detail", "blur"):
        assert rep.score(name) < 0.2, (name, rep.ranking)  # the shape is kept
    assert rep.summary().startswith("Samples vary most in colour")
    assert rep.score("colour") > rep.references["augmented"]["colour"] + 0.3


@pytest.mark.slow
def test_thumbnail_subject_on_mnist_ranks_fine_detail_first(data):
    res = _fiber(thumbnail_subject(), data["q_grey"], "builtin:mnist-ddpm", n=3)
    rep = fs.probe_invariances(res)
    assert rep.ranking[0][0] == "fine_detail" and rep.score("fine_detail") > 0.8, rep.ranking
    assert rep.ranking[1][1] < 0.4


@pytest.mark.slow
def test_a_subject_that_sees_every_pixel_scores_every_probe_low(data):
    res = _fiber(identity_subject(), data["q_grey"], "builtin:mnist-ddpm", n=3)
    rep = fs.probe_invariances(res)
    assert max(s for _, s in rep.ranking) < 0.25, rep.ranking
    assert rep.variation < 0.05


@pytest.mark.slow
def test_a_colour_sensitive_subject_does_not_score_colour_high(data):
    res = _fiber(colour_sensitive_subject(), data["q_colour"], "builtin:colormnist-latent", n=3)
    rep = fs.probe_invariances(res)
    assert rep.score("colour") < 0.2 and rep.ranking[0][0] != "colour", rep.ranking


def test_compare_subjects_on_nested_invariances_analytic(tmp_path):
    """grey ⊃ full: the fiber of 'full' (which also sees the mean colour) lies in the fiber of 'grey'."""
    prior = fs.GaussianPrior(shape=(3, 8, 8), std=0.4, data_range=(-1, 1))
    bank = prior.sample_data(200, torch.Generator().manual_seed(0)).clamp(-1, 1)

    def grey(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x.mean(1, keepdim=True), 2).flatten(1)

    def full(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([grey(x), 8 * x.mean((2, 3))], 1)

    subjects = [fs.load_subject(grey, name="grey"), fs.load_subject(full, name="grey+colour")]
    method = fs.NDTM(steps=50, inner_steps=5, lr=0.1, gamma=[(0, 0, 1000, 500), (3, 3, 500, 0)], clip=None)
    cmp = fs.compare_subjects(subjects, prior, bank[:2], n=3, bank=bank[2:], method=method)
    assert cmp.names == ["grey", "grey+colour"] and len(cmp.per_query[0][1]) == 2
    assert cmp.ratio("grey", "grey") < 0.01 and cmp.ratio("grey+colour", "grey+colour") < 0.01
    assert cmp.ratio("grey", "grey+colour") > 1  # what grey ignores (the colour), grey+colour sees
    assert cmp.ratio("grey+colour", "grey") < 0.01  # nested: its samples lie in grey's fiber too
    readings = " ".join(cmp.readings())
    assert "grey+colour sees what grey ignores" in readings and "grey cannot tell grey+colour's" in readings
    out = cmp.save(tmp_path / "cmp")
    rec = json.loads((out / "comparison.json").read_text())
    assert rec["matrix"] == cmp.matrix and rec["invariances"][0][0]["ranking"]
    assert (out / "comparison.png").stat().st_size > 1000
    html = (out / "report.html").read_text()
    assert 'class="ranking"' in html and 'class="summary"' in html and html.count("<img") >= 1 + 2 * 4
    assert len(list((out / "fibers").glob("*/*/record.json"))) == 4
    with pytest.raises(ValueError, match="at least two subjects"):
        fs.compare_subjects(subjects[:1], prior, bank[:1], bank=bank[2:], method=method)


@pytest.mark.slow
def test_compare_colour_blind_and_colour_sensitive_subjects_on_colour_mnist(data, tmp_path):
    cmp = fs.compare_subjects(
        ["builtin:colorblind-mnist", colour_sensitive_subject()],
        "builtin:colormnist-latent",
        data["q_colour"],
        n=2,
        bank=data["colour"][:2000],
    )
    assert cmp.ratio("builtin:colorblind-mnist", "colour-sensitive") > 1  # it sees the recolourings
    assert cmp.ratio("colour-sensitive", "builtin:colorblind-mnist") < 0.1  # nested fiber
    assert cmp.invariances[0][0].ranking[0][0] == "colour"


def test_compare_command_writes_the_matrix_heatmap_report_and_fibers(data, tmp_path, capsys):
    from PIL import Image

    qdir = tmp_path / "queries"
    qdir.mkdir()
    Image.fromarray(((data["q_grey"][0, 0].numpy() + 1) * 127.5).round().astype("uint8"), "L").save(qdir / "three.png")
    bank = tmp_path / "bank"  # a small bank keeps the test fast (the default is the whole test split)
    bank.mkdir()
    for i in range(40):
        img = ((data["grey"][100 + i, 0].numpy() + 1) * 127.5).round().astype("uint8")
        Image.fromarray(img, "L").save(bank / f"{i:02d}.png")
    out = tmp_path / "out"
    argv = [
        "compare",
        "--bank",
        str(bank),
        "--subjects",
        "builtin:mnist-cnn@penultimate",
        "builtin:mnist-cnn@logits",
        "--prior",
        "builtin:mnist-ddpm",
        "--queries",
        str(qdir),
        "--n",
        "2",
        "--steps",
        "3",
        "--inner-steps",
        "1",
        "--no-probe",
        "--out",
        str(out),
        "-q",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "builtin:mnist-cnn@logits" in printed and "wrote" in printed
    rec = json.loads((out / "comparison.json").read_text())
    assert rec["names"] == ["builtin:mnist-cnn@penultimate", "builtin:mnist-cnn@logits"]
    assert len(rec["matrix"]) == 2 and all(len(r) == 2 for r in rec["matrix"]) and rec["queries"] == ["three"]
    assert rec["config"]["method"]["steps"] == 3 and rec["config"]["bank"] == "given"
    assert Image.open(out / "comparison.png").size[0] > 200
    assert "fiberscope compare" in (out / "report.html").read_text()
    assert sorted(p.parent.parent.name for p in Path(out / "fibers").glob("*/*/record.json")) == [
        "builtin-mnist-cnn@logits",
        "builtin-mnist-cnn@penultimate",
    ]
    assert (
        main(["compare", "--subjects", "builtin:mnist-cnn", "--prior", "builtin:mnist-ddpm", "--queries", str(qdir)])
        == EXIT["usage"]
    )
    assert "at least two subject specs" in capsys.readouterr().err
