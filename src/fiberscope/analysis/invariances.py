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
±20 % colour jitter). The definitions are in ``docs/invariances.md``.

Example:
    >>> import torch
    >>> import fiberscope as fs
    >>> q = -torch.ones(1, 1, 28, 28); q[..., 6:22, 12:16] = 1.0; q[..., 6:10, 12:20] = 1.0
    >>> shifted = torch.cat([torch.roll(q, (0, s), dims=(2, 3)) for s in (-3, 2, 4)])
    >>> rep = fs.probe_invariances(shifted, query=q, augmented=False)
    >>> rep.ranking[0][0], round(rep.ranking[0][1], 2)
    ('translation', 0.99)
    >>> [round(v) for v in rep.probes["translation"].params["dx"]]
    [-3, 2, 4]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from . import transforms as tf

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

#: the named probes, in the order of the report (simpler probes first where one contains another)
PROBES: tuple[str, ...] = (
    "brightness",
    "contrast",
    "colour",
    "translation",
    "rotation",
    "scale",
    "flip",
    "blur",
    "fine_detail",
    "background",
)

#: plain words for the summary sentence
LABELS: dict[str, str] = {
    "colour": "colour",
    "brightness": "brightness",
    "contrast": "contrast",
    "translation": "position",
    "rotation": "orientation",
    "scale": "size",
    "flip": "mirroring",
    "blur": "sharpness",
    "fine_detail": "fine detail",
    "background": "background",
}

#: probes credited only beyond the best of these simpler ones ("_tone": brightness and contrast together)
NESTED: dict[str, tuple[str, ...]] = {"colour": ("brightness", "contrast", "_tone"), "fine_detail": ("blur",)}

#: what each probe fits, one line each (the report's legend)
DESCRIPTIONS: dict[str, str] = {
    "colour": "one affine colour map for all pixels (hue, saturation, tint, recolouring), beyond brightness/contrast",
    "brightness": "all values multiplied by one factor",
    "contrast": "values moved from the mean grey level by one factor",
    "translation": "the content shifted (dx, dy) pixels",
    "rotation": "the content rotated about the centre",
    "scale": "the content enlarged or shrunk about the centre",
    "flip": "the image mirrored left-right or top-bottom",
    "blur": "a Gaussian blur of the query",
    "fine_detail": "anything changed finer than a 7×7 thumbnail shows, the coarse image kept; beyond blur",
    "background": "anything changed outside the query's foreground, the foreground kept",
}


@dataclass
class Transformation:
    """A user-given transformation ``T(x, θ)``, probed like the named ones.

    Args:
        name: shown in the ranking.
        fn: ``fn(x, theta)``: images ``x`` ``[K, C, H, W]`` in the data range and parameters
            ``theta`` ``[K, P]`` (one row per image, columns in the order of ``params``) →
            transformed images ``[K, C, H, W]`` in the data range.
        params: ``{name: (low, high)}``, the range searched for each parameter.
        identity: parameter values that leave the image unchanged (optional: "no change" is
            always allowed anyway).
        grid: grid points per parameter in the first, coarse search (then refined locally).
        description: one line for the report's legend.

    Example:
        >>> import torch
        >>> def invert(x, theta):      # theta[:, 0] in [0, 1]: how far towards the negative image
        ...     a = theta[:, 0].view(-1, 1, 1, 1)
        ...     return (1 - a) * x - a * x
        >>> Transformation("invert", invert, {"amount": (0.0, 1.0)}).names
        ['amount']
    """

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    params: Mapping[str, tuple[float, float]]
    identity: Mapping[str, float] | None = None
    grid: int = 9
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError("a Transformation needs a name (a non-empty string)")
        if self.name in PROBES:
            raise ValueError(f"{self.name!r} is a named probe already; give your transformation another name")
        if not callable(self.fn):
            raise TypeError(f"Transformation {self.name!r}: fn must be callable fn(x, theta), got {type(self.fn)}")
        if not self.params:
            raise ValueError(f"Transformation {self.name!r}: give at least one parameter range, e.g. {{'a': (0, 1)}}")
        for k, v in self.params.items():
            if len(v) != 2 or not float(v[0]) <= float(v[1]):
                raise ValueError(f"Transformation {self.name!r}: range of {k!r} must be (low, high), got {v!r}")
        if not 2 <= int(self.grid) <= 64 or int(self.grid) ** len(self.params) > 20_000:
            raise ValueError(
                f"Transformation {self.name!r}: grid={self.grid} with {len(self.params)} parameter(s) is too large "
                "(2..64 points per parameter, at most 20,000 in all)"
            )

    @property
    def names(self) -> list[str]:
        return list(self.params)


@dataclass
class ProbeResult:
    """One probe's measurement on one set of samples.

    Attributes:
        name: the probe.
        score: the mean of ``per_sample``, in [0, 1].
        per_sample: ``s_i`` for each sample.
        explained: the raw explained fraction (mean of ``(D_i − R_i) / (D_i + τ)``), before a
            nested probe's credit is reduced to what its simpler probes leave.
        params: the fitted parameters, one list entry per sample (e.g. ``dx``, ``dy`` in pixels).
        applicable: False where the probe means nothing for these images (``colour`` on grey
            images, ``background`` without a foreground); it is then left out of the ranking.
        note: why it is not applicable, or what it assumed.
    """

    name: str
    score: float
    per_sample: list[float]
    explained: float
    params: dict[str, list[Any]] = field(default_factory=dict)
    applicable: bool = True
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "explained": self.explained,
            "per_sample": self.per_sample,
            "params": self.params,
            "applicable": self.applicable,
            "note": self.note,
        }


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
# fitting: each probe returns the per-sample residual R_i and the fitted parameters


@dataclass
class _Context:
    query: torch.Tensor  # [1, C, H, W] in [0, 1]
    fill: torch.Tensor  # [C] background colour
    foreground: torch.Tensor  # [H, W] bool
    data_range: tuple[float, float]
    detail_block: int


def _sq(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared distances ``[n, K]`` between samples ``x`` ``[n, ...]`` and candidates ``c`` ``[K, ...]``, chunked."""
    xf = x.flatten(1)
    cf = c.flatten(1)
    step = max(1, (1 << 24) // max(1, xf.shape[0] * xf.shape[1]))
    return torch.cat([((xf[:, None] - cf[None, i : i + step]) ** 2).sum(2) for i in range(0, len(cf), step)], dim=1)


def _grid_fit(
    x: torch.Tensor,
    make: Callable[[torch.Tensor], torch.Tensor],
    coarse: torch.Tensor,
    half_width: torch.Tensor,
    points: int = 9,
    passes: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best parameters per sample: a shared coarse grid, then local grids of ``points`` per dimension.

    Args:
        x: samples ``[n, C, H, W]``.
        make: parameters ``[K, P]`` → candidate images ``[K, C, H, W]``.
        coarse: ``[K, P]`` the coarse grid.
        half_width: ``[P]`` the first local grid spans ± this around each sample's coarse optimum;
            each further pass spans ± the previous pass's spacing.
        passes: local refinements.

    Returns:
        residuals ``[n]`` and parameters ``[n, P]``.
    """
    d = _sq(x, make(coarse))
    best = coarse[d.argmin(1)]
    res = d.min(1).values
    p = coarse.shape[1]
    hw = half_width.float()
    for _ in range(passes):
        axes = [torch.linspace(-1.0, 1.0, points) * float(hw[j]) for j in range(p)]
        local = torch.cartesian_prod(*axes).view(-1, p) if p > 1 else axes[0].view(-1, 1)
        for i in range(x.shape[0]):
            cand = best[i] + local
            di = _sq(x[i : i + 1], make(cand))[0]
            j = int(di.argmin())
            if float(di[j]) < float(res[i]):
                res[i] = di[j]
                best[i] = cand[j]
        hw = hw * 2 / (points - 1)
    return res, best


def _fit_translation(x: torch.Tensor, ctx: _Context) -> tuple[torch.Tensor, dict[str, list[Any]]]:
    _, _, h, w = ctx.query.shape
    rx, ry = max(1, w // 4), max(1, h // 4)
    grid = torch.cartesian_prod(torch.arange(-rx, rx + 1.0), torch.arange(-ry, ry + 1.0))
    res, best = _grid_fit(x, lambda th: tf.shift_images(ctx.query, th, ctx.fill), grid, torch.tensor([0.5, 0.5]))
    return res, {"dx": best[:, 0].tolist(), "dy": best[:, 1].tolist()}


def _fit_rotation(x: torch.Tensor, ctx: _Context) -> tuple[torch.Tensor, dict[str, list[Any]]]:
    grid = torch.arange(-180.0, 180.0, 4.0).view(-1, 1)
    res, best = _grid_fit(
        x, lambda th: tf.rotate_images(ctx.query, th[:, 0], ctx.fill), grid, torch.tensor([2.0]), points=17
    )
    return res, {"degrees": [((v + 180) % 360) - 180 for v in best[:, 0].tolist()]}


def _fit_scale(x: torch.Tensor, ctx: _Context) -> tuple[torch.Tensor, dict[str, list[Any]]]:
    grid = torch.linspace(math.log(0.5), math.log(2.0), 41).view(-1, 1)
    step = float(grid[1, 0] - grid[0, 0])
    res, best = _grid_fit(
        x, lambda th: tf.scale_images(ctx.query, th[:, 0].exp(), ctx.fill), grid, torch.tensor([step / 2])
    )
    return res, {"factor": best[:, 0].exp().tolist()}


def _fit_flip(x: torch.Tensor, ctx: _Context) -> tuple[torch.Tensor, dict[str, list[Any]]]:
    cands = torch.cat([ctx.query.flip(3), ctx.query.flip(2)])
    d = _sq(x, cands)
    res, idx = d.min(1)
    return res, {"axis": [("left-right", "top-bottom")[int(i)] for i in idx]}


def _fit_blur(x: torch.Tensor, ctx: _Context) -> tuple[torch.Tensor, dict[str, list[Any]]]:
    side = min(ctx.query.shape[-2:])
    top = 3.0 * side / 28
    grid = torch.linspace(0.0, top, 31).view(-1, 1)
    step = float(grid[1, 0])

    def make(th: torch.Tensor) -> torch.Tensor:
        return torch.cat([tf.gaussian_blur(ctx.query, max(0.0, float(s))) for s in th[:, 0]])

    res, best = _grid_fit(x, make, grid, torch.tensor([step / 2]))
    return res, {"sigma": best[:, 0].clamp_min(0).tolist()}


def _fit_brightness(x: torch.Tensor, ctx: _Context) -> tuple[torch.Tensor, dict[str, list[Any]]]:
    grid = torch.linspace(0.0, 3.0, 61).view(-1, 1)
    res, best = _grid_fit(x, lambda th: tf.adjust_brightness(ctx.query, th[:, 0]), grid, torch.tensor([0.025]))
    return res, {"factor": best[:, 0].tolist()}


def _fit_contrast(x: torch.Tensor, ctx: _Context) -> tuple[torch.Tensor, dict[str, list[Any]]]:
    grid = torch.linspace(0.0, 3.0, 61).view(-1, 1)
    res, best = _grid_fit(x, lambda th: tf.adjust_contrast(ctx.query, th[:, 0]), grid, torch.tensor([0.025]))
    return res, {"factor": best[:, 0].tolist()}


def _affine_fit(design: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Least-squares fit of every sample's values by ``design`` ``[P, k]`` → fitted ``[n, P, C]``."""
    pinv = torch.linalg.pinv(design.double())
    target = x.flatten(2).transpose(1, 2).double()  # [n, P, C]
    coef = pinv @ target  # [n, k, C]
    return (design.double() @ coef).float()


def _fit_tone(x: torch.Tensor, ctx: _Context) -> tuple[torch.Tensor, dict[str, list[Any]]]:
    """Brightness and contrast together: ``a · x* + b`` for all channels alike (the colour probe's baseline)."""
    q = ctx.query.flatten()
    design = torch.stack([q, torch.ones_like(q)], 1)  # [C·H·W, 2]
    pinv = torch.linalg.pinv(design.double())
    coef = pinv @ x.flatten(1).double().T  # [2, n]
    fit = (design.double() @ coef).T.float().clamp(0, 1).view_as(x)
    return ((x - fit) ** 2).flatten(1).sum(1), {"gain": coef[0].tolist(), "offset": coef[1].tolist()}


def _fit_colour(x: torch.Tensor, ctx: _Context) -> tuple[torch.Tensor, dict[str, list[Any]]]:
    q = ctx.query[0].flatten(1).T  # [P, 3]
    design = torch.cat([q, torch.ones(q.shape[0], 1)], 1)
    fit = _affine_fit(design, x).transpose(1, 2).reshape(x.shape).clamp(0, 1)
    res = ((x - fit) ** 2).flatten(1).sum(1)
    hue, sat = tf.mean_hue_shift(ctx.query.expand_as(fit), fit)
    return res, {"hue_shift": hue.tolist(), "saturation_factor": sat.tolist()}


def _fit_fine_detail(x: torch.Tensor, ctx: _Context) -> tuple[torch.Tensor, dict[str, list[Any]]]:
    d = x - ctx.query
    low = tf.coarse(d, ctx.detail_block)
    n = d[0].numel()
    res = (low**2).flatten(1).sum(1)
    high = ((d - low) ** 2).flatten(1).sum(1)
    return res, {"coarse_change": (res / n).sqrt().tolist(), "detail_change": (high / n).sqrt().tolist()}


def _fit_background(x: torch.Tensor, ctx: _Context) -> tuple[torch.Tensor, dict[str, list[Any]]]:
    fg = ctx.foreground.to(x)[None, None]
    d2 = (x - ctx.query) ** 2
    inside = (d2 * fg).flatten(1).sum(1)
    outside = (d2 * (1 - fg)).flatten(1).sum(1)
    c = x.shape[1]
    n_in = max(1.0, float(fg.sum()) * c)
    n_out = max(1.0, float((1 - fg).sum()) * c)
    return inside, {
        "foreground_change": (inside / n_in).sqrt().tolist(),
        "background_change": (outside / n_out).sqrt().tolist(),
    }


_FITS: dict[str, Callable[[torch.Tensor, _Context], tuple[torch.Tensor, dict[str, list[Any]]]]] = {
    "brightness": _fit_brightness,
    "contrast": _fit_contrast,
    "_tone": _fit_tone,
    "colour": _fit_colour,
    "translation": _fit_translation,
    "rotation": _fit_rotation,
    "scale": _fit_scale,
    "flip": _fit_flip,
    "blur": _fit_blur,
    "fine_detail": _fit_fine_detail,
    "background": _fit_background,
}


def _fit_user(t: Transformation, x: torch.Tensor, ctx: _Context) -> tuple[torch.Tensor, dict[str, list[Any]]]:
    lo, hi = ctx.data_range
    q_data = ctx.query * (hi - lo) + lo
    ranges = [(float(a), float(b)) for a, b in t.params.values()]
    axes = [torch.linspace(a, b, int(t.grid)) for a, b in ranges]
    coarse = torch.cartesian_prod(*axes).view(-1, len(axes)) if len(axes) > 1 else axes[0].view(-1, 1)
    if t.identity is not None:
        ident = torch.tensor([[float(t.identity.get(k, 0.0)) for k in t.params]])
        coarse = torch.cat([coarse, ident])
    half = torch.tensor([(b - a) / max(1, int(t.grid) - 1) for a, b in ranges])
    limits_lo = torch.tensor([a for a, _ in ranges])
    limits_hi = torch.tensor([b for _, b in ranges])

    def make(th: torch.Tensor) -> torch.Tensor:
        th = torch.maximum(torch.minimum(th, limits_hi), limits_lo)
        with torch.no_grad():
            out = t.fn(q_data.expand(th.shape[0], -1, -1, -1).clone(), th.to(q_data))
        if not isinstance(out, torch.Tensor) or out.shape != (th.shape[0], *q_data.shape[1:]):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"Transformation {t.name!r}: fn(x, theta) must return images of shape "
                f"{(th.shape[0], *q_data.shape[1:])} for {th.shape[0]} parameter rows, got {got}"
            )
        return ((out.float() - lo) / (hi - lo)).cpu()

    res, best = _grid_fit(x, make, coarse, half, points=5, passes=3)
    best = torch.maximum(torch.minimum(best, limits_hi), limits_lo)
    return res, {k: best[:, j].tolist() for j, k in enumerate(t.params)}


# ---------------------------------------------------------------------------------------------------------------
# scoring


def _to01(x: torch.Tensor, data_range: tuple[float, float]) -> torch.Tensor:
    lo, hi = data_range
    return ((x.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1)


def _measure(
    samples01: torch.Tensor, ctx: _Context, names: Sequence[str], extra: Sequence[Transformation], floor: float
) -> tuple[dict[str, ProbeResult], float]:
    """Score every probe in ``names`` and ``extra`` on samples in [0, 1]; also the RMS variation."""
    x = samples01
    dev = ((x - ctx.query) ** 2).flatten(1).sum(1)  # D_i
    flat = ((x - x.mean((2, 3), keepdim=True)) ** 2).flatten(1).sum(1)  # C_i: the best flat image's residual
    n_val = x[0].numel()
    tau = n_val * floor**2
    c = ctx.query.shape[1]
    fg_frac = float(ctx.foreground.float().mean())
    needed = set(names)
    for k in names:
        needed |= set(NESTED.get(k, ()))
    residual: dict[str, torch.Tensor] = {}
    fitted: dict[str, dict[str, list[Any]]] = {}
    notes: dict[str, str] = {}
    for k in [p for p in (*PROBES, "_tone") if p in needed]:
        if k in ("colour", "_tone") and c != 3:
            notes[k] = "grey images: no colour to change"
            continue
        if k == "background" and not 0.01 <= fg_frac <= 0.99:
            notes[k] = "the query has no foreground distinct from its background (its border colour)"
            continue
        r, params = _FITS[k](x, ctx)
        residual[k] = torch.minimum(r, dev)
        fitted[k] = params
    for t in extra:
        r, params = _fit_user(t, x, ctx)
        residual[t.name] = torch.minimum(r, dev)
        fitted[t.name] = params
    out: dict[str, ProbeResult] = {}
    for k in [*names, *(t.name for t in extra)]:
        if k not in residual:
            out[k] = ProbeResult(k, 0.0, [0.0] * len(x), 0.0, applicable=False, note=notes.get(k, ""))
            continue
        r = residual[k]
        raw = (dev - r).clamp_min(0) / (dev + tau)
        base = torch.minimum(dev, flat)
        for sub in NESTED.get(k, ()):
            if sub in residual:
                base = torch.minimum(base, residual[sub])
        s = (base - r).clamp_min(0) / (base + tau * REMNANT**2) * dev / (dev + tau)
        out[k] = ProbeResult(
            k, float(s.mean()), s.tolist(), float(raw.mean()), {p: list(v) for p, v in fitted[k].items()}
        )
    variation = float((dev / n_val).sqrt().mean())
    return out, variation


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
    shape = tuple(getattr(p, "image_shape", None) or p.data_shape)
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
    ctx = _Context(q01, fill, fg, rng, detail_block)
    with torch.no_grad():
        results, variation = _measure(_to01(imgs, rng), ctx, names, extra, floor)
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
            r, v = _measure(_to01(ref, rng), ctx, names, extra, floor)
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


# ---------------------------------------------------------------------------------------------------------------
# words


def describe_params(p: ProbeResult) -> str:
    """The fitted parameters of one probe, as the median over samples (e.g. ``dx +2.0 px, dy −1.0 px``)."""
    if not p.params:
        return p.note
    units = {"dx": " px", "dy": " px", "degrees": "°", "sigma": " px", "hue_shift": "°"}
    parts = []
    for k, v in p.params.items():
        if not v:
            continue
        if isinstance(v[0], str):
            top = max(set(v), key=v.count)
            parts.append(f"{k} {top} ({v.count(top)}/{len(v)})")
            continue
        med = float(torch.tensor([float(a) for a in v]).median())
        signed = k in ("dx", "dy", "degrees", "hue_shift")
        parts.append(f"{k} {med:+.2f}{units.get(k, '')}" if signed else f"{k} {med:.2f}{units.get(k, '')}")
    return ", ".join(parts)


#: the floor of the unexplained remnant, as a fraction of the visibility floor (1 % RMS at the default 5 %)
REMNANT = 0.2

#: scores at or above this are "varies"; below KEPT "kept"
VARIES = 0.3
KEPT = 0.1


def _join(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


#: groups of probes named together when every member is kept
_GROUPS = (
    ("the shape", ("translation", "rotation", "scale", "flip", "fine_detail")),
    ("the layout", ("translation", "rotation", "scale")),
    ("the tones", ("brightness", "contrast", "colour")),
)


def _kept_words(kept: list[str], rep: InvarianceReport, label: Mapping[str, str]) -> list[str]:
    """What is kept, in words: whole groups first (``the shape``), then the other probes, at most four items."""
    missing = {k for k, p in rep.probes.items() if not p.applicable}
    rest = list(kept)
    words = []
    for name, members in _GROUPS:
        present = [m for m in members if m in rep.probes and m not in missing]
        if present and all(m in rest for m in present):
            words.append(name if name == "the shape" else f"{name} ({', '.join(label[m] for m in present)})")
            rest = [k for k in rest if k not in present]
    words += [label[k] for k in rest]
    return words[:4]


def summarise(rep: InvarianceReport) -> str:
    """The plain-language paragraph of :meth:`InvarianceReport.summary`."""
    rank = rep.ranking
    if not rank:
        return "No probe applies to these images."
    label = {**LABELS, **{k: k.replace("_", " ") for k in rep.probes if k not in LABELS}}
    pct = 100 * rep.variation
    top = [(k, s) for k, s in rank if s >= VARIES][:3]
    kept = [k for k, s in rank if s < KEPT]
    sentences = []
    if not top:
        k, s = rank[0]
        sentences.append(
            f"The samples differ from the query by {pct:.1f} % of the value range (RMS), and no probe explains "
            f"much of that: the largest is {label[k]} ({s:.2f})."
        )
        if rep.variation < 0.05:
            sentences.append(
                "The samples stay close to the query: the subject appears to see every aspect probed here."
            )
        else:
            sentences.append("They vary in ways none of the probed transformations describes alone.")
    else:
        words = [f"{label[k]} ({s:.2f})" for k, s in top]
        sentences.append(f"Samples vary most in {_join(words)}.")
        if kept:
            shown = _kept_words(kept, rep, label)
            verb = "is" if len(shown) == 1 else "are"
            text = _join(shown)
            sentences.append(f"{text[:1].upper() + text[1:]} {verb} kept (scores below {KEPT}).")
        unexplained = 1 - top[0][1]
        if unexplained > 0.4:
            sentences.append(
                f"The best probe leaves {100 * unexplained:.0f} % of the variation unexplained: the samples also "
                "change in other ways."
            )
    if top:
        k = top[0][0]
        refs = [
            (what, rep.references[key][k])
            for key, what in (("unguided", "unguided samples of the prior"), ("augmented", "random augmentations"))
            if k in rep.references.get(key, {})
        ]
        if refs:
            parts = [f"{what} score {v:.2f}" for what, v in refs]
            sentences.append(f"For comparison on {label[k]}, {_join(parts)}.")
    return " ".join(sentences)
