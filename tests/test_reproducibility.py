"""Same seed ⇒ same sample whatever ``n`` (issue 20 #13): the guidance batch shape does not depend on n.

Guidance amplifies floating-point rounding: over tens of steps with a useful learning rate, kernels
chosen for another batch shape move a sample visibly. ``sample_fiber`` therefore runs every batch at
a fixed shape (``batch_size``, default 8, the last batch padded), so a sample drawn again alone from
its seed is bit-identical, on the same device.
"""

from __future__ import annotations

import pytest
import torch

import fiberscope as fs
from fiberscope.sampling import DEFAULT_BATCH_SIZE, pad_seeds, real_rows

# a realistic run on the zoo's MNIST DDPM: 25 steps, 3 Adam steps each, the preset's learning rate
REAL = dict(steps=25, inner_steps=3, lr=0.05, gamma=[(0, 0, 1000, 700), (2, 2, 700, 0)], sampler="ddim", eta=0.5)


@pytest.fixture(scope="module")
def mnist():
    prior = fs.load_prior("builtin:mnist-ddpm")
    subject = fs.load_subject("builtin:mnist-cnn", "penultimate")
    from fiberscope.data.mnist import load_mnist

    digits = load_mnist("test")[0]
    query = torch.from_numpy(digits[7:8]).float().div(127.5).sub(1).unsqueeze(1)
    return prior, subject, query


def test_padding_helpers():
    assert pad_seeds([5, 6, 7], 8) == [5, 6, 7, 5, 6, 7, 5, 6]
    assert pad_seeds([1, 2], 2) == [1, 2]
    info = {"x": torch.zeros(8, 2), "cost": torch.ones(8), "t": 3.0, "gamma": torch.tensor(1.0)}
    cut = real_rows(info, 3, 8)
    assert cut["x"].shape == (3, 2) and cut["cost"].shape == (3,) and cut["t"] == 3.0
    assert cut["gamma"].dim() == 0
    assert real_rows(info, 8, 8) is info


def test_one_sample_redrawn_alone_is_bit_identical(mnist):
    prior, subject, query = mnist
    m = fs.NDTM(**REAL)
    seen: list[tuple[int, tuple[int, ...]]] = []
    out = fs.sample_fiber(
        subject, query, prior, n=3, method=m, seed=11, progress=False, callback=lambda i: seen.append(i["x"].shape)
    )
    assert out.config["batch_size"] == DEFAULT_BATCH_SIZE and out.config["padding"] == DEFAULT_BATCH_SIZE - 3
    assert all(s[0] == 3 for s in seen)  # the callback never sees the padding rows
    assert len(out.loss_history[0]) > 10
    alone = fs.sample_fiber(subject, query, prior, method=m, seeds=[out.seeds[2]], progress=False)
    assert torch.equal(alone.images[0], out.images[2])
    assert torch.equal(alone.fiber_loss[0], out.fiber_loss[2])
    assert alone.loss_history[0] != out.loss_history[0]  # the history is the real samples' mean
    # per-sample costs count real samples only: the same with 3 samples as with 1, but for the one-off
    # φ(query), shared by the run's samples
    for k in ("prior_forwards", "prior_backwards", "subject_backwards"):
        assert alone.counts[k] == out.counts[k]
    assert alone.counts["subject_forwards"] - out.counts["subject_forwards"] == pytest.approx(1 - 1 / 3)
    assert out.counts["prior_forwards"] >= REAL["steps"] * REAL["inner_steps"]
    # the guidance did something: the samples moved towards the query's features
    ung = fs.sample_fiber(subject, query, prior, n=3, method=fs.Unguided(steps=25), seed=11, progress=False)
    assert float(out.fiber_loss.mean()) < 0.5 * float(ung.fiber_loss.mean())


def test_samples_of_a_second_partial_batch_and_a_custom_batch_size(mnist):
    prior, subject, query = mnist
    m = fs.NDTM(**{**REAL, "steps": 20})
    out = fs.sample_fiber(subject, query, prior, n=5, method=m, seed=2, batch_size=3, progress=False)
    assert out.config["padding"] == 1 and len(out.loss_history) == 2
    again = fs.sample_fiber(subject, query, prior, method=m, seeds=out.seeds[3:], batch_size=3, progress=False)
    assert torch.equal(again.images, out.images[3:])
    assert out.loss_history[1] == again.loss_history[0]


def test_the_default_sampler_redraws_bit_identical_with_its_projection(mnist):
    """The default (AutoNDTM: 50 steps, then the projection's data-dependent backtracking) keeps the promise."""
    prior, subject, query = mnist
    out = fs.sample_fiber(subject, query, prior, n=3, seed=5, progress=False)
    assert out.config["method"]["method"] == "auto" and out.config["method"]["project_steps"] > 0
    alone = fs.sample_fiber(subject, query, prior, seeds=[out.seeds[1]], progress=False)
    assert torch.equal(alone.images[0], out.images[1])
    assert torch.equal(alone.fiber_loss[0], out.fiber_loss[1])
