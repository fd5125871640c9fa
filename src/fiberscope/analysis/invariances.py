"""What the fiber shows: how much of the samples' variation each named transformation explains.

For every probe ``T`` (a family of images ``T_θ(x*)`` made from the query ``x*``) and every
sample ``x_i``, the probe fits its parameters θ to bring the query as close to the sample as it
can, and measures how much of the sample's difference from the query that fit removes. In [0, 1]
images (the prior's data range mapped to [0, 1]), with ``N`` values per image:

* deviation ``D_i = ‖x_i − x*‖²``, residual ``R_i(T) = min(D_i, min_θ ‖x_i − T_θ(x*)‖²)``;
* per sample ``s_i(T) = (B_i − R_i(T))⁺ / (B_i + τ)``, where ``B_i = D_i`` except for the two
  probes that contain simpler ones (below), and ``τ = N · floor²`` is the energy of a change of
  RMS ``floor`` (5 % of the data range by default): a sample that barely differs from the query
  explains nothing, whatever direction its small change has;
* the probe's score is the mean of ``s_i`` over the samples, in [0, 1].

``colour`` (any global affine colour map) contains ``brightness`` and ``contrast``, and
``fine_detail`` (any change of the fine band) contains most of what ``blur`` does; such a probe
is credited only with what its simpler probes leave unexplained: ``B_i`` is then the smallest
residual of those simpler probes (a partial R²). So a fiber of brightened copies scores
``brightness`` 1 and ``colour`` 0, and a fiber of blurred copies ``blur`` 1 and ``fine_detail`` 0.

The same scores are computed for two references: unguided samples of the prior (``"unguided"``,
how much each probe explains of the difference between the query and an unrelated image) and
random augmentations of the query (``"augmented"``: ±10° rotation, ±2 px shift, ±10 % zoom,
±20 % colour jitter). The definitions are in ``docs/invariances.md``; the probes and their fits
are in :mod:`fiberscope.analysis.probes`, the summary in words in :mod:`fiberscope.analysis.summary`.

Example:
    >>> import torch
    >>> import fiberscope as fs
    >>> q = -torch.ones(1, 1, 28, 28); q[..., 6:22, 12:16] = 1.0; q[..., 6:10, 12:20] = 1.0
    >>> shifted = torch.cat([torch.roll(q, (0, s), dims=(2, 3)) for s in (-3, 2, 4)])
    >>> rep = fs.probe_invariances(shifted, query=q, augmented=False)
    >>> rep.ranking[0][0], round(rep.ranking[0][1], 2)
    ('translation', 0.98)
    >>> [round(v) for v in rep.probes["translation"].params["dx"]]
    [-3, 2, 4]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .._deprecated import moved
from . import transforms as tf
from .probes import LABELS, PROBES, ProbeContext, ProbeResult, Transformation, measure
from .summary import describe_params, summarise

if TYPE_CHECKING:
    from ..api import FiberSamples
    from ..priors.base import Prior

__all__ = [
    "LABELS",
    "PROBES",
    "InvarianceReport",
    "ProbeResult",
    "Transformation",
    "probe_invariances",
    "unguided_samples",
]


@dataclass
class InvarianceReport:
    """What the samples of one fiber vary in: a score per probe, its references and the fitted parameters.

    Attributes:
        probes: ``{name: ProbeResult}`` for the samples.
        references: ``{"unguided": {name: score}, "augmented": {name: score}}`` (those computed).
        n: number of samples.
        variation: RMS difference between the samples and the query, as a fraction of the data
            range (mean over samples).
        reference_variation: the same for each reference.
        settings: the floor, the fine-detail cut-off and the other choices made.
    """

    probes: dict[str, ProbeResult]
    references: dict[str, dict[str, float]]
    n: int
    variation: float
    reference_variation: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def ranking(self) -> list[tuple[str, float]]:
        """``(name, score)`` of every applicable probe, highest score first (report order breaks ties)."""
        order = {k: i for i, k in enumerate(self.probes)}
        rows = [(k, p.score) for k, p in self.probes.items() if p.applicable]
        return sorted(rows, key=lambda r: (-round(r[1], 6), order[r[0]]))

    def score(self, name: str) -> float:
        return self.probes[name].score

    def summary(self) -> str:
        """One paragraph in plain language, written from the numbers."""
        return summarise(self)

    def table(self) -> str:
        """A plain-text table of the ranking with its references (for the terminal)."""
        refs = [r for r in ("unguided", "augmented") if r in self.references]
        head = f"  {'probe':<12} {'score':>6}" + "".join(f" {r:>9}" for r in refs) + "  fitted (median over samples)"
        lines = [head]
        for name, s in self.ranking:
            cells = "".join(f" {self.references[r].get(name, float('nan')):>9.2f}" for r in refs)
            lines.append(f"  {name:<12} {s:>6.2f}{cells}  {describe_params(self.probes[name])}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ranking": [[k, v] for k, v in self.ranking],
            "probes": {k: p.to_dict() for k, p in self.probes.items()},
            "references": self.references,
            "n": self.n,
            "variation": self.variation,
            "reference_variation": self.reference_variation,
            "settings": self.settings,
            "summary": self.summary(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InvarianceReport:
        probes = {
            k: ProbeResult(
                name=k,
                score=float(p["score"]),
                per_sample=[float(v) for v in p.get("per_sample", [])],
                explained=float(p.get("explained", p["score"])),
                params=dict(p.get("params", {})),
                applicable=bool(p.get("applicable", True)),
                note=str(p.get("note", "")),
            )
            for k, p in d["probes"].items()
        }
        return cls(
            probes=probes,
            references={k: dict(v) for k, v in d.get("references", {}).items()},
            n=int(d.get("n", 0)),
            variation=float(d.get("variation", 0.0)),
            reference_variation=dict(d.get("reference_variation", {})),
            settings=dict(d.get("settings", {})),
        )


# ---------------------------------------------------------------------------------------------------------------
# measuring a fiber and its references


def _to01(x: torch.Tensor, data_range: tuple[float, float]) -> torch.Tensor:
    lo, hi = data_range
    return ((x.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1)


def _fiber_inputs(
    samples: Any, query: torch.Tensor | None, data_range: tuple[float, float] | None
) -> tuple[torch.Tensor, torch.Tensor, tuple[float, float]]:
    from ..api import FiberSamples

    if isinstance(samples, FiberSamples):
        imgs = samples.images
        q = samples.query if query is None else query
        rng = data_range or samples.data_range or (-1.0, 1.0)
    elif isinstance(samples, torch.Tensor):
        if query is None:
            raise ValueError("probe_invariances needs query= when samples is a tensor of images (or pass FiberSamples)")
        imgs, q, rng = samples, query, data_range or (-1.0, 1.0)
    else:
        raise TypeError(f"samples must be FiberSamples or a tensor [n, C, H, W], got {type(samples).__name__}")
    if imgs.dim() == 3:
        imgs = imgs[None]
    if q.dim() == 3:
        q = q[None]
    if imgs.dim() != 4 or imgs.shape[0] < 1:
        raise ValueError(f"samples must be images [n, C, H, W], got shape {tuple(imgs.shape)}")
    if q.dim() != 4 or q.shape[0] != 1 or q.shape[1:] != imgs.shape[1:]:
        raise ValueError(f"query must be one image of the samples' shape {tuple(imgs.shape[1:])}, got {tuple(q.shape)}")
    if min(imgs.shape[-2:]) < 8:
        raise ValueError(f"images of {tuple(imgs.shape[-2:])} pixels are too small to probe; at least 8×8")
    lo, hi = float(rng[0]), float(rng[1])
    if not hi > lo:
        raise ValueError(f"data_range must be (low, high) with high > low, got {rng}")
    if not torch.isfinite(imgs).all() or not torch.isfinite(q).all():
        raise ValueError("samples or query contain NaN/inf; probe finite images")
    return imgs, q, (lo, hi)


def unguided_samples(prior: str | Prior, n: int, seed: int = 0, device: str | None = None) -> torch.Tensor:
    """``n`` samples of the prior alone (the zoo's sampling settings for a builtin prior), in its data range."""
    from ..api import sample_fiber
    from ..guidance.unguided import Unguided
    from ..loading import load_prior

    p = load_prior(prior, device=device)
    settings: dict[str, Any] = {"steps": 50}
    name = str(getattr(p, "name", ""))
    if name.startswith("builtin:"):
        from ..zoo.registry import ZOO

        entry = ZOO.get(name.removeprefix("builtin:"))
        if entry is not None:
            settings = dict(entry.sampling)
    shape = tuple(p.image_shape)
    lo = p.data_range[0] if p.data_range else -1.0
    res = sample_fiber(
        lambda x: x.flatten(1)[:, :1],
        torch.full((1, *shape), float(lo)),
        p,
        n=n,
        seed=seed,
        method=Unguided(**settings),
        progress=False,
    )
    return res.images


def _augmented(q: torch.Tensor, n: int, data_range: tuple[float, float], seed: int) -> torch.Tensor:
    from ..metrics.augment import augment

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        a = augment(q.float().cpu(), 1, g, "geometric", data_range=data_range)
        out.append(augment(a, 1, g, "colour", data_range=data_range))
    return torch.cat(out)


def probe_invariances(
    samples: FiberSamples | torch.Tensor,
    query: torch.Tensor | None = None,
    *,
    data_range: tuple[float, float] | None = None,
    probes: Sequence[str] | None = None,
    extra: Sequence[Transformation] = (),
    unguided: FiberSamples | torch.Tensor | None = None,
    prior: str | Prior | None = None,
    augmented: bool = True,
    n_reference: int | None = None,
    foreground: torch.Tensor | None = None,
    floor: float = 0.05,
    detail_block: int = 4,
    seed: int = 0,
) -> InvarianceReport:
    """Measure how much of the samples' variation each named transformation (and any of ``extra``) explains.

    Args:
        samples: a :class:`~fiberscope.FiberSamples` (its query and data range are used) or images
            ``[n, C, H, W]`` in ``data_range``.
        query: the query ``[1, C, H, W]`` (needed with a tensor of samples; overrides the result's).
        data_range: the images' value range (default: the result's, else (-1, 1)).
        probes: which named probes to run (default all of :data:`PROBES`).
        extra: user-given :class:`Transformation` probes.
        unguided: unguided samples of the prior (a reference); or give ``prior`` to draw them.
        prior: a prior (spec or object) to draw ``n_reference`` unguided samples from, when
            ``unguided`` is not given.
        augmented: also score random augmentations of the query (the second reference).
        n_reference: samples per reference (default: as many as ``samples``, at least 8).
        foreground: ``[H, W]`` bool mask of the query's foreground (default: pixels that differ
            from its border colour by more than 20 % of the range, grown by one pixel).
        floor: RMS change (fraction of the data range) below which a sample counts as unchanged.
        detail_block: ``fine_detail`` keeps the means of blocks of this many pixels squared (the
            image's thumbnail at 1/``detail_block`` resolution: 7×7 for 28×28 at 4) and lets the rest change.
        seed: seed of the references.

    Returns:
        :class:`InvarianceReport`; ``report.ranking`` lists ``(name, score)`` highest first.

    Example:
        >>> import torch, fiberscope as fs
        >>> q = torch.rand(1, 3, 16, 16) * 2 - 1
        >>> darker = torch.cat([(((q + 1) / 2) * k) * 2 - 1 for k in (0.5, 0.7, 0.8)])
        >>> fs.probe_invariances(darker, query=q, augmented=False).ranking[0][0]
        'brightness'
    """
    imgs, q, rng = _fiber_inputs(samples, query, data_range)
    names = list(PROBES) if probes is None else [str(p) for p in probes]
    unknown = [p for p in names if p not in PROBES]
    if unknown:
        raise ValueError(f"unknown probe(s) {unknown}; choose from {list(PROBES)} or pass a Transformation in extra=")
    extra = list(extra)
    for t in extra:
        if not isinstance(t, Transformation):
            raise TypeError(f"extra= takes fiberscope.Transformation objects, got {type(t).__name__}")
    if len({t.name for t in extra}) != len(extra):
        raise ValueError("two Transformations in extra= share a name; give each its own")
    if not 0 < floor < 1:
        raise ValueError(f"floor must be in (0, 1) (a fraction of the data range), got {floor}")
    q01 = _to01(q, rng)
    fill = tf.border_colour(q01)
    if foreground is None:
        fg = tf.foreground_mask(q01, fill)
    else:
        fg = torch.as_tensor(foreground).bool().cpu()
        if fg.shape != q01.shape[-2:]:
            raise ValueError(
                f"foreground must be a [H, W] mask of shape {tuple(q01.shape[-2:])}, got {tuple(fg.shape)}"
            )
    if not isinstance(detail_block, int) or not 2 <= detail_block <= min(q01.shape[-2:]) // 2:
        raise ValueError(f"detail_block must be an integer from 2 to half the image side, got {detail_block!r}")
    ctx = ProbeContext(q01, fill, fg, rng, detail_block)
    with torch.no_grad():
        results, variation = measure(_to01(imgs, rng), ctx, names, extra, floor)
        refs: dict[str, dict[str, float]] = {}
        ref_var: dict[str, float] = {}
        n_ref = n_reference or max(8, imgs.shape[0])
        ref_sets: dict[str, torch.Tensor] = {}
        if unguided is None and prior is not None:
            unguided = unguided_samples(prior, n_ref, seed=seed)
        if unguided is not None:
            u = unguided.images if not isinstance(unguided, torch.Tensor) else unguided
            ref_sets["unguided"] = u
        if augmented:
            ref_sets["augmented"] = _augmented(q, n_ref, rng, seed)
        for key, ref in ref_sets.items():
            if ref.shape[1:] != imgs.shape[1:]:
                raise ValueError(f"{key} reference images {tuple(ref.shape[1:])} differ from the samples' shape")
            r, v = measure(_to01(ref, rng), ctx, names, extra, floor)
            refs[key] = {k: p.score for k, p in r.items()}
            ref_var[key] = v
    settings = {
        "floor": floor,
        "detail_block": detail_block,
        "foreground_fraction": float(fg.float().mean()),
        "background_colour": fill.tolist(),
        "data_range": list(rng),
        "n_reference": n_ref,
        "seed": seed,
        "probes": names + [t.name for t in extra],
    }
    return InvarianceReport(results, refs, int(imgs.shape[0]), variation, ref_var, settings)


# the probe tables and the words' thresholds moved to probes and summary (kept here for one release)
__getattr__ = moved(
    __name__,
    {
        "DESCRIPTIONS": "fiberscope.analysis.probes:DESCRIPTIONS",
        "NESTED": "fiberscope.analysis.probes:NESTED",
        "REMNANT": "fiberscope.analysis.probes:REMNANT",
        "KEPT": "fiberscope.analysis.summary:KEPT",
        "VARIES": "fiberscope.analysis.summary:VARIES",
    },
)
