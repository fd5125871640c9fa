"""One (prior, subject) pair of the bench: its models, data, queries, neighbours and references; its samples.

A unit's samples come from :func:`sample_queries`, which batches several queries together through
the one batch driver (:func:`fiberscope.sampling.draw_rows`), as :func:`fiberscope.sample_fiber`
draws one query's.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..acceptance import check_resample
from ..counting import CallCounter
from ..guidance import FiberObjective, GuidanceMethod
from ..loading import cache_spelling, current_spec
from ..losses import LOSSES
from ..metrics.agreement import label_agreement
from ..metrics.colour import colour_histogram_stats
from ..metrics.diversity import mean_pairwise_distance
from ..metrics.fiber import REPORTED_FORMS, fiber_loss_forms
from ..metrics.frechet import frechet_distance
from ..metrics.neighbours import nearest_neighbour, nearest_neighbours
from ..metrics.realism import Reference, default_reference, load_reference
from ..priors.base import Prior
from ..sampling import draw_rows, redraw_misses, sample_seeds, sum_calls
from ..subjects.base import Subject
from ..utils import atomic_write_json, jsonable
from .config import AUGMENT_DEFAULTS, CLASSIFIERS, SEED_STRIDE, BenchConfig, PairSpec, split_layer

__all__ = ["Pair", "bench_batch_size", "read_json", "sample_queries", "settings_hash", "weights_fingerprint"]


def settings_hash(obj: Any) -> str:
    """The cache key of a unit or of a pair's statistics: a hash of their settings as sorted JSON."""
    return hashlib.sha256(json.dumps(jsonable(obj), sort_keys=True).encode()).hexdigest()[:16]


def weights_fingerprint(spec: str) -> str | None:
    """What identifies the weights behind a prior or subject spec, for the cache keys of units.

    ``builtin:NAME`` hashes the content of its safetensors files (small), ``trained:NAME`` (or its
    old spelling ``baseline:NAME``) that of the trained model's ``model.safetensors``, a local file or
    directory the names, sizes and modification times of its weight files (checkpoints of several GB
    are not read); a hub id gives ``None`` (its revision identifies it). So a retrained prior or
    subject reruns its units instead of reusing results measured on the old weights.
    """
    name = current_spec(spec.split("@", 1)[0], warn=False)
    h = hashlib.sha256()
    try:
        if name.startswith(("builtin:", "trained:")):
            from ..trained.common import file_digest, model_dir
            from ..zoo.registry import weights_dir

            kind, _, short = name.partition(":")
            root = weights_dir(short) if kind == "builtin" else model_dir(short)
            files = sorted(root.rglob("*.safetensors"))
            for f in files:
                h.update(f"{f.relative_to(root).as_posix()}:{file_digest(f)}".encode())
        else:
            path = Path(name).expanduser()
            if not path.exists():
                return None
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            for f in files:
                st = f.stat()
                h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    except (OSError, ValueError):
        return None
    return h.hexdigest()[:16] if files else None


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's content, or None when it is missing or not JSON (a unit not finished)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def sample_queries(
    prior: Prior,
    subject: Subject,
    queries: torch.Tensor,
    method: GuidanceMethod,
    run_seeds: list[int],
    n: int = 1,
    batch_size: int = 64,
    *,
    tolerance: float | None = None,
    resample: int = 0,
    metric: str = "sq_l2",
) -> tuple[torch.Tensor, torch.Tensor | None, CallCounter]:
    """``n`` samples from the fiber of each of many queries, several queries per guidance batch.

    Row ``q·n + j`` is sample ``j`` of query ``q``: bit for bit what
    ``fs.sample_fiber(subject, queries[q:q+1], prior, n, method, seed=run_seeds[q], batch_size=B)``
    draws as its sample ``j`` on the same device, with ``B = min(batch_size, len(queries)·n)``, the
    batch shape used here. Both run the one batch driver, :func:`fiberscope.sampling.draw_rows`:
    each row carries its own target (φ of its query alone) and noise stream, and the last batch is
    padded to the same shape. Returns decoded images ``[Q·n, ...]`` on the CPU, the states for
    latent priors (else None), and the network calls of all rows as ``sample_fiber`` counts them:
    the guidance loops, the final decoding and φ of the results, and φ of each query once.

    With ``resample=R`` and a ``tolerance`` (fiber loss in ``metric``), the rows above it are drawn
    again with new seeds, up to ``R`` rounds, as ``sample_fiber(..., tolerance=, resample=)`` does
    (:func:`fiberscope.sampling.redraw_misses`); their calls are counted with the rest.

    Example:
        >>> import torch, fiberscope as fs
        >>> prior = fs.GaussianPrior(dim=4)
        >>> subject = fs.load_subject(lambda x: x[:, :2])
        >>> imgs, _, calls = sample_queries(prior, subject, torch.ones(3, 4), fs.DPS(steps=5), [0, 1, 2], n=2)
        >>> imgs.shape, calls.prior_backwards
        (torch.Size([6, 4]), 30.0)
    """
    if len(run_seeds) != len(queries):
        raise ValueError(f"run_seeds must give one seed per query: {len(run_seeds)} for {len(queries)} queries")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    resample = check_resample(resample, tolerance)
    counter = CallCounter()  # φ of each query, once (sample_fiber counts it the same way)
    prior.counter = subject.counter = counter
    try:
        loss = getattr(method, "loss", "l2")
        objectives = [
            FiberObjective(prior, subject, queries[q : q + 1].to(prior.device), loss) for q in range(len(queries))
        ]
    finally:
        prior.counter = subject.counter = None
    rows = [o for o in objectives for _ in range(n)]
    seeds = [s for rs in run_seeds for s in sample_seeds(rs, n)]
    bs = bench_batch_size(batch_size, len(rows))
    drawn = draw_rows(prior, method, rows, seeds, bs)
    spent = [counter.as_dict(), *drawn.calls]
    if resample and tolerance is not None:
        target = torch.cat([o.target for o in rows]).float()
        losses = LOSSES[metric](drawn.features, target).cpu()
        redo = redraw_misses(prior, method, rows, seeds, bs, drawn, losses, float(tolerance), resample, metric)
        spent.append(redo.calls)
    calls = CallCounter(**sum_calls(spent))  # type: ignore[arg-type]
    return drawn.images.cpu(), (drawn.states.cpu() if prior.is_latent else None), calls


def bench_batch_size(batch_size: int, rows: int) -> int:
    """The batch shape of a unit: ``batch_size``, or all its rows in one batch when they are fewer (no padding)."""
    return max(1, min(batch_size, rows))


class Pair:
    """Lazily loaded models, data and pair-level statistics of one (prior, subject) pair."""

    def __init__(
        self,
        cfg: BenchConfig,
        pair: PairSpec,
        objects: Mapping[str, Any],
        data: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
        log: Callable[[str], None],
    ):
        self.cfg, self.pair, self.objects, self.data, self.log = cfg, pair, objects, data, log
        self.loaded = False
        self.reference: Reference | None = None
        self.classifier: Reference | None = None
        self.reference_name: str | None = None
        self.classifier_name: str | None = None
        self._weights: list[str | None] | None = None

    # ---- loading --------------------------------------------------------------------------------
    def _load_model_ref(self, spec_layer: str | None) -> tuple[Reference | None, str | None]:
        if not spec_layer:
            return None, None
        spec, layer = split_layer(spec_layer)
        dr = self.prior.data_range or (-1.0, 1.0)
        try:
            if spec in self.objects:
                from ..loading import load_subject

                return Reference(load_subject(self.objects[spec], layer), name=spec_layer, data_range=dr), spec_layer
            return load_reference(spec, layer, data_range=dr), spec_layer
        except Exception as e:  # missing weights, unknown id: the bench goes on without this metric
            self.log(f"  [{self.pair.key}] {spec_layer} not available ({type(e).__name__}: {e}); column left empty")
            return None, None

    def load(self) -> None:
        if self.loaded:
            return
        from ..loading import load_prior, load_subject

        cfg, pair = self.cfg, self.pair
        p = self.objects.get(pair.prior, pair.prior)
        self.prior: Prior = p if isinstance(p, Prior) else load_prior(p, device=cfg.device)
        self.device = self.prior.device
        s = self.objects.get(pair.subject, pair.subject)
        self.subject: Subject = load_subject(s, pair.layer, device=self.device)
        ds = pair.dataset
        if ds is not None and ds in self.data:
            images, labels = self.data[ds]
        elif ds in ("mnist", "fashion-mnist", "colormnist"):
            from ..zoo.evaluate import real_images

            images, labels = real_images(ds, "test")
        else:
            raise ValueError(
                f"pair {pair.key}: no test images for data set {ds!r}; name the data set of "
                f"{pair.prior!r} in `datasets:` or pass it in run_bench(data=...)"
            )
        self.images, self.labels = images.float(), labels
        n_all = len(images)
        perm = torch.randperm(n_all, generator=torch.Generator().manual_seed(cfg.query_seed))
        self.query_idx = perm[: cfg.queries]
        rest = perm[cfg.queries :]
        self.bank_idx = rest if cfg.bank is None else rest[: cfg.bank]
        # real sets for realism: `real` images, and a disjoint set of Q·n for the floor
        self.real_idx = rest[: cfg.real]
        rows = cfg.queries * cfg.n
        self.floor_idx = rest[cfg.real : cfg.real + rows]
        self.queries = self.images[self.query_idx].to(self.device)
        with torch.no_grad():
            self.targets = self._features(self.queries)
        ref = cfg.reference.get(ds or "")
        if ref is None and ds is not None:
            try:
                spec, layer = default_reference(ds, pair.subject)
                ref = spec + (f"@{layer}" if layer else "")
            except ValueError as e:
                self.log(f"  [{pair.key}] {e}")
        self.reference, self.reference_name = self._load_model_ref(ref)
        clf = cfg.classifier.get(ds or "", CLASSIFIERS.get(ds or ""))
        self.classifier, self.classifier_name = self._load_model_ref(clf)
        self.loaded = True

    def real_reference_features(self) -> torch.Tensor:
        """The reference's features of the real images of the realism comparison (computed once)."""
        if getattr(self, "_real_f", None) is None:
            assert self.reference is not None
            self._real_f = self.reference(self.images[self.real_idx])
        return self._real_f

    def _features(self, images: torch.Tensor, bs: int = 500) -> torch.Tensor:
        out = [
            self.subject(images[i : i + bs].to(self.device), self.prior.data_range).detach().float().flatten(1).cpu()
            for i in range(0, len(images), bs)
        ]
        return torch.cat(out)

    # ---- pair-level statistics (cached) -----------------------------------------------------------
    def stats(self, out: Path) -> dict[str, Any]:
        """Nearest neighbours of every query, the realism floor and the names of the references."""
        path = out / "pairs" / f"{self.pair.key}.json"
        h = settings_hash(self._stats_settings())
        old = read_json(path)
        if old is not None and old.get("hash") == h:
            return {**old, "pair": asdict(self.pair)}  # the same settings, its specs spelled as today
        self.load()
        cfg = self.cfg
        t0 = time.perf_counter()
        with torch.no_grad():
            bank = self._features(self.images[self.bank_idx])
        nn_idx, nn_forms, knn = [], [], []
        for qi in range(len(self.query_idx)):
            nb = nearest_neighbour(
                self.targets[qi : qi + 1],
                bank,
                cfg.metric,
                query_image=self.images[self.query_idx[qi]],
                bank_images=self.images[self.bank_idx],
            )
            nn_idx.append(int(self.bank_idx[nb.index]))
            forms = fiber_loss_forms(bank[nb.index : nb.index + 1], self.targets[qi : qi + 1])
            nn_forms.append({k: float(v[0]) for k, v in forms.items()})
            k = min(cfg.n, len(bank) - 1)
            idx = nearest_neighbours(
                self.targets[qi : qi + 1],
                bank,
                k,
                query_image=self.images[self.query_idx[qi]],
                bank_images=self.images[self.bank_idx],
            )
            knn.append([int(self.bank_idx[i]) for i in idx])
        floor = None
        if self.reference is not None and len(self.floor_idx) >= 2:
            real_f = self.real_reference_features()
            floor = frechet_distance(self.reference(self.images[self.floor_idx]), real_f)
        res = {
            "hash": h,
            "pair": asdict(self.pair),
            "dataset": self.pair.dataset,
            "query_indices": self.query_idx.tolist(),
            "query_labels": [int(self.labels[i]) for i in self.query_idx],
            "nn_indices": nn_idx,
            "nn_losses": nn_forms,
            "nn_loss_mean": {k: float(np.mean([d[k] for d in nn_forms])) for k in nn_forms[0]},
            "knn_indices": knn,
            "bank_size": len(self.bank_idx),
            "reference": self.reference_name,
            "classifier": self.classifier_name,
            "realism_floor": floor,
            "realism_n": cfg.queries * cfg.n,
            "seconds": time.perf_counter() - t0,
        }
        atomic_write_json(path, res)
        return res

    def _stats_settings(self) -> dict[str, Any]:
        c = self.cfg
        pair = {k: cache_spelling(v) if isinstance(v, str) else v for k, v in asdict(self.pair).items()}
        return {
            "pair": pair,  # specs spelled as when the keys were first taken (trained:NAME was baseline:NAME)
            "queries": c.queries,
            "query_seed": c.query_seed,
            "n": c.n,
            "bank": c.bank,
            "real": c.real,
            "metric": c.metric,
            "reference": c.reference.get(self.pair.dataset or ""),
            "classifier": c.classifier.get(self.pair.dataset or ""),
            "weights": self._weights_fingerprints(),
            "v": 1,
        }

    def _weights_fingerprints(self) -> list[str | None]:
        if self._weights is None:  # in-memory objects have no files: their names give None
            self._weights = [weights_fingerprint(self.pair.prior), weights_fingerprint(self.pair.subject)]
        return self._weights

    # ---- units ----------------------------------------------------------------------------------
    def unit_settings(self, method_name: str, method_cfg: dict[str, Any], seed: int) -> dict[str, Any]:
        s = self._stats_settings()
        s.update({"method": method_name, "method_config": method_cfg, "seed": seed})
        if method_name == "augment":
            s["augment"] = self.augment_kwargs()
        return s

    def augment_kwargs(self) -> dict[str, Any]:
        ds = self.pair.dataset or ""
        return dict(self.cfg.augment.get(ds, AUGMENT_DEFAULTS.get(ds, {"kind": "geometric"})))

    def run_seeds(self, seed: int) -> list[int]:
        return [seed * SEED_STRIDE + int(i) for i in self.query_idx]

    def sample(self, method: GuidanceMethod, seed: int) -> tuple[torch.Tensor, torch.Tensor | None, CallCounter]:
        """All queries × n samples of one seed, batched; returns images, states (latent priors), counts."""
        return sample_queries(
            self.prior, self.subject, self.queries, method, self.run_seeds(seed), self.cfg.n, self.cfg.batch_size
        )

    def measure(self, images: torch.Tensor) -> dict[str, Any]:
        """Every per-unit metric of images ``[Q·n, ...]`` (rows grouped by query, n each)."""
        cfg = self.cfg
        n, nq = cfg.n, len(self.query_idx)
        rows = torch.arange(nq).repeat_interleave(n)
        with torch.no_grad():
            feats = self._features(images)
        forms = fiber_loss_forms(feats, self.targets[rows], REPORTED_FORMS)
        per_query = {k: v.view(nq, n).mean(1).tolist() for k, v in forms.items()}
        res: dict[str, Any] = {
            "fiber_loss": {k: float(np.mean(v)) for k, v in per_query.items()},
            "fiber_loss_per_query": per_query,
            "diversity_pixel": float(
                np.nanmean([mean_pairwise_distance(images[rows == q]) for q in range(nq)]) if n > 1 else float("nan")
            ),
        }
        if self.reference is not None:
            ref_imgs = self.reference(images)
            real_f = self.real_reference_features()
            res["realism_fd"] = frechet_distance(ref_imgs, real_f) if len(images) >= 2 else float("nan")
            res["diversity_feature"] = (
                float(np.nanmean([mean_pairwise_distance(ref_imgs[rows == q]) for q in range(nq)]))
                if n > 1
                else float("nan")
            )
        if self.classifier is not None:
            logits = self.classifier(images)
            q_logits = self.classifier(self.images[self.query_idx])
            agr = label_agreement(logits, q_logits[rows], self.labels[self.query_idx][rows])
            res["label_agreement"] = agr["vs_label"]
            res["prediction_agreement"] = agr["vs_prediction"]
        if self.pair.dataset == "colormnist" and images.shape[1] == 3:
            res.update(colour_histogram_stats(images))
        return res
