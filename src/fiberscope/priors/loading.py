"""``load_prior(spec)``: one entry point for every way a user names a prior."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .base import Prior

__all__ = ["ModelNotAvailableError", "load_prior", "resolve_hub_dir"]


class ModelNotAvailableError(ValueError):
    """A model id that cannot be loaded here (not cached and no hub reachable, or unknown)."""


def resolve_hub_dir(repo_id: str, kind: str = "prior") -> Path:
    """Local directory of a Hugging Face hub snapshot, without touching the network.

    Raises:
        ModelNotAvailableError: the id is not in the local cache, with the command that fetches it.
    """
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as e:  # LocalEntryNotFoundError, HFValidationError, OfflineModeIsEnabled, ...
        raise ModelNotAvailableError(
            f"{kind} {repo_id!r} is not in the local Hugging Face cache and fiberscope never downloads at "
            f"sampling time: run `huggingface-cli download {repo_id}` on a machine that reaches the hub "
            f"(or copy its directory here and pass the path) [{type(e).__name__}]"
        ) from None


def _dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "auto": None,
    }
    if dtype not in table:
        raise ValueError(f"dtype must be a torch.dtype or one of {sorted(table)}, got {dtype!r}")
    return table[dtype]


def load_prior(
    spec: str | os.PathLike[str] | Prior,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    gradient_checkpointing: bool = False,
) -> Prior:
    """Load a prior from a name, a directory or an object.

    Args:
        spec: ``"builtin:mnist-ddpm"`` (the shipped zoo), a local diffusers pipeline directory,
            a Hugging Face id already in the local cache (``"google/ddpm-cifar10-32"``), or a
            :class:`~fiberscope.priors.Prior` (returned as is, moved to ``device``).
        device: where to put it.
        dtype: network dtype (``torch.float16``, ``"bf16"``, ...); guidance stays in float32.
        gradient_checkpointing: recompute activations in the backward pass (less memory).

    Example:
        >>> from fiberscope import load_prior
        >>> prior = load_prior("builtin:mnist-ddpm")                   # doctest: +SKIP
        >>> prior.data_shape, prior.schedule.kind                      # doctest: +SKIP
        ((1, 28, 28), 'vp')
    """
    dt = _dtype(dtype)
    if isinstance(spec, Prior):
        prior = spec
    elif isinstance(spec, (str, os.PathLike)):
        s = os.fspath(spec)
        if s.startswith("builtin:"):
            from ..zoo.registry import load_builtin_prior

            prior = load_builtin_prior(s[len("builtin:") :], dtype=dt)
        else:
            from .diffusers import load_diffusers_prior

            path = Path(s[len("local-dir:") :] if s.startswith("local-dir:") else s).expanduser()
            if not path.exists():
                if s.startswith(("/", ".", "~", "local-dir:")) or s.count("/") != 1:
                    raise ModelNotAvailableError(
                        f"prior {s!r}: no such directory, and not a 'org/name' hub id or 'builtin:NAME' "
                        "(see `fiberscope zoo list`)"
                    )
                path = resolve_hub_dir(s.removeprefix("hf-hub:"), "prior")
            prior = load_diffusers_prior(path, dtype=dt, gradient_checkpointing=gradient_checkpointing, name=s)
    else:
        raise TypeError(f"prior must be a name, a directory or a fiberscope Prior, got {type(spec).__name__}")
    if device is not None:
        prior.to(device)
    return prior
