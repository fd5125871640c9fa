"""Issue 21 item 1, measured: do the defaults reach the fiber on every zoo pair without tuning?

Per pair (``PRIOR:SUBJECT@LAYER``; ``folder:`` = the zoo's weights as a plain diffusers folder, so
no preset is known), three methods on the same queries and seeds:

* ``default``: what ``fs.sample_fiber(..., method=None)`` runs (the prior's preset, else AutoNDTM);
* ``auto``: the scale-free AutoNDTM, on every pair (what a prior without a preset gets);
* ``preset``: the NDTM preset tuned for these weights (``builtin-*``);
* ``unguided``: the prior alone (the bench's settings).

Checks: fiber loss ≤ 1/50 of unguided, class kept (a k-NN classifier in the realism reference's
space — never the subject — against the query's true label) in ≥ 90 % of samples, realism
(Fréchet distance to 1,000 real test images in that space) ≤ 1.3 × the preset's.

    PYTHONPATH=src python benchmarks/defaults_acceptance.py --queries 8 --n 2 --out acc-out
    PYTHONPATH=src python benchmarks/defaults_acceptance.py --pairs mnist-ddpm:mnist-cnn@logits --queries 4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))

from common_pairs import ZOO_PAIRS, Judge, load_pair_prior, parse_pair, run_method, unguided_for

import fiberscope as fs
from fiberscope.guidance.auto import AutoNDTM, resolve_method, scale_free_default
from fiberscope.utils import atomic_write_json

LOSS_RATIO, CLASS_KEPT, REALISM_RATIO = 1 / 50, 0.9, 1.3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", default=",".join(ZOO_PAIRS), help="comma-separated PRIOR:SUBJECT@LAYER")
    ap.add_argument("--queries", type=int, default=8)
    ap.add_argument("--n", type=int, default=2, help="samples per query")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--query-seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="defaults-acceptance-out")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp: list[tempfile.TemporaryDirectory[str]] = []
    results: dict[str, Any] = {
        "command": "python benchmarks/defaults_acceptance.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "queries": args.queries,
        "n": args.n,
        "seed": args.seed,
        "query_seed": args.query_seed,
        "thresholds": {"loss_ratio": LOSS_RATIO, "class_kept": CLASS_KEPT, "realism_ratio": REALISM_RATIO},
        "pairs": {},
    }
    rows = []
    for spec in [p.strip() for p in args.pairs.split(",") if p.strip()]:
        pair = parse_pair(spec)
        t0 = time.perf_counter()
        prior = load_pair_prior(pair, tmp)
        subject = fs.load_subject(pair.subject, pair.layer)
        judge = Judge(pair, args.queries, args.query_seed)
        default, how = resolve_method(None, prior)
        methods: dict[str, Any] = {"unguided": unguided_for(pair.prior_name), "default": default}
        if not isinstance(default, AutoNDTM):
            methods["auto"] = scale_free_default(prior)
        if pair.tuned_preset and how.get("preset") != pair.tuned_preset:
            methods["preset"] = fs.NDTM.preset(pair.tuned_preset)
        res: dict[str, Any] = {
            "default_source": how,
            "reference": judge.reference_name,
            "knn_accuracy_on_real": judge.knn_accuracy,
            "judge_accuracy_on_real": judge.judge_accuracy,
            "realism_fd_real_floor": judge.real_floor(args.queries * args.n),
            "methods": {},
        }
        for name, m in methods.items():
            r = run_method(prior, subject, judge, m, args.n, args.seed)
            r.pop("_images")
            r["config"] = m.config()
            res["methods"][name] = r
            print(
                f"  {spec} {name}: fiber loss {r['fiber_loss_mean']:.4g} (median {r['fiber_loss_median']:.3g}), "
                f"class kept {r['class_kept']:.0%} (k-NN {r['class_kept_knn']:.0%}), realism FD {r['realism_fd']:.3g}, "
                f"{r['forward_equivalents']:.0f} fe/sample, {r['seconds']:.0f} s",
                flush=True,
            )
        ung = res["methods"]["unguided"]["fiber_loss_mean"]
        preset_fd = res["methods"].get("preset", res["methods"]["default"] if how["source"] == "preset" else {})
        for name in ("default", "auto"):
            if name not in res["methods"] and not (name == "auto" and isinstance(default, AutoNDTM)):
                continue
            r = res["methods"][name] if name in res["methods"] else res["methods"]["default"]
            ratio = r["fiber_loss_mean"] / ung
            rr = r["realism_fd"] / preset_fd["realism_fd"] if preset_fd else float("nan")
            checks = {
                "loss_ratio": ratio,
                "loss_ok": ratio <= LOSS_RATIO,
                "class_kept_ok": r["class_kept"] >= CLASS_KEPT,
                "realism_ratio": rr,
                "realism_ok": bool(rr <= REALISM_RATIO) if rr == rr else None,
            }
            r["checks"] = checks
            rows.append([spec, name, ratio, r["class_kept"], rr, r["forward_equivalents"], checks])
        res["seconds"] = time.perf_counter() - t0
        results["pairs"][spec] = res
        atomic_write_json(out / "acceptance.json", results)
    print()
    print(f"{'pair':40s} {'mode':8s} {'loss/unguided':>13s} {'class kept':>10s} {'realism/preset':>14s} {'fe':>6s}  ok")
    for spec, name, ratio, kept, rr, fe, c in rows:
        ok = c["loss_ok"] and c["class_kept_ok"] and c["realism_ok"] is not False
        print(f"{spec:40s} {name:8s} {ratio:13.2e} {kept:10.0%} {rr:14.2f} {fe:6.0f}  {'yes' if ok else 'NO'}")
    print(f"results: {out / 'acceptance.json'}")
    for d in tmp:
        d.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
