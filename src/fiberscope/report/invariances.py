"""The invariance part of the HTML reports: a bar chart (inline SVG), the summary, the in-fiber marks.

Everything is drawn here, without external assets or scripts; every string shown is escaped.

Example:
    >>> import torch, fiberscope as fs
    >>> from fiberscope.report.invariances import ranking_svg
    >>> q = torch.rand(1, 1, 16, 16) * 2 - 1
    >>> svg = ranking_svg(fs.probe_invariances(q.flip(3).expand(3, -1, -1, -1), query=q))
    >>> svg.startswith("<svg") and "flip" in svg
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .html import Report, esc

if TYPE_CHECKING:
    from ..analysis.invariances import InvarianceReport

__all__ = ["add_fiber_section", "add_invariances", "in_fiber_text", "ranking_svg", "variation_image"]

#: colours of the chart: the fiber's bars, and the markers of the two references
BAR = "#3b6fb6"
REF_COLOURS = {"unguided": "#555555", "augmented": "#e08a00"}
REF_LABELS = {"unguided": "unguided prior samples", "augmented": "augmentations of the query"}


def ranking_svg(inv: InvarianceReport, width: int = 560) -> str:
    """The ranking as a horizontal bar chart: the fiber's score per probe, its references as markers.

    Probes that do not apply to the images are listed last, greyed, with "n/a".
    """
    rows = [(k, inv.probes[k].score, True) for k, _ in inv.ranking]
    rows += [(k, 0.0, False) for k, p in inv.probes.items() if not p.applicable]
    refs = [r for r in ("unguided", "augmented") if r in inv.references]
    label_w, value_w, row_h, top = 112, 44, 22, 34
    bar_w = width - label_w - value_w - 12
    height = top + row_h * len(rows) + 30
    x0 = label_w

    def x(v: float) -> float:
        return x0 + max(0.0, min(1.0, v)) * bar_w

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" class="ranking" '
        'aria-label="invariance ranking: score per probe with its references" '
        'font-family="system-ui,-apple-system,Segoe UI,Roboto,sans-serif" font-size="12">'
    ]
    # legend (text widths estimated at 6.5 px per character of the 12 px font)
    lx = 8
    out.append(f'<rect x="{lx}" y="8" width="14" height="10" fill="{BAR}"/>')
    out.append(f'<text x="{lx + 18}" y="17">fiber samples</text>')
    lx += 18 + 85 + 16
    for r in refs:
        out.append(_marker(lx + 5, 13, REF_COLOURS[r]))
        out.append(f'<text x="{lx + 14}" y="17">{esc(REF_LABELS[r])}</text>')
        lx += 14 + round(6.5 * len(REF_LABELS[r])) + 16
    # grid lines
    for g in (0.0, 0.25, 0.5, 0.75, 1.0):
        gx = x(g)
        out.append(
            f'<line x1="{gx:.1f}" y1="{top - 4}" x2="{gx:.1f}" y2="{top + row_h * len(rows)}" '
            'stroke="#dddddd" stroke-width="1"/>'
        )
        out.append(
            f'<text x="{gx:.1f}" y="{top + row_h * len(rows) + 14}" text-anchor="middle" fill="#666">{g:g}</text>'
        )
    for i, (name, score, ok) in enumerate(rows):
        y = top + i * row_h
        colour = "#222" if ok else "#999"
        out.append(f'<text x="{x0 - 8}" y="{y + 15}" text-anchor="end" fill="{colour}">{esc(name)}</text>')
        if not ok:
            out.append(f'<text x="{x0 + 4}" y="{y + 15}" fill="#999">n/a: {esc(inv.probes[name].note)}</text>')
            continue
        out.append(
            f'<rect x="{x0}" y="{y + 4}" width="{x(score) - x0:.1f}" height="{row_h - 8}" fill="{BAR}">'
            f"<title>{esc(name)}: {score:.2f}</title></rect>"
        )
        for r in refs:
            v = inv.references[r].get(name)
            if v is not None:
                out.append(_marker(x(v), y + row_h / 2, REF_COLOURS[r], f"{REF_LABELS[r]}: {v:.2f}"))
        out.append(f'<text x="{width - 6}" y="{y + 15}" text-anchor="end">{score:.2f}</text>')
    out.append(
        f'<text x="{x0 + bar_w / 2:.0f}" y="{height - 2}" text-anchor="middle" fill="#666">'
        "share of the samples' variation the transformation explains</text>"
    )
    out.append("</svg>")
    return "".join(out)


def _marker(cx: float, cy: float, colour: str, title: str = "") -> str:
    """A diamond marker (a reference's score)."""
    pts = f"{cx:.1f},{cy - 6:.1f} {cx + 5:.1f},{cy:.1f} {cx:.1f},{cy + 6:.1f} {cx - 5:.1f},{cy:.1f}"
    t = f"<title>{esc(title)}</title>" if title else ""
    return f'<polygon points="{pts}" fill="{colour}" stroke="white" stroke-width="1">{t}</polygon>'


def in_fiber_text(in_fiber: torch.Tensor | None, tolerance: float | None, metric: str = "sq_l2") -> str:
    """One sentence on which samples are in the fiber (their frames in the grid), or that no tolerance is set."""
    if in_fiber is None or tolerance is None:
        return (
            "In/out-of-fiber marks: no tolerance set, so samples are not judged in or out of the fiber "
            "(their fiber losses are under the images)."
        )
    flags = [bool(v) for v in in_fiber]
    k = sum(flags)
    out = [str(i + 1) for i, f in enumerate(flags) if not f]  # counted from 1, left to right in the grid
    text = (
        f"{k} of {len(flags)} samples are in the fiber (fiber loss {metric} ≤ {tolerance:.4g}; green frame in the grid)"
    )
    if out:
        text += f"; outside it (red frame): sample{'s' if len(out) > 1 else ''} {', '.join(out)} of the grid"
    return text + "."


def variation_image(images: torch.Tensor, scale: int = 4) -> Any:
    """The variation map: per-pixel standard deviation across the samples (white = varies most), as a PIL image."""
    from .grid import captioned_grid

    sd = images.float().std(0, unbiased=False).mean(0, keepdim=True) if len(images) > 1 else images[0, :1] * 0
    v = sd / max(float(sd.max()), 1e-8) * 2 - 1
    return captioned_grid([[v]], [["where samples vary"]], scale=scale)


def add_invariances(rep: Report, inv: InvarianceReport, heading: str | None = "What the samples vary in") -> None:
    """The summary paragraph, the ranking chart and a table of fitted parameters."""
    from ..analysis.probes import DESCRIPTIONS
    from ..analysis.summary import describe_params

    if heading:
        rep.heading(heading, level=4)
    rep.paragraph(inv.summary(), cls="summary")
    rep.trusted_html(
        '<figure class="fig chart">'
        + ranking_svg(inv)
        + "<figcaption>Invariance ranking: for each transformation, the share of the samples' difference from "
        "the query that it explains (0–1, beyond a flat image and beyond the simpler probes it contains); "
        "diamonds: the same score for the references.</figcaption></figure>"
    )
    refs = [r for r in ("unguided", "augmented") if r in inv.references]
    rows = []
    for name, score in inv.ranking:
        p = inv.probes[name]
        rows.append(
            [
                name,
                score,
                *[inv.references[r].get(name, float("nan")) for r in refs],
                describe_params(p),
                DESCRIPTIONS.get(name, "user-given transformation"),
            ]
        )
    var = f"samples differ from the query by {100 * inv.variation:.1f} % RMS of the value range"
    for r in refs:
        var += f"; {REF_LABELS[r]} by {100 * inv.reference_variation.get(r, float('nan')):.1f} %"
    rep.details(
        "fitted parameters and references",
        None,
        table=(["probe", "score", *refs, "fitted (median over samples)", "what it fits"], rows, 1),
        note=var,
    )


def add_fiber_section(
    rep: Report,
    res: Any,
    *,
    inv: InvarianceReport | None = None,
    grid: Any = None,
    grid_caption: str = "query | fiber samples with their fiber loss",
) -> None:
    """Per fiber: the grid, the variation map, the in/out-of-fiber marks, the ranking chart and the summary."""
    rep.figures_row(
        [
            (grid if grid is not None else res.grid(), grid_caption),
            (variation_image(res.images), "variation map: per-pixel spread of the samples (white = most)"),
        ]
    )
    rep.paragraph(in_fiber_text(res.in_fiber, res.tolerance, res.metric), cls="marks")
    if inv is not None:
        add_invariances(rep, inv)
