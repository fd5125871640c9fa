"""Training state on disk: resumable checkpoints and exported weights, safetensors + JSON, never a pickle.

:class:`Checkpoint` holds a run's modules, optimiser, step count, wall time and log in a work
directory (``state.safetensors`` + ``state.json``, each written atomically); :func:`save_safetensors`
writes the weights a finished run ships.

Example:
    >>> import torch, tempfile
    >>> from fiberscope.training import Checkpoint
    >>> ckpt = Checkpoint(tempfile.mkdtemp())
    >>> net = torch.nn.Linear(2, 2)
    >>> ckpt.save({"model": net}, None, {"step": 7})
    >>> ckpt.load({"model": torch.nn.Linear(2, 2)}, None)["step"]
    7
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save, save_file
from torch import nn

from ..utils import atomic_write_json, atomic_writer

__all__ = ["Checkpoint", "save_safetensors"]


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"param_groups": sd["param_groups"], "state": {}}
    for pid, st in sd["state"].items():
        meta["state"][str(pid)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v.contiguous()
                meta["state"][str(pid)][k] = "tensor"
            else:
                meta["state"][str(pid)][k] = v
    return tensors, meta


def _unflatten_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state = {}
    for pid, st in meta["state"].items():
        state[int(pid)] = {k: (tensors[f"opt.{pid}.{k}"] if v == "tensor" else v) for k, v in st.items()}
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


class Checkpoint:
    """Atomic, resumable training state in ``workdir``: ``state.safetensors`` + ``state.json``.

    Holds named modules (model, EMA copy, ...), one optimiser, the step count, the wall time
    spent so far and a free-form log. No pickle is involved anywhere.
    """

    def __init__(self, workdir: str | os.PathLike[str]):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tensors_path = self.dir / "state.safetensors"
        self.meta_path = self.dir / "state.json"

    def exists(self) -> bool:
        """Whether a run has saved its state here (both files present)."""
        return self.meta_path.exists() and self.tensors_path.exists()

    def save(self, modules: dict[str, nn.Module], opt: torch.optim.Optimizer | None, meta: dict[str, Any]) -> None:
        """Write every module's state (keys ``NAME.param``), the optimiser's and ``meta``, atomically."""
        tensors: dict[str, torch.Tensor] = {}
        for name, m in modules.items():
            for k, v in m.state_dict().items():
                tensors[f"{name}.{k}"] = v.detach().contiguous().cpu()
        meta = dict(meta)
        if opt is not None:
            ot, om = _flatten_optimizer(opt)
            tensors.update(ot)
            meta["optimizer"] = om
        with atomic_writer(self.tensors_path, "wb") as f:
            f.write(save(tensors))
        atomic_write_json(self.meta_path, meta)

    def load(self, modules: dict[str, nn.Module], opt: torch.optim.Optimizer | None) -> dict[str, Any]:
        """Load the saved state into ``modules`` and ``opt``; returns the saved ``meta``."""
        meta = json.loads(self.meta_path.read_text())
        tensors = load_file(str(self.tensors_path))
        for name, m in modules.items():
            prefix = f"{name}."
            m.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
        if opt is not None and "optimizer" in meta:
            _unflatten_optimizer(opt, tensors, meta["optimizer"])
        return meta


def save_safetensors(
    path: str | os.PathLike[str],
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
    half: bool = False,
) -> None:
    """Write ``tensors`` to ``path`` atomically (contiguous CPU tensors).

    ``half=True`` stores floating-point tensors as float16 (loading casts them back into the
    module's dtype); the zoo uses it for its largest entries to stay within its size budget.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")

    def prep(v: torch.Tensor) -> torch.Tensor:
        v = v.detach().contiguous().cpu()
        return v.half() if half and v.is_floating_point() else v

    save_file({k: prep(v) for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)
