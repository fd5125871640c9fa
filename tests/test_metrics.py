"""The evaluation metrics: every function against a hand-computed or known answer."""

from __future__ import annotations

import math

import pytest
import torch

from fiberscope.metrics import (
    REPORTED_FORMS,
    Reference,
    across_seeds,
    augment,
    colour_histogram_stats,
    cross_model_agreement,
    default_reference,
    diversity,
    fiber_loss_forms,
    frechet_distance,
    label_agreement,
    mean_pairwise_distance,
    nearest_neighbour,
    nearest_neighbours,
    realism,
    variance_map,
)


def test_fiber_loss_forms_match_their_formulas():
    phi = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    y = torch.tensor([[1.0, 0.0, 0.0]])
    f = fiber_loss_forms(phi, y)
    assert set(f) == set(REPORTED_FORMS)
    assert f["sq_l2"].tolist() == [13.0, 1.0]
    assert f["l1"].tolist() == [5.0, 1.0]
    assert f["rms"][0].item() == pytest.approx(math.sqrt(13 / 3))
    assert f["l2"][0].item() == pytest.approx(math.sqrt(13))
    p, q = torch.softmax(phi, 1), torch.softmax(y, 1)
    assert f["prob_dist"][0].item() == pytest.approx(100 * (p[0] - q[0]).abs().sum().item(), rel=1e-5)
    assert f["cross_entropy"][1].item() == pytest.approx(-(q[0] * torch.log_softmax(phi[1], 0)).sum().item())
    # one target per sample, and per-sample independence (no batch reduction)
    f2 = fiber_loss_forms(phi, torch.cat([y, y]), ("sq_l2",))
    assert f2["sq_l2"].tolist() == [13.0, 1.0]
    assert fiber_loss_forms(phi[1:], y, ("sq_l2",))["sq_l2"].tolist() == [1.0]
    with pytest.raises(ValueError, match="unknown fiber loss form"):
        fiber_loss_forms(phi, y, ("l3",))


def test_across_seeds_is_the_sample_std():
    assert across_seeds([2.0, 4.0]) == (3.0, pytest.approx(math.sqrt(2)))
    assert across_seeds([5.0]) == (5.0, 0.0)
    assert math.isnan(across_seeds([])[0])


def test_nearest_neighbour_excludes_the_query():
    bank_images = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 1, 2, 2).clone()
    bank = torch.tensor([[0.0], [1.0], [1.1], [3.0], [1.0]])
    query_image = bank_images[1:2]
    nb = nearest_neighbour(torch.tensor([[1.0]]), bank, "sq_l2", query_image=query_image, bank_images=bank_images)
    assert nb.index == 4 and nb.loss == 0.0 and nb.excluded == 1  # index 1 is the query itself
    nb = nearest_neighbour(torch.tensor([[1.0]]), bank, exclude=4, query_image=query_image, bank_images=bank_images)
    assert nb.index == 2 and nb.loss == pytest.approx(0.01) and nb.excluded == 2
    assert nearest_neighbours(torch.tensor([[1.0]]), bank, 3, exclude=1).tolist() == [4, 2, 0]
    # colour images: a query given without its batch dimension is still recognised as itself
    colour = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 3, 2, 2).clone()
    nb = nearest_neighbour(torch.tensor([[1.0]]), bank, query_image=colour[1], bank_images=colour)
    assert nb.index == 4 and nb.excluded == 1
    with pytest.raises(ValueError, match="one image of the bank's shape"):
        nearest_neighbour(torch.tensor([[1.0]]), bank, query_image=colour[1, :1], bank_images=colour)
    with pytest.raises(ValueError, match="k must be"):
        nearest_neighbours(torch.tensor([[1.0]]), bank, 5, exclude=1)


def test_realism_is_small_for_real_and_large_for_shifted_samples():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(3000, 1, 2, 2, generator=g)
    ref = Reference(lambda x: x.flatten(1), name="pixels")
    same = realism(real[:1000], real[1000:], ref)
    shifted = realism(real[:1000] + 1.0, real[1000:], ref)
    assert same < 0.1 and shifted == pytest.approx(4.0, rel=0.1)  # ‖Δμ‖² = 4 · 1²
    # precomputed real features give the same number
    assert realism(real[:1000], None, ref, real_features=ref(real[1000:])) == pytest.approx(same)  # type: ignore[arg-type]
    assert frechet_distance(ref(real[:1000]), ref(real[1000:])) == pytest.approx(same)


def test_reference_adapts_colour_and_grey_images():
    from fiberscope.data.colormnist import colorize

    ink = torch.zeros(4, 1, 28, 28)
    ink[:, :, 8:20, 12:16] = 1
    colour = colorize(ink, generator=torch.Generator().manual_seed(0)) * 2 - 1
    seen = {}

    def grey_model(x):
        seen["grey"] = x
        return x.flatten(1)[:, :3]

    def colour_model(x):
        seen["colour"] = x
        return x.flatten(1)[:, :3]

    Reference(grey_model, channels=1)(colour)
    assert seen["grey"].shape[1] == 1 and torch.allclose(seen["grey"], ink * 2 - 1, atol=1e-4)  # decoloured
    Reference(colour_model, channels=3)(ink * 2 - 1)
    assert seen["colour"].shape[1] == 3  # grey digits recoloured
    assert Reference(grey_model)(colour).shape == (4, 3)


@pytest.mark.parametrize(
    ("dataset", "subject"),
    [
        ("mnist", "builtin:mnist-cnn"),
        ("mnist", "builtin:colorblind-mnist"),
        ("fashion-mnist", "builtin:fashion-cnn"),
        ("colormnist", "builtin:colorblind-mnist"),
        ("colormnist", None),
    ],
)
def test_default_reference_is_never_the_subject(dataset, subject):
    spec, _ = default_reference(dataset, subject)
    assert spec != subject
    with pytest.raises(ValueError, match="no default reference"):
        default_reference("imagenet", subject)


def test_diversity_and_variance_maps():
    x = torch.zeros(3, 1, 2, 2)
    x[1] = 1.0  # distance 2 from the others
    assert mean_pairwise_distance(x) == pytest.approx((2 + 0 + 2) / 3)
    assert math.isnan(mean_pairwise_distance(x[:1]))
    v = variance_map(x)
    assert v.shape == (1, 2, 2) and torch.allclose(v, torch.full((1, 2, 2), 2 / 9))
    assert variance_map(torch.rand(5, 3, 4, 4), reduce_channels=True).shape == (1, 4, 4)
    d = diversity(x, reference=lambda t: t.flatten(1)[:, :1] * 3)
    assert d["pixel"] == pytest.approx(4 / 3) and d["feature"] == pytest.approx(2.0)
    assert set(diversity(x)) == {"pixel"}


def test_label_agreement():
    logits = torch.tensor([[5.0, 1.0, 0.0], [0.0, 5.0, 1.0], [1.0, 0.0, 5.0], [5.0, 4.0, 0.0]])
    q = torch.tensor([[0.0, 9.0, 0.0]])  # the classifier predicts class 1 for the query
    a = label_agreement(logits, q, label=0)
    assert a == {"vs_prediction": 0.25, "vs_label": 0.5}
    assert label_agreement(logits, q, label=0, k=2)["vs_prediction"] == 0.75  # class 1 in the top 2 of 0, 1, 3
    per_sample = label_agreement(logits, q.expand(4, 3), label=torch.tensor([0, 1, 2, 1]))
    assert per_sample["vs_label"] == 0.75 and "vs_label" not in label_agreement(logits, q)
    with pytest.raises(ValueError, match="k must be"):
        label_agreement(logits, q, k=4)


def test_cross_model_agreement():
    # model A sees only the first coordinate, model B both: A's fiber of (1, 0) varies the second one
    g = torch.Generator().manual_seed(0)
    samples_a = torch.cat([torch.ones(64, 1), torch.randn(64, 1, generator=g)], 1)
    bank = torch.randn(500, 2, generator=g)
    query = torch.tensor([[1.0, 0.0]])
    phi_b = lambda x: x  # noqa: E731
    res = cross_model_agreement(phi_b(samples_a), phi_b(query), phi_b(bank))
    assert res["loss"] == pytest.approx(float((samples_a[:, 1] ** 2).mean()), rel=1e-5)
    assert res["ratio"] == pytest.approx(res["loss"] / res["nn_loss"])
    assert res["ratio"] > 1  # B sees what A ignores: farther than B's nearest real neighbour
    same = cross_model_agreement(phi_b(query.expand(4, 2)), phi_b(query), phi_b(bank))
    assert same["loss"] == 0 and same["ratio"] == 0


def _colour_digits(n, background=None, seed=0):
    from fiberscope.data.colormnist import colorize

    ink = torch.zeros(n, 1, 28, 28)
    ink[:, :, 6:22, 12:16] = 1
    return colorize(ink, background=background, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_colour_histogram_stats_against_the_true_mixture():
    good = colour_histogram_stats(_colour_digits(4000))
    assert good["colour_kl"] < 0.1 and good["colour_w1"] < 0.01 and good["dev"] < 1e-3
    grey = colour_histogram_stats(_colour_digits(500, background=torch.full((500, 3), 0.3)))
    assert grey["colour_kl"] > 2 and grey["colour_w1"] > 0.1
    faded = _colour_digits(500)
    faded = faded * 0.5  # the ink no longer has the colour its background implies
    assert colour_histogram_stats(faded)["dev"] > 0.1
    with pytest.raises(ValueError, match="colour images"):
        colour_histogram_stats(torch.zeros(2, 1, 28, 28))
    from fiberscope.zoo import evaluate

    assert evaluate.colour_histogram_stats is colour_histogram_stats  # still importable from the zoo


def test_augmentations():
    q = torch.full((1, 1, 28, 28), -1.0)
    q[..., 8:20, 12:16] = 1.0
    a = augment(q, 6, torch.Generator().manual_seed(0), kind="geometric", elastic=1.0)
    b = augment(q, 6, torch.Generator().manual_seed(0), kind="geometric", elastic=1.0)
    assert a.shape == (6, 1, 28, 28) and torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1 and (a - q).abs().amax(dim=(1, 2, 3)).min() > 0.1
    assert a[:, :, 0, 0].max() < -0.99  # the corners keep the background colour
    c = augment(_colour_digits(1), 4, torch.Generator().manual_seed(1), kind="colour", jitter=0.2)
    assert c.shape == (4, 3, 28, 28) and c.min() >= -1 and c.max() <= 1
    from fiberscope.data.colormnist import decolorize

    col = _colour_digits(1)
    r = augment(col, 5, torch.Generator().manual_seed(2), kind="recolour")
    # recolouring is exactly in the fiber of a colour-blind subject: the decoloured ink is unchanged
    assert torch.allclose(decolorize((r + 1) / 2), decolorize((col + 1) / 2).expand(5, -1, -1, -1), atol=1e-4)
    assert (r - col).abs().amax(dim=(1, 2, 3)).min() > 0.01
    with pytest.raises(ValueError, match="kind"):
        augment(q, 2, torch.Generator(), kind="mixup")
    with pytest.raises(ValueError, match="recolour"):
        augment(q, 2, torch.Generator(), kind="recolour")
