"""Units → table rows: every measurement of a method on a pair as mean ± std across sampling seeds."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..metrics.fiber import across_seeds
from .config import BenchConfig, PairSpec

__all__ = ["SCALARS", "aggregate"]

#: The per-unit numbers averaged across seeds besides the fiber loss.
SCALARS = (
    "realism_fd",
    "diversity_pixel",
    "diversity_feature",
    "label_agreement",
    "prediction_agreement",
    "colour_kl",
    "colour_w1",
    "dev",
    "forward_equivalents",
    "seconds_per_sample",
)


def aggregate(name: str, recs: list[dict[str, Any]], stats: dict[str, Any], cfg: BenchConfig) -> dict[str, Any]:
    """One table row: every metric as (mean, std) across seeds (failed seeds listed, not averaged).

    Args:
        name: the method or prior-free reference.
        recs: its unit records on one pair, one per seed.
        stats: the pair's statistics (nearest-neighbour losses per query).
        cfg: the bench's settings (the headline ``metric``).
    """
    row: dict[str, Any] = {
        "method": name,
        "pair": recs[0]["pair"],
        "pair_key": PairSpec(**recs[0]["pair"]).key,
        "seeds": [r["seed"] for r in recs if "error" not in r],
        "method_config": recs[0]["method_config"],
    }
    failed = [r for r in recs if "error" in r]
    if failed:
        row["failed_seeds"] = [r["seed"] for r in failed]
        row["error"] = failed[0]["error"]
    recs = [r for r in recs if "error" not in r]
    if not recs:
        row["fiber_loss"] = {cfg.metric: (None, None)}
        row["nn_loss"] = (stats.get("nn_loss_mean") or {}).get(cfg.metric)
        return row
    row["fiber_loss"] = {k: across_seeds(r["fiber_loss"][k] for r in recs) for k in recs[0]["fiber_loss"]}
    for k in SCALARS:
        vals = [r[k] for r in recs if r.get(k) is not None]
        if vals:
            row[k] = across_seeds(vals)
    nn = (stats.get("nn_loss_mean") or {}).get(cfg.metric)
    row["nn_loss"] = nn
    m = row["fiber_loss"][cfg.metric][0]
    row["loss_over_nn"] = m / nn if nn else None
    # per (query, seed): is the fiber closer to the query than that query's nearest real image? Means are
    # pulled up by the few queries a method fails on; this count and the median are not.
    nn_q = [d.get(cfg.metric) for d in stats.get("nn_losses") or []]
    per = [r.get("fiber_loss_per_query", {}).get(cfg.metric) for r in recs]
    if nn_q and all(p is not None and len(p) == len(nn_q) for p in per):
        pairs = [(a, b) for p in per for a, b in zip(p, nn_q) if a is not None and b is not None]
        if pairs:
            row["below_nn"] = [sum(a < b for a, b in pairs), len(pairs)]
            row["median_loss"] = float(np.median([a for a, _ in pairs]))
            row["nn_median"] = float(np.median([b for b in nn_q if b is not None]))
    return row
