"""The HTML report of ``fiberscope compare``: the cross-model matrix, its reading, and every fiber."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..utils import atomic_write_text
from .html import Report
from .invariances import add_fiber_section

if TYPE_CHECKING:
    from ..analysis.compare import ComparisonResult

__all__ = ["write_comparison_report"]


def write_comparison_report(cmp: ComparisonResult, path: str | Path) -> Path:
    """Write the comparison's self-contained HTML page to ``path``; returns the path."""
    names = cmp.names
    rep = Report(
        "fiberscope compare: what one model ignores and another sees",
        f"{len(names)} subjects · prior {cmp.config.get('prior')} · {len(cmp.queries)} queries · "
        f"{cmp.config.get('n')} samples per fiber",
    )
    rep.paragraph(
        "Each row is one subject's fiber: images that subject cannot tell apart from the query. Each column "
        "judges those samples with another subject: its fiber loss on them divided by its loss on the real image "
        "closest to the query (the nearest-neighbour reference). Below 1 (and far below, ≪ 0.1) the column's "
        "subject cannot tell the row's samples from the query either; at 1 or above it sees a difference at "
        "least as large as that between the query and its closest real image: it sees what the row's subject "
        "ignores. The diagonal is each subject's own fiber.",
        cls="note",
    )
    rep.heading("Matrix")
    rep.figure(cmp.heatmap(), "fiber of (row) judged by (column): mean over queries of loss / nearest real loss")
    rep.table(["fiber of ↓ · judged by →", *names], [[a, *cmp.matrix[i]] for i, a in enumerate(names)])
    rep.heading("Reading")
    for line in cmp.readings():
        rep.paragraph(line)
    rep.heading("Per query")
    rows = []
    for a, na in enumerate(names):
        for b, nb in enumerate(names):
            rows.append([na, nb, *cmp.per_query[a][b]])
    rep.table(["fiber of", "judged by", *cmp.queries], rows, left=2)
    rep.heading("The fibers")
    for a, na in enumerate(names):
        for q, qn in enumerate(cmp.queries):
            rep.heading(f"{na} · {qn}", level=3)
            res = cmp.fibers[a][q] if cmp.fibers else None
            inv = cmp.invariances[a][q] if cmp.invariances else None
            if res is None:
                continue
            judged = ", ".join(f"{nb} {cmp.per_query[a][b][q]:.3g}" for b, nb in enumerate(names))
            rep.paragraph(f"ratio judged by each subject: {judged}")
            add_fiber_section(rep, res, inv=inv)
    rep.details("settings", "\n".join(f"{k}: {v}" for k, v in cmp.config.items()))
    path = Path(path)
    atomic_write_text(path, rep.render())
    return path
