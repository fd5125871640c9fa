"""The invariance probes as a measurement: synthetic fibers, fitted parameters, references, the report parts.

Synthetic "fibers" are copies of a real test digit under one known transformation, made with
implementations independent of the probes' fits (``fiberscope.analysis.synthetic``); each must
rank its own transformation first. No sampling here: every test runs in seconds.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import fiberscope as fs
from fiberscope.analysis.invariances import PROBES, InvarianceReport
from fiberscope.analysis.synthetic import KINDS, synthetic_fiber


@pytest.fixture(scope="module")
def digits():
    from fiberscope.zoo.evaluate import real_images

    grey, labels = real_images("mnist")
    colour, _ = real_images("colormnist")
    first = {d: int((labels == d).nonzero()[0]) for d in range(10)}
    return {
        "grey": grey[first[7] : first[7] + 1],
        "grey2": grey[first[4] : first[4] + 1],
        "colour": colour[first[2] : first[2] + 1],
        "colour2": colour[first[4] : first[4] + 1],
        "bank": grey[100:108],
        "colour_bank": colour[100:108],
    }


CASES = [(k, q) for q in ("grey", "grey2", "colour", "colour2") for k in KINDS if not (k == "colour" and "grey" in q)]


@pytest.mark.parametrize(("kind", "which"), CASES, ids=[f"{k}-{q}" for k, q in CASES])
def test_a_synthetic_fiber_ranks_its_transformation_first(digits, kind, which):
    q = digits[which]
    rep = fs.probe_invariances(synthetic_fiber(q, kind, n=6, seed=1), query=q, augmented=False)
    (first, s1), (_, s2) = rep.ranking[:2]
    assert first == kind, rep.ranking
    assert s1 >= 0.45 and s1 - s2 >= 0.1, rep.ranking
    assert all(0.0 <= s <= 1.0 for _, s in rep.ranking)


def test_fitted_parameters_are_the_transformations_applied(digits):
    q = digits["grey"]
    shifts = [(-3, 0), (2, 1), (4, -2)]
    moved = torch.cat([torch.roll(q, (dy, dx), dims=(2, 3)) for dx, dy in shifts])  # MNIST's border is empty
    rep = fs.probe_invariances(moved, query=q, probes=["translation"], augmented=False)
    p = rep.probes["translation"].params
    assert [(round(a), round(b)) for a, b in zip(p["dx"], p["dy"])] == shifts
    assert rep.probes["translation"].score > 0.97

    pil = Image.fromarray(((q[0, 0].numpy() + 1) * 127.5).round().astype(np.uint8), "L")
    angles = [-30.0, 12.0, 25.0]
    rotated = (
        torch.cat(
            [
                torch.from_numpy(np.asarray(pil.rotate(a, resample=Image.Resampling.BILINEAR), np.float32))[None, None]
                for a in angles
            ]
        )
        / 127.5
        - 1
    )
    rep = fs.probe_invariances(rotated, query=q, probes=["rotation"], augmented=False)
    assert rep.probes["rotation"].params["degrees"] == pytest.approx(angles, abs=1.0)  # counter-clockwise, as Pillow

    darker = torch.cat([((q + 1) / 2 * k) * 2 - 1 for k in (0.4, 0.6, 0.9)])
    rep = fs.probe_invariances(darker, query=q, probes=["brightness"], augmented=False)
    assert rep.probes["brightness"].params["factor"] == pytest.approx([0.4, 0.6, 0.9], abs=0.01)

    from fiberscope.analysis.transforms import gaussian_blur

    blurred = torch.cat([gaussian_blur((q + 1) / 2, s) * 2 - 1 for s in (0.7, 1.5)])
    rep = fs.probe_invariances(blurred, query=q, probes=["blur"], augmented=False)
    assert rep.probes["blur"].params["sigma"] == pytest.approx([0.7, 1.5], abs=0.02)
    small, large = rep.probes["blur"].per_sample  # exact fits; the smaller change is nearer the visibility floor
    assert 0.6 < small < large and large > 0.85

    rep = fs.probe_invariances(torch.cat([q.flip(3), q.flip(2)]), query=q, probes=["flip"], augmented=False)
    assert rep.probes["flip"].params["axis"] == ["left-right", "top-bottom"]


def test_unchanged_and_barely_changed_samples_score_low_on_every_probe(digits):
    q = digits["grey"]
    same = fs.probe_invariances(q.expand(4, -1, -1, -1), query=q)
    assert all(s == 0.0 for _, s in same.ranking) and same.variation == 0.0
    g = torch.Generator().manual_seed(0)
    noisy = (q + 0.04 * torch.randn(4, *q.shape[1:], generator=g)).clamp(-1, 1)  # 1 % RMS of the range
    rep = fs.probe_invariances(noisy, query=q)
    assert max(s for _, s in rep.ranking) < 0.1, rep.ranking
    assert "stay close to the query" in rep.summary()


def test_unrelated_digits_are_not_explained_by_erasing_the_query(digits):
    """Contrast 0, a strong blur or zoom explain half the difference to any unrelated image: the flat baseline."""
    rep = fs.probe_invariances(digits["bank"], query=digits["grey"], augmented=False)
    for name in ("brightness", "contrast", "blur", "scale", "translation", "rotation", "flip"):
        assert rep.score(name) < 0.2, (name, rep.ranking)
    colour = fs.probe_invariances(digits["colour_bank"], query=digits["colour"], augmented=False)
    assert max(s for _, s in colour.ranking) < 0.2, colour.ranking


def test_a_nested_probe_gets_no_credit_for_what_its_simpler_probe_explains(digits):
    """colour (any affine colour map) contains brightness; fine_detail contains most of blur."""
    q = digits["colour"]
    darker = torch.cat([((q + 1) / 2 * k) * 2 - 1 for k in (0.3, 0.5, 0.7)])
    rep = fs.probe_invariances(darker, query=q, augmented=False)
    assert rep.probes["colour"].explained > 0.8  # the colour map fits it as well ...
    assert rep.score("colour") < 0.05 < 0.9 < rep.score("brightness")  # ... but brightness is credited
    from fiberscope.analysis.transforms import gaussian_blur

    g = digits["grey"]
    blurred = torch.cat([gaussian_blur((g + 1) / 2, s) * 2 - 1 for s in (1.2, 1.6, 2.0)])
    rep = fs.probe_invariances(blurred, query=g, augmented=False)
    assert rep.score("fine_detail") < 0.05 and rep.score("blur") > 0.85


def test_colour_and_background_are_left_out_where_they_mean_nothing(digits):
    rep = fs.probe_invariances(digits["bank"][:2], query=digits["grey"], augmented=False)
    assert not rep.probes["colour"].applicable and "grey" in rep.probes["colour"].note
    assert "colour" not in dict(rep.ranking)
    blank = -torch.ones(1, 1, 28, 28)
    rep = fs.probe_invariances(digits["bank"][:2], query=blank, augmented=False)
    assert not rep.probes["background"].applicable


def test_a_user_transformation_is_fitted_and_ranked_like_the_named_ones(digits):
    q = digits["grey"]

    def gamma(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        x01 = (x + 1) / 2
        return x01.clamp_min(0) ** theta[:, :1, None, None] * 2 - 1

    truth = [0.35, 0.5, 2.5]
    samples = gamma(q.expand(3, -1, -1, -1), torch.tensor(truth)[:, None])
    t = fs.Transformation("gamma", gamma, {"exponent": (0.2, 3.0)}, identity={"exponent": 1.0}, grid=15)
    rep = fs.probe_invariances(samples, query=q, extra=[t], augmented=False)
    assert rep.ranking[0][0] == "gamma" and rep.ranking[0][1] > 0.5 and rep.ranking[1][1] < 0.45, rep.ranking
    assert rep.probes["gamma"].params["exponent"] == pytest.approx(truth, rel=0.05)
    with pytest.raises(ValueError, match="named probe"):
        fs.Transformation("blur", gamma, {"a": (0, 1)})
    with pytest.raises(ValueError, match="range of 'a'"):
        fs.Transformation("g", gamma, {"a": (1, 0)})
    bad = fs.Transformation("bad", lambda x, th: x[:, :, :4], {"a": (0.0, 1.0)})
    with pytest.raises(ValueError, match="must return images of shape"):
        fs.probe_invariances(samples, query=q, extra=[bad], probes=[])


def test_references_are_computed_and_the_report_round_trips_through_json(digits):
    q = digits["grey"]
    fiber = synthetic_fiber(q, "translation", n=4)
    rep = fs.probe_invariances(fiber, query=q, unguided=digits["bank"])
    assert set(rep.references) == {"unguided", "augmented"}
    assert set(rep.references["unguided"]) == set(PROBES)
    # a fiber of shifted copies explains far more by translation than unrelated digits do
    assert rep.score("translation") > rep.references["unguided"]["translation"] + 0.5
    assert 0 < rep.references["augmented"]["translation"] < 1
    assert rep.reference_variation["unguided"] > rep.variation
    again = InvarianceReport.from_dict(json.loads(json.dumps(rep.to_dict())))
    assert again.ranking == rep.ranking and again.references == rep.references
    assert again.summary() == rep.summary()
    assert "translation" in rep.table().splitlines()[1]


def test_the_summary_names_what_varies_and_what_is_kept(digits):
    q = digits["colour"]
    rep = fs.probe_invariances(synthetic_fiber(q, "colour", n=6, seed=3), query=q)
    text = rep.summary()
    assert text.startswith(f"Samples vary most in colour ({rep.score('colour'):.2f})")
    assert "the shape" in text.lower() and "kept" in text
    assert "For comparison on colour, unguided" not in text and "random augmentations score" in text


def test_bad_input_gets_a_one_line_error(digits):
    q = digits["grey"]
    with pytest.raises(ValueError, match="needs query="):
        fs.probe_invariances(digits["bank"])
    with pytest.raises(ValueError, match="one image of the samples' shape"):
        fs.probe_invariances(digits["bank"], query=digits["colour"])
    with pytest.raises(ValueError, match="too small"):
        fs.probe_invariances(torch.zeros(2, 1, 4, 4), query=torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="unknown probe"):
        fs.probe_invariances(digits["bank"], query=q, probes=["hue"])
    with pytest.raises(ValueError, match="NaN"):
        fs.probe_invariances(torch.full((2, 1, 28, 28), math.nan), query=q)
    with pytest.raises(TypeError, match="FiberSamples or a tensor"):
        fs.probe_invariances([q], query=q)  # type: ignore[arg-type]


def _fake_fiber(query: torch.Tensor, images: torch.Tensor, **kw) -> fs.FiberSamples:
    n = len(images)
    loss = torch.linspace(0.1, 0.8, n)
    return fs.FiberSamples(
        images=images,
        features=torch.zeros(n, 3),
        target=torch.zeros(1, 3),
        fiber_loss=loss,
        seeds=list(range(n)),
        config={"prior": {"name": "test-prior"}, "subject": {"name": "test-subject"}, "method": {"method": "ndtm"}},
        timings={"total": 1.0},
        counts={"forward_equivalents": 1.0},
        query=query,
        losses={"sq_l2": loss},
        **kw,
    )


def test_in_fiber_marks_are_saved_loaded_and_drawn(tmp_path, digits):
    from fiberscope.report.invariances import in_fiber_text

    q = digits["grey"]
    res = _fake_fiber(q, synthetic_fiber(q, "rotation", n=4))
    assert res.in_fiber is None and "no tolerance set" in in_fiber_text(res.in_fiber, res.tolerance)
    res.save(tmp_path / "none")
    again = fs.FiberSamples.load(tmp_path / "none")
    assert again.in_fiber is None and again.tolerance is None

    res.in_fiber = res.fiber_loss <= 0.5
    res.tolerance = 0.5
    res.save(tmp_path / "set")
    again = fs.FiberSamples.load(tmp_path / "set")
    assert again.in_fiber.tolist() == [True, True, False, False] and again.tolerance == 0.5
    assert json.loads((tmp_path / "set" / "record.json").read_text())["in_fiber"] == [True, True, False, False]
    text = in_fiber_text(again.in_fiber, again.tolerance)
    assert (
        text.startswith("2 of 4 samples are in the fiber (fiber loss sq_l2 ≤ 0.5")
        and "samples 3, 4 of the grid" in text
    )
    grid = np.asarray(again.grid().convert("RGB"))
    green = ((grid[..., 1] > 120) & (grid[..., 0] < 60) & (grid[..., 2] < 90)).sum()
    red = ((grid[..., 0] > 180) & (grid[..., 1] < 60) & (grid[..., 2] < 60)).sum()
    assert green > 200 and red > 200  # two framed tiles of each colour
    plain = np.asarray(_fake_fiber(q, again.images).grid().convert("RGB"))
    assert ((plain[..., 0] > 180) & (plain[..., 1] < 60)).sum() == 0


def test_the_ranking_chart_is_inline_svg_with_everything_escaped(digits):
    from fiberscope.report.invariances import ranking_svg

    q = digits["grey"]
    evil = fs.Transformation("<b>evil</b>&", lambda x, th: x * th[:, :1, None, None], {"k": (0.5, 1.5)})
    rep = fs.probe_invariances(synthetic_fiber(q, "flip", n=3), query=q, extra=[evil], unguided=digits["bank"])
    svg = ranking_svg(rep)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "<b>" not in svg and "&lt;b&gt;evil&lt;/b&gt;&amp;" in svg
    assert svg.count("<rect") >= len(rep.ranking)  # a bar per applicable probe (+ the legend's swatch)
    assert "n/a" in svg  # colour on grey images
    assert "unguided prior samples" in svg and "augmentations of the query" in svg
    assert "http://" not in svg.replace("http://www.w3.org/2000/svg", "")


def test_the_invariances_module_keeps_its_names_and_the_moved_tables_warn():
    """analysis/invariances.py was split into the probes (fitting, scoring), the report and its words."""
    import warnings

    from fiberscope.analysis import invariances, probes, summary

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in invariances.__all__:
            assert getattr(invariances, name) is not None
        from fiberscope.analysis.invariances import describe_params, summarise  # noqa: F401
    assert invariances.Transformation is probes.Transformation and invariances.LABELS is probes.LABELS
    for name, home in [("DESCRIPTIONS", probes), ("NESTED", probes), ("REMNANT", probes), ("KEPT", summary)]:
        with pytest.warns(DeprecationWarning, match=rf"invariances\.{name} has moved to {home.__name__}\.{name}"):
            assert getattr(invariances, name) is getattr(home, name)
