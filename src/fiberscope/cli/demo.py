"""``fiberscope demo``: the offline demo on the built-in zoo."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import add_command, check_writable

__all__ = ["add_commands", "cmd_demo"]


def add_commands(subs: Any) -> None:
    """Add ``demo`` to the ``fiberscope`` command."""
    p = add_command(
        subs,
        "demo",
        "the offline demo on the built-in zoo (CPU, a few minutes)",
        """
fiberscope demo --out demo-out
python -m fiberscope demo --out demo-out --quick     # a reduced budget, seconds""",
        cmd_demo,
    )
    p.add_argument("--out", default="demo-out")
    p.add_argument("--quick", action="store_true", help="tiny budget (for smoke tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device")


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    out = Path(args.out)
    check_writable(out)
    rec = run_demo(out, quick=args.quick, seed=args.seed, progress=not args.quiet, device=args.device)
    for sec in rec["sections"]:
        print(f"{sec['title']}")
        for q in sec["queries"]:
            print(
                f"  digit {q['label']}: fiber loss {q['fiber_loss_mean']:.4g} | nearest real "
                f"{q['nearest_neighbour']['fiber_loss']:.4g} | unguided {q['unguided_fiber_loss_mean']:.4g}  "
                f"({q['seconds']:.1f} s)"
            )
            print(f"    varies most in: {q['ranking_text']}")
    print(f"done in {rec['seconds']:.0f} s: open {out / 'report.html'}")
    return 0
