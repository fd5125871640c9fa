"""Small matplotlib helpers shared by the bench plots and the benchmark scripts."""

from __future__ import annotations

from typing import Any

__all__ = ["label_points", "log_axis_yerr"]

#: on a log axis the lower arm of an error bar stops at this fraction of the mean
LOG_BAR_FLOOR = 0.1

#: label offsets tried in turn, in points from the point: beside it, then further out above and below
_OFFSETS = [(5, 0), *((14, dy) for d in (10, 20, 30, 40, 50) for dy in (d, -d))]


def label_points(ax: Any, points: list[tuple[str, float, float]], size: float = 8.0) -> None:
    """Name each point of a scatter plot without covering another label or point, or leaving the axes.

    ``points`` are ``(label, x, y)`` in data coordinates. Call once the figure's layout is final
    (after ``tight_layout``): placement is measured on the rendered text. Each label goes to the
    right of its point, else to the left, else further out above or below with a thin leader line;
    when no place is free it takes the first.
    """
    from matplotlib.transforms import Bbox

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    r = 4.0 * fig.dpi / 72  # a marker's half-width, in pixels
    taken = [
        Bbox.from_extents(px - r, py - r, px + r, py + r)
        for px, py in (ax.transData.transform((x, y)) for _, x, y in points)
    ]
    for name, x, y in sorted(points, key=lambda p: -p[2]):
        tried = []
        for dx, dy in _OFFSETS:
            for side in (1, -1):
                text = ax.annotate(
                    name,
                    (x, y),
                    textcoords="offset points",
                    xytext=(side * dx, dy),
                    fontsize=size,
                    ha="left" if side > 0 else "right",
                    va="center",
                )
                box = text.get_window_extent(renderer)
                text.remove()
                inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
                tried.append((side * dx, dy, box, inside and not any(box.overlaps(t) for t in taken)))
                if tried[-1][3]:
                    break
            if tried[-1][3]:
                break
        dx, dy, box, _ = tried[-1] if tried[-1][3] else tried[0]
        taken.append(box)
        ax.annotate(
            name,
            (x, y),
            textcoords="offset points",
            xytext=(dx, dy),
            fontsize=size,
            ha="left" if dx > 0 else "right",
            va="center",
            arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5", "shrinkA": 0, "shrinkB": 3} if dy else None,
        )


def log_axis_yerr(mean: float, sd: float | None) -> list[list[float]]:
    """``yerr`` for one ``ax.errorbar`` point on a logarithmic y axis: ± ``sd``, lower arm cut.

    A ± std bar that reaches zero or below would run off the panel and read as "could be
    anything" (a mean set by one failing seed has std > mean), so the lower arm stops at
    ``LOG_BAR_FLOOR`` · mean; the upper arm is the full ``sd``.
    """
    sd = sd or 0.0
    return [[min(sd, (1.0 - LOG_BAR_FLOOR) * mean)], [sd]]
