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
from dataclasses import InitVar, asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._deprecated import REMOVED_IN, moved, warn_deprecated
from ..loading import cache_spelling, current_spec
from ..losses import LOSSES
from ..metrics.augment import AUGMENTATIONS
from ..utils import jsonable, load_config_file

__all__ = [
    "AUGMENT_DEFAULTS",
    "CLASSIFIERS",
    "REFERENCES",
    "SEED_STRIDE",
    "BenchConfig",
    "PairSpec",
    "method_applies",
    "slug",
    "split_layer",
]

#: The prior-free references the bench can add to every pair: the nearest real images, augmentations of the query.
REFERENCES = ("nn", "augment")

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
        """The pair's file-name key (units, statistics), with specs spelled as cache keys spell them."""
        return slug(f"{_short(cache_spelling(self.prior))}__{_short(cache_spelling(self.subject_name))}")


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
        references: prior-free references to add (``nn``: the n nearest real images in φ; ``augment``:
            n augmentations of the query), judged like the methods.
        augment: per data set, the :func:`~fiberscope.metrics.augment` settings.
        reference: per data set, the reference model ``SPEC[@LAYER]`` for realism and feature
            diversity (default :func:`~fiberscope.metrics.default_reference`).
        classifier: per data set, the classifier ``SPEC@LAYER`` (logits) for label agreement.
        datasets: data set of non-builtin priors/subjects (``{spec: "mnist"}``).
        device: where models run.
        threads: torch CPU threads (None: torch's default).
        title: heading of ``bench.md``.
        baselines: the old name of ``references`` (read until fiberscope 0.2, with a warning).

    Specs spelled the old way (``baseline:NAME`` for ``trained:NAME``) are read with a warning and
    spelled the new way from then on; units keep their cache keys either way.
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
    references: list[str] = field(default_factory=lambda: list(REFERENCES))
    augment: dict[str, dict[str, Any]] = field(default_factory=dict)
    reference: dict[str, str] = field(default_factory=dict)
    classifier: dict[str, str] = field(default_factory=dict)
    datasets: dict[str, str] = field(default_factory=dict)
    device: str = "cpu"
    threads: int | None = None
    title: str = "fiberscope bench"
    baselines: InitVar[list[str] | None] = None

    def __post_init__(self, baselines: list[str] | None) -> None:
        if baselines is not None:
            warn_deprecated(
                f"the bench setting 'baselines' is now named 'references' (nn, augment); 'baselines' is removed in "
                f"fiberscope {REMOVED_IN}"
            )
            self.references = list(baselines)
        if not isinstance(self.methods, dict) or not self.methods:
            raise ValueError("methods must be a non-empty mapping {name: spec}")
        for nm in ("priors", "subjects"):
            v = getattr(self, nm)
            if isinstance(v, str):
                setattr(self, nm, [s.strip() for s in v.split(",") if s.strip()])
            if not getattr(self, nm):
                raise ValueError(f"{nm} must list at least one spec")
            setattr(self, nm, [current_spec(str(x)) for x in getattr(self, nm)])
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
        bad = [b for b in self.references if b not in REFERENCES]
        if bad:
            raise ValueError(f"references must be among {REFERENCES}, got {bad}")
        clash = [m for m in self.methods if m in REFERENCES]
        if clash:
            raise ValueError(f"method names {clash} are reserved for the prior-free references; rename them")
        for ds, kw in self.augment.items():
            if kw.get("kind", "geometric") not in AUGMENTATIONS:
                raise ValueError(f"augment[{ds!r}].kind must be one of {AUGMENTATIONS}, got {kw.get('kind')!r}")
        if self.pairs is not None:
            for p in self.pairs:
                if not (isinstance(p, (list, tuple)) and len(p) == 2):
                    raise ValueError(f"pairs must be [prior, subject] lists, got {p!r}")
            self.pairs = [[current_spec(str(x)) for x in p] for p in self.pairs]
        self.datasets = {current_spec(str(k)): v for k, v in self.datasets.items()}
        self.methods = {name: _respell_pairs(spec) for name, spec in self.methods.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BenchConfig:
        """Build from a mapping (keys as in the YAML file; ``-`` and ``_`` are equivalent)."""
        d = {str(k).replace("-", "_"): v for k, v in d.items()}
        if "baselines" in d and "references" in d:
            raise ValueError("give 'references' only ('baselines' is its old name)")
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


def _respell_pairs(spec: Any) -> Any:
    """A method spec whose ``pairs`` (where it runs) spell their specs the new way, as the bench's pairs do."""
    if not (isinstance(spec, Mapping) and isinstance(spec.get("pairs"), list)):
        return spec
    only = [[current_spec(str(x)) for x in q] if isinstance(q, (list, tuple)) else q for q in spec["pairs"]]
    return {**spec, "pairs": only}


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
    return any([current_spec(str(x), warn=False) for x in q] == [pair.prior, pair.subject_name] for q in only)


def _baselines(self: BenchConfig) -> list[str]:
    warn_deprecated(f"BenchConfig.baselines is now named references (baselines is removed in fiberscope {REMOVED_IN})")
    return self.references


BenchConfig.baselines = property(_baselines)  # type: ignore[attr-defined]  # reading the old name still works

#: Renamed in issue 22: "baseline" names only the training-free guidance methods.
__getattr__ = moved(__name__, {"BASELINES": "fiberscope.bench.config:REFERENCES"})
