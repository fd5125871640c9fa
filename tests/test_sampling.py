"""The one batch driver (``fiberscope.sampling``) and the one method registry (``fiberscope.methods``).

``sample_fiber``, the bench and the audit draw through :func:`draw_rows`; the CLI, the bench and the
audit's manifests build methods with :func:`method_from_spec`. Here: rows of several queries in one
batch are each what they would be alone, the padding never shows, costs are per real row, redraws
follow per-row tolerances; the registry knows trained models and per-prior settings, and refuses
the same things with the same messages wherever the spec comes from.
"""

from __future__ import annotations

import pytest
import torch

import fiberscope as fs
from conftest import TinyCNN, tiny_unet
from fiberscope.errors import ModelNotAvailableError, ParameterError
from fiberscope.methods import method_from_spec, method_names
from fiberscope.sampling import draw_rows, redraw_misses, sum_calls

METHOD = fs.NDTM(steps=6, inner_steps=2, lr=0.05, gamma=1.0, sampler="ddim", eta=0.5)


@pytest.fixture(scope="module")
def toy():
    prior = fs.CallablePrior(tiny_unet(), fs.VPSchedule.linear(), "eps", state_shape=(1, 8, 8), name="toy-prior")
    subject = fs.load_subject(TinyCNN(), "head")
    g = torch.Generator().manual_seed(0)
    queries = torch.rand(3, 1, 8, 8, generator=g) * 2 - 1
    return prior, subject, queries


def _objectives(prior, subject, queries):
    return [fs.FiberObjective(prior, subject, q[None]) for q in queries]


def test_rows_of_several_queries_in_one_batch_are_what_they_are_alone(toy):
    prior, subject, queries = toy
    a, b, c = _objectives(prior, subject, queries)
    seen: list[tuple[int, int]] = []
    # batches of 4 (the tiny UNet's time embedding is 16 wide: at an odd batch size its last row falls into the
    # scalar tail of a vectorised SiLU and rounds differently; the zoo's networks have no such rows)
    mixed = draw_rows(prior, METHOD, [a, a, b, c, c], [1, 2, 3, 4, 5], batch_size=4,
                      callback=lambda info: seen.append((info["batch"], info["x"].shape[0])))  # fmt: skip
    assert mixed.images.shape == (5, 1, 8, 8) and mixed.features.shape[0] == 5 and len(mixed.loss_history) == 2
    assert set(seen) == {(0, 4), (1, 1)}  # the padding rows of batch 1 never reach the callback
    for rows, seeds, where in [([b], [3], slice(2, 3)), ([c, c], [4, 5], slice(3, 5)), ([a, a], [1, 2], slice(0, 2))]:
        alone = draw_rows(prior, METHOD, rows, seeds, batch_size=4)
        assert torch.equal(alone.images, mixed.images[where]) and torch.equal(alone.features, mixed.features[where])
    # every real row costs its batch's calls / batch size; the padding rows are not counted
    one = mixed.calls[0]
    assert all(c == one for c in mixed.calls) and one["prior_backwards"] == 6 * 2
    assert sum_calls(mixed.calls)["prior_backwards"] == 5 * 6 * 2
    assert prior.counter is None and subject.counter is None  # the counters are left as they were


def test_the_driver_refuses_rows_it_cannot_batch(toy):
    prior, subject, queries = toy
    a = fs.FiberObjective(prior, subject, queries[:1])
    other = fs.FiberObjective(prior, fs.load_subject(TinyCNN(seed=1), "head"), queries[:1])
    with pytest.raises(ValueError, match="one objective per row"):
        draw_rows(prior, METHOD, [a], [1, 2], batch_size=2)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        draw_rows(prior, METHOD, [a], [1], batch_size=0)
    with pytest.raises(ValueError, match="share the prior, the subject and the loss"):
        draw_rows(prior, METHOD, [a, other], [1, 2], batch_size=2)


def test_redraws_follow_per_row_tolerances_and_keep_the_better_sample(toy):
    prior, subject, queries = toy
    rows = [o for o in _objectives(prior, subject, queries[:2]) for _ in range(2)]
    seeds = [11, 12, 13, 14]
    drawn = draw_rows(prior, METHOD, rows, seeds, batch_size=4)
    target = torch.cat([o.target for o in rows])
    losses = fs.LOSSES["sq_l2"](drawn.features, target).cpu()
    before = losses.clone()
    tol = torch.tensor([float("inf"), float("inf"), 0.0, 0.0])  # rows 0, 1 in; rows 2, 3 never
    redo = redraw_misses(prior, METHOD, rows, seeds, 4, drawn, losses, tol, 2, "sq_l2")
    assert redo.rounds == 2 and redo.redrawn == 4 and len(redo.loss_history) == 2
    assert seeds[:2] == [11, 12] and torch.equal(losses[:2], before[:2])
    assert (losses <= before).all()  # a redraw replaces a row only when it is better
    assert redo.calls["prior_backwards"] == 4 * 6 * 2
    recomputed = fs.LOSSES["sq_l2"](drawn.features, target).cpu()  # the drawn rows were replaced with the losses
    assert torch.equal(recomputed, losses)


def test_the_bench_redraws_misses_as_sample_fiber_does_and_counts_them(toy):
    """sample_queries(..., tolerance=, resample=): the rows above the tolerance drawn again with new seeds, bit for
    bit what sample_fiber keeps for the same query, seeds and batch shape; the redraws' calls are in the cost."""
    from fiberscope.bench import sample_queries

    prior, subject, queries = toy
    q = queries[:1]
    plain, _, calls = sample_queries(prior, subject, q, METHOD, [5], n=4, batch_size=4)
    target = subject(q, prior.data_range).float()
    losses = fs.LOSSES["sq_l2"](subject(plain, prior.data_range).float(), target.expand(4, -1))
    tol = float(losses.median())  # about half the rows miss
    imgs, _, redrawn = sample_queries(prior, subject, q, METHOD, [5], n=4, batch_size=4, tolerance=tol, resample=2)
    out = fs.sample_fiber(subject, q, prior, n=4, method=METHOD, seed=5, batch_size=4, tolerance=tol, resample=2,
                          progress=False)  # fmt: skip
    assert torch.equal(imgs, out.images)
    kept = losses <= tol
    assert torch.equal(imgs[kept], plain[kept]) and not torch.equal(imgs, plain)  # only the misses were redrawn
    extra = out.acceptance["redrawn_samples"]
    assert extra > 0 and redrawn.prior_backwards == calls.prior_backwards + extra * 6 * 2
    with pytest.raises(ParameterError, match="needs a tolerance"):
        sample_queries(prior, subject, q, METHOD, [5], n=4, batch_size=4, resample=2)


# ---------------------------------------------------------------------------------------------------------------
# the method registry


def test_one_registry_for_names_presets_per_prior_settings_and_trained_models(tmp_path):
    assert method_names()[:2] == ["ndtm", "auto"] and "trained" in method_names() and "builtin-mnist" in method_names()
    spec = {
        "name": "unguided",
        "steps": 50,
        "clip": [-5, 5],
        "pairs": [["builtin:colormnist-latent", "builtin:colorblind-mnist"]],
        "per_prior": {"builtin:colormnist-latent": {"sampler": "ancestral", "steps": 100}},
    }
    m = method_from_spec(spec)
    assert (m.steps, m.sampler, m.clip) == (50, "ddim", (-5, 5))  # YAML lists become the tuples a method holds
    m = method_from_spec(spec, None, "builtin:colormnist-latent")
    assert (m.steps, m.sampler) == (100, "ancestral")
    assert method_from_spec(spec, {"steps": 7}, "builtin:colormnist-latent").steps == 7  # flags win
    assert method_from_spec(None, None, "builtin:mnist-ddpm").sampler == "ddim"  # the prior's preset
    with pytest.raises(ModelNotAvailableError, match="has no weights"):  # trained models: known, here not trained
        method_from_spec({"name": "trained", "model": "cfm-l10", "root": str(tmp_path)})


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("dsp", r"unknown method 'dsp': use one of ndtm, auto, .*trained .* or an NDTM preset \(builtin-colormnist"),
        ({"steps": 3}, r"method object \{'steps': 3\} needs a 'name'"),
        ({"name": "mpgd", "scale": -1}, r"scale"),
        ({"name": "unguided", "inner_steps": 3}, r"method 'unguided': unknown setting\(s\) \['inner_steps'\]"),
        ({"name": "dps", "per_prior": ["x"]}, r"method 'dps': per_prior must map prior specs to settings"),
        ({"name": "trained"}, r"method 'trained': model must name a trained model"),
    ],
)
def test_the_registry_refuses_with_one_message_wherever_the_spec_comes_from(spec, match):
    with pytest.raises(ParameterError, match=match):
        method_from_spec(spec)
