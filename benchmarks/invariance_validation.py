"""The validation table of docs/invariances.md: do the probes find the invariance built into a subject?

1. Synthetic fibers (``fiberscope.analysis.synthetic``): copies of real test digits under one known
   transformation; the rank that transformation's probe gets (1 = found).
2. End to end: real fibers from the zoo with its tuned presets, for subjects whose invariances are
   known by construction (``fiberscope.analysis.validation.E2E_CASES``), and the cross-model
   comparison of the colour-blind and the colour-sensitive subjects (nested invariances).

Usage:
    python benchmarks/invariance_validation.py --out bench-out/invariances            # everything (~15 min, 1 CPU)
    python benchmarks/invariance_validation.py --synthetic-only --out bench-out/inv   # seconds

Prints the tables and writes ``validation.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default="bench-out/invariances")
    ap.add_argument("--n", type=int, default=4, help="samples per end-to-end fiber")
    ap.add_argument("--labels", default="3,7", help="digits whose first test image is a query")
    ap.add_argument("--synthetic-only", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import fiberscope as fs
    from fiberscope.analysis.validation import colour_sensitive_subject, end_to_end_rows, synthetic_rows
    from fiberscope.utils import atomic_write_json
    from fiberscope.zoo.evaluate import real_images

    t0 = time.perf_counter()
    grey, labels = real_images("mnist")
    colour, _ = real_images("colormnist")
    first = {d: int((labels == d).nonzero()[0]) for d in range(10)}
    queries = {
        f"{kind} digit {d}": bank[first[d] : first[d] + 1]
        for kind, bank in (("MNIST", grey), ("colour-MNIST", colour))
        for d in (2, 4, 7)
    }
    syn = synthetic_rows(queries)
    print("synthetic fibers: rank of the applied transformation's probe (1 = ranked first)")
    kinds = sorted({r["transformation"] for r in syn}, key=[r["transformation"] for r in syn].index)
    print(f"{'transformation':<14} {'ranked first':>12} {'score (min-max)':>16}   smallest margin over the runner-up")
    for k in kinds:
        rs = [r for r in syn if r["transformation"] == k]
        firsts = sum(r["rank"] == 1 for r in rs)
        lo, hi = min(r["score"] for r in rs), max(r["score"] for r in rs)
        tight = min(rs, key=lambda r: r["score"] - r["runner_up_score"])
        margin = tight["score"] - tight["runner_up_score"]
        where = f"{tight['runner_up']}, {tight['query']}"
        print(f"{k:<14} {firsts:>7} of {len(rs):<2} {lo:>8.2f}-{hi:.2f}   {margin:+.2f} ({where})")
    record: dict = {"synthetic": syn, "torch": torch.__version__, "threads": args.threads}
    if not args.synthetic_only:
        labs = tuple(int(v) for v in args.labels.split(","))
        print("\nend to end (zoo priors with their tuned presets):")
        e2e = end_to_end_rows(labels=labs, n=args.n, log=print)
        record["end_to_end"] = e2e
        print(f"\n{'subject':<18} {'known':<18} {'expected':<26} {'digit':>5}  {'found (top 3)':<48} pass")
        for r in e2e:
            top = ", ".join(f"{k} {v:.2f}" for k, v in r["ranking"][:3])
            print(f"{r['subject']:<18} {r['known']:<18} {r['expect']:<26} {r['label']:>5}  {top:<48} {r['passed']}")
        q = colour[first[3] : first[3] + 1]
        cmp = fs.compare_subjects(
            ["builtin:colorblind-mnist", colour_sensitive_subject()],
            "builtin:colormnist-latent",
            q,
            n=args.n,
            probe=False,
        )
        record["comparison"] = {"names": cmp.names, "matrix": cmp.matrix, "readings": cmp.readings()}
        print("\ncross-model comparison on colour-MNIST digit 3 (rows: whose fiber; columns: judged by):")
        for name, row in zip(cmp.names, cmp.matrix):
            print(f"  {name:<26} " + "  ".join(f"{v:8.3g}" for v in row))
    record["seconds"] = time.perf_counter() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "validation.json", record)
    print(f"\n{record['seconds']:.0f} s; wrote {out / 'validation.json'}")
    print(json.dumps({"synthetic_ranked_first": sum(r["rank"] == 1 for r in syn), "synthetic_cases": len(syn)}))


if __name__ == "__main__":
    main()
