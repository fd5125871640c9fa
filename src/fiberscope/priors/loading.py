"""``load_prior(spec)``: one entry point for every way a user names a prior.

Also the two rules every loader in fiberscope follows (priors and subjects alike):

* **offline**: a hub id resolves to a snapshot already in the local Hugging Face cache
  (:func:`resolve_hub_dir`), and library code runs inside :func:`offline_hub`, so nothing is ever
  downloaded and a missing model fails at once with a one-line message, never a network hang;
* **no pickles**: weights are read from ``.safetensors``; a directory that only has ``.bin`` /
  ``.pt`` / ``.pth`` / ``.ckpt`` files is refused unless the caller passes ``trust_pickle=True``,
  and even then it is read with ``torch.load(weights_only=True)`` (:func:`check_weights`). A
  checkpoint *file* named explicitly (an OpenAI ADM ``.pt``) is always read with
  ``torch.load(weights_only=True)``, the restricted unpickler that only rebuilds tensors; a file
  that needs more is refused (:class:`PickleRefusedError`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ModelNotAvailableError, ParameterError, PickleRefusedError, WeightsError
from .base import Prior

__all__ = [
    "CheckpointError",
    "ModelNotAvailableError",
    "PickleRefusedError",
    "check_weights",
    "load_prior",
    "offline_hub",
    "resolve_hub_dir",
]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
#: Files (not directories) that :func:`load_prior` reads as ADM state dicts.
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")


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

    Raises:
        ModelNotAvailableError: the id is not in the local cache, with the command that fetches it.

    Example:
        >>> resolve_hub_dir("someone/not-cached-here")                           # doctest: +SKIP
        fiberscope.priors.loading.ModelNotAvailableError: prior 'someone/not-cached-here' is not in ...
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


def _dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A floating-point ``torch.dtype`` from a dtype or a name; integer and complex dtypes are refused."""
    from ..validation import check_dtype

    return check_dtype(dtype)


def _apply_dtype(prior: Prior, dtype: torch.dtype) -> None:
    """Run an already built prior's network in ``dtype`` (guidance stays float32), or refuse clearly.

    The network is the prior's ``model`` (diffusers priors) or ``denoiser`` (latent priors); a prior
    with neither (analytic priors, custom classes) cannot be converted from outside.
    """
    if dtype == prior.compute_dtype:
        return
    net = next(
        (m for m in (getattr(prior, k, None) for k in ("model", "denoiser")) if isinstance(m, torch.nn.Module)), None
    )
    if net is None:
        raise ParameterError(
            f"dtype={dtype} cannot be applied to this {type(prior).__name__}: it has no network (.model or "
            ".denoiser) fiberscope knows how to convert; build it in that dtype yourself, or leave dtype unset",
            "dtype",
        )
    net.to(dtype)
    prior.compute_dtype = dtype


def load_prior(
    spec: str | os.PathLike[str] | Prior,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    gradient_checkpointing: bool = False,
    trust_pickle: bool = False,
    prompt: str | None = None,
    negative_prompt: str | None = None,
    prompt_embeds: Any = None,
    guidance_scale: float = 1.0,
    adm_config: dict[str, Any] | str | None = None,
    class_label: int | None = None,
) -> Prior:
    """Load a prior from a name, a directory, a checkpoint file or an object.

    Args:
        spec: ``"builtin:mnist-ddpm"`` (the shipped zoo); a local diffusers pipeline directory
            (``local-dir:`` prefix optional) or a Hugging Face id already in the local cache
            (``"google/ddpm-cifar10-32"``, ``"CompVis/ldm-celebahq-256"``): pixel UNets, latent
            diffusion (``LDMPipeline``: ``vqvae/`` + ``unet/``; Stable Diffusion: ``vae/`` + ``unet/`` +
            text encoder; SD3-style ``transformer/``), DDPM/DDIM-family or FlowMatch scheduler configs;
            an OpenAI guided-diffusion (ADM) checkpoint file, ``.pt`` / ``.pth`` state dict or
            ``.safetensors`` (``256x256_diffusion_uncond.pt``, ...; see :mod:`fiberscope.priors.adm`),
            optionally with options in the string for the CLI and manifests
            (``"256x256_diffusion.pt?class_label=207"``, ``"mine.pt?image_size=64&num_head_channels=32"``);
            or a :class:`~fiberscope.priors.Prior` (returned as is, moved to ``device``).
        device: where to put it.
        dtype: network dtype (``torch.float16``, ``"bf16"``, ...); guidance stays in float32.
        gradient_checkpointing: recompute activations in the backward pass (less memory).
        trust_pickle: allow ``.bin`` weights (read with ``torch.load(weights_only=True)``) when a
            directory has no ``.safetensors``; refused by default.
        prompt: text-conditioned latent priors: the fixed prompt, encoded once with the pipeline's
            own text encoder(s).
        negative_prompt: the unconditional prompt when ``guidance_scale > 1`` (default ``""``).
        prompt_embeds: instead of ``prompt``, a given embedding: a tensor ``[1, L, D]`` (UNet
            ``encoder_hidden_states``) or a pair ``(embeds, pooled)`` for SD3-style transformers.
        guidance_scale: classifier-free guidance on the prior's prediction (1 = none).
        adm_config: ADM checkpoints: settings the weights cannot tell (``{"num_head_channels": 64}``,
            ``{"noise_schedule": "cosine"}``, ``{"image_size": 256}``, or guided-diffusion's
            ``MODEL_FLAGS`` string); the published checkpoints are recognised without it.
        class_label: class-conditional ADM checkpoints: the class to condition on (e.g. 207).

    Example:
        >>> from fiberscope import load_prior
        >>> prior = load_prior("builtin:mnist-ddpm")                   # doctest: +SKIP
        >>> prior.data_shape, prior.schedule.kind                      # doctest: +SKIP
        ((1, 28, 28), 'vp')
        >>> sd = load_prior("stable-diffusion-v1-5/stable-diffusion-v1-5", prompt="a photo of a face",
        ...                 dtype="fp16", device="cuda")               # doctest: +SKIP
        >>> adm = load_prior("256x256_diffusion.pt", class_label=207, dtype="bf16")   # doctest: +SKIP
    """
    dt = _dtype(dtype)
    text = {
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "prompt_embeds": prompt_embeds,
        "guidance_scale": guidance_scale,
    }
    text_given = prompt is not None or negative_prompt is not None or prompt_embeds is not None or guidance_scale != 1
    adm_given = adm_config is not None or class_label is not None
    adm_file = False
    label = os.fspath(spec) if isinstance(spec, (str, os.PathLike)) else type(spec).__name__
    f = Path()
    spec_options = ""
    if isinstance(spec, (str, os.PathLike)) and not label.startswith("builtin:"):
        s = label
        f = Path(s[len("local-dir:") :] if s.startswith("local-dir:") else s).expanduser()
        with contextlib.suppress(OSError):
            adm_file = f.is_file()
            if not adm_file and "?" in s:  # PATH.pt?class_label=207&image_size=256: options in the spec string
                base, _, spec_options = s.partition("?")
                f = Path(base[len("local-dir:") :] if base.startswith("local-dir:") else base).expanduser()
                adm_file = f.is_file()
                if not adm_file:
                    spec_options = ""
        if adm_file and f.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise CheckpointError(
                f"prior {s!r} is a file, and the only prior files fiberscope reads are OpenAI guided-diffusion (ADM) "
                f"checkpoints ({', '.join(CHECKPOINT_SUFFIXES)}); pass a diffusers pipeline directory instead"
            )
    if adm_given and not adm_file:
        raise ValueError(
            f"adm_config/class_label apply to OpenAI guided-diffusion checkpoint files (.pt), not to {label!r}"
        )
    if adm_file:
        if text_given:
            raise ValueError(f"{label} is an ADM checkpoint: it takes class_label, not a prompt")
        from .adm import load_adm_prior, parse_spec_options

        if spec_options:
            opts, label_opt = parse_spec_options(spec_options)
            if (opts and adm_config is not None) or (label_opt is not None and class_label is not None):
                raise ValueError(f"prior {label!r} carries options; do not pass adm_config/class_label as well")
            adm_config = opts or adm_config
            class_label = label_opt if label_opt is not None else class_label
        prior: Prior = load_adm_prior(
            f,
            adm_config=adm_config,
            class_label=class_label,
            dtype=dt,
            gradient_checkpointing=gradient_checkpointing,
            name=label,
        )
    elif isinstance(spec, Prior):
        if text_given:
            raise ValueError(
                "prompt/prompt_embeds/guidance_scale apply when loading a diffusers directory, not to a Prior"
            )
        prior = spec
        if dt is not None:
            _apply_dtype(prior, dt)
    elif isinstance(spec, (str, os.PathLike)):
        s = os.fspath(spec)
        if s.startswith("builtin:"):
            if text_given:
                raise ValueError(f"{s} is an unconditional prior: it takes no prompt")
            from ..zoo.registry import load_builtin_prior

            prior = load_builtin_prior(s[len("builtin:") :], dtype=dt)
        else:
            from .diffusers import load_diffusers_prior

            path = Path(s[len("local-dir:") :] if s.startswith("local-dir:") else s).expanduser()
            if not path.exists():
                if s.startswith(("/", ".", "~", "local-dir:")) or s.removeprefix("hf-hub:").count("/") != 1:
                    raise ModelNotAvailableError(
                        f"prior {s!r}: no such directory, and not a 'org/name' hub id or 'builtin:NAME' "
                        "(see `fiberscope zoo list`)"
                    )
                path = resolve_hub_dir(s.removeprefix("hf-hub:"), "prior")
            prior = load_diffusers_prior(
                path,
                dtype=dt,
                gradient_checkpointing=gradient_checkpointing,
                name=s,
                trust_pickle=trust_pickle,
                **text,
            )
    else:
        raise TypeError(
            f"prior must be a name, a directory, a checkpoint file or a fiberscope Prior, got {type(spec).__name__}"
        )
    if device is not None:
        prior.to(device)
    return prior
