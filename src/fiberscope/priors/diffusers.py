"""Priors from Hugging Face diffusers: a model plus the *schedule* of its scheduler, never its ``step()``.

:class:`DiffusersPrior` wraps a ``UNet2DModel`` (or any diffusers model whose forward returns
``.sample``) with the schedule and parameterisation read from the scheduler config:

* DDPM/DDIM-family configs (``alphas_cumprod`` from ``beta_schedule``/``trained_betas``) → VP,
  with ``prediction_type`` ε / ``sample`` / ``v_prediction`` and ``variance_type`` ``learned_range``
  when the UNet has twice the input channels;
* ``FlowMatchEulerDiscreteScheduler`` configs → rectified flow (velocity), with ``shift``.

:func:`load_diffusers_prior` reads a pipeline directory (or a hub id already in the local cache):
pixel ``DDPMPipeline`` layouts (``google/ddpm-cifar10-32``) give a :class:`DiffusersPrior`; latent
layouts — ``LDMPipeline`` (``vqvae/``), Stable Diffusion (``vae/`` + ``UNet2DConditionModel`` + a fixed
prompt embedding) and SD3-style ``transformer/`` flow models — give a
:class:`~fiberscope.priors.latent.LatentPrior` whose denoiser is a :class:`DiffusersDenoiser`.
Weights are read from safetensors only (``trust_pickle=True`` allows ``.bin``, read with
``torch.load(weights_only=True)``), and nothing is ever downloaded.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelNotAvailableError, WeightsError
from ..hub import check_weights, offline_hub
from .base import Prior, _check_param
from .schedule import FlowSchedule, Schedule, VPSchedule

__all__ = [
    "DiffusersDenoiser",
    "DiffusersPrior",
    "encode_prompt",
    "load_diffusers_prior",
    "schedule_from_scheduler_config",
]

_PRED = {"epsilon": "eps", "sample": "x0", "v_prediction": "v", "flow_prediction": "velocity"}
_MAX_TRAIN_TIMESTEPS = 100_000


def schedule_from_scheduler_config(cfg: dict[str, Any]) -> tuple[Schedule, str | None]:
    """Build the schedule (and, if the config says, the parameterisation) from a scheduler config.

    Raises:
        WeightsError: the config is not an object, names an unknown ``prediction_type`` or
            ``beta_schedule``, or holds values out of bounds (``num_train_timesteps``, ``shift``).
    """
    if not isinstance(cfg, dict):
        raise WeightsError(f"a scheduler config must be a JSON object, got {type(cfg).__name__}")
    cls = cfg.get("_class_name", "")
    steps = cfg.get("num_train_timesteps", 1000)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 2 <= steps <= _MAX_TRAIN_TIMESTEPS:
        raise WeightsError(f"num_train_timesteps must be an integer in [2, {_MAX_TRAIN_TIMESTEPS}], got {steps!r}")
    pred = cfg.get("prediction_type", "epsilon")
    if pred is not None and pred not in _PRED:
        raise WeightsError(f"prediction_type {pred!r} is not one of {sorted(_PRED)}")
    if isinstance(cls, str) and "FlowMatch" in cls:
        shift = cfg.get("shift", 1.0)
        if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not 0 < shift < 1e6:
            raise WeightsError(f"shift must be a positive number, got {shift!r}")
        return FlowSchedule(steps, shift), "velocity"
    from diffusers import DDPMScheduler

    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
    kw = {k: cfg[k] for k in keys if k in cfg and cfg[k] is not None}
    try:
        sched = DDPMScheduler(**kw)
        schedule = VPSchedule(sched.alphas_cumprod, sched.betas)
    except (NotImplementedError, ValueError, TypeError, RuntimeError) as e:
        raise WeightsError(
            f"its schedule cannot be built ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
        ) from None
    return schedule, _PRED.get(pred or "epsilon", "eps")


def _image_side(size: Any, where: str) -> tuple[int, int]:
    """``sample_size`` of a model config as ``(h, w)``, each in [1, MAX_SAMPLE_SIZE]."""
    from ..validation import MAX_SAMPLE_SIZE

    hw = (size, size) if not isinstance(size, (list, tuple)) else tuple(size)
    if len(hw) != 2 or not all(
        isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SAMPLE_SIZE for v in hw
    ):
        raise WeightsError(
            f"{where}: sample_size must be an integer (or [height, width]) in [1, {MAX_SAMPLE_SIZE}], got {size!r}; "
            "fix the model's config.json"
        )
    return int(hw[0]), int(hw[1])


class DiffusersPrior(Prior):
    model: torch.nn.Module
    """A diffusers denoiser as a fiberscope prior.

    Args:
        model: e.g. ``UNet2DModel``; called as ``model(x_t, t).sample``.
        scheduler_config: the scheduler's config dict (``scheduler.config``).
        parameterization: override what the config says (``eps``, ``x0``, ``v``, ``velocity``).
        data_range: range of the images (diffusers pixel models use [-1, 1]).
        dtype: run the network in this dtype (guidance arithmetic stays in float32).
        gradient_checkpointing: trade compute for memory when backpropagating through the model.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        scheduler_config: dict[str, Any],
        *,
        parameterization: str | None = None,
        data_range: tuple[float, float] = (-1.0, 1.0),
        dtype: torch.dtype | None = None,
        gradient_checkpointing: bool = False,
        name: str = "diffusers",
    ):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.schedule, param = schedule_from_scheduler_config(dict(scheduler_config))
        self.parameterization = parameterization or param or "eps"
        _check_param(self.parameterization, self.schedule)
        cfg = getattr(model, "config", {})
        in_ch, out_ch = cfg.get("in_channels", 0) or 0, cfg.get("out_channels", None)
        out_ch = in_ch if out_ch is None else out_ch
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 4096 for v in (in_ch, out_ch)):
            raise WeightsError(f"{name}: in_channels / out_channels must be integers, got {in_ch!r} / {out_ch!r}")
        size = cfg.get("sample_size", None)
        self.learned_variance = bool(in_ch and out_ch == 2 * in_ch) or (
            scheduler_config.get("variance_type") in ("learned", "learned_range") and out_ch == 2 * in_ch
        )
        if size is not None:
            self.state_shape = (in_ch, *_image_side(size, name))
        self.data_range = data_range
        self.clip_range = data_range
        self.scheduler_config = dict(scheduler_config)
        self.name = name
        if dtype is not None:
            self.model.to(dtype)
            self.compute_dtype = dtype
        if gradient_checkpointing:
            if not hasattr(self.model, "enable_gradient_checkpointing"):
                raise ValueError(f"{type(model).__name__} does not support gradient checkpointing")
            self.model.enable_gradient_checkpointing()  # type: ignore[operator]

    def network(self, x_t: torch.Tensor, t_model: torch.Tensor) -> torch.Tensor:
        out = self.model(x_t, t_model.to(x_t.dtype) if self.schedule.kind == "flow" else t_model.round().long())
        return out.sample if hasattr(out, "sample") else out[0]

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["scheduler_class"] = self.scheduler_config.get("_class_name")
        d["parameters"] = sum(p.numel() for p in self.model.parameters())
        return d


# ---------------------------------------------------------------------------------------------------------------
# loading pipeline directories: pixel (DDPMPipeline), LDMPipeline, Stable Diffusion, SD3-style transformers

_DENOISERS = ("unet", "transformer")
_HAVE_ACCELERATE = importlib.util.find_spec("accelerate") is not None  # else diffusers warns on every load
_AUTOENCODERS = ("vqvae", "vae")


def _read_json(p: Path) -> dict[str, Any]:
    """A model's JSON file (config.json, scheduler_config.json, model_index.json) as an object.

    Raises:
        WeightsError: unreadable, not JSON or not a JSON object (names the file).
    """
    from ..validation import loads_json

    try:
        data = loads_json(p.read_bytes())
    except OSError as e:
        raise WeightsError(f"{p} cannot be read ({e.strerror}); re-download or re-export the model") from None
    except (ValueError, RecursionError) as e:
        why = f"{e.msg} at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
        raise WeightsError(f"{p} is not valid JSON ({why}); re-download or re-export the model") from None
    if not isinstance(data, dict):
        raise WeightsError(
            f"{p} must hold a JSON object, got {type(data).__name__}; re-download or re-export the model"
        )
    return data


def _scheduler_config(p: Path) -> dict[str, Any]:
    """``scheduler_config.json``, checked: the schedule can be built from it (errors name the file)."""
    cfg = _read_json(p)
    try:
        schedule_from_scheduler_config(cfg)
    except WeightsError as e:
        raise WeightsError(f"{p}: {e}; fix or re-download the scheduler config") from None
    return cfg


def _model_class(component_dir: Path) -> Any:
    """The diffusers model class named in ``component_dir/config.json``."""
    import diffusers

    cfg_file = component_dir / "config.json"
    if not cfg_file.is_file():
        raise WeightsError(f"{component_dir} has no config.json: not a diffusers model directory")
    name = _read_json(cfg_file).get("_class_name", "")
    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise WeightsError(f"{cfg_file} names model class {name!r}, which this diffusers version does not provide")
    cfg = _read_json(cfg_file)
    if "sample_size" in cfg and cfg["sample_size"] is not None:
        _image_side(cfg["sample_size"], str(cfg_file))  # before the model is built (10^6 would try terabytes)
    return cls


def _load_component(component_dir: Path, trust_pickle: bool, dtype: torch.dtype | None) -> Any:
    """One model of a pipeline directory, frozen, from safetensors (or trusted pickles), offline."""
    fmt = check_weights(component_dir, trust_pickle=trust_pickle, what=component_dir.name)
    cls = _model_class(component_dir)
    kw: dict[str, Any] = {}
    files = [p.name for p in component_dir.iterdir()]
    plain = [f for f in files if f.endswith((".safetensors", ".bin")) and ".fp16." not in f]
    if not plain and any(".fp16." in f for f in files):
        kw["variant"] = "fp16"  # some repos ship a component only as its fp16 variant
    try:
        with offline_hub():
            model, info = cls.from_pretrained(
                str(component_dir),
                use_safetensors=fmt == "safetensors",
                local_files_only=True,
                low_cpu_mem_usage=_HAVE_ACCELERATE,
                output_loading_info=True,
                **kw,
            )
    except (OSError, RuntimeError, ValueError) as e:
        if isinstance(e, RuntimeError) and any(s in str(e) for s in ("out of memory", "can't allocate memory")):
            raise
        first = " ".join(str(e).split())[:300]
        raise WeightsError(
            f"the weights in {component_dir} cannot be loaded ({type(e).__name__}: {first}); they are truncated, "
            "corrupt or do not match its config.json: re-download or re-export the model"
        ) from None
    missing = list(info.get("missing_keys") or []) + list(info.get("mismatched_keys") or [])
    if missing:  # diffusers would initialise them at random and carry on
        raise WeightsError(
            f"the weights in {component_dir} lack {len(missing)} tensor(s) its config.json needs "
            f"({', '.join(map(str, missing[:3]))}{', ...' if len(missing) > 3 else ''}); re-download or re-export "
            "the model (diffusers would fill them with random values)"
        )
    if dtype is not None:
        model.to(dtype)
    return model.eval().requires_grad_(False)


class DiffusersDenoiser(torch.nn.Module):
    """``(z_t, t) -> prediction`` for a diffusers UNet or transformer, with any fixed conditioning.

    Args:
        model: ``UNet2DModel``, ``UNet2DConditionModel`` or ``SD3Transformer2DModel``.
        flow: pass float timesteps (FlowMatch models) instead of rounded integers.
        embeds: ``encoder_hidden_states`` ``[1, L, D]`` for conditional models.
        pooled: ``pooled_projections`` ``[1, P]`` for SD3-style transformers.
        uncond_embeds, uncond_pooled: the unconditional (negative-prompt) conditioning for
            classifier-free guidance.
        guidance_scale: ``ε = ε_u + s·(ε_c − ε_u)``; 1 runs the conditional model only.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        flow: bool,
        embeds: torch.Tensor | None = None,
        pooled: torch.Tensor | None = None,
        uncond_embeds: torch.Tensor | None = None,
        uncond_pooled: torch.Tensor | None = None,
        guidance_scale: float = 1.0,
    ):
        super().__init__()
        self.model = model
        self.flow = flow
        self.guidance_scale = float(guidance_scale)
        for name, v in (("embeds", embeds), ("pooled", pooled), ("uncond_embeds", uncond_embeds)):
            self.register_buffer(name, None if v is None else v.detach().clone(), persistent=False)
        self.register_buffer(
            "uncond_pooled", None if uncond_pooled is None else uncond_pooled.detach().clone(), persistent=False
        )
        if self.guidance_scale != 1.0 and uncond_embeds is None:
            raise ValueError("guidance_scale != 1 needs an unconditional embedding (negative prompt)")

    embeds: torch.Tensor | None
    pooled: torch.Tensor | None
    uncond_embeds: torch.Tensor | None
    uncond_pooled: torch.Tensor | None

    def _call(self, z: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor | None, pooled: torch.Tensor | None):
        b = z.shape[0]
        dt = next(self.model.parameters()).dtype
        kw: dict[str, Any] = {}
        if embeds is not None:
            kw["encoder_hidden_states"] = embeds.to(z.device, dt).expand(b, *embeds.shape[1:])
        if pooled is not None:
            kw["pooled_projections"] = pooled.to(z.device, dt).expand(b, *pooled.shape[1:])
        if "pooled_projections" in kw:  # SD3-style transformers name their inputs
            out = self.model(hidden_states=z, timestep=t, **kw)
        else:
            out = self.model(z, t, **kw)
        return out.sample if hasattr(out, "sample") else out[0]

    def forward(self, z: torch.Tensor, t_model: torch.Tensor) -> torch.Tensor:
        t = t_model.to(z.dtype) if self.flow else t_model.round().long()
        out = self._call(z, t, self.embeds, self.pooled)
        if self.guidance_scale != 1.0:
            unc = self._call(z, t, self.uncond_embeds, self.uncond_pooled)
            out = unc + self.guidance_scale * (out - unc)
        return out


class _Decode(torch.nn.Module):
    """``z -> x`` with a diffusers autoencoder (VQ decoding quantises, as ``LDMPipeline`` does)."""

    def __init__(self, vae: torch.nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        dt = next(self.vae.parameters()).dtype
        out = self.vae.decode(z.to(dt))  # type: ignore[operator]
        return (out.sample if hasattr(out, "sample") else out[0]).float()


class _Encode(torch.nn.Module):
    """``x -> z`` (posterior mode for a KL autoencoder, pre-quantisation latents for a VQ model)."""

    def __init__(self, vae: torch.nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = next(self.vae.parameters()).dtype
        out = self.vae.encode(x.to(dt))  # type: ignore[operator]
        if hasattr(out, "latent_dist"):
            return out.latent_dist.mode().float()
        return (out.latents if hasattr(out, "latents") else out[0]).float()


def _text_components(root: Path) -> list[str]:
    index = root / "model_index.json"
    if not index.is_file():
        return []
    return [k for k, v in _components(index).items() if k.startswith(("text_encoder", "tokenizer"))]


def _components(index: Path) -> dict[str, list[Any]]:
    """``model_index.json`` entries that name a component actually saved (``[library, class]``)."""
    return {k: v for k, v in _read_json(index).items() if isinstance(v, list) and len(v) == 2 and v[0] is not None}


def encode_prompt(
    root: str | os.PathLike[str],
    prompt: str,
    negative_prompt: str | None = None,
    *,
    trust_pickle: bool = False,
    device: str | torch.device | None = None,
    loaded: dict[str, Any] | None = None,
) -> dict[str, torch.Tensor | None]:
    """Encode a prompt once with a pipeline directory's own text encoder(s) and ``encode_prompt``.

    Loads only the text encoders and tokenizers of the pipeline named in ``model_index.json``
    (every other component is skipped, or taken from ``loaded``, e.g. the already loaded
    transformer whose config SD3's ``encode_prompt`` reads) and returns ``embeds`` (and ``pooled``
    for SD3-style pipelines), plus the negative prompt's when ``negative_prompt`` is given.
    """
    import inspect

    from diffusers import DiffusionPipeline

    root = Path(root)
    index = root / "model_index.json"
    names = _text_components(root)
    if not names:
        raise ValueError(
            f"{root} has no text encoder (model_index.json with text_encoder/ and tokenizer/): pass "
            "prompt_embeds= (a tensor [1, L, D], or (embeds, pooled) for SD3-style transformers) instead of prompt="
        )
    skip: dict[str, Any] = {k: None for k, v in _read_json(index).items() if isinstance(v, list) and k not in names}
    skip.update({k: v for k, v in (loaded or {}).items() if k in skip})
    fmts = {check_weights(root / n, trust_pickle=trust_pickle, what=n) for n in names if n.startswith("text_encoder")}
    with offline_hub():
        pipe = DiffusionPipeline.from_pretrained(
            str(root),
            local_files_only=True,
            use_safetensors=fmts == {"safetensors"},
            low_cpu_mem_usage=_HAVE_ACCELERATE,
            **skip,
        )
    pipe.set_progress_bar_config(disable=True)
    if device is not None:
        pipe.to(device)
    params = inspect.signature(pipe.encode_prompt).parameters
    kw: dict[str, Any] = {
        "prompt": prompt,
        "device": torch.device(device) if device is not None else torch.device("cpu"),
        "num_images_per_prompt": 1,
        "do_classifier_free_guidance": negative_prompt is not None,
        "negative_prompt": negative_prompt,
    }
    for extra in ("prompt_2", "prompt_3"):
        if extra in params:
            kw[extra] = None
    with torch.no_grad():
        out = pipe.encode_prompt(**kw)
    out = tuple(out)
    if len(out) == 4:  # SD3: embeds, negative embeds, pooled, negative pooled
        res = {"embeds": out[0], "uncond_embeds": out[1], "pooled": out[2], "uncond_pooled": out[3]}
    else:
        res = {"embeds": out[0], "uncond_embeds": out[1], "pooled": None, "uncond_pooled": None}
    del pipe
    return {k: (v.detach().float().cpu() if isinstance(v, torch.Tensor) else None) for k, v in res.items()}


def _given_embeds(prompt_embeds: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(prompt_embeds, torch.Tensor):
        e, p = prompt_embeds, None
    elif isinstance(prompt_embeds, (tuple, list)) and len(prompt_embeds) == 2:
        e, p = prompt_embeds
    else:
        raise TypeError("prompt_embeds must be a tensor [1, L, D] or a pair (embeds [1, L, D], pooled [1, P])")
    e = torch.as_tensor(e).float()
    if e.dim() == 2:
        e = e.unsqueeze(0)
    if e.dim() != 3 or e.shape[0] != 1:
        raise ValueError(f"prompt_embeds must have shape [1, L, D], got {tuple(e.shape)}")
    if p is not None:
        p = torch.as_tensor(p).float().reshape(1, -1)
    return e, p


def load_diffusers_prior(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    gradient_checkpointing: bool = False,
    name: str | None = None,
    trust_pickle: bool = False,
    prompt: str | None = None,
    negative_prompt: str | None = None,
    prompt_embeds: Any = None,
    guidance_scale: float = 1.0,
) -> Prior:
    """Load a prior from a diffusers pipeline directory.

    Layouts (detected from the sub-directories):

    * pixel (``DDPMPipeline``/``DDIMPipeline``): ``unet/`` + ``scheduler/``, or the flat layout of
      ``google/ddpm-cifar10-32`` (``config.json`` + weights + ``scheduler_config.json`` at the top)
      → :class:`DiffusersPrior`;
    * latent diffusion (``LDMPipeline``, e.g. ``CompVis/ldm-celebahq-256``): ``vqvae/`` + ``unet/`` +
      ``scheduler/`` → :class:`~fiberscope.priors.latent.LatentPrior` (latents unscaled, VQ decoding
      quantises with a straight-through gradient, as the pipeline decodes);
    * Stable Diffusion: ``vae/`` (``AutoencoderKL``) + ``unet/`` (``UNet2DConditionModel``) + text
      encoder/tokenizer + ``scheduler/`` → a latent prior conditioned on a fixed prompt embedding
      (``prompt=``, encoded once by the pipeline's own ``encode_prompt``, or ``prompt_embeds=``; an
      empty prompt by default), latents scaled by the VAE's ``scaling_factor``/``shift_factor``;
    * SD3-style: ``vae/`` + ``transformer/`` (``SD3Transformer2DModel``) + FlowMatch ``scheduler/``,
      conditioned on ``(embeds, pooled)``.

    Weights must be ``.safetensors`` unless ``trust_pickle=True``. Nothing is downloaded.

    Example:
        >>> prior = load_diffusers_prior("ldm-celebahq-256/")                  # doctest: +SKIP
        >>> prior.state_shape, prior.image_shape                              # doctest: +SKIP
        ((3, 64, 64), (3, 256, 256))
    """
    root = Path(path)
    denoiser = next((root / d for d in _DENOISERS if (root / d).is_dir()), None)
    sched_file = root / "scheduler" / "scheduler_config.json"
    if denoiser is None and (root / "config.json").is_file() and (root / "scheduler_config.json").is_file():
        # the flat layout of the first diffusers hub repos (google/ddpm-cifar10-32, google/ddpm-ema-celebahq-256):
        # the UNet's config and weights and the scheduler config all at the top, as DiffusionPipeline accepts
        denoiser, sched_file = root, root / "scheduler_config.json"
    if denoiser is not None and not sched_file.is_file():
        raise WeightsError(
            f"{root} has {denoiser.name}/ but no {sched_file.relative_to(root)}: the pipeline is incomplete; "
            "copy or re-download its scheduler/ folder"
        )
    if denoiser is None:
        raise ModelNotAvailableError(
            f"{root} is not a diffusers pipeline directory: expected unet/ (or transformer/) and "
            "scheduler/scheduler_config.json (the layout that DDPMPipeline, LDMPipeline or "
            "StableDiffusionPipeline.save_pretrained writes), or config.json + scheduler_config.json at the top"
        )
    sched_cfg = _scheduler_config(sched_file)  # checked before any weights are read
    check_weights(denoiser, trust_pickle=trust_pickle, what=denoiser.name)
    autoenc = next((root / d for d in _AUTOENCODERS if (root / d).is_dir()), None)
    label = name or str(path)
    text_given = prompt is not None or negative_prompt is not None or prompt_embeds is not None or guidance_scale != 1
    if autoenc is None:
        if text_given:
            raise ValueError(f"{label} is an unconditional pixel prior: it takes no prompt or guidance_scale")
        net = _load_component(denoiser, trust_pickle, None)
        prior: Prior = DiffusersPrior(
            net, sched_cfg, dtype=dtype, gradient_checkpointing=gradient_checkpointing, name=label
        )
    else:
        prior = _load_latent(
            root,
            denoiser,
            autoenc,
            sched_cfg,
            dtype=dtype,
            gradient_checkpointing=gradient_checkpointing,
            name=label,
            trust_pickle=trust_pickle,
            prompt=prompt,
            negative_prompt=negative_prompt,
            prompt_embeds=prompt_embeds,
            guidance_scale=guidance_scale,
        )
    if device is not None:
        prior.to(device)
    return prior


def _load_latent(
    root: Path,
    denoiser_dir: Path,
    autoenc_dir: Path,
    sched_cfg: dict[str, Any],
    *,
    dtype: torch.dtype | None,
    gradient_checkpointing: bool,
    name: str,
    trust_pickle: bool,
    prompt: str | None,
    negative_prompt: str | None,
    prompt_embeds: Any,
    guidance_scale: float,
) -> Prior:
    from .latent import LatentPrior

    model = _load_component(denoiser_dir, trust_pickle, dtype)
    vae = _load_component(autoenc_dir, trust_pickle, dtype)
    mcfg, vcfg = dict(model.config), dict(vae.config)
    cls = type(model).__name__
    schedule, param = schedule_from_scheduler_config(sched_cfg)
    if sched_cfg.get("use_dynamic_shifting"):
        raise ValueError(
            f"{name}: the scheduler uses resolution-dependent time shifting (use_dynamic_shifting), which fiberscope "
            "does not model; set a fixed `shift` in scheduler/scheduler_config.json"
        )
    conditional = cls in ("UNet2DConditionModel", "SD3Transformer2DModel")
    if cls not in ("UNet2DModel", "UNet2DConditionModel", "SD3Transformer2DModel"):
        raise ValueError(
            f"{name}: denoiser class {cls} is not supported (supported: UNet2DModel, UNet2DConditionModel, "
            "SD3Transformer2DModel); wrap it in fiberscope.priors.latent.LatentPrior yourself"
        )
    if cls == "UNet2DConditionModel" and (mcfg.get("addition_embed_type") or mcfg.get("class_embed_type")):
        raise ValueError(
            f"{name}: this UNet needs extra conditioning "
            f"({mcfg.get('addition_embed_type') or mcfg.get('class_embed_type')}, e.g. SDXL's text_time); only "
            "text-embedding conditioning (SD 1.x/2.x) is supported"
        )
    cond: dict[str, Any] = {}
    if conditional:
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("give prompt= or prompt_embeds=, not both")
        neg = negative_prompt if negative_prompt is not None else ("" if guidance_scale != 1 else None)
        if prompt_embeds is not None:
            e, p = _given_embeds(prompt_embeds)
            cond = {"embeds": e, "pooled": p}
            if guidance_scale != 1:
                if neg is None or not _text_components(root):
                    raise ValueError(
                        "guidance_scale != 1 with prompt_embeds needs a text encoder for the negative prompt"
                    )
                u = encode_prompt(root, neg, None, trust_pickle=trust_pickle, loaded={denoiser_dir.name: model})
                cond.update(uncond_embeds=u["embeds"], uncond_pooled=u["pooled"])
        else:
            enc = encode_prompt(
                root,
                prompt if prompt is not None else "",
                neg,
                trust_pickle=trust_pickle,
                loaded={denoiser_dir.name: model},
            )
            cond = dict(enc)
        if cls == "SD3Transformer2DModel" and cond.get("pooled") is None:
            raise ValueError(
                f"{name}: an SD3-style transformer needs pooled projections: prompt_embeds=(embeds, pooled)"
            )
    elif prompt is not None or prompt_embeds is not None or negative_prompt is not None or guidance_scale != 1:
        raise ValueError(f"{name} is an unconditional latent prior ({cls}): it takes no prompt or guidance_scale")
    net = DiffusersDenoiser(model, flow=schedule.kind == "flow", guidance_scale=guidance_scale, **cond)
    if type(vae).__name__ == "VQModel":
        scale, shift = 1.0, 0.0  # LDMPipeline decodes the latents as they are
    else:
        scale = float(vcfg.get("scaling_factor") or 1.0)
        shift = float(vcfg.get("shift_factor") or 0.0)
    size = mcfg.get("sample_size")
    if size is None:
        raise WeightsError(f"{denoiser_dir}/config.json has no sample_size: cannot tell the latent shape")
    hw = _image_side(size, f"{denoiser_dir}/config.json")
    latent_shape = (int(mcfg["in_channels"]), *hw)
    f = 2 ** (len(vcfg.get("block_out_channels", (0,))) - 1)
    image_shape = (int(vcfg.get("out_channels") or vcfg.get("in_channels") or 3), hw[0] * f, hw[1] * f)
    parameterization = param or "eps"
    if gradient_checkpointing:
        for m in (model, vae):
            if getattr(m, "_supports_gradient_checkpointing", False):
                m.enable_gradient_checkpointing()
    prior = LatentPrior(
        net,
        schedule,
        parameterization,
        latent_shape=latent_shape,
        decoder=_Decode(vae),
        encoder=_Encode(vae),
        image_shape=image_shape,
        data_range=(-1.0, 1.0),
        shift=shift,
        scale=scale,
        name=name,
        info={
            "denoiser_class": cls,
            "autoencoder_class": type(vae).__name__,
            "scheduler_class": sched_cfg.get("_class_name"),
            "prompt": prompt if conditional and prompt_embeds is None else None,
            "prompt_embeds_given": prompt_embeds is not None,
            "guidance_scale": guidance_scale,
            "latent_scale": scale,
            "latent_shift": shift,
        },
    )
    if dtype is not None:
        prior.compute_dtype = dtype
    return prior
