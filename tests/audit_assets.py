"""Tiny on-disk models and queries for the audit / CLI / failure tests (no downloads, CPU, seconds).

``make_assets(dir)`` writes:

* ``prior/``: a diffusers DDPMPipeline directory with the tiny 8×8 UNet of ``conftest.tiny_unet``;
* ``zoo/mnist-cnn/``: a tiny ``SmallCNN`` saved as the zoo entry ``builtin:mnist-cnn``: point
  ``FIBERSCOPE_ZOO_DIR`` at ``zoo/`` and the spec ``builtin:mnist-cnn`` loads it (layers
  ``features``, ``penultimate``, ``logits``);
* ``q0.png`` … ``q3.png``: 8×8 grey query images.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FAST_METHOD = {"name": "ndtm", "steps": 3, "inner_steps": 1, "lr": 0.05, "gamma": 1.0}
SRC = Path(__file__).resolve().parents[1] / "src"


@dataclass
class Assets:
    root: Path
    prior: Path
    zoo: Path
    queries: list[Path]

    def unit(self, i: int = 0, **kw: Any) -> dict[str, Any]:
        """A fast work unit on query ``i`` (keys overridable)."""
        u: dict[str, Any] = {
            "query": str(self.queries[i]),
            "subject": "builtin:mnist-cnn",
            "prior": str(self.prior),
            "method": dict(FAST_METHOD),
            "n": 2,
            "seed": i,
        }
        u.update(kw)
        return u

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a subprocess running fiberscope on these assets."""
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "SLURM_ARRAY_TASK_ID")}
        env.update(
            FIBERSCOPE_ZOO_DIR=str(self.zoo),
            PYTHONPATH=os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]),
            HF_HUB_OFFLINE="1",
            OMP_NUM_THREADS="1",
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env


def make_assets(root: Path) -> Assets:
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler
    from PIL import Image
    from safetensors.torch import save_file

    from conftest import tiny_unet
    from fiberscope.models import SmallCNN

    root.mkdir(parents=True, exist_ok=True)
    prior = root / "prior"
    DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(
        str(prior), safe_serialization=True
    )
    kwargs = {"in_channels": 1, "num_classes": 10, "width": 4, "hidden": 8}
    zoo = root / "zoo" / "mnist-cnn"
    zoo.mkdir(parents=True)
    torch.manual_seed(0)
    save_file(SmallCNN(**kwargs).eval().state_dict(), str(zoo / "model.safetensors"))
    (zoo / "config.json").write_text(json.dumps({"class": "SmallCNN", "kwargs": kwargs, "input_range": [-1, 1]}))
    queries = []
    for i in range(4):
        q = root / f"q{i}.png"
        Image.fromarray((np.random.RandomState(i).rand(8, 8) * 255).astype(np.uint8)).save(q)
        queries.append(q)
    return Assets(root, prior, root / "zoo", queries)


def write_jsonl(path: Path, units: list[Any]) -> Path:
    """One JSON value per line (strings are written as they are, for malformed lines)."""
    path.write_text("".join((u if isinstance(u, str) else json.dumps(u)) + "\n" for u in units))
    return path


def fiberscope_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fiberscope", *args]


def run_cli(args: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(fiberscope_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout)


def one_thread():
    """Generator for an autouse fixture: torch on one CPU thread (a loaded CI box is 100× slower with two)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
