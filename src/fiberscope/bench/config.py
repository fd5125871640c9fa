"""The bench's settings: the matrix (methods × pairs × queries × seeds) and how each part is measured.

Example:
    >>> cfg = BenchConfig.from_dict({"methods": {"ndtm": "builtin-mnist"}, "priors": ["builtin:mnist-ddpm"],
    ...                              "subjects": ["builtin:mnist-cnn@logits", "builtin:fashion-cnn@logits"]})
    >>> [p.key for p in cfg.resolved_pairs()]          # pairs of the same data set only
    ['mnist-ddpm__mnist-cnn@logits']
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..losses import LOSSES
from ..metrics.augment import AUGMENTATIONS
from ..utils import jsonable, load_config_file

__all__ = [
    "AUGMENT_DEFAULTS",
    "BASELINES",
    "CLASSIFIERS",
    "SEED_STRIDE",
    "BenchConfig",
    "PairSpec",
    "method_applies",
    "slug",
    "split_layer",
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


def split_layer(s: str) -> tuple[str, str | None]:
    """``"SPEC@LAYER"`` → ``("SPEC", "LAYER")``; no ``@``: ``("SPEC", None)``."""
    spec, _, layer = s.partition("@")
    return spec, (layer or None)


def _short(spec: str) -> str:
    return spec.removeprefix("builtin:")


def slug(s: str) -> str:
    """A file-name-safe form of ``s`` (pair keys and unit file names)."""
    return re.sub(r"[^A-Za-z0-9@._-]+", "-", s).strip("-")


def _dataset_of(spec: str, datasets: Mapping[str, str]) -> str | None:
    if spec in datasets:
        return datasets[spec]
    if spec.startswith("builtin:"):
        from ..zoo.registry import ZOO

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
        return slug(f"{_short(self.prior)}__{_short(self.subject_name)}")


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
                    ds = _dataset_of(split_layer(s)[0], self.datasets)
                    if dp is None or ds is None or dp == ds:
                        combos.append((p, s))
        for p, s in combos:
            spec, layer = split_layer(s)
            out.append(PairSpec(p, spec, layer, _dataset_of(p, self.datasets) or _dataset_of(spec, self.datasets)))
        return out


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
