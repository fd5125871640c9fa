"""What the trained models share: where their files live, the latent codec, data and records.

Trained invariance models are experiment artefacts, not part of the package: each lives in
``ROOT/NAME/`` with ``ROOT = $FIBERSCOPE_TRAINED_DIR`` or ``~/.cache/fiberscope/trained``:

* ``model.safetensors`` — the EMA weights (plus ``ae.safetensors`` for a model with its own
  autoencoder), ``config.json`` — what to build and how it was conditioned, ``training.json`` —
  wall time, hardware, command, loss curve and held-out figures;
* ``train/`` — the resumable training state (:class:`fiberscope.training.Checkpoint`).

Example:
    >>> from fiberscope.trained.common import trained_root, model_dir
    >>> model_dir("cfm-l10", root="/tmp/b").as_posix()
    '/tmp/b/cfm-l10'
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from .. import errors
from .._deprecated import REMOVED_IN
from ..losses import rms
from ..models import ConvVAE
from ..utils import file_sha256
from ..zoo.registry import weights_dir

__all__ = [
    "Codec",
    "file_digest",
    "model_dir",
    "read_json",
    "rms_fiber_loss",
    "trained_root",
]


def trained_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Where trained models live: ``root``, else ``$FIBERSCOPE_TRAINED_DIR``, else the user cache.

    Until fiberscope 0.2 the names from before the rename (issue 22) are still read, with a
    ``DeprecationWarning``: ``$FIBERSCOPE_BASELINES_DIR``, and ``~/.cache/fiberscope/baselines`` when
    ``~/.cache/fiberscope/trained`` does not exist yet.
    """
    if root is not None:
        return Path(root).expanduser()
    for var in ("FIBERSCOPE_TRAINED_DIR", "FIBERSCOPE_BASELINES_DIR"):
        env = os.environ.get(var)
        if env:
            if var == "FIBERSCOPE_BASELINES_DIR":
                _renamed(f"${var}", "$FIBERSCOPE_TRAINED_DIR")
            return Path(env).expanduser()
    cache = Path.home() / ".cache" / "fiberscope"
    if not (cache / "trained").exists() and (cache / "baselines").is_dir():
        _renamed(f"the directory {cache / 'baselines'}", f"{cache / 'trained'} (move it there)")
        return cache / "baselines"
    return cache / "trained"


def _renamed(old: str, new: str) -> None:
    warnings.warn(
        f"{old} is the name trained models had before fiberscope called them 'trained': use {new} "
        f"({old} is not read after fiberscope {REMOVED_IN})",
        DeprecationWarning,
        stacklevel=3,
    )


def model_dir(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """``ROOT/NAME``, the directory of one trained model (a path with a separator is used as is)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    p = Path(name).expanduser()
    if os.sep in name or (p.is_dir() and (p / "config.json").exists()):
        return p
    return trained_root(root) / name


def file_digest(path: str | os.PathLike[str], n: int = 16) -> str:
    """The first ``n`` hex digits of a file's SHA-256 (records which weights a model was trained on)."""
    return file_sha256(path)[:n]


def read_json(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A JSON file as a dict, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def rms_fiber_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample RMS fiber loss ``√(Σ_d (φ_d − c_d)² / D)`` (the paper's training regulariser), ``[B]``."""
    return rms(features, target)


class Codec(nn.Module):
    """A frozen autoencoder with normalised latents: ``encode(x) = (μ(x) − shift)·scale``.

    ``decode(z) = vae.decode(z / scale + shift)`` is differentiable in ``z``, so a fiber loss on
    decoded images trains the generator through it. The normalisation is the one the zoo's latent
    prior uses, so a latent produced here is also a state of ``builtin:colormnist-latent``.

    Args:
        vae: a :class:`~fiberscope.models.ConvVAE` (or any module with ``encode``/``decode``).
        shift, scale: per-dimension latent normalisation.
        source: where the weights came from (recorded in every trained model's config).
        digest: digest of the weights file (checked when the model is loaded).

    Example:
        >>> import torch
        >>> from fiberscope.models import ConvVAE
        >>> codec = Codec(ConvVAE(latent_dim=4, width=8), torch.zeros(4), torch.ones(4))
        >>> codec.decode(torch.zeros(2, 4)).shape
        torch.Size([2, 3, 28, 28])
    """

    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(
        self,
        vae: nn.Module,
        shift: torch.Tensor | float = 0.0,
        scale: torch.Tensor | float = 1.0,
        *,
        source: str = "module",
        digest: str | None = None,
    ):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        self.register_buffer("shift", torch.as_tensor(shift, dtype=torch.float32).clone())
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32).clone())
        self.source = source
        self.digest = digest
        self.latent_dim = int(getattr(vae, "latent_dim", self.shift.numel()))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] → normalised latents (posterior mean)."""
        return (self.vae.encode(x) - self.shift) * self.scale  # type: ignore[operator]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents → images in [-1, 1]."""
        return self.vae.decode(z / self.scale + self.shift)  # type: ignore[operator]

    def raw(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents → the VAE's own latents."""
        return z / self.scale + self.shift

    def image_shape(self) -> tuple[int, ...]:
        with torch.no_grad():
            return tuple(self.decode(torch.zeros(1, self.latent_dim, device=self.shift.device)).shape[1:])

    @classmethod
    def from_zoo(cls, name: str = "colormnist-latent") -> Codec:
        """The VAE of a zoo latent prior (``builtin:NAME``), without its denoiser."""
        d = weights_dir(name)
        if not (d / "vae.safetensors").exists():
            raise errors.NotTrainedError(
                f"builtin:{name} has no VAE weights in {d} yet; train them with `fiberscope zoo train {name}` "
                "(the conditional models learn its latent space)"
            )
        cfg = json.loads((d / "config.json").read_text())
        vae = ConvVAE(**cfg["vae"])
        vae.load_state_dict(load_file(str(d / "vae.safetensors")))
        stats = load_file(str(d / "latent_stats.safetensors"))
        return cls(
            vae, stats["shift"], stats["scale"], source=f"builtin:{name}", digest=file_digest(d / "vae.safetensors")
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], vae_kwargs: dict[str, Any]) -> Codec:
        """An autoencoder saved by a recipe: ``ae.safetensors`` with ``vae.*``, ``shift``, ``scale``."""
        tensors = load_file(str(path))
        vae = ConvVAE(**vae_kwargs)
        vae.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("vae.")})
        return cls(vae, tensors["shift"], tensors["scale"], source=f"file:{Path(path).name}", digest=file_digest(path))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Everything :meth:`from_file` reads back."""
        out = {f"vae.{k}": v for k, v in self.vae.state_dict().items()}
        out.update({"shift": self.shift, "scale": self.scale})
        return out
