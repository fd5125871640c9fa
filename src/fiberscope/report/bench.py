"""The bench's outputs: ``bench.md`` (one table per pair), ``results.json`` and the two plots.

They read a bench result (:func:`fiberscope.bench.run_bench`'s record, or its ``results.json``) and
nothing else, so a finished bench can be drawn again.
"""

from __future__ import annotations

import io
import math
import sys
from pathlib import Path
from typing import Any

from ..utils import atomic_write_bytes, atomic_write_json, atomic_write_text
from .plotting import LOG_BAR_FLOOR, label_points, log_axis_yerr

__all__ = ["markdown", "plot", "write_outputs"]


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, (list, tuple)):
        m, s = v
        if m is None or (isinstance(m, float) and math.isnan(m)):
            return "—"
        return f"{m:.{digits}g} ± {s:.2g}"
    if isinstance(v, float) and math.isnan(v):
        return "—"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def markdown(result: dict[str, Any]) -> str:
    """``bench.md``: one table per (prior, subject) pair."""
    cfg = result["config"]
    metric = cfg["metric"]
    lines = [
        f"# {cfg['title']}",
        "",
        f"{cfg['queries']} queries (query seed {cfg['query_seed']}) × {cfg['n']} samples × seeds {cfg['seeds']}; "
        f"fiber loss = `{metric}`, mean over queries, ± = std across sampling seeds. NN = nearest real test "
        "image in φ (query excluded). FD = Fréchet distance to real test images in the reference model's space "
        "(floor: two real sets of the same size). Diversity = mean pairwise distance among the samples of a "
        "fiber. Cost = network calls per sample in forward-equivalents (backward = 2 forwards), counted as "
        "`sample_fiber` counts them: the sampling loop, the final decoding and φ of the samples, φ(query) once per "
        "query. `nn` = the n nearest real images (its cost: embedding the bank once per query); `augment` = n "
        "random augmentations of the query (no network call). Below NN = in how many (query, seed) cases the "
        "mean fiber loss of the query's samples is below that query's NN loss; median loss = the median of "
        "those per-(query, seed) losses (against the NN median in the pair's header).",
        "",
    ]
    for sk in result.get("skipped", []):
        lines += [f"*Skipped `{sk['pair']}`: {sk['reason']}*", ""]
    by_pair: dict[str, list[dict[str, Any]]] = {}
    for r in result["rows"]:
        by_pair.setdefault(r["pair_key"], []).append(r)
    for rows in by_pair.values():
        p = rows[0]["pair"]
        st: dict[str, Any] = next((s for s in result["pairs"] if s.get("pair") == p), {})
        subj = p["subject"] + (f"@{p['layer']}" if p.get("layer") else "")
        lines += [
            f"## {p['prior']} × {subj}",
            "",
            f"Data set `{p.get('dataset')}`; NN {metric} = {_fmt(rows[0].get('nn_loss'))} "
            f"(median over queries {_fmt(next((r['nn_median'] for r in rows if 'nn_median' in r), None))}); reference "
            f"`{st.get('reference') or '—'}` (FD floor {_fmt(st.get('realism_floor'))} at n = "
            f"{st.get('realism_n', '—')}); classifier `{st.get('classifier') or '—'}`.",
            "",
        ]
        colour = any("colour_kl" in r for r in rows)
        # trained models (fiberscope.trained) carry their training wall time: "train once" vs "guide"
        trained = any((r.get("method_config") or {}).get("train_seconds") is not None for r in rows)
        head = [
            "method",
            f"fiber loss ({metric})",
            "loss / NN",
            "below NN",
            "median loss",
            "FD (ref)",
            "div. px",
            "div. feat",
            "label / pred agr.",
            "fwd-eq / sample",
            "s / sample",
        ]
        if colour:
            head += ["colour KL", "colour W1", "dev"]
        if trained:
            head += ["training (min)", "s / fiber"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            la, pa = r.get("label_agreement"), r.get("prediction_agreement")
            agr = f"{la[0]:.2f} / {pa[0]:.2f}" if la and pa else "—"
            cells = [
                f"`{r['method']}`",
                _fmt(r["fiber_loss"][metric]),
                _fmt(r.get("loss_over_nn")),
                f"{r['below_nn'][0]}/{r['below_nn'][1]}" if r.get("below_nn") else "—",
                _fmt(r.get("median_loss")),
                _fmt(r.get("realism_fd")),
                _fmt(r.get("diversity_pixel")),
                _fmt(r.get("diversity_feature")),
                agr,
                _fmt((r.get("forward_equivalents") or [None])[0]),
                _fmt((r.get("seconds_per_sample") or [None])[0], 2),
            ]
            if r.get("failed_seeds"):
                cells[0] += f" (failed at seeds {r['failed_seeds']}: {r.get('error', '')[:80]})"
            if colour:
                cells += [_fmt(r.get("colour_kl")), _fmt(r.get("colour_w1")), _fmt(r.get("dev"))]
            if trained:
                ts = (r.get("method_config") or {}).get("train_seconds")
                sps = (r.get("seconds_per_sample") or [None])[0]
                per_fiber = sps * cfg["n"] if sps is not None else None
                cells += [_fmt(ts / 60 if ts is not None else None), _fmt(per_fiber, 2)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "Method settings: see `results.json` (`rows[*].method_config`); per-unit samples: "
        "`units/PAIR/METHOD__seedS.{png,npz,json}`.",
        "",
    ]
    return "\n".join(lines)


def plot(result: dict[str, Any], out: Path) -> list[Path]:
    """``loss_vs_cost.png`` and ``loss_vs_realism.png``: one panel per pair, one point per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = result["config"]["metric"]
    by_pair: dict[str, list[dict[str, Any]]] = {}
    for r in result["rows"]:
        by_pair.setdefault(r["pair_key"], []).append(r)
    methods = sorted({r["method"] for r in result["rows"]})
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    written = []
    for fname, xkey, xlabel, xlog in [
        ("loss_vs_cost.png", "forward_equivalents", "network calls per sample (forward-equivalents)", True),
        ("loss_vs_realism.png", "realism_fd", "Fréchet distance to real images (reference model)", False),
    ]:
        k = max(len(by_pair), 1)
        ncol = min(k, 3)
        nrow = (k + ncol - 1) // ncol
        fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 3.8 * nrow), squeeze=False)
        labels = []
        for ax, (key, rows) in zip(axes.flat, by_pair.items()):
            if xlog:
                ax.set_xscale("log")
            ax.set_yscale("log")
            points = []
            for r in rows:
                x = r.get(xkey)
                y = r["fiber_loss"][metric]
                if x is None or x[0] is None or y[0] is None or not (math.isfinite(x[0]) and math.isfinite(y[0])):
                    continue
                xv = max(x[0], 1.0) if xlog else x[0]
                yerr = log_axis_yerr(y[0], y[1])
                ax.errorbar(xv, y[0], yerr=yerr, xerr=None if xlog else x[1], fmt="o", color=colours[r["method"]])
                points.append((r["method"], xv, y[0]))
            nn = rows[0].get("nn_loss")
            if nn:
                ax.axhline(nn, color="grey", ls="--", lw=1)
                ax.annotate("nearest real", (0.02, nn), xycoords=("axes fraction", "data"), fontsize=7, color="grey")
            labels.append((ax, points))
            ax.set_title(key, fontsize=9)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.set_ylabel(f"fiber loss ({metric})", fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(by_pair) :]:
            ax.axis("off")
        fig.tight_layout(rect=(0, 0.035, 1, 1))
        fig.text(
            0.01,
            0.008,
            f"bars: ± 1 std across sampling seeds (lower arm cut at {LOG_BAR_FLOOR:g} × the mean on the log axis); "
            "dashed: the nearest real image's fiber loss",
            fontsize=7,
            color="grey",
        )
        for ax, points in labels:
            label_points(ax, points, size=7)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        atomic_write_bytes(out / fname, buf.getvalue())
        written.append(out / fname)
    return written


def write_outputs(result: dict[str, Any], out: str | Path) -> None:
    """Write ``results.json``, ``bench.md`` and the two plots of a bench result."""
    out = Path(out)
    atomic_write_json(out / "results.json", result)
    atomic_write_text(out / "bench.md", markdown(result))
    try:
        plot(result, out)
    except ImportError:  # the tables are the result; the plots need the `plots` extra
        print(
            "fiberscope bench: matplotlib is not installed, so no plots (pip install 'fiberscope[plots]')",
            file=sys.stderr,
        )
