"""One place that turns a spec string into a prior or a subject: ``load_prior`` and ``load_subject``.

Priors: ``builtin:NAME`` (the shipped zoo, :mod:`fiberscope.zoo.registry`), a local diffusers
pipeline directory (``local-dir:`` prefix optional), a Hugging Face id already in the local cache, an
OpenAI guided-diffusion (ADM) checkpoint file, or a :class:`~fiberscope.priors.base.Prior`.

Subjects (:data:`SUBJECT_PREFIXES`): ``builtin:NAME``, ``torchvision:NAME``, ``timm:NAME``,
``open_clip:NAME``, ``hf:ID`` (transformers, VLM vision towers), ``trained:NAME`` (a trained
invariance model's own classifier, :mod:`fiberscope.trained`), or any ``nn.Module`` / callable.
``baseline:NAME``, the old spelling of ``trained:NAME``, is read until fiberscope 0.2 with a
``DeprecationWarning`` (:func:`current_spec`).

The adapters are imported when a spec needs them (their libraries are optional), and the table of
prefixes is complete here: nothing registers itself by being imported. Loading is offline and
refuses pickles (:mod:`fiberscope.hub`).

Example:
    >>> import fiberscope as fs
    >>> prior = fs.load_prior("builtin:mnist-ddpm")                    # doctest: +SKIP
    >>> prior.preset                                                    # doctest: +SKIP
    'builtin-mnist'
    >>> phi = fs.load_subject("trained:svae-mnist")                    # doctest: +SKIP
    >>> phi = fs.load_subject("timm:resnet18.a1_in1k", layer="pre_logits")   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from ._deprecated import REMOVED_IN, warn_deprecated
from .errors import CheckpointError, ModelNotAvailableError, ParameterError
from .hub import resolve_hub_dir
from .priors.base import Prior
from .subjects.base import Subject
from .subjects.hooks import LayerExtractor, list_layers
from .subjects.library import LayerSpec
from .validation import check_dtype
from .zoo.registry import ZOO, ZooEntry, weights_dir

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "RENAMED_PREFIXES",
    "SUBJECT_PREFIXES",
    "cache_spelling",
    "current_spec",
    "load_builtin_prior",
    "load_builtin_subject",
    "load_named_subject",
    "load_prior",
    "load_subject",
    "subject_layers",
]

#: Files (not directories) that :func:`load_prior` reads as ADM state dicts.
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")


# ---------------------------------------------------------------------------------------------------------------
# priors


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
            or a :class:`~fiberscope.priors.base.Prior` (returned as is, moved to ``device``).
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
        >>> prior.state_shape, prior.schedule.kind                      # doctest: +SKIP
        ((1, 28, 28), 'vp')
        >>> sd = load_prior("stable-diffusion-v1-5/stable-diffusion-v1-5", prompt="a photo of a face",
        ...                 dtype="fp16", device="cuda")               # doctest: +SKIP
        >>> adm = load_prior("256x256_diffusion.pt", class_label=207, dtype="bf16")   # doctest: +SKIP
    """
    dt = check_dtype(dtype)
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
        from .priors.adm import load_adm_prior, parse_spec_options

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
            prior = load_builtin_prior(s[len("builtin:") :], dtype=dt)
        else:
            from .priors.diffusers import load_diffusers_prior

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


# ---------------------------------------------------------------------------------------------------------------
# the built-in zoo (the table is zoo/registry.py; the networks are zoo/models.py)


def _entry(name: str, kind: str) -> ZooEntry:
    if name not in ZOO or ZOO[name].kind != kind:
        known = sorted(n for n, e in ZOO.items() if e.kind == kind)
        raise ModelNotAvailableError(
            f"no built-in {kind} named {name!r}; built-in {kind}s: "
            f"{', '.join('builtin:' + k for k in known)} (see `fiberscope zoo list`)"
        )
    d = weights_dir(name)
    if not (d / "config.json").exists() and not (d / "model_index.json").exists():
        raise ModelNotAvailableError(
            f"builtin:{name} has no weights in {d}; train them with "
            f"`fiberscope zoo train {name}` (or reinstall fiberscope)"
        )
    return ZOO[name]


def _load_into(module: nn.Module, path: Path) -> nn.Module:
    module.load_state_dict(load_file(str(path)))
    return module.eval().requires_grad_(False)


class _VAEDecode(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z)  # type: ignore[operator]


class _VAEEncode(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(x)  # type: ignore[operator]


def load_builtin_prior(name: str, dtype: torch.dtype | None = None) -> Prior:
    """Load ``builtin:NAME`` as a :class:`~fiberscope.priors.base.Prior` that carries its zoo preset (``.preset``)."""
    entry = _entry(name, "prior")
    d = weights_dir(name)
    if (d / "model_index.json").exists():
        from .priors.diffusers import load_diffusers_prior

        prior: Prior = load_diffusers_prior(d, dtype=dtype, name=f"builtin:{name}")
        prior.preset = entry.preset
        return prior
    cfg = json.loads((d / "config.json").read_text())
    if cfg["class"] == "LatentPrior":
        from .models import ConvVAE, LatentDenoiser
        from .priors.diffusers import schedule_from_scheduler_config
        from .priors.latent import LatentPrior

        vae = _load_into(ConvVAE(**cfg["vae"]), d / "vae.safetensors")
        den = _load_into(LatentDenoiser(**cfg["denoiser"]), d / "denoiser.safetensors")
        stats = load_file(str(d / "latent_stats.safetensors"))
        sched_cfg = json.loads((d / "scheduler" / "scheduler_config.json").read_text())
        schedule, _ = schedule_from_scheduler_config(sched_cfg)
        latent = LatentPrior(
            den,
            schedule,
            cfg.get("parameterization", "eps"),
            latent_shape=(cfg["vae"]["latent_dim"],),
            decoder=_VAEDecode(vae),
            encoder=_VAEEncode(vae),
            image_shape=tuple(cfg["image_shape"]),
            data_range=tuple(cfg["data_range"]),
            shift=stats["shift"],
            scale=stats["scale"],
            name=f"builtin:{name}",
        )
        if dtype is not None:
            latent.denoiser.to(dtype)
            latent.compute_dtype = dtype
        latent.preset = entry.preset
        return latent
    raise ModelNotAvailableError(f"builtin:{name}: unknown prior class {cfg['class']!r} in {d / 'config.json'}")


def load_builtin_subject(name: str, layer: Any = None) -> Subject:
    """Load ``builtin:NAME`` as a :class:`~fiberscope.subjects.base.Subject` (``layer`` picks a named layer)."""
    from . import models

    entry = _entry(name, "subject")
    d = weights_dir(name)
    cfg = json.loads((d / "config.json").read_text())
    model = _load_into(getattr(models, cfg["class"])(**cfg["kwargs"]), d / "model.safetensors")
    if layer is None:
        layer = entry.default_layer
    if isinstance(layer, str) and layer in ("logits", "output") and cfg["class"] == "SmallCNN":
        fn: nn.Module = model  # the classifier's output: no hook needed
        layer = "logits"
    elif layer is None:
        fn = model
    elif isinstance(layer, str):
        fn = LayerExtractor(model, [layer])
    elif isinstance(layer, dict):
        fn = LayerExtractor(model, list(layer), list(layer.values()))
    else:
        fn = LayerExtractor(model, list(layer))
    return Subject(fn, input_range=tuple(cfg["input_range"]), name=f"builtin:{name}", layer=layer)


# ---------------------------------------------------------------------------------------------------------------
# subjects


def load_subject(
    spec: str | os.PathLike[str] | nn.Module | Callable[[torch.Tensor], Any] | Subject,
    layer: str | Sequence[str] | Mapping[str, float] | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    input_range: tuple[float, float] | None = None,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    name: str | None = None,
    **options: Any,
) -> Subject:
    """Make a :class:`Subject` from a name, a module or a callable.

    Args:
        spec: ``"builtin:mnist-cnn"``, a library spec (``"timm:resnet50.a1_in1k"``,
            ``"torchvision:resnet50"``, ``"open_clip:..."``, ``"hf:facebook/dinov2-base"``), any
            ``nn.Module`` or callable, or a :class:`Subject`.
        layer: a module path (``"layer4"``), a list of them, or ``{path: weight}``; features of
            several layers are flattened and concatenated with √weight scaling.
        device, dtype: where and in which dtype to run φ.
        input_range: the value range φ expects (default: that of the spec, or the prior's).
        preprocess: a differentiable transform applied before φ.
        options: for library specs, the adapter's options, e.g. ``weights=`` (torchvision),
            ``pretrained=`` (timm, open_clip), ``trust_pickle=`` (see :data:`SUBJECT_PREFIXES`).
    """
    if options and not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"options {sorted(options)} apply to named subjects ('timm:...', 'hf:...'), not to objects")
    if isinstance(spec, Subject):
        subject = spec
        if layer is not None:
            raise ValueError("layer= cannot be applied to an existing Subject; pass its module instead")
    elif isinstance(spec, (str, os.PathLike)):
        s = os.fspath(spec)
        subject = load_named_subject(s, layer, input_range=input_range, preprocess=preprocess, **options)
    elif isinstance(spec, nn.Module) or callable(spec):
        fn: Any = spec
        if layer is not None:
            if not isinstance(spec, nn.Module):
                raise ValueError("layer= needs an nn.Module subject (a plain callable has no named layers)")
            if isinstance(layer, str):
                fn = LayerExtractor(spec, [layer])
            elif isinstance(layer, Mapping):
                fn = LayerExtractor(spec, list(layer), list(layer.values()))
            else:
                fn = LayerExtractor(spec, list(layer))
        label = name or (type(spec).__name__ if isinstance(spec, nn.Module) else getattr(spec, "__name__", "callable"))
        subject = Subject(
            fn,
            input_range=input_range,
            preprocess=preprocess,
            name=str(label),
            layer=dict(layer) if isinstance(layer, Mapping) else layer,
        )
    else:
        raise TypeError(f"subject must be a name, an nn.Module or a callable, got {type(spec).__name__}")
    if name:
        subject.name = name
    if device is not None or dtype is not None:
        subject.to(device=device, dtype=dtype)
    return subject


def _builtin(name: str, layer: LayerSpec, input_range: tuple[float, float] | None, **options: Any) -> Subject:
    options.pop("trust_pickle", None)  # zoo weights are always safetensors: nothing to trust
    if options:
        raise TypeError(f"builtin:{name} takes no options (got {sorted(options)})")
    return load_builtin_subject(name, layer)


def _torchvision(name: str, layer: LayerSpec, input_range: tuple[float, float] | None, **options: Any) -> Subject:
    from .subjects.torchvision import load_torchvision_subject

    return load_torchvision_subject(name, layer, **options)


def _timm(name: str, layer: LayerSpec, input_range: tuple[float, float] | None, **options: Any) -> Subject:
    from .subjects.timm import load_timm_subject

    return load_timm_subject(name, layer, **options)


def _open_clip(name: str, layer: LayerSpec, input_range: tuple[float, float] | None, **options: Any) -> Subject:
    from .subjects.open_clip import load_open_clip_subject

    return load_open_clip_subject(name, layer, **options)


def _hf(name: str, layer: LayerSpec, input_range: tuple[float, float] | None, **options: Any) -> Subject:
    from .subjects.transformers import load_hf_subject

    return load_hf_subject(name, layer, **options)


def _trained(name: str, layer: LayerSpec, input_range: tuple[float, float] | None, **options: Any) -> Subject:
    from .trained.model import load_trained_subject

    root = options.pop("root", None)
    if options:
        raise TypeError(f"trained:{name} takes only root= (got {sorted(options)})")
    return load_trained_subject(name, layer, root=root)


#: Every subject spec prefix and its adapter. The table is the registry: nothing is added to it by importing.
SUBJECT_PREFIXES: dict[str, Callable[..., Subject]] = {
    "builtin": _builtin,
    "torchvision": _torchvision,
    "timm": _timm,
    "open_clip": _open_clip,
    "hf": _hf,
    "trained": _trained,
}

#: Prefixes renamed in issue 22, read until fiberscope 0.2 with a warning: ``baseline:NAME`` is ``trained:NAME``
#: ("baseline" names only the training-free guidance methods now).
RENAMED_PREFIXES = {"baseline": "trained"}


def current_spec(spec: str, *, warn: bool = True) -> str:
    """``spec`` in today's spelling: ``baseline:NAME`` → ``trained:NAME`` (with a ``DeprecationWarning``).

    Example:
        >>> current_spec("baseline:svae-mnist", warn=False), current_spec("builtin:mnist-cnn@logits")
        ('trained:svae-mnist', 'builtin:mnist-cnn@logits')
    """
    prefix, sep, rest = spec.partition(":")
    new = RENAMED_PREFIXES.get(prefix) if sep else None
    if new is None:
        return spec
    if warn:
        warn_deprecated(
            f"the spec {spec!r} is spelled {new}:{rest} now "
            f"(the prefix {prefix}: is removed in fiberscope {REMOVED_IN})"
        )
    return f"{new}:{rest}"


def cache_spelling(spec: str) -> str:
    """``spec`` as hashes and cache keys spell it: ``trained:NAME`` as ``baseline:NAME``.

    That was its spelling when those keys were first computed, so finished bench units
    (:mod:`fiberscope.bench`) and training checkpoints (:func:`fiberscope.trained.recipes.recipe_hash`)
    keep their keys across the rename, whichever spelling a settings file uses.

    Example:
        >>> cache_spelling("trained:svae-mnist"), cache_spelling("builtin:mnist-ddpm")
        ('baseline:svae-mnist', 'builtin:mnist-ddpm')
    """
    prefix, sep, rest = current_spec(spec, warn=False).partition(":")
    old = next((o for o, n in RENAMED_PREFIXES.items() if n == prefix), None) if sep else None
    return f"{old}:{rest}" if old is not None else spec


def load_named_subject(
    spec: str,
    layer: LayerSpec,
    *,
    input_range: tuple[float, float] | None = None,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    **options: Any,
) -> Subject:
    """Dispatch ``PREFIX:rest`` to the adapter registered for PREFIX.

    Args:
        spec: e.g. ``"timm:resnet50.a1_in1k"``.
        layer: the adapter's layer choice (see each adapter).
        input_range: override the range the subject expects.
        preprocess: replace the preprocessing rebuilt from the library's config (a differentiable
            transform of images in ``input_range``).
        options: adapter options: ``weights=`` (torchvision), ``pretrained=`` (timm, open_clip),
            ``trust_pickle=``, ``model_kwargs=`` ...
    """
    prefix, sep, rest = current_spec(spec).partition(":")
    if not sep or prefix not in SUBJECT_PREFIXES:
        raise ValueError(
            f"unknown subject {spec!r}: expected one of {sorted(p + ':' for p in SUBJECT_PREFIXES)} followed by a "
            "model name (e.g. 'builtin:mnist-cnn'), or pass an nn.Module / callable"
        )
    if not rest:
        raise ValueError(f"subject {spec!r} names no model after {prefix + ':'!r}")
    if preprocess is not None and prefix == "hf":
        options["preprocess"] = preprocess  # a model without preprocessor_config.json can still be loaded
    subject = SUBJECT_PREFIXES[prefix](rest, layer, input_range, **options)
    if input_range is not None:
        subject.input_range = tuple(input_range)
    if preprocess is not None:
        subject.preprocess = preprocess if isinstance(preprocess, nn.Module) else _Fn(preprocess)
        if hasattr(subject, "_preprocess"):
            subject._preprocess = None
    return subject


class _Fn(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def subject_layers(spec: str | os.PathLike[str], **options: Any) -> list[tuple[str, str]]:
    """The layers a user can pick for ``spec``, as ``(layer, description)`` rows.

    Library models are built without weights for this (the architecture is enough), except
    ``hf:`` models, whose config must be cached. Used by ``fiberscope layers SPEC``.
    """
    s = os.fspath(spec)
    prefix, sep, rest = s.partition(":")
    if sep and prefix == "torchvision":
        from .subjects.torchvision import torchvision_layers

        return torchvision_layers(rest)
    if sep and prefix == "timm":
        from .subjects.timm import timm_layers

        return timm_layers(rest, **options)
    if sep and prefix == "open_clip":
        from .subjects.open_clip import open_clip_layers

        return open_clip_layers(rest, **options)
    if sep and prefix == "hf":
        from .subjects.transformers import hf_layers

        return hf_layers(rest, **options)
    subject = load_subject(s)
    model = getattr(subject, "fn", None)
    base = getattr(model, "model", model)
    if not isinstance(base, nn.Module):
        raise ValueError(f"{s} is not a module; it has no named layers")
    return [(n, c) for n, c in list_layers(base)]
