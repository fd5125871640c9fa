"""A self-contained HTML report (images inlined as PNG data URIs); every shown string is escaped."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Report", "png_data_uri"]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;
line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}
h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
h3{font-size:1.05em;margin-top:1.5em}
.sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:right}th{background:#f5f5f5}
td.l,th.l{text-align:left}
img{image-rendering:pixelated;max-width:100%;border:1px solid #eee}
.note{background:#f7f9fc;border-left:4px solid #8aa4d6;padding:.6em 1em;margin:1em 0}
.warn{background:#fff7e6;border-left:4px solid #e0a030;padding:.6em 1em;margin:1em 0}
code{background:#f3f3f3;padding:0 .25em;border-radius:3px}
.fig{margin:1em 0}.fig figcaption{color:#555;font-size:.9em}
details{margin:.5em 0}
.summary{background:#f4f8f2;border-left:4px solid #5a9a4a;padding:.6em 1em;margin:.8em 0}
.marks{color:#444;font-size:.92em}
figure.chart svg{max-width:100%;height:auto}
.row{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}
.row figure{margin:.6em 0;display:table}.row figcaption{display:table-caption;caption-side:bottom}
h4{font-size:1em;margin:1.2em 0 .3em}
"""


def png_data_uri(img: Any) -> str:
    """A PIL image as a ``data:image/png;base64,...`` URI."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


@dataclass
class Report:
    """Build a report from headings, paragraphs, tables and figures; :meth:`render` returns HTML."""

    title: str
    subtitle: str = ""
    parts: list[str] = field(default_factory=list)

    def heading(self, text: str, level: int = 2, anchor: str | None = None) -> None:
        a = f' id="{esc(anchor)}"' if anchor else ""
        self.parts.append(f"<h{level}{a}>{esc(text)}</h{level}>")

    def paragraph(self, text: str, cls: str | None = None) -> None:
        """A paragraph of plain text (escaped); ``cls`` = ``note`` or ``warn`` for a callout."""
        c = f' class="{esc(cls)}"' if cls else ""
        self.parts.append(f"<p{c}>{esc(text)}</p>")

    def code(self, text: str) -> None:
        self.parts.append(f"<pre><code>{esc(text)}</code></pre>")

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> None:
        """A table; the first ``left`` columns are left-aligned (labels)."""

        def cell(tag: str, v: Any, j: int) -> str:
            cls = ' class="l"' if j < left else ""
            if isinstance(v, float):
                v = f"{v:.4g}"
            return f"<{tag}{cls}>{esc(v)}</{tag}>"

        head = "".join(cell("th", h, j) for j, h in enumerate(header))
        body = "".join("<tr>" + "".join(cell("td", v, j) for j, v in enumerate(r)) + "</tr>" for r in rows)
        self.parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def figure(self, img: Any, caption: str = "", alt: str = "") -> None:
        self.parts.append(
            f'<figure class="fig"><img src="{png_data_uri(img)}" alt="{esc(alt or caption)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>"
        )

    def figures_row(self, figures: Sequence[tuple[Any, str]]) -> None:
        """Several ``(image, caption)`` figures side by side (wrapping on narrow screens)."""
        inner = "".join(
            f'<figure class="fig"><img src="{png_data_uri(img)}" alt="{esc(cap)}"><figcaption>{esc(cap)}</figcaption>'
            "</figure>"
            for img, cap in figures
        )
        self.parts.append(f'<div class="row">{inner}</div>')

    def details(
        self,
        summary: str,
        text: str | None = None,
        *,
        table: tuple[Sequence[str], Sequence[Sequence[Any]], int] | None = None,
        note: str | None = None,
    ) -> None:
        """A collapsed block holding preformatted ``text``, and/or a ``(header, rows, left)`` table and a ``note``."""
        inner = f"<pre><code>{esc(text)}</code></pre>" if text is not None else ""
        if table is not None:
            n = len(self.parts)
            self.table(*table)
            inner += self.parts.pop(n)
        if note:
            inner += f"<p>{esc(note)}</p>"
        self.parts.append(f"<details><summary>{esc(summary)}</summary>{inner}</details>")

    def trusted_html(self, markup: str) -> None:
        """Markup built by fiberscope's own renderers (e.g. an inline SVG chart), which escape every text they hold.

        Never pass user text here: use :meth:`paragraph`, :meth:`table` and the other methods, which escape it.
        """
        self.parts.append(markup)

    def render(self) -> str:
        sub = f'<p class="sub">{esc(self.subtitle)}</p>' if self.subtitle else ""
        return (
            f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(self.title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
            f"<body><h1>{esc(self.title)}</h1>{sub}{''.join(self.parts)}</body></html>\n"
        )
