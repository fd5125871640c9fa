"""The offline hub: model ids resolve to the local cache, weights are safetensors, nothing is unpickled.

Every loader in fiberscope (priors and subjects alike) follows two rules:

* **offline**: a hub id resolves to a snapshot already in the local Hugging Face cache
  (:func:`resolve_hub_dir`), and library code runs inside :func:`offline_hub`, so nothing is ever
  downloaded and a missing model fails at once with a one-line message, never a network hang;
* **no pickles**: weights are read from ``.safetensors``; a directory that only has ``.bin`` /
  ``.pt`` / ``.pth`` / ``.ckpt`` files is refused unless the caller passes ``trust_pickle=True``,
  and even then it is read with ``torch.load(weights_only=True)`` (:func:`check_weights`). A
  checkpoint *file* named explicitly (an OpenAI ADM ``.pt``) is always read with
  ``torch.load(weights_only=True)``, the restricted unpickler that only rebuilds tensors; a file
  that needs more is refused (:class:`~fiberscope.errors.PickleRefusedError`).

Example:
    >>> from fiberscope.hub import resolve_hub_dir
    >>> resolve_hub_dir("someone/not-cached-here")                           # doctest: +SKIP
    fiberscope.errors.ModelNotAvailableError: prior 'someone/not-cached-here' is not in ...
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ModelNotAvailableError, PickleRefusedError, WeightsError

__all__ = ["PICKLE_SUFFIXES", "check_weights", "offline_hub", "resolve_hub_dir"]

#: Weight files that are pickles: refused unless the caller trusts them.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@contextlib.contextmanager
def offline_hub() -> Iterator[None]:
    """Run library loading code with the Hugging Face hub switched off (no request is ever sent).

    Sets ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` and huggingface_hub's own flag for the duration,
    so that transformers, diffusers, timm and open_clip read their local cache and fail at once
    instead of trying the network. Restores the previous state afterwards.
    """
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    saved_env = {k: os.environ.get(k) for k in keys}
    hub_constants: Any = None
    saved_flag = None
    try:
        from huggingface_hub import constants as hub_constants

        saved_flag = hub_constants.HF_HUB_OFFLINE
    except Exception:  # pragma: no cover - huggingface_hub comes with diffusers
        hub_constants = None
    try:
        for k in keys:
            os.environ[k] = "1"
        if hub_constants is not None:
            hub_constants.HF_HUB_OFFLINE = True
        yield
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if hub_constants is not None:
            hub_constants.HF_HUB_OFFLINE = saved_flag


def resolve_hub_dir(repo_id: str, kind: str = "prior") -> Path:
    """Local directory of a Hugging Face hub snapshot, without touching the network.

    Args:
        repo_id: ``"org/name"``.
        kind: ``"prior"`` or ``"subject"``, named in the error.

    Raises:
        ModelNotAvailableError: the id is not in the local cache, with the command that fetches it.
    """
    try:
        from huggingface_hub import snapshot_download

        with offline_hub():
            return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as e:  # LocalEntryNotFoundError, HFValidationError, OfflineModeIsEnabled, ...
        raise ModelNotAvailableError(
            f"{kind} {repo_id!r} is not in the local Hugging Face cache and fiberscope never downloads at "
            f"sampling time: run `hf download {repo_id}` (`huggingface-cli download {repo_id}` with an older "
            f"huggingface_hub) on a machine that reaches the hub (or copy its directory here and pass the path) "
            f"[{type(e).__name__}]"
        ) from None


def check_weights(directory: str | os.PathLike[str], *, trust_pickle: bool = False, what: str = "model") -> str:
    """Which weight format a model directory may be loaded from: ``"safetensors"`` or ``"pickle"``.

    Args:
        directory: a model (component) directory.
        trust_pickle: allow ``.bin``/``.pt``/``.pth``/``.ckpt`` files when there is no safetensors
            file; they are then read with ``torch.load(weights_only=True)`` only.
        what: named in the error.

    Raises:
        PickleRefusedError: only pickled weights and ``trust_pickle`` is False (the message says how to convert).
        WeightsError: no weights at all (an incomplete download or export; exit code 8).
    """
    d = Path(directory)
    if any(d.glob("*.safetensors")):
        return "safetensors"
    pickles = sorted(p.name for p in d.iterdir() if p.suffix in PICKLE_SUFFIXES) if d.is_dir() else []
    if pickles:
        if trust_pickle:
            return "pickle"
        raise PickleRefusedError(
            f"{d} has no .safetensors weights; fiberscope does not unpickle .bin files ({', '.join(pickles[:3])}). "
            "Convert with from_pretrained(dir).save_pretrained(dir, safe_serialization=True) in a trusted environment, "
            "or pass trust_pickle=True if you trust this file (it is then read with torch.load(weights_only=True))"
        )
    raise WeightsError(
        f"{what}: no weights (.safetensors) found in {d}; the download or export is incomplete: "
        "re-download the model, or re-export it with save_pretrained(dir, safe_serialization=True)"
    )
