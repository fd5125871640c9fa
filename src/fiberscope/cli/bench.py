"""``fiberscope bench``: guidance methods side by side (the matrix itself is :mod:`fiberscope.bench`)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._deprecated import REMOVED_IN, warn_deprecated
from ..bench import REFERENCES, BenchConfig, method_applies, run_bench, unit_path
from ..errors import EXIT, CLIError
from ..losses import LOSSES
from ..methods import method_from_spec
from ..utils import load_config_file
from .common import add_command

__all__ = ["add_commands", "cmd_bench"]

EXAMPLE = """
fiberscope bench --config benchmarks/bench_default.yaml --out bench-out        # resumable: rerun to finish
fiberscope bench --config benchmarks/bench_default.yaml --out bench-out --methods ndtm,mpgd --seeds 0
fiberscope bench --priors builtin:mnist-ddpm --subjects builtin:mnist-cnn@logits \\
    --methods ndtm,dps,mpgd --queries 4 --n 4 --seeds 0,1 --out bench-quick"""


def _list(v: Any, cast: Callable[[str], Any] = str) -> list[Any] | None:
    if v is None:
        return None
    if isinstance(v, str):
        return [cast(s.strip()) for s in v.split(",") if s.strip()]
    return [cast(x) if isinstance(x, str) else x for x in v]


def add_commands(subs: Any) -> None:
    """Add ``bench`` to the ``fiberscope`` command."""
    what = "compare guidance methods: fiber loss, NN reference, realism, diversity, cost"
    p = add_command(subs, "bench", what, EXAMPLE, cmd_bench)
    p.add_argument("--out", default="bench-out", help="output directory (default bench-out); reruns resume in it")
    p.add_argument(
        "--methods", dest="select_methods", metavar="NAMES", help="comma list: run only these methods (and references)"
    )
    p.add_argument("--priors", help="comma list of prior specs (replaces the config's)")
    p.add_argument("--subjects", help="comma list of subject specs, SPEC@LAYER (replaces the config's)")
    p.add_argument("--queries", type=int, help="queries per pair")
    p.add_argument("--query-seed", type=int, help="seed of the query set")
    p.add_argument("--seeds", help="comma list of sampling seeds")
    p.add_argument("--n", type=int, help="samples per query and seed")
    p.add_argument("--batch-size", type=int, help="samples per guidance batch")
    p.add_argument("--metric", choices=sorted(LOSSES), help="headline fiber-loss form (default sq_l2)")
    p.add_argument("--bank", type=int, help="real images searched for nearest neighbours (default all)")
    p.add_argument("--real", type=int, help="real images for the realism Fréchet distance")
    p.add_argument(
        "--references",
        help=f"prior-free references to add, comma list among {', '.join(REFERENCES)} ('none' for neither)",
    )
    p.add_argument("--baselines", help=argparse.SUPPRESS)  # the old name of --references (and of the file's key)
    p.add_argument("--device")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--title")
    p.add_argument("--no-resume", action="store_true", help="recompute finished units")
    p.add_argument("--dry-run", action="store_true", help="list the units and whether they are finished; run nothing")
    # nested settings: from the config file only
    for hidden in ("methods", "pairs", "augment", "reference", "classifier", "datasets"):
        p.add_argument(f"--{hidden}-setting", dest=hidden, help=argparse.SUPPRESS)


def _config_from_args(args: argparse.Namespace) -> BenchConfig:
    d: dict[str, Any] = {}
    for k in (
        "methods",
        "priors",
        "subjects",
        "pairs",
        "queries",
        "query_seed",
        "seeds",
        "n",
        "batch_size",
        "metric",
        "bank",
        "real",
        "references",
        "augment",
        "reference",
        "classifier",
        "datasets",
        "device",
        "threads",
        "title",
    ):
        v = getattr(args, k, None)
        if v is not None:
            d[k] = v
    if getattr(args, "baselines", None) is not None:
        warn_deprecated(
            f"the bench option 'baselines' (--baselines, or the key in --config) is now 'references'; 'baselines' is "
            f"removed in fiberscope {REMOVED_IN}"
        )
        if "references" not in d:
            d["references"] = args.baselines
    for k in ("priors", "subjects", "references"):
        if k in d:
            d[k] = [x for x in _list(d[k]) or [] if x != "none"]
    if "seeds" in d:
        d["seeds"] = _list(d["seeds"], int)
    for k in ("methods", "augment", "reference", "classifier", "datasets"):
        if isinstance(d.get(k), str):
            try:
                d[k] = json.loads(d[k])
            except json.JSONDecodeError:
                raise CLIError(f"{k} must be a mapping (give it in the --config file)", EXIT["usage"]) from None
    sel = _list(getattr(args, "select_methods", None))
    if sel:
        # --methods on the command line kept the config's `methods` mapping out of args: read it here
        given = d.get("methods") or {}
        if not given and getattr(args, "config", None):
            given = load_config_file(args.config).get("methods") or {}
        d["methods"] = {m: given.get(m, m) for m in sel if m not in REFERENCES}
        if "references" not in d:
            d["references"] = [m for m in sel if m in REFERENCES]
    try:
        return BenchConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise CLIError(f"bench: {e}", EXIT["usage"]) from None


def cmd_bench(args: argparse.Namespace) -> int:
    cfg = _config_from_args(args)
    out = Path(args.out)
    if args.dry_run:
        for pair in cfg.resolved_pairs():
            for name in list(cfg.methods) + list(cfg.references):
                if name in cfg.methods and not method_applies(cfg.methods[name], pair):
                    continue
                for seed in cfg.seeds[:1] if name == "nn" else cfg.seeds:
                    f = unit_path(out, pair.key, name, seed).with_suffix(".json")
                    print(f"{pair.key}  {name:12s} seed {seed}  {'finished' if f.exists() else 'to run'}")
        return 0
    for name, spec in cfg.methods.items():  # fail on a bad method before any model is loaded
        for pair in cfg.resolved_pairs():
            if not method_applies(spec, pair):
                continue
            try:
                method_from_spec(spec, None, pair.prior)
            except ValueError as e:
                raise CLIError(f"bench: method {name!r}: {e}", EXIT["usage"]) from None
    result = run_bench(cfg, out, resume=not args.no_resume, progress=not args.quiet)
    print(
        f"wrote {out / 'bench.md'}, {out / 'results.json'}, {out / 'loss_vs_cost.png'}, {out / 'loss_vs_realism.png'}"
    )
    print(f"{len(result['rows'])} rows in {result['seconds']:.0f}s")
    return 0
