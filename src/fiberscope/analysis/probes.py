"""The invariance probes: what each named transformation fits, and how a probe's score is computed.

Each probe ``T`` is a family of images ``T_θ(x*)`` made from the query; fitting it to a sample finds
the θ that brings the query closest and returns the residual ``R_i(T)`` (:data:`PROBES`, one
``_fit_*`` function each, and user-given :class:`Transformation` probes). :func:`measure` turns the
residuals into the per-sample scores ``s_i(T)`` and a :class:`ProbeResult` per probe; the
definitions are in :mod:`fiberscope.analysis.invariances` and ``docs/invariances.md``.

Example:
    >>> import torch
    >>> from fiberscope.analysis.probes import ProbeContext, measure
    >>> q = torch.zeros(1, 1, 16, 16); q[..., 4:12, 6:10] = 1.0
    >>> ctx = ProbeContext(q, torch.zeros(1), q[0, 0] > 0, (0.0, 1.0), 4)
    >>> results, variation = measure(torch.roll(q, 2, dims=3), ctx, ["translation", "flip"], [], floor=0.05)
    >>> round(results["translation"].score, 2), results["translation"].params["dx"]
    (0.98, [2.0])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from . import transforms as tf

__all__ = [
    "DESCRIPTIONS",
    "LABELS",
    "NESTED",
    "PROBES",
    "REMNANT",
    "ProbeContext",
    "ProbeResult",
    "Transformation",
    "measure",
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

#: the floor of the unexplained remnant, as a fraction of the visibility floor (1 % RMS at the default 5 %)
REMNANT = 0.2


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


# ---------------------------------------------------------------------------------------------------------------
# fitting: each probe returns the per-sample residual R_i and the fitted parameters


@dataclass
class ProbeContext:
    """What every probe is fitted against: the query in [0, 1], its background colour and foreground,
    the data range (for user transformations) and the fine-detail block size."""

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


def _fit_translation(x: torch.Tensor, ctx: ProbeContext) -> tuple[torch.Tensor, dict[str, list[Any]]]:
    _, _, h, w = ctx.query.shape
    rx, ry = max(1, w // 4), max(1, h // 4)
    grid = torch.cartesian_prod(torch.arange(-rx, rx + 1.0), torch.arange(-ry, ry + 1.0))
    res, best = _grid_fit(x, lambda th: tf.shift_images(ctx.query, th, ctx.fill), grid, torch.tensor([0.5, 0.5]))
    return res, {"dx": best[:, 0].tolist(), "dy": best[:, 1].tolist()}


def _fit_rotation(x: torch.Tensor, ctx: ProbeContext) -> tuple[torch.Tensor, dict[str, list[Any]]]:
    grid = torch.arange(-180.0, 180.0, 4.0).view(-1, 1)
    res, best = _grid_fit(
        x, lambda th: tf.rotate_images(ctx.query, th[:, 0], ctx.fill), grid, torch.tensor([2.0]), points=17
    )
    return res, {"degrees": [((v + 180) % 360) - 180 for v in best[:, 0].tolist()]}


def _fit_scale(x: torch.Tensor, ctx: ProbeContext) -> tuple[torch.Tensor, dict[str, list[Any]]]:
    grid = torch.linspace(math.log(0.5), math.log(2.0), 41).view(-1, 1)
    step = float(grid[1, 0] - grid[0, 0])
    res, best = _grid_fit(
        x, lambda th: tf.scale_images(ctx.query, th[:, 0].exp(), ctx.fill), grid, torch.tensor([step / 2])
    )
    return res, {"factor": best[:, 0].exp().tolist()}


def _fit_flip(x: torch.Tensor, ctx: ProbeContext) -> tuple[torch.Tensor, dict[str, list[Any]]]:
    cands = torch.cat([ctx.query.flip(3), ctx.query.flip(2)])
    d = _sq(x, cands)
    res, idx = d.min(1)
    return res, {"axis": [("left-right", "top-bottom")[int(i)] for i in idx]}


def _fit_blur(x: torch.Tensor, ctx: ProbeContext) -> tuple[torch.Tensor, dict[str, list[Any]]]:
    side = min(ctx.query.shape[-2:])
    top = 3.0 * side / 28
    grid = torch.linspace(0.0, top, 31).view(-1, 1)
    step = float(grid[1, 0])

    def make(th: torch.Tensor) -> torch.Tensor:
        return torch.cat([tf.gaussian_blur(ctx.query, max(0.0, float(s))) for s in th[:, 0]])

    res, best = _grid_fit(x, make, grid, torch.tensor([step / 2]))
    return res, {"sigma": best[:, 0].clamp_min(0).tolist()}


def _fit_brightness(x: torch.Tensor, ctx: ProbeContext) -> tuple[torch.Tensor, dict[str, list[Any]]]:
    grid = torch.linspace(0.0, 3.0, 61).view(-1, 1)
    res, best = _grid_fit(x, lambda th: tf.adjust_brightness(ctx.query, th[:, 0]), grid, torch.tensor([0.025]))
    return res, {"factor": best[:, 0].tolist()}


def _fit_contrast(x: torch.Tensor, ctx: ProbeContext) -> tuple[torch.Tensor, dict[str, list[Any]]]:
    grid = torch.linspace(0.0, 3.0, 61).view(-1, 1)
    res, best = _grid_fit(x, lambda th: tf.adjust_contrast(ctx.query, th[:, 0]), grid, torch.tensor([0.025]))
    return res, {"factor": best[:, 0].tolist()}


def _affine_fit(design: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Least-squares fit of every sample's values by ``design`` ``[P, k]`` → fitted ``[n, P, C]``."""
    pinv = torch.linalg.pinv(design.double())
    target = x.flatten(2).transpose(1, 2).double()  # [n, P, C]
    coef = pinv @ target  # [n, k, C]
    return (design.double() @ coef).float()


def _fit_tone(x: torch.Tensor, ctx: ProbeContext) -> tuple[torch.Tensor, dict[str, list[Any]]]:
    """Brightness and contrast together: ``a · x* + b`` for all channels alike (the colour probe's baseline)."""
    q = ctx.query.flatten()
    design = torch.stack([q, torch.ones_like(q)], 1)  # [C·H·W, 2]
    pinv = torch.linalg.pinv(design.double())
    coef = pinv @ x.flatten(1).double().T  # [2, n]
    fit = (design.double() @ coef).T.float().clamp(0, 1).view_as(x)
    return ((x - fit) ** 2).flatten(1).sum(1), {"gain": coef[0].tolist(), "offset": coef[1].tolist()}


def _fit_colour(x: torch.Tensor, ctx: ProbeContext) -> tuple[torch.Tensor, dict[str, list[Any]]]:
    q = ctx.query[0].flatten(1).T  # [P, 3]
    design = torch.cat([q, torch.ones(q.shape[0], 1)], 1)
    fit = _affine_fit(design, x).transpose(1, 2).reshape(x.shape).clamp(0, 1)
    res = ((x - fit) ** 2).flatten(1).sum(1)
    hue, sat = tf.mean_hue_shift(ctx.query.expand_as(fit), fit)
    return res, {"hue_shift": hue.tolist(), "saturation_factor": sat.tolist()}


def _fit_fine_detail(x: torch.Tensor, ctx: ProbeContext) -> tuple[torch.Tensor, dict[str, list[Any]]]:
    d = x - ctx.query
    low = tf.coarse(d, ctx.detail_block)
    n = d[0].numel()
    res = (low**2).flatten(1).sum(1)
    high = ((d - low) ** 2).flatten(1).sum(1)
    return res, {"coarse_change": (res / n).sqrt().tolist(), "detail_change": (high / n).sqrt().tolist()}


def _fit_background(x: torch.Tensor, ctx: ProbeContext) -> tuple[torch.Tensor, dict[str, list[Any]]]:
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


_FITS: dict[str, Callable[[torch.Tensor, ProbeContext], tuple[torch.Tensor, dict[str, list[Any]]]]] = {
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


def _fit_user(t: Transformation, x: torch.Tensor, ctx: ProbeContext) -> tuple[torch.Tensor, dict[str, list[Any]]]:
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


def measure(
    samples01: torch.Tensor, ctx: ProbeContext, names: Sequence[str], extra: Sequence[Transformation], floor: float
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
