"""Cross-model comparison: what subject A ignores and subject B sees.

For every ordered pair (A, B) of subjects, A's fiber samples are embedded by B and B's fiber loss
on them (to B's features of the query) is divided by B's nearest-real-neighbour loss for that
query — the paper's cross-model agreement (:func:`~fiberscope.metrics.cross_model_agreement`):

* ratio ≪ 1: B cannot tell A's samples from the query either — what A ignores, B ignores too;
* ratio ≳ 1: A's samples are as far from the query in B's features as the closest real image is:
  B sees what A ignores.

The diagonal (B = A) is each subject's own fiber quality. Ratios are averaged over the queries.

Example:
    >>> import fiberscope as fs                                                        # doctest: +SKIP
    >>> cmp = fs.compare_subjects(["builtin:mnist-cnn@penultimate", "builtin:mnist-cnn@logits"],
    ...                           "builtin:mnist-ddpm", queries, n=4)                   # doctest: +SKIP
    >>> cmp.ratio("builtin:mnist-cnn@logits", "builtin:mnist-cnn@penultimate")         # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ..api import FiberSamples
    from ..guidance.base import GuidanceMethod
    from ..priors.base import Prior
    from .invariances import InvarianceReport

__all__ = ["ComparisonResult", "compare_subjects", "heatmap_image", "parse_subject"]


def parse_subject(spec: Any) -> tuple[Any, str | None, str]:
    """``"SPEC@LAYER"`` → ``(spec, layer, display name)``; modules and (spec, layer) pairs pass through."""
    if isinstance(spec, tuple) and len(spec) == 2:
        s, layer = spec
        return s, layer, f"{getattr(s, 'name', s)}" + (f"@{layer}" if layer else "")
    if isinstance(spec, str):
        s, _, layer = spec.partition("@")
        return s, layer or None, spec
    return spec, None, str(getattr(spec, "name", None) or type(spec).__name__)


@dataclass
class ComparisonResult:
    """The matrix of cross-model ratios and everything behind it.

    Attributes:
        names: the subjects, in order (rows: whose fiber; columns: who judges).
        queries: a name per query.
        matrix: ``matrix[a][b]``: B's fiber loss on A's samples over B's nearest-real-neighbour loss,
            mean over queries.
        per_query: ``[a][b][q]`` the same ratio for each query.
        loss: ``[a][b][q]`` B's mean fiber loss on A's samples.
        nn_loss: ``[b][q]`` B's nearest-real-neighbour loss for each query.
        metric: the fiber-loss form.
        invariances: ``[a][q]`` the invariance report of A's fiber of each query (None if not probed).
        fibers: ``[a][q]`` the fiber samples (not saved in the JSON; see :meth:`save`).
        config: prior, method, n, seed, bank.
    """

    names: list[str]
    queries: list[str]
    matrix: list[list[float]]
    per_query: list[list[list[float]]]
    loss: list[list[list[float]]]
    nn_loss: list[list[float]]
    metric: str = "sq_l2"
    invariances: list[list[InvarianceReport | None]] = field(default_factory=list)
    fibers: list[list[FiberSamples]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def ratio(self, a: str | int, b: str | int) -> float:
        """The matrix entry for A's fiber judged by B (names or indices)."""
        ia = a if isinstance(a, int) else self.names.index(a)
        ib = b if isinstance(b, int) else self.names.index(b)
        return self.matrix[ia][ib]

    def readings(self) -> list[str]:
        """One sentence per off-diagonal pair: does B see what A ignores?"""
        out = []
        for a, na in enumerate(self.names):
            for b, nb in enumerate(self.names):
                if a == b:
                    continue
                r = self.matrix[a][b]
                if r >= 1:
                    out.append(
                        f"{nb} sees what {na} ignores: {na}'s fiber samples are {r:.3g}× as far from the query in "
                        f"{nb}'s features as the nearest real image."
                    )
                elif r < 0.1:
                    out.append(
                        f"{nb} cannot tell {na}'s fiber samples from the query either (ratio {r:.3g}): what {na} "
                        f"ignores, {nb} ignores too, on these queries."
                    )
                else:
                    out.append(
                        f"{nb} partly sees what {na} ignores (ratio {r:.3g}: closer than the nearest real image, "
                        "but not indistinguishable)."
                    )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "fiberscope_comparison": 1,
            "names": self.names,
            "queries": self.queries,
            "matrix": self.matrix,
            "per_query": self.per_query,
            "loss": self.loss,
            "nn_loss": self.nn_loss,
            "metric": self.metric,
            "readings": self.readings(),
            "invariances": [[None if r is None else r.to_dict() for r in row] for row in self.invariances],
            "config": self.config,
        }

    def heatmap(self) -> Any:
        """The matrix as a PIL image (log colour scale; 1 = the nearest real image)."""
        return heatmap_image(self.matrix, self.names)

    def save(self, directory: str | os.PathLike[str], *, report: bool = True) -> Path:
        """Write ``comparison.json``, ``comparison.png``, each fiber under ``fibers/`` and ``report.html``."""
        import io

        from ..utils import atomic_write_bytes, atomic_write_json

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        for a, row in enumerate(self.fibers):
            for q, res in enumerate(row):
                res.save(d / "fibers" / _slug(self.names[a]) / _slug(self.queries[q]))
        buf = io.BytesIO()
        self.heatmap().save(buf, format="PNG")
        atomic_write_bytes(d / "comparison.png", buf.getvalue())
        atomic_write_json(d / "comparison.json", self.to_dict())
        if report:
            from ..report.compare import write_comparison_report

            write_comparison_report(self, d / "report.html")
        return d


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9@._-]+", "-", s).strip("-.") or "x"


def _viridis(t: float) -> tuple[int, int, int]:
    """A perceptually ordered colour for ``t`` in [0, 1] (viridis, 5 anchors, linear between them)."""
    anchors = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]
    t = min(1.0, max(0.0, t)) * (len(anchors) - 1)
    i = min(int(t), len(anchors) - 2)
    f = t - i
    a, b = anchors[i], anchors[i + 1]
    return (round(a[0] + f * (b[0] - a[0])), round(a[1] + f * (b[1] - a[1])), round(a[2] + f * (b[2] - a[2])))


def heatmap_image(matrix: Sequence[Sequence[float]], names: Sequence[str], cell: int = 96) -> Any:
    """A labelled heatmap of ``matrix`` (rows: whose fiber; columns: who judges), log colour scale 10⁻³…10¹."""
    from PIL import Image, ImageDraw

    from ..report.grid import _font

    k = len(names)
    font, small = _font(13), _font(11)
    short = [n if len(n) <= 30 else n[:14] + "…" + n[-15:] for n in names]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = int(max(probe.textlength(s, font=font) for s in short)) + 24
    top, pad = 64, 10
    notes = [
        "fiber of (row) judged by (column): loss / nearest real image's loss",
        "1 or more: the column's subject sees what the row's subject ignores",
        "far below 1: it cannot tell the row's samples from the query either",
    ]
    width = max(left + k * cell + pad + 70, *(int(probe.textlength(t, font=small)) + 2 * pad for t in notes[1:]))
    height = top + k * cell + 50 + 16 * k
    img = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.text((pad, 8), notes[0], fill=(0, 0, 0), font=font)
    lo, hi = -3.0, 1.0
    for j in range(k):
        label = f"B{j + 1}"
        tw = d.textlength(label, font=font)
        d.text((left + j * cell + (cell - tw) / 2, top - 20), label, fill=(0, 0, 0), font=font)
    for i in range(k):
        d.text((pad, top + i * cell + cell / 2 - 7), short[i], fill=(0, 0, 0), font=font)
        for j in range(k):
            v = float(matrix[i][j])
            t = (math.log10(max(v, 1e-12)) - lo) / (hi - lo) if math.isfinite(v) else 1.0
            col = _viridis(t)
            x0, y0 = left + j * cell, top + i * cell
            d.rectangle([x0, y0, x0 + cell - 2, y0 + cell - 2], fill=col)
            txt = f"{v:.3g}" if math.isfinite(v) else "inf"
            tw = d.textlength(txt, font=font)
            ink = (0, 0, 0) if t > 0.55 else (255, 255, 255)
            d.text((x0 + (cell - tw) / 2, y0 + cell / 2 - 7), txt, fill=ink, font=font)
    # colour bar
    bx = left + k * cell + pad
    for row in range(k * cell):
        d.line([bx, top + row, bx + 14, top + row], fill=_viridis(1 - row / max(1, k * cell - 1)))
    for v in (10.0, 1.0, 0.1, 0.01, 0.001):
        t = (math.log10(v) - lo) / (hi - lo)
        d.text((bx + 18, top + (1 - t) * (k * cell - 1) - 6), f"{v:g}", fill=(0, 0, 0), font=small)
    y = top + k * cell + 10
    for j in range(k):
        d.text((pad, y + 16 * j), f"B{j + 1} = {short[j]}", fill=(0, 0, 0), font=small)
    y += 16 * k + 4
    for line in notes[1:]:
        d.text((pad, y), line, fill=(60, 60, 60), font=small)
        y += 16
    return img


def _load_queries(queries: Any, prior: Prior) -> tuple[torch.Tensor, list[str]]:
    from ..data.query import IMAGE_SUFFIXES, QueryError, load_query

    shape = tuple(prior.image_shape)
    items: list[Any]
    names: list[str]
    if isinstance(queries, (str, os.PathLike)) and Path(queries).is_dir():
        files = sorted(f for f in Path(queries).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES | {".npy"})
        if not files:
            raise QueryError(f"{queries} holds no images (PNG, JPEG, ... or .npy); put the query images there")
        items, names = list(files), [f.stem for f in files]
    elif isinstance(queries, torch.Tensor):
        t = queries if queries.dim() == len(shape) + 1 else queries[None]
        items, names = list(t), [f"query{i}" for i in range(len(t))]
    elif isinstance(queries, (str, os.PathLike)):
        items, names = [queries], [Path(queries).stem]
    else:
        items = list(queries)
        names = [Path(q).stem if isinstance(q, (str, os.PathLike)) else f"query{i}" for i, q in enumerate(items)]
    if not items:
        raise QueryError("compare needs at least one query image")
    loaded = torch.cat([load_query(q, image_shape=shape, data_range=prior.data_range) for q in items])
    return loaded, names


def compare_subjects(
    subjects: Sequence[Any],
    prior: str | os.PathLike[str] | Prior,
    queries: Any,
    *,
    n: int = 4,
    method: GuidanceMethod | None = None,
    bank: torch.Tensor | None = None,
    seed: int = 0,
    metric: str = "sq_l2",
    probe: bool = True,
    device: str | None = None,
    progress: bool = False,
    log: Any = None,
) -> ComparisonResult:
    """Sample each subject's fiber of each query, and score every fiber by every subject.

    Args:
        subjects: two or more subjects: specs (``"builtin:mnist-cnn@penultimate"``: ``@`` picks the
            layer), ``(spec, layer)`` pairs, modules or :class:`~fiberscope.Subject` objects.
        prior: the prior all fibers are drawn with.
        queries: a directory of images, a list of paths/tensors, or a tensor ``[Q, C, H, W]`` in
            the prior's data range.
        n: fiber samples per (subject, query).
        method: the guidance method (default: the zoo's preset for a builtin prior, else ``NDTM()``).
        bank: real images ``[N, C, H, W]`` for the nearest-neighbour reference (default: the test
            split of a builtin prior's data set; else the other queries).
        seed: run seed of every fiber.
        metric: the fiber-loss form of the ratios.
        probe: also measure each fiber's invariances (:func:`~fiberscope.probe_invariances`, with
            unguided samples of the prior and augmentations of the query as references).
        log: a callable taking one line of progress (e.g. ``print``), or None.

    Returns:
        :class:`ComparisonResult`.
    """
    from ..api import sample_fiber
    from ..guidance.ndtm import NDTM
    from ..loading import load_prior, load_subject
    from ..metrics.agreement import cross_model_agreement
    from ..metrics.neighbours import embed
    from .invariances import probe_invariances, unguided_samples

    if len(subjects) < 2:
        raise ValueError("compare needs at least two subjects (e.g. --subjects A B)")
    p = load_prior(prior, device=device)
    prior_name = str(getattr(p, "name", prior))
    parsed = [parse_subject(s) for s in subjects]
    names = [nm for _, _, nm in parsed]
    if len(set(names)) != len(names):
        raise ValueError(f"subjects {names} repeat a name; give each subject once")
    subs = [load_subject(s, layer, device=p.device) for s, layer, _ in parsed]
    q_all, q_names = _load_queries(queries, p)
    q_all = q_all.to(p.device)
    entry = None
    if prior_name.startswith("builtin:"):
        from ..zoo.registry import ZOO

        entry = ZOO.get(prior_name.removeprefix("builtin:"))
    if (
        method is None
    ):  # the zoo's tuned preset for a builtin prior (as the CLI picks it), else NDTM() (resolved per prior)
        method = NDTM.preset(entry.preset) if entry is not None and entry.preset else NDTM()
    bank_note = "given"
    if bank is None:
        if entry is not None:
            from ..zoo.evaluate import real_images

            bank, _ = real_images(entry.dataset, "test", seed=seed)
            bank_note = f"{entry.dataset} test split ({len(bank)} images)"
        elif len(q_all) >= 2:
            bank = q_all.cpu()
            bank_note = f"the other {len(q_all) - 1} queries (no bank given)"
        else:
            raise ValueError("no real images for the nearest-neighbour reference: give bank= (or --bank DIR)")
    bank = bank.float().cpu()

    def features(s: Any, x: torch.Tensor) -> torch.Tensor:
        return embed(lambda v: s(v.to(p.device), p.data_range), x.cpu())

    bank_feats = [features(s, bank) for s in subs]
    unguided = unguided_samples(p, max(8, n), seed=seed + 1) if probe else None
    k, nq = len(subs), len(q_all)
    per_query = [[[0.0] * nq for _ in range(k)] for _ in range(k)]
    loss = [[[0.0] * nq for _ in range(k)] for _ in range(k)]
    nn_loss = [[0.0] * nq for _ in range(k)]
    fibers: list[list[Any]] = [[] for _ in range(k)]
    invs: list[list[Any]] = [[] for _ in range(k)]
    for a, sa in enumerate(subs):
        for qi in range(nq):
            q = q_all[qi : qi + 1]
            res = sample_fiber(sa, q, p, n=n, method=method, seed=seed, progress=progress, metric=metric)
            fibers[a].append(res)
            invs[a].append(probe_invariances(res, unguided=unguided, seed=seed) if probe else None)
            for b, sb in enumerate(subs):
                ag = cross_model_agreement(
                    features(sb, res.images),
                    features(sb, q),
                    bank_feats[b],
                    metric,
                    query_image=q.cpu(),
                    bank_images=bank,
                )
                per_query[a][b][qi] = ag["ratio"]
                loss[a][b][qi] = ag["loss"]
                nn_loss[b][qi] = ag["nn_loss"]
            if log is not None:
                row = " ".join(f"{per_query[a][b][qi]:.3g}" for b in range(k))
                log(f"{names[a]} · {q_names[qi]}: ratios by {', '.join(names)} = {row}")
    matrix = [[float(sum(per_query[a][b]) / nq) for b in range(k)] for a in range(k)]
    config = {
        "prior": prior_name,
        "method": method.config(),
        "n": n,
        "seed": seed,
        "bank": bank_note,
        "subjects": names,
        "torch": torch.__version__,
    }
    return ComparisonResult(names, q_names, matrix, per_query, loss, nn_loss, metric, invs, fibers, config)
