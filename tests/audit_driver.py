"""Run the ``fiberscope`` command in a subprocess with faults injected, for tests of real signals and races.

    python tests/audit_driver.py [--slow-writes S] [--slow-rmtree S] [--ready FILE] [--commit-log FILE] -- ARGS...

* ``--slow-writes S``: every file of a result (``FiberSamples.save``) is written half, then a pause
  of S seconds with the temporary file open, then the rest: a wide window for signals and for
  other processes to meet a result being written.
* ``--slow-rmtree S``: every ``shutil.rmtree`` first sleeps S seconds (a slow network file system):
  a window for a second signal during clean-up.
* ``--ready FILE``: touched when the first result file is half written.
* ``--commit-log FILE``: one line ``<pid> <name>`` appended whenever a staging directory
  (``.partial-*``) is renamed to a visible name, i.e. whenever a result is committed.
* ``--analytic-prior``: the prior spec ``test:gauss-8`` loads an analytic Gaussian prior on 1×8×8
  images (no network, no diffusers import: the fastest possible units).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any


def main() -> int:
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    ap = argparse.ArgumentParser()
    ap.add_argument("--slow-writes", type=float, default=0.0)
    ap.add_argument("--slow-rmtree", type=float, default=0.0)
    ap.add_argument("--ready")
    ap.add_argument("--commit-log")
    ap.add_argument("--analytic-prior", action="store_true")
    opts = ap.parse_args(argv[:cut])
    rest = argv[cut + 1 :]

    import fiberscope.api as api
    import fiberscope.utils as utils

    if opts.slow_writes > 0:

        def slow_write(path: Any, data: bytes) -> None:
            with utils.atomic_writer(path, "wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
                if opts.ready:
                    Path(opts.ready).touch()
                time.sleep(opts.slow_writes)
                f.write(data[len(data) // 2 :])

        api.atomic_write_bytes = slow_write  # type: ignore[assignment]
    if opts.slow_rmtree > 0:
        real_rmtree = shutil.rmtree

        def slow_rmtree(path: Any, *a: Any, **k: Any) -> None:
            time.sleep(opts.slow_rmtree)
            real_rmtree(path, *a, **k)

        shutil.rmtree = slow_rmtree  # type: ignore[assignment]
    if opts.commit_log:
        real_rename = os.rename
        log = opts.commit_log

        def logged_rename(src: Any, dst: Any, *a: Any, **k: Any) -> None:
            real_rename(src, dst, *a, **k)
            if Path(src).name.startswith(".partial-") and not Path(dst).name.startswith("."):
                fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, f"{os.getpid()} {Path(dst).name}\n".encode())
                finally:
                    os.close(fd)

        os.rename = logged_rename  # type: ignore[assignment]

    if opts.analytic_prior:
        import fiberscope
        import fiberscope.loading

        real_load_prior = fiberscope.loading.load_prior

        def load_prior(spec: Any, **kw: Any) -> Any:
            if spec == "test:gauss-8":
                return fiberscope.GaussianPrior(shape=(1, 8, 8), std=0.5, data_range=(-1.0, 1.0)).to(kw.get("device"))
            return real_load_prior(spec, **kw)

        fiberscope.loading.load_prior = load_prior  # what the audit's model cache calls

    from fiberscope.cli import main as cli_main

    return cli_main(rest)


if __name__ == "__main__":
    sys.exit(main())
