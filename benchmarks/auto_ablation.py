"""Why AutoNDTM's defaults are what they are: its update rule's η, its polish phase and its projection, one at a time.

On one zoo pair, the default (:func:`fiberscope.guidance.auto.scale_free_default`) and variants that
change one setting — no projection onto the fiber, or its calls spent on polish steps instead, a
longer projection, η ∈ {0, 0.5} instead of 1, no polish phase, two damped steps per denoising step
instead of one (N = 2, the default before), a smaller damping ρ = 0.3 — on the same queries and seeds,
judged as ``benchmarks/defaults_acceptance.py`` judges: mean and median fiber loss, class kept by
the independent classifier (``benchmarks/judges.py``), realism (Fréchet distance in the realism
reference's space), diversity (mean pairwise distance of a query's samples there), cost.

    PYTHONPATH=src python benchmarks/auto_ablation.py --pair mnist-ddpm:mnist-cnn@logits --queries 10 --n 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))

from common_pairs import Judge, diversity, load_pair_prior, parse_pair, run_method

import fiberscope as fs
from fiberscope.guidance.auto import scale_free_default
from fiberscope.utils import atomic_write_json

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "no projection": {"project_steps": 0},
    "no proj., P=3": {"project_steps": 0, "polish_steps": 3},  # about the default's calls, on polish steps
    "projection 16": {"project_steps": 16},
    "eta=0.5": {"eta": 0.5},
    "eta=0": {"eta": 0.0},
    "no polish": {"polish_steps": 0},
    "N=2": {"inner_steps": 2},  # the default before issue 21's 60-sample acceptance
    "rho=0.3": {"rho": 0.3},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", default="mnist-ddpm:mnist-cnn@logits")
    ap.add_argument("--queries", type=int, default=10)
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="ablation-out")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    pair = parse_pair(args.pair)
    tmp: list[tempfile.TemporaryDirectory[str]] = []
    prior = load_pair_prior(pair, tmp)
    subject = fs.load_subject(pair.subject, pair.layer)
    judge = Judge(pair, args.queries)
    base = scale_free_default(prior)
    rows: dict[str, Any] = {}
    print(
        f"{'variant':16s} {'mean':>9s} {'median':>9s} {'class kept':>10s} {'realism FD':>10s} {'diversity':>9s} "
        f"{'fe':>6s}"
    )
    for name, change in VARIANTS.items():
        m = replace(base, **change)
        r = run_method(prior, subject, judge, m, args.n, args.seed)
        r["diversity"] = diversity(r.pop("_images"), judge, args.n)
        r["config"] = m.config()
        rows[name] = r
        print(
            f"{name:16s} {r['fiber_loss_mean']:9.4g} {r['fiber_loss_median']:9.3g} {r['class_kept']:10.0%} "
            f"{r['realism_fd']:10.3g} {r['diversity']:9.3g} {r['forward_equivalents']:6.0f}",
            flush=True,
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = "python benchmarks/auto_ablation.py " + " ".join(sys.argv[1:] if argv is None else argv)
    atomic_write_json(out / "ablation.json", {"command": cmd, "pair": args.pair, "variants": rows})
    for d in tmp:
        d.cleanup()
    print(f"results: {out / 'ablation.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
