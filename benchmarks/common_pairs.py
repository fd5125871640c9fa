"""Shared by benchmarks/defaults_acceptance.py and benchmarks/efficiency.py: zoo pairs, data, judges.

A pair is ``PRIOR:SUBJECT@LAYER`` with zoo names (``mnist-ddpm:mnist-cnn@logits``); ``folder:NAME``
as the prior is the zoo's ``NAME`` copied to a plain diffusers folder, so no preset is known for it.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import fiberscope as fs
from fiberscope.bench import sample_queries
from fiberscope.metrics import frechet_distance
from fiberscope.metrics.realism import default_reference, load_reference
from fiberscope.zoo import ZOO
from fiberscope.zoo.evaluate import real_images
from fiberscope.zoo.registry import weights_dir

#: Every zoo pair of the default bench, plus a pair no preset was tuned on and a preset-less folder copy.
ZOO_PAIRS = [
    "mnist-ddpm:mnist-cnn@logits",
    "mnist-ddpm:mnist-cnn@penultimate",
    "mnist-flow:mnist-cnn@logits",
    "fashion-ddpm:fashion-cnn@logits",
    "colormnist-latent:colorblind-mnist",
    "mnist-ddpm:fashion-cnn@logits",
    "folder:mnist-ddpm:mnist-cnn@logits",
]


@dataclass
class Pair:
    key: str
    prior_name: str  # the zoo name of the weights
    folder: bool
    subject: str
    layer: str | None

    @property
    def dataset(self) -> str:
        return ZOO[self.prior_name].dataset

    @property
    def tuned_preset(self) -> str | None:
        return ZOO[self.prior_name].preset


def parse_pair(spec: str) -> Pair:
    folder = spec.startswith("folder:")
    rest = spec.removeprefix("folder:")
    prior, _, subj = rest.partition(":")
    if not subj or prior not in ZOO or ZOO[prior].kind != "prior":
        raise SystemExit(f"pair {spec!r}: use PRIOR:SUBJECT[@LAYER] with zoo names, e.g. mnist-ddpm:mnist-cnn@logits")
    name, _, layer = subj.partition("@")
    if name not in ZOO or ZOO[name].kind != "subject":
        raise SystemExit(f"pair {spec!r}: {name!r} is not a zoo subject")
    return Pair(spec, prior, folder, f"builtin:{name}", layer or None)


def load_pair_prior(pair: Pair, tmp: list[tempfile.TemporaryDirectory[str]]) -> Any:
    if not pair.folder:
        return fs.load_prior(f"builtin:{pair.prior_name}")
    d = tempfile.TemporaryDirectory(prefix="fiberscope-folder-")
    tmp.append(d)
    dest = Path(d.name) / pair.prior_name
    shutil.copytree(weights_dir(pair.prior_name), dest)
    return fs.load_prior(str(dest))


def unguided_for(prior_name: str) -> fs.Unguided:
    """The bench's unguided settings per prior (benchmarks/bench_default.yaml)."""
    if prior_name == "mnist-flow":
        return fs.Unguided(steps=50, sampler="euler")
    if prior_name == "colormnist-latent":
        return fs.Unguided(steps=100, sampler="ancestral", clip=(-5.0, 5.0))
    return fs.Unguided(steps=50, eta=0.5)


class Judge:
    """Real data of a pair, its realism reference (never the subject) and two classifiers that are not the subject.

    ``class_kept`` is judged by an independent classifier (``benchmarks/judges.py``: another
    architecture, trained on the full training split, 99.6 % on the MNIST test set); ``class_kept_knn``
    by a k-NN classifier in the realism reference's space (weaker: 95.6 % on real MNIST digits).
    """

    def __init__(self, pair: Pair, queries: int, query_seed: int = 0, real: int = 1000, bank: int = 3000, k: int = 5):
        images, labels = real_images(pair.dataset, "test")
        perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(query_seed))
        self.query_idx = perm[:queries]
        rest = perm[queries:]
        self.images, self.labels = images.float(), labels
        self.queries = self.images[self.query_idx]
        self.query_labels = labels[self.query_idx]
        spec, layer = default_reference(pair.dataset, pair.subject)
        self.reference_name = spec + (f"@{layer}" if layer else "")
        self.reference = load_reference(spec, layer)
        self.real_features = self.reference(self.images[rest[:real]])
        self.bank_features = self.reference(self.images[rest[real : real + bank]])
        self.bank_labels = labels[rest[real : real + bank]]
        self.k = k
        held = rest[real + bank : real + bank + 500]
        self.knn_accuracy = float((self.classify(self.reference(self.images[held])) == labels[held]).float().mean())
        from judges import load_judge

        self.judge_net, self.judge_record = load_judge(pair.dataset)
        self.judge_accuracy = float(self.judge_record["test_accuracy"])

    def judge_labels(self, images: torch.Tensor) -> torch.Tensor:
        """The independent classifier's labels (colour MNIST: on the decoloured digit)."""
        from fiberscope.metrics.realism import _to_grey

        x = _to_grey(images, (-1.0, 1.0)) if images.shape[1] == 3 else images
        with torch.no_grad():
            return torch.cat([self.judge_net(x[i : i + 500].float()).argmax(1) for i in range(0, len(x), 500)])

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        d = torch.cdist(feats.float(), self.bank_features.float())
        idx = d.topk(self.k, largest=False).indices
        votes = self.bank_labels[idx]
        return torch.mode(votes, dim=1).values

    def measure(self, images: torch.Tensor, n: int) -> dict[str, float]:
        """Class kept (the independent classifier; and k-NN in the reference's space) and realism (Fréchet distance)."""
        feats = self.reference(images)
        rows = torch.arange(len(self.queries)).repeat_interleave(n)
        kept = float((self.judge_labels(images) == self.query_labels[rows]).float().mean())
        knn = float((self.classify(feats) == self.query_labels[rows]).float().mean())
        return {"class_kept": kept, "class_kept_knn": knn, "realism_fd": frechet_distance(feats, self.real_features)}

    def real_floor(self, m: int) -> float:
        """Fréchet distance of ``m`` other real images (the value at equal n that a perfect sampler gets)."""
        feats = self.bank_features[-m:]
        return frechet_distance(feats, self.real_features)


def run_method(
    prior: Any,
    subject: Any,
    judge: Judge,
    method: Any,
    n: int,
    seed: int,
    metric: str = "sq_l2",
    *,
    tolerance: float | None = None,
    resample: int = 0,
) -> dict[str, Any]:
    """All queries × n samples with ``method``; fiber losses per sample, cost per sample, judge metrics.

    ``resample=R`` with a ``tolerance``: the samples above it are drawn again, up to R rounds, and the
    redraws' calls are in the cost (:func:`fiberscope.bench.sample_queries`).
    """
    import time

    queries = judge.queries.to(prior.device)
    t0 = time.perf_counter()
    run_seeds = [seed * 100_003 + int(i) for i in judge.query_idx]
    imgs, _, counter = sample_queries(
        prior,
        subject,
        queries,
        method,
        run_seeds,
        n=n,
        batch_size=len(queries) * n,
        tolerance=tolerance,
        resample=resample,
        metric=metric,
    )
    secs = time.perf_counter() - t0
    with torch.no_grad():
        target = subject(queries, prior.data_range).float()
        feats = subject(imgs.to(prior.device), prior.data_range).float()
    rows = torch.arange(len(queries)).repeat_interleave(n)
    fl = fs.LOSSES[metric](feats, target[rows]).cpu()
    out = {
        "fiber_loss": fl.tolist(),
        "fiber_loss_mean": float(fl.mean()),
        "fiber_loss_median": float(fl.median()),
        "forward_equivalents": counter.forward_equivalents() / len(rows),
        "seconds": secs,
        **judge.measure(imgs, n),
    }
    out["_images"] = imgs
    return out


def diversity(images: torch.Tensor, judge: Judge, n: int) -> float:
    """Mean pairwise distance of the samples of one query in the reference's space, over queries."""
    from fiberscope.metrics.diversity import mean_pairwise_distance

    feats = judge.reference(images)
    q = len(judge.queries)
    vals = [mean_pairwise_distance(feats[i * n : (i + 1) * n]) for i in range(q)] if n > 1 else [float("nan")]
    return float(np.nanmean(vals))
