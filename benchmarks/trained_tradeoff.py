"""Colour-MNIST trade-off of the trained models against NDTM, from a finished bench run.

Reads ``results.json`` of ``fiberscope bench --config benchmarks/bench_trained.yaml --out DIR`` and
plots, for the colour-MNIST pair, the RMS fiber loss of every method against (left) the colour KL of
its samples' backgrounds to the data's colour mixture and (right) the mean pairwise pixel distance
among the samples of one fiber. A sampler that shows the colour invariance sits low (in the fiber),
left (colours as in the data) and right (the samples differ). No network is run.

    python benchmarks/trained_tradeoff.py bench-trained            # → docs/trained_tradeoff.png + grids
    python benchmarks/trained_tradeoff.py bench-trained --plot out.png --grids grids.png

It also puts the seed-0 sample grids of NDTM, cfm-l0, cfm-l10 and cflow-l10 side by side
(``--grids``, default ``docs/images/trained_colour_grids.png``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fiberscope.report.plotting import label_points

PAIR = "colormnist-latent__colorblind-mnist"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench_dir", type=Path, help="output directory of the trained-models bench (bench_trained.yaml)")
    ap.add_argument("--plot", type=Path, default=Path("docs/trained_tradeoff.png"))
    ap.add_argument("--grids", type=Path, default=Path("docs/images/trained_colour_grids.png"))
    ap.add_argument("--grid-methods", default="ndtm,cfm-l0,cfm-l10,cflow-l10")
    args = ap.parse_args(argv)
    path = args.bench_dir / "results.json"
    if not path.is_file():
        print(
            f"error: {path} not found; run `fiberscope bench --config benchmarks/bench_trained.yaml "
            f"--out {args.bench_dir}` first",
            file=sys.stderr,
        )
        return 2
    rows = [r for r in json.loads(path.read_text())["rows"] if r["pair_key"] == PAIR and r.get("colour_kl")]
    if not rows:
        print(f"error: {path} has no rows for the colour-MNIST pair {PAIR}", file=sys.stderr)
        return 2

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = {"ndtm": "tab:red", "cfm": "tab:blue", "cflow": "tab:green", "cinn": "tab:purple"}

    def colour_of(method: str) -> str:
        return next((c for prefix, c in families.items() if method.startswith(prefix)), "tab:gray")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = []
    for ax, key, label in (
        (axes[0], "colour_kl", "colour KL to the data's mixture (lower: natural colours)"),
        (axes[1], "diversity_pixel", "diversity: mean pairwise pixel distance within a fiber"),
    ):
        for r in rows:
            colour = colour_of(r["method"])
            (x, dx), (y, dy) = r[key], r["fiber_loss"]["rms"]
            ax.errorbar(x, y, xerr=dx, yerr=dy, fmt="o", color=colour, ms=6, capsize=2)
        ax.set_yscale("log")
        if key == "colour_kl":
            ax.set_xscale("log")
        labels.append((ax, [(r["method"], r[key][0], r["fiber_loss"]["rms"][0]) for r in rows]))
        nn = rows[0].get("nn_loss")
        if nn:
            ax.axhline(nn, color="gray", ls="--", lw=1)
            ax.text(0.01, nn, "nearest real", va="bottom", fontsize=8, color="gray", transform=ax.get_yaxis_transform())
        ax.set_xlabel(label)
        ax.set_ylabel("fiber loss (RMS, lower: in the fiber)")
    fig.suptitle(
        "colour MNIST, colour-blind subject: guided at sampling time (ndtm*) vs trained once (cfm, cflow, cinn)"
    )
    fig.tight_layout()
    for ax, points in labels:
        label_points(ax, points)
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=110)
    print(f"wrote {args.plot} ({len(rows)} methods)")
    grids = [args.bench_dir / "units" / PAIR / f"{m}__seed0.png" for m in args.grid_methods.split(",")]
    missing = [str(g) for g in grids if not g.is_file()]
    if missing:
        print(f"no side-by-side grids: missing {', '.join(missing)}", file=sys.stderr)
        return 0
    from PIL import Image

    ims = [Image.open(g).convert("RGB") for g in grids]
    gap = 10
    out = Image.new("RGB", (sum(i.width for i in ims) + gap * (len(ims) - 1), max(i.height for i in ims)), "white")
    x = 0
    for im in ims:
        out.paste(im, (x, 0))
        x += im.width + gap
    args.grids.parent.mkdir(parents=True, exist_ok=True)
    out.save(args.grids)
    print(f"wrote {args.grids}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
