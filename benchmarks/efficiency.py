"""Issue 21 item 4: the scale-free AutoNDTM against reference-faithful NDTM at matched fiber loss.

Per pair, the reference side is NDTM exactly as the reference code runs it, with the pair's preset
(its γ, sampler and weights) on the fair grid K ∈ {25, 50, 100, 200} × N ∈ {1, 3, 5}, keeping for
each (K, N) the best of three learning rates (the preset's × {⅓, 1, 3}) by mean fiber loss. Its
Pareto front of (forward-equivalents per sample, mean fiber loss) sets the target — the front's
best mean loss — and the cost to beat (the cost of that point). The new side is AutoNDTM — the
default a prior without a preset gets, :func:`fiberscope.guidance.auto.scale_free_default` — over
its levers: outer steps K, damped inner steps N, the polish steps at low noise (P), the projection
steps onto the fiber (G), and, at the largest G, a smaller ρ, a later start of the guidance and
resampling of the samples above the target loss (``auto_variants``).

Both grids run on ``--queries`` × ``--n`` samples. Realism and diversity are then measured again,
on ``--confirm`` queries × n samples (more, because a Fréchet distance and a pairwise distance over
a handful of samples are mostly noise), for the target point and for the cheapest AutoNDTM setting
that reached the target. Printed per pair:

    cost ratio at matched fiber loss: X      (that AutoNDTM setting's cost / the target's cost)
    realism ratio: Y                         (its Fréchet distance / the target's, same space)
    diversity ratio: Z                       (mean pairwise distance between samples of a query)

When no AutoNDTM setting reaches the target, X is ``inf`` and the line says so; the ratios at the
AutoNDTM's own best loss are printed next to it. ``--quick``: one pair, K ∈ {25, 50, 100} ×
N ∈ {1, 3} on the reference side, a smaller AutoNDTM grid, 4 queries × 2 samples, confirmation on
8 queries (under 15 minutes on a 2-core CPU).

``--reference-from`` reuses an earlier run's reference side; ``--new-from`` also reuses the AutoNDTM
points of an earlier run whose settings (every field of the method's config, and the resampling)
equal a point of this grid, and runs only the others.

    PYTHONPATH=src python benchmarks/efficiency.py --pairs mnist-ddpm:mnist-cnn@logits --quick --out eff-out
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))

from common_pairs import Judge, diversity, load_pair_prior, parse_pair, run_method

import fiberscope as fs
from fiberscope.guidance.auto import scale_free_default
from fiberscope.utils import atomic_write_bytes, atomic_write_json

#: With the longest projection (the largest G), AutoNDTM is measured again with each of ``auto_variants``'
#: changes: a smaller ρ or a later ``start`` steer less, for samples that differ more, and leave the
#: fiber to the projection; ``resample`` redraws, up to that many rounds, the samples whose fiber loss
#: is above ``resample_at`` (default 1) × the target (the reference front's best mean loss), its
#: redraws counted in the cost: at 1× about half the samples of a pair whose median is near the
#: target are redrawn, at 3× only the tail that sets the mean.
FULL = {
    "K": [25, 50, 100, 200],
    "N": [1, 3, 5],
    "auto_K": [40, 100],
    "auto_N": [1, 2],
    "auto_P": [2, 4],
    "auto_G": [0, 8, 32],
    "auto_variants": [
        {},
        {"rho": 0.3},
        {"start": 0.55},
        {"resample": 3},
        {"start": 0.55, "resample": 3},
        {"start": 0.55, "resample": 3, "resample_at": 3},
        {"rho": 0.3, "resample": 3, "resample_at": 3},
    ],
}
QUICK = {
    "K": [25, 50, 100],
    "N": [1, 3],
    "auto_K": [40, 100],
    "auto_N": [2],
    "auto_P": [2],
    "auto_G": [0, 8, 32],
    "auto_variants": [{}, {"start": 0.55, "resample": 3}],
}
LR_FACTORS = (1 / 3, 1.0, 3.0)
#: item 4's bounds: cost ≤ ⅓ of the target's, realism (FD) within 1.1×, diversity at least 0.9× of the reference's
MAX_COST_RATIO, MAX_REALISM_RATIO, MIN_DIVERSITY_RATIO = 1 / 3, 1.1, 0.9
CANDIDATES = 8  # settings confirmed at most, cheapest first (the grid has 72 points per pair)
CONFIRMED_KEYS = (
    "label",
    "fiber_loss_mean",
    "fiber_loss_median",
    "forward_equivalents",
    "realism_fd",
    "diversity",
    "class_kept",
    "class_kept_knn",
)


def pareto(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points no other point beats in both cost and mean fiber loss, cheapest first."""
    front, best = [], math.inf
    for p in sorted(points, key=lambda p: (p["forward_equivalents"], p["fiber_loss_mean"])):
        if p["fiber_loss_mean"] < best:
            front.append(p)
            best = p["fiber_loss_mean"]
    return front


def cheapest_at(points: list[dict[str, Any]], loss: float) -> dict[str, Any] | None:
    ok = [p for p in points if p["fiber_loss_mean"] <= loss * (1 + 1e-9)]
    return min(ok, key=lambda p: p["forward_equivalents"]) if ok else None


def _point(r: dict[str, Any], judge: Judge, n: int, label: str, settings: dict[str, Any]) -> dict[str, Any]:
    imgs = r.pop("_images")
    r["diversity"] = diversity(imgs, judge, n)
    r.pop("fiber_loss", None)
    return {**r, "label": label, "settings": settings}


def auto_point(
    default: Any, K: int, N: int, P: int, G: int, variant: dict[str, Any], target_loss: float
) -> tuple[Any, dict[str, Any] | None, str]:
    """One AutoNDTM grid point: the method, its resampling (rounds and tolerance, or None) and its label."""
    settings = {k: v for k, v in variant.items() if k not in ("resample", "resample_at")}
    m = replace(default, steps=K, inner_steps=N, polish_steps=P, project_steps=G, **settings)
    rounds, at = int(variant.get("resample", 0)), float(variant.get("resample_at", 1))
    resample = {"rounds": rounds, "tolerance": at * float(target_loss)} if rounds else None
    extra = "".join(f" {'ρ' if k == 'rho' else k}={v:g}" for k, v in settings.items())
    if rounds:
        extra += f" resample={rounds}" + (f" above {at:g}×target" if at != 1 else "")
    return m, resample, f"AutoNDTM K={K} N={N} P={P} G={G}{extra}"


def auto_settings(items: list[str]) -> dict[str, Any]:
    """``--auto SETTING=VALUE`` items as AutoNDTM settings (numbers parsed as JSON, anything else a string)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fs.AutoNDTM.__dataclass_fields__:
            raise SystemExit(f"--auto {item!r}: expected SETTING=VALUE with an AutoNDTM setting")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _redraws(resample: dict[str, Any] | None) -> dict[str, Any]:
    """``run_method``'s keywords for a point's resampling."""
    return {} if not resample else {"tolerance": resample["tolerance"], "resample": resample["rounds"]}


def reused(earlier_new: dict[str, Any] | None, settings: dict[str, Any], resample: dict[str, Any] | None):
    """The earlier run's AutoNDTM point with exactly these settings and resampling, or None (to be run)."""
    for p in (earlier_new or {}).get("new", []):
        if p["settings"] == settings and p.get("resample") == resample:
            return dict(p)
    return None


def reused_confirmation(earlier_new: dict[str, Any] | None, p: dict[str, Any]) -> dict[str, Any] | None:
    """An earlier run's confirmation of the grid point ``p`` (the same settings and resampling), or None.

    Confirmations are recorded by label: that of the earlier run's point with ``p``'s settings (:func:`reused`).
    """
    q = reused(earlier_new, p["settings"], p.get("resample"))
    if q is None or earlier_new is None:
        return None
    for c in earlier_new.get("confirmed", {}).get("candidates", []):
        if c["label"] == q["label"]:
            return {k: c[k] for k in CONFIRMED_KEYS}
    return None


def earlier_reference(
    path: Path,
    spec: str,
    grid: dict[str, Any],
    queries: int,
    n: int,
    seed: int,
    confirm: int,
):
    """The run of ``spec`` in an earlier run's JSON, checked to be the same reference grid, queries and seed."""
    record = json.loads(path.read_text())
    for res in record["pairs"]:
        if res["pair"] != spec:
            continue
        same = (
            res["queries"] == queries
            and res["n"] == n
            and res["seed"] == seed
            and res.get("confirm_queries") == confirm
            and record["grid"]["K"] == grid["K"]
            and record["grid"]["N"] == grid["N"]
            and list(record["lr_factors"]) == list(LR_FACTORS)
        )
        if not same:
            raise SystemExit(f"--reference-from {path}: its run of {spec} used another grid, query set or seed")
        return res
    raise SystemExit(f"--reference-from {path}: no run of {spec} in it")


def run_pair(
    spec: str,
    grid: dict[str, list[Any]],
    queries: int,
    n: int,
    seed: int,
    confirm: int,
    log: Any,
    earlier: dict[str, Any] | None = None,
    earlier_new: dict[str, Any] | None = None,
    auto_base: dict[str, Any] | None = None,
) -> dict[str, Any]:
    pair = parse_pair(spec)
    if not pair.tuned_preset:
        raise SystemExit(f"{spec}: the reference side needs the pair's γ, from a preset; {pair.prior_name} has none")
    tmp: list[tempfile.TemporaryDirectory[str]] = []
    prior = load_pair_prior(pair, tmp)
    subject = fs.load_subject(pair.subject, pair.layer)
    judge = Judge(pair, queries)
    base = fs.NDTM.preset(pair.tuned_preset)
    reference: list[dict[str, Any]] = [] if earlier is None else earlier["reference"]
    new: list[dict[str, Any]] = []
    for K in grid["K"] if earlier is None else []:
        for N in grid["N"]:
            best = None
            for f in LR_FACTORS:
                m = replace(base, steps=K, inner_steps=N, lr=base.lr * f)
                r = _point(run_method(prior, subject, judge, m, n, seed), judge, n, f"NDTM K={K} N={N}", m.config())
                r["lr"] = m.lr
                r["method"] = m
                log(
                    f"  ref K={K:3d} N={N} lr={m.lr:.3g}: mean {r['fiber_loss_mean']:.4g} median "
                    f"{r['fiber_loss_median']:.3g} fe {r['forward_equivalents']:.0f} ({r['seconds']:.0f} s)"
                )
                if best is None or r["fiber_loss_mean"] < best["fiber_loss_mean"]:
                    best = r
            reference.append(best)
    ref_front = pareto(reference)
    target = ref_front[-1]  # the front's best mean loss, at its cost
    default = scale_free_default(prior, **(auto_base or {}))
    g_values, n_reused = grid["auto_G"], 0
    for K in grid["auto_K"]:
        for N in grid["auto_N"]:
            for P in grid["auto_P"]:
                for g in g_values:
                    for variant in grid["auto_variants"] if g == g_values[-1] else [{}]:
                        m, resample, label = auto_point(default, K, N, P, g, variant, target["fiber_loss_mean"])
                        r = reused(earlier_new, m.config(), resample)
                        n_reused += r is not None
                        if r is None:
                            run = run_method(prior, subject, judge, m, n, seed, **_redraws(resample))
                            r = _point(run, judge, n, label, m.config())
                            r["resample"] = resample
                            log(
                                f"  {label.removeprefix('AutoNDTM ')}: mean {r['fiber_loss_mean']:.4g} median "
                                f"{r['fiber_loss_median']:.3g} fe {r['forward_equivalents']:.0f} ({r['seconds']:.0f} s)"
                            )
                        r["method"] = m
                        new.append(r)
    if earlier_new is not None:
        source = earlier_new.get("new_from") or "an earlier run"
        log(f"  AutoNDTM: {n_reused} of {len(new)} points reused from {source}")
    new_front = pareto(new)
    # Candidates: the settings that reach the target within ⅓ of its cost, cheapest first (or, when none
    # does, the cheapest that reaches it at all, or AutoNDTM's best). Realism and diversity are measured
    # again on more samples, for the target and for up to CANDIDATES candidates, until one is within
    # item 4's bounds; the matched point is that one, else the cheapest candidate.
    reaching = sorted(
        (p for p in new if p["fiber_loss_mean"] <= target["fiber_loss_mean"]), key=lambda p: p["forward_equivalents"]
    )
    within = [p for p in reaching if p["forward_equivalents"] <= MAX_COST_RATIO * target["forward_equivalents"]]
    candidates = within[:CANDIDATES] or reaching[:1] or [new_front[-1]]
    big = Judge(pair, confirm)
    confirmed: dict[str, Any] = {}

    def confirm_point(key: str, p: dict[str, Any]) -> dict[str, Any]:
        earlier_c = reused_confirmation(earlier_new, p)
        if earlier_c is not None:
            log(f"  confirm {key} ({p['label']}): reused from {earlier_new.get('new_from') or 'an earlier run'}")
            return earlier_c
        run = run_method(prior, subject, big, p["method"], n, seed, **_redraws(p.get("resample")))
        r = _point(run, big, n, p["label"], p["settings"])
        log(
            f"  confirm {key} ({p['label']}) on {confirm} queries × {n}: mean {r['fiber_loss_mean']:.4g}, "
            f"realism FD {r['realism_fd']:.4g}, diversity {r['diversity']:.4g}, class kept {r['class_kept']:.0%}"
        )
        return {k: r[k] for k in CONFIRMED_KEYS}

    if earlier is not None:  # the same target, confirmed by the earlier run
        if earlier["confirmed"]["target"]["label"] != target["label"]:
            raise SystemExit("--reference-from: the earlier run confirmed another target point")
        confirmed["target"] = earlier["confirmed"]["target"]
    else:
        confirmed["target"] = confirm_point("target", target)
    t = confirmed["target"]
    tried, chosen = [], None
    for p in candidates:
        c = confirm_point("candidate", p)
        c["realism_ratio"] = c["realism_fd"] / t["realism_fd"]
        c["diversity_ratio"] = c["diversity"] / t["diversity"] if t["diversity"] else float("nan")
        tried.append(c)
        if c["realism_ratio"] <= MAX_REALISM_RATIO and c["diversity_ratio"] >= MIN_DIVERSITY_RATIO:
            chosen = p, c
            break
    point, c = chosen if chosen is not None else (candidates[0], tried[0])
    confirmed["matched"] = c
    confirmed["candidates"] = tried
    match = point if point["fiber_loss_mean"] <= target["fiber_loss_mean"] else None
    for d in tmp:
        d.cleanup()
    for p in reference + new:
        p.pop("method", None)
    ratios = {"realism_ratio": c["realism_ratio"], "diversity_ratio": c["diversity_ratio"]}
    out: dict[str, Any] = {
        "pair": spec,
        "preset": pair.tuned_preset,
        "reference_name": judge.reference_name,
        "judge_accuracy": judge.judge_accuracy,
        "queries": queries,
        "confirm_queries": confirm,
        "n": n,
        "seed": seed,
        "reference": reference,
        "new": new,
        "reference_front": [p["label"] for p in ref_front],
        "new_front": [p["label"] for p in new_front],
        "target": {
            "fiber_loss_mean": target["fiber_loss_mean"],
            "forward_equivalents": target["forward_equivalents"],
            "label": target["label"],
        },
        "confirmed": confirmed,
        "reference_from": None if earlier is None else earlier.get("reference_from") or "earlier run",
        "new_from": None if earlier_new is None else earlier_new.get("new_from") or "earlier run",
        "new_reused": n_reused,
        "auto_base": auto_base or {},
    }
    if match is not None:
        out["matched"] = {
            "label": match["label"],
            "cost_ratio": match["forward_equivalents"] / target["forward_equivalents"],
            **ratios,
        }
    else:
        best_new = new_front[-1]
        ref_at = cheapest_at(reference, best_new["fiber_loss_mean"])
        out["matched"] = {
            "label": None,
            "cost_ratio": math.inf,
            "realism_ratio": math.nan,
            "diversity_ratio": math.nan,
            "at_new_best": None
            if ref_at is None
            else {
                "loss": best_new["fiber_loss_mean"],
                "new": best_new["label"],
                "reference": ref_at["label"],
                "cost_ratio": best_new["forward_equivalents"] / ref_at["forward_equivalents"],
                **ratios,
            },
        }
    return out


def _verdict(m: dict[str, Any]) -> str:
    """One line for a plot's title: the matched cost ratio, or why there is none."""
    if m.get("label") is not None:
        div = f", diversity {m['diversity_ratio']:.2g}" if "diversity_ratio" in m else ""
        return f"cost ratio {m['cost_ratio']:.2g} at matched loss, realism ratio {m['realism_ratio']:.2g}{div}"
    best = m.get("at_new_best")
    if not best:
        return "AutoNDTM did not reach the target"
    return (
        f"AutoNDTM did not reach the target;\nat its best loss ({best['loss']:.2g}) cost ratio {best['cost_ratio']:.2g}"
    )


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import io

    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(results))
    rows = math.ceil(len(results) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.4 * rows), squeeze=False)
    for ax in axes.flat[len(results) :]:
        ax.set_visible(False)
    for ax, res in zip(axes.flat, results):
        all_fe = [p["forward_equivalents"] for side in ("reference", "new") for p in res[side]]
        for side, colour, name in (("reference", "tab:blue", "NDTM (reference)"), ("new", "tab:red", "AutoNDTM")):
            pts = res[side]
            fe = [p["forward_equivalents"] for p in pts]
            ax.scatter(fe, [p["fiber_loss_mean"] for p in pts], c=colour, s=22, label=f"{name} mean")
            ax.scatter(fe, [p["fiber_loss_median"] for p in pts], c=colour, s=22, marker="x", label=f"{name} median")
            front = sorted(
                (p for p in pts if p["label"] in res[f"{side}_front"]), key=lambda p: p["forward_equivalents"]
            )
            ax.plot([p["forward_equivalents"] for p in front], [p["fiber_loss_mean"] for p in front], c=colour, lw=1)
        ax.axhline(res["target"]["fiber_loss_mean"], c="grey", ls="--", lw=0.8, label="target (reference best)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks(
            [t for t in (50, 100, 200, 500, 1000, 2000, 5000, 10000) if min(all_fe) / 1.5 <= t <= max(all_fe) * 1.5]
        )
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("forward-equivalents per sample (front: lines)")
        ax.set_ylabel("fiber loss (sq_l2)")
        grid_name = f" ({res['grid_name']} grid)" if "grid_name" in res else ""
        ax.set_title(f"{_shown(res)}{grid_name}\n{_verdict(res['matched'])}", fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _shown(res: dict[str, Any]) -> str:
    """A pair's name, with AutoNDTM's update rule where it is not the default's DDIM (a flow run with Euler)."""
    rule = next((r["settings"].get("sampler") for r in res["new"] if "settings" in r), None)
    return res["pair"] + (f" (AutoNDTM sampler {rule})" if rule not in (None, "ddim") else "")


def _log(line: str) -> None:
    print(line, flush=True)


def _grid_name(record: dict[str, Any]) -> str:
    """``quick`` or ``full``: which reference grid a run's JSON record used."""
    return "quick" if record.get("grid", {}).get("K") == QUICK["K"] else "full"


def _item4(m: dict[str, Any]) -> str:
    """Item 4's verdict for a matched point: cost ≤ ⅓, realism ratio ≤ 1.1, diversity ratio ≥ 0.9."""
    failed = [
        name
        for name, bad in (
            ("cost", m["cost_ratio"] > MAX_COST_RATIO),
            ("realism", not m["realism_ratio"] <= MAX_REALISM_RATIO),
            ("diversity", not m["diversity_ratio"] >= MIN_DIVERSITY_RATIO),
        )
        if bad
    ]
    return "yes" if not failed else f"no ({', '.join(failed)})"


def _row(side: str, r: dict[str, Any], extra: str = "") -> str:
    lr = f" (lr {r['lr']:.3g})" if "lr" in r else ""
    return (
        f"| {side} | {r['label'].removeprefix('AutoNDTM ').removeprefix('NDTM ')}{lr}{extra} | "
        f"{r['forward_equivalents']:,.0f} | {r['fiber_loss_mean']:.3g} | {r['fiber_loss_median']:.2g} | "
        f"{r['class_kept']:.0%} | {r['realism_fd']:.3g} | {r['diversity']:.3g} |"
    )


def tables(records: list[tuple[str, dict[str, Any]]]) -> str:
    """Markdown of runs (``(file name, record)``): a summary table, then both Pareto fronts per pair."""
    summary = [
        "| pair | grid | target (reference front's best: mean loss at fwd-eq) | AutoNDTM | cost ratio | "
        "realism ratio | diversity ratio | item 4 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    out: list[str] = []
    for name, record in records:
        grid = _grid_name(record)
        for p in record["pairs"]:
            ref = {r["label"]: r for r in p["reference"]}
            new = {r["label"]: r for r in p["new"]}
            shown = _shown(p)
            lrs = sorted({round(r["lr"], 4) for r in p["reference"]})
            ref_note = f"; the reference side from `{p['reference_from']}`" if p.get("reference_from") else ""
            out += [
                f"### {shown} ({grid} grid, {p['queries']} queries × {p['n']} samples)",
                "",
                f"Reference preset `{p['preset']}`; the best learning rate per (K, N) was "
                + ", ".join(f"{x:g}" for x in lrs)
                + f" (the preset's × {{⅓, 1, 3}}). JSON: `{name}`{ref_note}. Both Pareto fronts:",
                "",
                "| side | setting | fwd-eq / sample | mean fiber loss | median | class kept (judge) | FD | diversity |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for lab in sorted(p["reference_front"], key=lambda lb: ref[lb]["forward_equivalents"]):
                out.append(_row("NDTM", ref[lab], " **target**" if lab == p["target"]["label"] else ""))
            # the front, and every confirmed candidate (the one that met item 4 may lie off the front)
            cands = {c["label"]: c for c in p["confirmed"].get("candidates", []) if c["label"] in new}
            for lab in sorted(set(p["new_front"]) | set(cands), key=lambda lb: new[lb]["forward_equivalents"]):
                note = ""
                if lab == p["matched"].get("label"):
                    note = " **matched**"
                elif lab in cands:
                    c = cands[lab]
                    note = f" (confirmed: realism {c['realism_ratio']:.2f}, diversity {c['diversity_ratio']:.2f})"
                if lab not in p["new_front"]:
                    note += " (off the front)"
                out.append(_row("AutoNDTM", new[lab], note))
            m, t = p["matched"], p["target"]
            c, ct = p["confirmed"]["matched"], p["confirmed"]["target"]
            tgt = f"{t['label']}: {t['fiber_loss_mean']:.3g} at {t['forward_equivalents']:,.0f}"
            if m["label"] is None:
                b = m.get("at_new_best") or {}
                summary.append(
                    f"| {shown} | {grid} | {tgt} | not reached; best {b.get('loss', math.nan):.3g} "
                    f"({str(b.get('new', '')).removeprefix('AutoNDTM ')}) | inf ({b.get('cost_ratio', math.nan):.2f} "
                    f"at its best loss) | {b.get('realism_ratio', math.nan):.2f} | "
                    f"{b.get('diversity_ratio', math.nan):.2f} | no (loss) |"
                )
            else:
                summary.append(
                    f"| {shown} | {grid} | {tgt} | reached by {m['label'].removeprefix('AutoNDTM ')} at "
                    f"{new[m['label']]['forward_equivalents']:,.0f} | {m['cost_ratio']:.2f} | "
                    f"{m['realism_ratio']:.2f} | {m['diversity_ratio']:.2f} | {_item4(m)} |"
                )
            out += [
                "",
                f"Confirmation on {p['confirm_queries']} queries × {p['n']}: the target ({ct['label']}) mean "
                f"{ct['fiber_loss_mean']:.3g} (median {ct['fiber_loss_median']:.2g}), FD {ct['realism_fd']:.3g}, "
                f"diversity {ct['diversity']:.3g}, class kept {ct['class_kept']:.0%}; {c['label']} mean "
                f"{c['fiber_loss_mean']:.3g} (median {c['fiber_loss_median']:.2g}), FD {c['realism_fd']:.3g}, "
                f"diversity {c['diversity']:.3g}, class kept {c['class_kept']:.0%}.",
                "",
            ]
    return "\n".join(summary) + "\n\n" + "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", default="mnist-ddpm:mnist-cnn@logits", help="comma-separated PRIOR:SUBJECT@LAYER")
    ap.add_argument("--quick", action="store_true", help="one pair, a smaller grid, 4 queries × 2 samples")
    ap.add_argument("--queries", type=int)
    ap.add_argument("--n", type=int)
    ap.add_argument("--confirm", type=int, help="queries for the realism/diversity confirmation (default 24; quick 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="efficiency-out")
    ap.add_argument(
        "--reference-from",
        metavar="JSON",
        help="take the reference side (its grid, front, target and the target's confirmation) from an earlier "
        "run's efficiency.json of the same pairs, queries and seed, and run only the AutoNDTM side",
    )
    ap.add_argument(
        "--new-from",
        metavar="JSON",
        help="with --reference-from: reuse the AutoNDTM points of that file (same pairs, queries and seed) whose "
        "settings equal a point of this grid, and run only the others and the confirmations",
    )
    ap.add_argument(
        "--auto",
        action="append",
        default=[],
        metavar="SETTING=VALUE",
        help="a setting of every AutoNDTM point (repeatable), e.g. --auto sampler=euler: the flow's Euler rule",
    )
    ap.add_argument(
        "--replot", nargs="+", metavar="JSON", help="only redraw the plot of earlier runs' JSON files into --out"
    )
    ap.add_argument("--tables", nargs="+", metavar="JSON", help="only print the Markdown tables of earlier runs")
    args = ap.parse_args(argv)
    if args.tables:
        print(tables([(f, json.loads(Path(f).read_text())) for f in args.tables]))
        return 0
    if args.replot:
        merged = []
        for f in args.replot:
            record = json.loads(Path(f).read_text())
            merged += [{"grid_name": _grid_name(record), **res} for res in record["pairs"]]
        Path(args.out).mkdir(parents=True, exist_ok=True)
        plot(merged, Path(args.out) / "efficiency.png")
        print(f"plot: {Path(args.out) / 'efficiency.png'} ({len(merged)} pairs)")
        return 0
    torch.set_num_threads(args.threads)
    pairs = [p.strip() for p in args.pairs.split(",") if p.strip()]
    if args.quick:
        pairs = pairs[:1]
    grid = QUICK if args.quick else FULL
    queries = args.queries or (4 if args.quick else 8)
    confirm = args.confirm or (8 if args.quick else 24)
    n = args.n or 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = "python benchmarks/efficiency.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results = []
    t0 = time.perf_counter()
    for spec in pairs:
        print(f"{spec}:", flush=True)
        earlier = earlier_new = None
        if args.reference_from:
            earlier = earlier_reference(Path(args.reference_from), spec, grid, queries, n, args.seed, confirm)
            earlier["reference_from"] = str(args.reference_from)
        if args.new_from:
            if not args.reference_from:
                raise SystemExit("--new-from needs --reference-from")
            earlier_new = earlier_reference(Path(args.new_from), spec, grid, queries, n, args.seed, confirm)
            earlier_new["new_from"] = str(args.new_from)
        res = run_pair(spec, grid, queries, n, args.seed, confirm, _log, earlier, earlier_new, auto_settings(args.auto))
        res["grid_name"] = "quick" if args.quick else "full"
        results.append(res)
        m = res["matched"]
        t = res["target"]
        print(
            f"{spec}: target mean fiber loss {t['fiber_loss_mean']:.4g} at {t['forward_equivalents']:.0f} fe "
            f"({t['label']})"
        )
        if m["label"] is None:
            extra = m.get("at_new_best")
            print(
                "cost ratio at matched fiber loss: inf (no AutoNDTM setting reached the target"
                + (
                    f"; at its best loss {extra['loss']:.4g}: cost ratio {extra['cost_ratio']:.3g}, "
                    f"realism ratio {extra['realism_ratio']:.3g}, diversity ratio {extra['diversity_ratio']:.3g})"
                    if extra
                    else ")"
                )
            )
            print("realism ratio: nan")
        else:
            print(f"cost ratio at matched fiber loss: {m['cost_ratio']:.3g}  ({m['label']})")
            print(f"realism ratio: {m['realism_ratio']:.3g}")
            print(f"diversity ratio: {m['diversity_ratio']:.3g}")
        record = {
            "command": cmd,
            "grid": grid,
            "lr_factors": LR_FACTORS,
            "seconds": time.perf_counter() - t0,
            "pairs": results,
        }
        atomic_write_json(out / "efficiency.json", json.loads(json.dumps(record, default=float)))
        plot(results, out / "efficiency.png")
    print(f"results: {out / 'efficiency.json'}, plot: {out / 'efficiency.png'} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
