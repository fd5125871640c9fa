"""``fiberscope bench``: guidance methods side by side, measured the paper's way.

A matrix **methods × (prior, subject) pairs × queries × seeds**, from a YAML/TOML file or flags::

    fiberscope bench --config benchmarks/bench_default.yaml --out bench-out      # resumable
    fiberscope bench --config benchmarks/bench_default.yaml --out bench-out --methods ndtm,dps --seeds 0

For every (method, prior, subject) it reports, as ``mean ± std`` across sampling seeds with the
query set fixed (the paper's convention):

* the fiber loss (the headline ``metric``, default squared L2, and every other form in the JSON),
  beside the nearest-neighbour baseline (the closest real test image in φ, query excluded);
* realism: the Fréchet distance between the samples and real test images in a *reference* model's
  space (never the subject: :func:`fiberscope.metrics.default_reference`), next to the same
  distance between two real sets of the same size (the floor set by sample size);
* diversity: mean pairwise distance among the samples of each fiber, in pixels and in the
  reference's features;
* label agreement of a reference classifier with the query's label and with its own prediction
  on the query;
* colour KL / W1 / dev against the true colour mixture (colour MNIST);
* cost: network calls per sample in forward-equivalents (a backward counts as two forwards) and
  wall time per sample.

Besides the guidance methods, two baselines that need no prior are judged the same way:
``nn`` (the n nearest real images to the query in φ) and ``augment`` (n random augmentations
of the query). Outputs in ``--out``: ``bench.md`` (one table per pair), ``results.json``,
``loss_vs_cost.png``, ``loss_vs_realism.png``, and per unit ``units/PAIR/METHOD__seedS.{json,npz,png}``.
A unit (one method, pair and seed over all queries) is written atomically with a hash of its
settings, which include a fingerprint of the prior's and the subject's weight files
(:func:`weights_fingerprint`); a rerun skips finished units whose settings and weights did not
change, so an interrupted bench resumes where it stopped and a retrained model is measured again.

Sampling batches several queries together (each row its own target); sample ``j`` of query ``q``
in seed ``s`` is ``fs.sample_fiber(subject, query, prior, n, method, seed=run_seed)`` with the
``run_seeds`` recorded in the unit, up to floating-point rounding (per-sample arithmetic makes the
batching invisible but for the kernels chosen for another batch shape, see the README's
"What is reproducible").

Example (Python, with models named in ``objects`` instead of the zoo):
    >>> from fiberscope.bench import BenchConfig
    >>> cfg = BenchConfig.from_dict({"methods": {"ndtm": "builtin-mnist", "dps": {"name": "dps", "scale": 0.5}},
    ...                              "priors": ["builtin:mnist-ddpm"], "subjects": ["builtin:mnist-cnn@logits"],
    ...                              "queries": 4, "seeds": [0, 1], "n": 4})
    >>> [p.key for p in cfg.resolved_pairs()]
    ['mnist-ddpm__mnist-cnn@logits']
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._version import __version__
from .counting import CallCounter
from .errors import ModelNotAvailableError
from .guidance import METHODS, NDTM, PRESETS, FiberObjective, GuidanceError, GuidanceMethod, SampleNoise
from .losses import LOSSES
from .metrics.agreement import label_agreement
from .metrics.augment import AUGMENTATIONS, augment
from .metrics.colour import colour_histogram_stats
from .metrics.diversity import mean_pairwise_distance
from .metrics.fiber import REPORTED_FORMS, across_seeds, fiber_loss_forms
from .metrics.frechet import frechet_distance
from .metrics.neighbours import nearest_neighbour, nearest_neighbours
from .metrics.realism import Reference, default_reference, load_reference
from .priors.base import Prior
from .report.plotting import LOG_BAR_FLOOR, label_points, log_axis_yerr
from .subjects.base import Subject
from .utils import atomic_write_bytes, atomic_write_json, atomic_write_text, jsonable, load_config_file

__all__ = [
    "BASELINES",
    "BenchConfig",
    "PairSpec",
    "method_applies",
    "resolve_method",
    "run_bench",
    "sample_queries",
    "unit_path",
    "write_outputs",
]

#: The prior-free baselines the bench can add to every pair.
BASELINES = ("nn", "augment")

#: The default classifier for label agreement, per data set.
CLASSIFIERS = {
    "mnist": "builtin:mnist-cnn@logits",
    "colormnist": "builtin:mnist-cnn@logits",
    "fashion-mnist": "builtin:fashion-cnn@logits",
}

#: The default augmentation per data set (keyword arguments of :func:`fiberscope.metrics.augment`).
AUGMENT_DEFAULTS: dict[str, dict[str, Any]] = {
    "mnist": {"kind": "geometric", "rotate": 10.0, "shift": 2.0, "zoom": 0.1, "elastic": 1.0},
    "fashion-mnist": {"kind": "geometric", "rotate": 10.0, "shift": 2.0, "zoom": 0.1, "elastic": 1.0},
    "colormnist": {"kind": "colour", "jitter": 0.2},
}

SEED_STRIDE = 1_000_003  # run seed of query q in seed s: s·SEED_STRIDE + q (q = index in the test split)


# ---------------------------------------------------------------------------------------------------------------
# configuration


def _split_layer(s: str) -> tuple[str, str | None]:
    spec, _, layer = s.partition("@")
    return spec, (layer or None)


def _short(spec: str) -> str:
    return spec.removeprefix("builtin:")


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9@._-]+", "-", s).strip("-")


def _dataset_of(spec: str, datasets: Mapping[str, str]) -> str | None:
    if spec in datasets:
        return datasets[spec]
    if spec.startswith("builtin:"):
        from .zoo.registry import ZOO

        entry = ZOO.get(_short(spec))
        return entry.dataset if entry is not None else None
    return None


@dataclass(frozen=True)
class PairSpec:
    """One (prior, subject) pair of the matrix, with the data set its queries come from."""

    prior: str
    subject: str
    layer: str | None
    dataset: str | None

    @property
    def subject_name(self) -> str:
        return self.subject + (f"@{self.layer}" if self.layer else "")

    @property
    def key(self) -> str:
        return _slug(f"{_short(self.prior)}__{_short(self.subject_name)}")


@dataclass
class BenchConfig:
    """Everything a bench run needs; every field can come from the YAML/TOML file or a flag.

    Args:
        methods: ``{name: spec}``; a spec is a method or preset name (``"dps"``, ``"builtin-mnist"``)
            or ``{"name": ..., **settings, "per_prior": {prior: {**overrides}}}`` (``per_prior`` may
            also change ``name``, e.g. to a prior's own NDTM preset).
        priors: prior specs (``builtin:mnist-ddpm``, a diffusers directory, a name in ``objects``).
        subjects: subject specs, ``SPEC@LAYER`` for a layer (``builtin:mnist-cnn@penultimate``).
        pairs: explicit ``[prior, subject]`` pairs (those whose prior and subject are listed in
            ``priors`` and ``subjects``, so ``--priors``/``--subjects`` narrow them); default: every
            prior with every subject of the same data set (pairs whose data sets are unknown are kept).
        queries: number of queries per pair, drawn from the test split with ``query_seed``.
        query_seed: fixes the query set (separate from the sampling seeds, as in the paper).
        seeds: sampling seeds; the ``±`` of every number is the std across them.
        n: samples per query and seed.
        batch_size: rows (samples) per guidance batch; several queries share a batch.
        metric: the headline fiber-loss form (``sq_l2``; the colour-MNIST study uses ``rms``).
        bank: real images searched for the nearest neighbours (None: the whole test split except
            the queries).
        real: real test images the realism Fréchet distance compares with.
        baselines: prior-free baselines to add (``nn``, ``augment``).
        augment: per data set, the :func:`~fiberscope.metrics.augment` settings.
        reference: per data set, the reference model ``SPEC[@LAYER]`` for realism and feature
            diversity (default :func:`~fiberscope.metrics.default_reference`).
        classifier: per data set, the classifier ``SPEC@LAYER`` (logits) for label agreement.
        datasets: data set of non-builtin priors/subjects (``{spec: "mnist"}``).
        device: where models run.
        threads: torch CPU threads (None: torch's default).
        title: heading of ``bench.md``.
    """

    methods: dict[str, Any]
    priors: list[str]
    subjects: list[str]
    pairs: list[list[str]] | None = None
    queries: int = 6
    query_seed: int = 0
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    n: int = 4
    batch_size: int = 48
    metric: str = "sq_l2"
    bank: int | None = None
    real: int = 1000
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    augment: dict[str, dict[str, Any]] = field(default_factory=dict)
    reference: dict[str, str] = field(default_factory=dict)
    classifier: dict[str, str] = field(default_factory=dict)
    datasets: dict[str, str] = field(default_factory=dict)
    device: str = "cpu"
    threads: int | None = None
    title: str = "fiberscope bench"

    def __post_init__(self) -> None:
        if not isinstance(self.methods, dict) or not self.methods:
            raise ValueError("methods must be a non-empty mapping {name: spec}")
        for nm in ("priors", "subjects"):
            v = getattr(self, nm)
            if isinstance(v, str):
                setattr(self, nm, [s.strip() for s in v.split(",") if s.strip()])
            if not getattr(self, nm):
                raise ValueError(f"{nm} must list at least one spec")
        if isinstance(self.seeds, int):
            self.seeds = [self.seeds]
        if not self.seeds or not all(isinstance(s, int) for s in self.seeds):
            raise ValueError(f"seeds must be a non-empty list of integers, got {self.seeds!r}")
        for nm in ("queries", "n", "batch_size", "real"):
            v = getattr(self, nm)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{nm} must be a positive integer, got {v!r}")
        if self.bank is not None and (not isinstance(self.bank, int) or self.bank < 1):
            raise ValueError(f"bank must be a positive integer or null (the whole split), got {self.bank!r}")
        if self.metric not in LOSSES:
            raise ValueError(f"metric must be one of {sorted(LOSSES)}, got {self.metric!r}")
        bad = [b for b in self.baselines if b not in BASELINES]
        if bad:
            raise ValueError(f"baselines must be among {BASELINES}, got {bad}")
        clash = [m for m in self.methods if m in BASELINES]
        if clash:
            raise ValueError(f"method names {clash} are reserved for the prior-free baselines; rename them")
        for ds, kw in self.augment.items():
            if kw.get("kind", "geometric") not in AUGMENTATIONS:
                raise ValueError(f"augment[{ds!r}].kind must be one of {AUGMENTATIONS}, got {kw.get('kind')!r}")
        if self.pairs is not None:
            for p in self.pairs:
                if not (isinstance(p, (list, tuple)) and len(p) == 2):
                    raise ValueError(f"pairs must be [prior, subject] lists, got {p!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BenchConfig:
        """Build from a mapping (keys as in the YAML file; ``-`` and ``_`` are equivalent)."""
        d = {str(k).replace("-", "_"): v for k, v in d.items()}
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown bench setting(s) {unknown}; known: {sorted(known)}")
        missing = [k for k in ("methods", "priors", "subjects") if d.get(k) in (None, [], {})]
        if missing:
            raise ValueError(f"the bench needs {missing} (in the config file or as flags)")
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | Path) -> BenchConfig:
        """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) bench file."""
        return cls.from_dict(load_config_file(path))

    def to_dict(self) -> dict[str, Any]:
        return jsonable(asdict(self))

    def resolved_pairs(self) -> list[PairSpec]:
        """The (prior, subject) pairs of the matrix, in order."""
        out = []
        if self.pairs is not None:  # explicit pairs, restricted to the listed priors and subjects
            combos = [(str(p), str(s)) for p, s in self.pairs if p in self.priors and s in self.subjects]
        else:
            combos = []
            for p in self.priors:
                for s in self.subjects:
                    dp = _dataset_of(p, self.datasets)
                    ds = _dataset_of(_split_layer(s)[0], self.datasets)
                    if dp is None or ds is None or dp == ds:
                        combos.append((p, s))
        for p, s in combos:
            spec, layer = _split_layer(s)
            out.append(PairSpec(p, spec, layer, _dataset_of(p, self.datasets) or _dataset_of(spec, self.datasets)))
        return out


def resolve_method(spec: Any, prior: str | None = None) -> GuidanceMethod:
    """A guidance method from a bench spec (a name/preset, a dict with settings, or a method).

    ``per_prior: {prior_spec: {...}}`` in a dict spec overrides settings for that prior.

    Example:
        >>> resolve_method({"name": "dps", "scale": 0.5}).scale
        0.5
        >>> spec = {"name": "builtin-mnist", "per_prior": {"builtin:mnist-flow": {"name": "builtin-mnist-flow"}}}
        >>> resolve_method(spec, "builtin:mnist-flow").sampler
        'euler'
    """
    if isinstance(spec, GuidanceMethod):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ValueError(f"a method spec is a name or a mapping with 'name', got {spec!r}")
    params = {k: v for k, v in spec.items() if k not in ("per_prior", "pairs")}
    per_prior = spec.get("per_prior") or {}
    if prior is not None and prior in per_prior:
        params.update(per_prior[prior])
    name = str(params.pop("name")).lower()
    for k in ("clip", "adam_betas", "recur_window"):  # YAML lists → the tuples these settings are
        if isinstance(params.get(k), list):
            params[k] = tuple(params[k])
    try:
        if name in PRESETS:
            return NDTM.preset(name, **params)
        if name in METHODS:
            return METHODS[name](**params)
        if name == "trained":  # a trained invariance model (fiberscope.baselines): {name: trained, model: NAME}
            from .baselines.model import TrainedBaseline

            return TrainedBaseline(**params)
    except TypeError as e:
        raise ValueError(f"method {name!r}: {e}") from None
    raise ValueError(
        f"unknown method {name!r}: use one of {sorted(METHODS)}, 'trained' or an NDTM preset {sorted(PRESETS)}"
    )


def method_applies(spec: Any, pair: PairSpec) -> bool:
    """Whether a method runs on ``pair``: a spec's ``pairs: [[prior, subject@layer], ...]`` restricts it.

    Example:
        >>> p = PairSpec("builtin:mnist-ddpm", "builtin:mnist-cnn", "features", "mnist")
        >>> method_applies({"name": "trained", "pairs": [["builtin:mnist-ddpm", "builtin:mnist-cnn@features"]]}, p)
        True
        >>> method_applies({"name": "trained", "pairs": [["builtin:colormnist-latent", "builtin:colorblind-mnist"]]}, p)
        False
    """
    only = spec.get("pairs") if isinstance(spec, Mapping) else None
    if not only:
        return True
    return any(list(map(str, q)) == [pair.prior, pair.subject_name] for q in only)


# ---------------------------------------------------------------------------------------------------------------
# one pair: models, data, queries, neighbours, references


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(jsonable(obj), sort_keys=True).encode()).hexdigest()[:16]


def weights_fingerprint(spec: str) -> str | None:
    """What identifies the weights behind a prior or subject spec, for the cache keys of units.

    ``builtin:NAME`` hashes the content of its safetensors files (small), ``baseline:NAME`` that of
    the trained baseline's ``model.safetensors``, a local file or directory the names, sizes and
    modification times of its weight files (checkpoints of several GB are not read); a hub id gives
    ``None`` (its revision identifies it). So a retrained prior or subject reruns its units instead of
    reusing results measured on the old weights.
    """
    name = spec.split("@", 1)[0]
    h = hashlib.sha256()
    try:
        if name.startswith(("builtin:", "baseline:")):
            from .baselines.common import file_digest, model_dir
            from .zoo.registry import weights_dir

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


def _read_json(path: Path) -> dict[str, Any] | None:
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
) -> tuple[torch.Tensor, torch.Tensor | None, CallCounter]:
    """``n`` samples from the fiber of each of many queries, several queries per guidance batch.

    Row ``q·n + j`` is sample ``j`` of query ``q``, what
    ``fs.sample_fiber(subject, queries[q:q+1], prior, n, method, seed=run_seeds[q])`` draws up to
    floating-point rounding (each row carries its own target and its own noise stream). Returns
    decoded images ``[Q·n, ...]`` on the CPU, the states for latent priors (else None), and the
    network calls of the sampling loops (the one-off φ(query) and the final decoding are not counted).

    Example:
        >>> import torch, fiberscope as fs
        >>> prior = fs.GaussianPrior(dim=4)
        >>> subject = fs.load_subject(lambda x: x[:, :2])
        >>> imgs, _, calls = sample_queries(prior, subject, torch.ones(3, 4), fs.DPS(steps=5), [0, 1, 2], n=2)
        >>> imgs.shape, calls.prior_backwards
        (torch.Size([6, 4]), 30)
    """
    from .api import sample_seeds

    if len(run_seeds) != len(queries):
        raise ValueError(f"run_seeds must give one seed per query: {len(run_seeds)} for {len(queries)} queries")
    rows = torch.arange(len(queries)).repeat_interleave(n)
    seeds = [s for rs in run_seeds for s in sample_seeds(rs, n)]
    device = prior.device
    counter = CallCounter()
    states = []
    for start in range(0, len(rows), batch_size):
        q = queries[rows[start : start + batch_size]].to(device)
        objective = FiberObjective(prior, subject, q, loss=getattr(method, "loss", "l2"))
        noise = SampleNoise(seeds[start : start + batch_size], device)
        prior.counter = counter
        subject.counter = counter
        try:
            x_init = method.initial_state(prior, objective, noise)
            traj = method.run(prior, objective, x_init, noise, None)
        finally:
            prior.counter = None
            subject.counter = None
        states.append(traj.sample.detach())
    state = torch.cat(states)
    with torch.no_grad():
        images = prior.decode(state).float().cpu()
    return images, (state.cpu() if prior.is_latent else None), counter


class _Pair:
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
        self._loaded = False
        self.reference: Reference | None = None
        self.classifier: Reference | None = None
        self.reference_name: str | None = None
        self.classifier_name: str | None = None
        self._weights: list[str | None] | None = None

    # ---- loading --------------------------------------------------------------------------------
    def _load_model_ref(self, spec_layer: str | None) -> tuple[Reference | None, str | None]:
        if not spec_layer:
            return None, None
        spec, layer = _split_layer(spec_layer)
        dr = self.prior.data_range or (-1.0, 1.0)
        try:
            if spec in self.objects:
                from .loading import load_subject

                return Reference(load_subject(self.objects[spec], layer), name=spec_layer, data_range=dr), spec_layer
            return load_reference(spec, layer, data_range=dr), spec_layer
        except Exception as e:  # missing weights, unknown id: the bench goes on without this metric
            self.log(f"  [{self.pair.key}] {spec_layer} not available ({type(e).__name__}: {e}); column left empty")
            return None, None

    def load(self) -> None:
        if self._loaded:
            return
        from .loading import load_prior, load_subject

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
            from .zoo.evaluate import real_images

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
        self._loaded = True

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
        h = _hash(self._stats_settings())
        old = _read_json(path)
        if old is not None and old.get("hash") == h:
            return old
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
        return {
            "pair": asdict(self.pair),
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


# ---------------------------------------------------------------------------------------------------------------
# the run


def _unit_png(pair: _Pair, images: torch.Tensor, title: str) -> bytes:
    from .report.grid import captioned_grid

    n = pair.cfg.n
    rows, caps = [], []
    for q in range(min(3, len(pair.query_idx))):
        rows.append([pair.images[pair.query_idx[q]], *images[q * n : (q + 1) * n]])
        caps.append(["query"] + [""] * n)
    scale = max(1, 56 // max(images.shape[-1], 1))
    img = captioned_grid(rows, caps, data_range=pair.prior.data_range, scale=scale, gap_after=(0,), title=title)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def unit_path(out: Path, pair_key: str, name: str, seed: int) -> Path:
    """Where one unit (a method or baseline ``name`` on a pair, in one seed) is written, without suffix."""
    return out / "units" / pair_key / f"{_slug(name)}__seed{seed}"


def _run_unit(pair: _Pair, name: str, spec: Any, seed: int, out: Path) -> tuple[dict[str, Any], bool]:
    """Load a finished unit, or run and save it. Returns (record, computed_now)."""
    cfg = pair.cfg
    method: GuidanceMethod | None = None
    if name not in BASELINES:
        method = resolve_method(spec, pair.pair.prior)
        mcfg = method.config()
    else:
        mcfg = {"method": name}
    settings = pair.unit_settings(name, mcfg, seed)
    h = _hash(settings)
    base = unit_path(out, pair.pair.key, name, seed)
    old = _read_json(base.with_suffix(".json"))
    if old is not None and old.get("hash") == h:
        return old, False
    pair.load()
    stats = pair.stats(out)
    t0 = time.perf_counter()
    counts: dict[str, float] = {}
    states = None
    rows = len(pair.query_idx) * cfg.n
    if name == "nn":
        idx = [i for lst in stats["knn_indices"] for i in lst]
        images = pair.images[idx]
        if len(idx) != rows:  # fewer bank entries than n: repeat the last neighbour
            images = torch.cat([pair.images[lst + [lst[-1]] * (cfg.n - len(lst))] for lst in stats["knn_indices"]])
        counts = {"subject_forwards": stats["bank_size"] / cfg.n}
        fe = stats["bank_size"] / cfg.n
    elif name == "augment":
        g = torch.Generator().manual_seed(seed)
        kw = pair.augment_kwargs()
        dr = pair.prior.data_range or (-1.0, 1.0)
        images = torch.cat([augment(pair.images[i : i + 1], cfg.n, g, data_range=dr, **kw) for i in pair.query_idx])
        fe = 0.0
    else:
        assert method is not None
        try:
            images, states, counter = pair.sample(method, seed)
        except GuidanceError as e:  # a diverging setting fails its unit, not the bench
            rec = {"hash": h, "method": name, "method_config": mcfg, "pair": asdict(pair.pair), "seed": seed}
            rec["error"] = str(e)
            atomic_write_json(base.with_suffix(".json"), rec)
            return rec, True
        counts = {k: v / rows for k, v in counter.as_dict().items()}
        fe = counter.forward_equivalents() / rows
    seconds = time.perf_counter() - t0
    rec = {
        "hash": h,
        "method": name,
        "method_config": mcfg,
        "pair": asdict(pair.pair),
        "seed": seed,
        "run_seeds": pair.run_seeds(seed),
        "n": cfg.n,
        "queries": len(pair.query_idx),
        "counts": counts,
        "forward_equivalents": fe,
        "seconds": seconds,
        "seconds_per_sample": seconds / rows,
        **pair.measure(images),
    }
    arrays: dict[str, Any] = {"images": images.numpy(), "query_indices": pair.query_idx.numpy()}
    if states is not None:
        arrays["states"] = states.numpy()
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(base.with_suffix(".npz"), buf.getvalue())
    with contextlib.suppress(Exception):  # a grid is a convenience; never lose a unit over it
        atomic_write_bytes(base.with_suffix(".png"), _unit_png(pair, images, f"{name} · {pair.pair.key} · seed {seed}"))
    atomic_write_json(base.with_suffix(".json"), rec)  # last: its presence marks the unit finished
    return rec, True


def run_bench(
    config: BenchConfig | Mapping[str, Any],
    out: str | Path,
    *,
    objects: Mapping[str, Any] | None = None,
    data: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    resume: bool = True,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the bench matrix and write its table, JSON and plots into ``out``.

    Args:
        config: a :class:`BenchConfig` or its mapping form.
        out: output directory.
        objects: models by the names used in the config (``{"toy-prior": prior, "toy-cnn": module}``),
            for priors/subjects/references that are not loadable by spec.
        data: test images per data set, ``{name: (images in the prior's range, labels)}``
            (default: the packaged MNIST / Fashion-MNIST / colour-MNIST test splits).
        resume: skip units already finished with the same settings (False: recompute all).
        progress: print one line per unit.
        log: where progress lines go (default: stderr).

    Returns:
        The ``results.json`` record (config, per-pair statistics, one row per method and pair).
    """
    cfg = config if isinstance(config, BenchConfig) else BenchConfig.from_dict(config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    def _n_units(pspec: Any) -> int:
        return sum(
            len(cfg.seeds[:1] if n == "nn" else cfg.seeds)
            for n in list(cfg.methods) + list(cfg.baselines)
            if not (n in cfg.methods and not method_applies(cfg.methods[n], pspec))
        )

    # one bar over all units; the per-unit lines are written above it
    bar = tqdm(
        total=sum(_n_units(p) for p in cfg.resolved_pairs()),
        desc="bench",
        unit="unit",
        file=sys.stderr,
        disable=not progress or log is not None,
    )
    say = log or (lambda s: bar.write(s, file=sys.stderr))
    if not progress:
        say = lambda s: None  # noqa: E731
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    if not resume:
        for p in (out / "units").glob("*/*.json"):
            p.unlink()
    atomic_write_json(out / "config.json", cfg.to_dict())
    pairs_out, rows = [], []
    t_start = time.perf_counter()
    names = list(cfg.methods) + list(cfg.baselines)
    skipped = []
    for pspec in cfg.resolved_pairs():
        pair = _Pair(cfg, pspec, objects or {}, data or {}, say)
        units: dict[str, list[dict[str, Any]]] = {}
        done_here = 0
        try:
            for name in names:
                if name in cfg.methods and not method_applies(cfg.methods[name], pspec):
                    continue
                seeds = cfg.seeds[:1] if name == "nn" else cfg.seeds
                for seed in seeds:
                    rec, fresh = _run_unit(pair, name, cfg.methods.get(name), seed, out)
                    bar.update(1)
                    done_here += 1
                    units.setdefault(name, []).append(rec)
                    if "error" in rec:
                        say(f"[bench] {pspec.key} {name} seed {seed}: FAILED ({rec['error'][:200]})")
                        continue
                    state = f"{rec['seconds']:.1f}s" if fresh else "cached"
                    loss = rec["fiber_loss"][cfg.metric]
                    say(f"[bench] {pspec.key} {name} seed {seed}: {cfg.metric} {loss:.4g} ({state})")
        except ModelNotAvailableError as e:  # a model of the zoo not trained yet: the other pairs go on
            say(f"[bench] {pspec.key}: skipped, {e}")
            bar.update(_n_units(pspec) - done_here)
            skipped.append({"pair": pspec.key, "reason": str(e)})
            continue
        stats = pair.stats(out) if pair._loaded else (_read_json(out / "pairs" / f"{pspec.key}.json") or {})
        pairs_out.append(stats)
        rows += [_aggregate(name, recs, stats, cfg) for name, recs in units.items()]
    bar.close()
    result = {
        "fiberscope_bench": 1,
        "config": cfg.to_dict(),
        "pairs": pairs_out,
        "rows": rows,
        "skipped": skipped,
        "seconds": time.perf_counter() - t_start,
    }
    result["fiberscope"] = __version__
    result["torch"] = torch.__version__
    write_outputs(result, out)
    return result


SCALARS = (
    "realism_fd",
    "diversity_pixel",
    "diversity_feature",
    "label_agreement",
    "prediction_agreement",
    "colour_kl",
    "colour_w1",
    "dev",
    "forward_equivalents",
    "seconds_per_sample",
)


def _aggregate(name: str, recs: list[dict[str, Any]], stats: dict[str, Any], cfg: BenchConfig) -> dict[str, Any]:
    """One table row: every metric as (mean, std) across seeds (failed seeds listed, not averaged)."""
    row: dict[str, Any] = {
        "method": name,
        "pair": recs[0]["pair"],
        "pair_key": PairSpec(**recs[0]["pair"]).key,
        "seeds": [r["seed"] for r in recs if "error" not in r],
        "method_config": recs[0]["method_config"],
    }
    failed = [r for r in recs if "error" in r]
    if failed:
        row["failed_seeds"] = [r["seed"] for r in failed]
        row["error"] = failed[0]["error"]
    recs = [r for r in recs if "error" not in r]
    if not recs:
        row["fiber_loss"] = {cfg.metric: (None, None)}
        row["nn_loss"] = (stats.get("nn_loss_mean") or {}).get(cfg.metric)
        return row
    row["fiber_loss"] = {k: across_seeds(r["fiber_loss"][k] for r in recs) for k in recs[0]["fiber_loss"]}
    for k in SCALARS:
        vals = [r[k] for r in recs if r.get(k) is not None]
        if vals:
            row[k] = across_seeds(vals)
    nn = (stats.get("nn_loss_mean") or {}).get(cfg.metric)
    row["nn_loss"] = nn
    m = row["fiber_loss"][cfg.metric][0]
    row["loss_over_nn"] = m / nn if nn else None
    # per (query, seed): is the fiber closer to the query than that query's nearest real image? Means are
    # pulled up by the few queries a method fails on; this count and the median are not.
    nn_q = [d.get(cfg.metric) for d in stats.get("nn_losses") or []]
    per = [r.get("fiber_loss_per_query", {}).get(cfg.metric) for r in recs]
    if nn_q and all(p is not None and len(p) == len(nn_q) for p in per):
        pairs = [(a, b) for p in per for a, b in zip(p, nn_q) if a is not None and b is not None]
        if pairs:
            row["below_nn"] = [sum(a < b for a, b in pairs), len(pairs)]
            row["median_loss"] = float(np.median([a for a, _ in pairs]))
            row["nn_median"] = float(np.median([b for b in nn_q if b is not None]))
    return row


# ---------------------------------------------------------------------------------------------------------------
# outputs: Markdown, JSON, plots


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, (list, tuple)):
        m, s = v
        if m is None or (isinstance(m, float) and math.isnan(m)):
            return "—"
        return f"{m:.{digits}g} ± {s:.2g}"
    if isinstance(v, float) and math.isnan(v):
        return "—"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def markdown(result: dict[str, Any]) -> str:
    """``bench.md``: one table per (prior, subject) pair."""
    cfg = result["config"]
    metric = cfg["metric"]
    lines = [
        f"# {cfg['title']}",
        "",
        f"{cfg['queries']} queries (query seed {cfg['query_seed']}) × {cfg['n']} samples × seeds {cfg['seeds']}; "
        f"fiber loss = `{metric}`, mean over queries, ± = std across sampling seeds. NN = nearest real test "
        "image in φ (query excluded). FD = Fréchet distance to real test images in the reference model's space "
        "(floor: two real sets of the same size). Diversity = mean pairwise distance among the samples of a "
        "fiber. Cost = network calls per sample in forward-equivalents (backward = 2 forwards) of the sampling "
        "loop. `nn` = the n nearest real images (its cost: embedding the bank once per query); `augment` = n "
        "random augmentations of the query (no network call). Below NN = in how many (query, seed) cases the "
        "mean fiber loss of the query's samples is below that query's NN loss; median loss = the median of "
        "those per-(query, seed) losses (against the NN median in the pair's header).",
        "",
    ]
    for sk in result.get("skipped", []):
        lines += [f"*Skipped `{sk['pair']}`: {sk['reason']}*", ""]
    by_pair: dict[str, list[dict[str, Any]]] = {}
    for r in result["rows"]:
        by_pair.setdefault(r["pair_key"], []).append(r)
    stats = {PairSpec(**s["pair"]).key: s for s in result["pairs"] if s.get("pair")}
    for key, rows in by_pair.items():
        st = stats.get(key, {})
        p = rows[0]["pair"]
        subj = p["subject"] + (f"@{p['layer']}" if p.get("layer") else "")
        lines += [
            f"## {p['prior']} × {subj}",
            "",
            f"Data set `{p.get('dataset')}`; NN {metric} = {_fmt(rows[0].get('nn_loss'))} "
            f"(median over queries {_fmt(next((r['nn_median'] for r in rows if 'nn_median' in r), None))}); reference "
            f"`{st.get('reference') or '—'}` (FD floor {_fmt(st.get('realism_floor'))} at n = "
            f"{st.get('realism_n', '—')}); classifier `{st.get('classifier') or '—'}`.",
            "",
        ]
        colour = any("colour_kl" in r for r in rows)
        # trained baselines (fiberscope.baselines) carry their training wall time: "train once" vs "guide"
        trained = any((r.get("method_config") or {}).get("train_seconds") is not None for r in rows)
        head = [
            "method",
            f"fiber loss ({metric})",
            "loss / NN",
            "below NN",
            "median loss",
            "FD (ref)",
            "div. px",
            "div. feat",
            "label / pred agr.",
            "fwd-eq / sample",
            "s / sample",
        ]
        if colour:
            head += ["colour KL", "colour W1", "dev"]
        if trained:
            head += ["training (min)", "s / fiber"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            la, pa = r.get("label_agreement"), r.get("prediction_agreement")
            agr = f"{la[0]:.2f} / {pa[0]:.2f}" if la and pa else "—"
            cells = [
                f"`{r['method']}`",
                _fmt(r["fiber_loss"][metric]),
                _fmt(r.get("loss_over_nn")),
                f"{r['below_nn'][0]}/{r['below_nn'][1]}" if r.get("below_nn") else "—",
                _fmt(r.get("median_loss")),
                _fmt(r.get("realism_fd")),
                _fmt(r.get("diversity_pixel")),
                _fmt(r.get("diversity_feature")),
                agr,
                _fmt((r.get("forward_equivalents") or [None])[0]),
                _fmt((r.get("seconds_per_sample") or [None])[0], 2),
            ]
            if r.get("failed_seeds"):
                cells[0] += f" (failed at seeds {r['failed_seeds']}: {r.get('error', '')[:80]})"
            if colour:
                cells += [_fmt(r.get("colour_kl")), _fmt(r.get("colour_w1")), _fmt(r.get("dev"))]
            if trained:
                ts = (r.get("method_config") or {}).get("train_seconds")
                sps = (r.get("seconds_per_sample") or [None])[0]
                per_fiber = sps * cfg["n"] if sps is not None else None
                cells += [_fmt(ts / 60 if ts is not None else None), _fmt(per_fiber, 2)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "Method settings: see `results.json` (`rows[*].method_config`); per-unit samples: "
        "`units/PAIR/METHOD__seedS.{png,npz,json}`.",
        "",
    ]
    return "\n".join(lines)


def plot(result: dict[str, Any], out: Path) -> list[Path]:
    """``loss_vs_cost.png`` and ``loss_vs_realism.png``: one panel per pair, one point per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = result["config"]["metric"]
    by_pair: dict[str, list[dict[str, Any]]] = {}
    for r in result["rows"]:
        by_pair.setdefault(r["pair_key"], []).append(r)
    methods = sorted({r["method"] for r in result["rows"]})
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    written = []
    for fname, xkey, xlabel, xlog in [
        ("loss_vs_cost.png", "forward_equivalents", "network calls per sample (forward-equivalents)", True),
        ("loss_vs_realism.png", "realism_fd", "Fréchet distance to real images (reference model)", False),
    ]:
        k = max(len(by_pair), 1)
        ncol = min(k, 3)
        nrow = (k + ncol - 1) // ncol
        fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 3.8 * nrow), squeeze=False)
        labels = []
        for ax, (key, rows) in zip(axes.flat, by_pair.items()):
            if xlog:
                ax.set_xscale("log")
            ax.set_yscale("log")
            points = []
            for r in rows:
                x = r.get(xkey)
                y = r["fiber_loss"][metric]
                if x is None or x[0] is None or y[0] is None or not (math.isfinite(x[0]) and math.isfinite(y[0])):
                    continue
                xv = max(x[0], 1.0) if xlog else x[0]
                yerr = log_axis_yerr(y[0], y[1])
                ax.errorbar(xv, y[0], yerr=yerr, xerr=None if xlog else x[1], fmt="o", color=colours[r["method"]])
                points.append((r["method"], xv, y[0]))
            nn = rows[0].get("nn_loss")
            if nn:
                ax.axhline(nn, color="grey", ls="--", lw=1)
                ax.annotate("nearest real", (0.02, nn), xycoords=("axes fraction", "data"), fontsize=7, color="grey")
            labels.append((ax, points))
            ax.set_title(key, fontsize=9)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.set_ylabel(f"fiber loss ({metric})", fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(by_pair) :]:
            ax.axis("off")
        fig.tight_layout(rect=(0, 0.035, 1, 1))
        fig.text(
            0.01,
            0.008,
            f"bars: ± 1 std across sampling seeds (lower arm cut at {LOG_BAR_FLOOR:g} × the mean on the log axis); "
            "dashed: the nearest real image's fiber loss",
            fontsize=7,
            color="grey",
        )
        for ax, points in labels:
            label_points(ax, points, size=7)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        atomic_write_bytes(out / fname, buf.getvalue())
        written.append(out / fname)
    return written


def write_outputs(result: dict[str, Any], out: str | Path) -> None:
    """Write ``results.json``, ``bench.md`` and the two plots of a bench result."""
    out = Path(out)
    atomic_write_json(out / "results.json", result)
    atomic_write_text(out / "bench.md", markdown(result))
    try:
        plot(result, out)
    except ImportError:  # the tables are the result; the plots need the `plots` extra
        print(
            "fiberscope bench: matplotlib is not installed, so no plots (pip install 'fiberscope[plots]')",
            file=sys.stderr,
        )


# ---------------------------------------------------------------------------------------------------------------
# the command
