"""``fiberscope compare``: each subject's fiber judged by every other subject (:mod:`fiberscope.analysis.compare`).

Kept light: argparse only at import time (the CLI imports this module on every invocation).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import EXIT, CLIError
from .common import add_command, add_method_args, check_writable, method_from_args

__all__ = ["add_commands", "cmd_compare"]

EXAMPLE = """
fiberscope compare --subjects builtin:mnist-cnn@penultimate builtin:mnist-cnn@logits \\
    --prior builtin:mnist-ddpm --queries digits/ --n 4 --out compare-out
fiberscope compare --subjects builtin:colorblind-mnist timm:resnet18.a1_in1k@layer4 --prior builtin:colormnist-latent \\
    --queries q/ --bank real/ --out cmp/            # --bank: real images for the nearest-neighbour reference

Writes OUT/comparison.json (the matrix, per query), OUT/comparison.png (the heatmap), OUT/report.html
and every fiber under OUT/fibers/. Entry [A][B] is B's fiber loss on A's samples over B's loss on the
real image nearest the query: >= 1 means B sees what A ignores."""


def add_commands(subs: Any) -> None:
    """Add ``compare`` to the ``fiberscope`` command."""
    p = add_command(
        subs,
        "compare",
        "sample each subject's fiber and judge it with every other subject: what A ignores and B sees",
        EXAMPLE,
        cmd_compare,
    )
    p.add_argument("--subjects", nargs="+", help="two or more subject specs; SPEC@LAYER picks a layer")
    p.add_argument("--prior", help="prior spec: builtin:NAME, a diffusers directory or a cached hub id")
    p.add_argument("--queries", nargs="+", help="query images, or a folder of them")
    p.add_argument(
        "--bank",
        help="folder of real images for the nearest-neighbour reference (default: a builtin "
        "prior's test split, else the other queries)",
    )
    p.add_argument("--n", type=int, default=4, help="samples per fiber (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device")
    p.add_argument("--out", default="compare-out", help="output directory (default compare-out)")
    p.add_argument(
        "--probe", action=argparse.BooleanOptionalAction, default=True, help="measure each fiber's invariances"
    )
    add_method_args(p)


def _bank(folder: str, prior: Any) -> Any:
    import torch

    from ..data.query import IMAGE_SUFFIXES, load_query

    files = sorted(f for f in Path(folder).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES | {".npy"})
    if not files:
        raise CLIError(f"--bank {folder} holds no images (PNG, JPEG, ... or .npy)")
    shape = tuple(prior.image_shape)
    return torch.cat([load_query(f, image_shape=shape, data_range=prior.data_range) for f in files])


def cmd_compare(args: argparse.Namespace) -> int:
    """Run the comparison and print the matrix; exit 0."""
    from ..analysis.compare import compare_subjects
    from ..loading import load_prior

    if not args.subjects or len(args.subjects) < 2:
        raise CLIError("compare needs --subjects with at least two subject specs", EXIT["usage"])
    if not args.prior:
        raise CLIError("compare needs --prior (on the command line or in --config)", EXIT["usage"])
    if not args.queries:
        raise CLIError("compare needs --queries (image files or a folder of them)", EXIT["usage"])
    if args.n < 1:
        raise CLIError(f"--n must be at least 1, got {args.n}", EXIT["usage"])
    out = Path(args.out)
    check_writable(out)
    queries: Any = args.queries[0] if len(args.queries) == 1 and Path(args.queries[0]).is_dir() else args.queries
    for q in args.queries if isinstance(queries, list) else []:
        if not Path(q).is_file():
            raise CLIError(f"query {q} does not exist; give image files or one folder of them")
    prior = load_prior(args.prior, device=args.device)
    bank = None
    if args.bank:
        if not Path(args.bank).is_dir():
            raise CLIError(f"--bank {args.bank} is not a folder of images")
        bank = _bank(args.bank, prior)
    method = method_from_args(args, args.prior)
    res = compare_subjects(
        args.subjects,
        prior,
        queries,
        n=args.n,
        method=method,
        bank=bank,
        seed=args.seed,
        probe=args.probe,
        device=args.device,
        progress=not args.quiet,
        log=None if args.quiet else print,
    )
    res.config["prior"] = args.prior
    res.save(out)
    w = max(len(nm) for nm in res.names)
    print(f"{'fiber of / judged by':<{w}}  " + "  ".join(f"B{j + 1:<8}" for j in range(len(res.names))))
    for i, nm in enumerate(res.names):
        print(f"{nm:<{w}}  " + "  ".join(f"{v:<9.3g}" for v in res.matrix[i]))
    for j, nm in enumerate(res.names):
        print(f"  B{j + 1} = {nm}")
    for line in res.readings():
        print(f"- {line}")
    print(f"wrote {out / 'comparison.json'}, {out / 'comparison.png'} and {out / 'report.html'}")
    return 0
