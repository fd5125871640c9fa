"""Reading ADM checkpoints: the published families, the architecture a state dict implies, overrides.

:func:`infer_adm_config` reads the architecture from the keys and shapes of a state dict (model
channels, channel multipliers, residual blocks per level, attention levels, learned σ, class
conditioning, resblock up/down sampling, scale-shift norm) and recognises the published checkpoints
(:data:`ADM_FAMILIES`), whose README flags fill in what the weights cannot tell (heads, legacy or
new attention order, noise schedule, image size); :func:`apply_overrides` takes what the user says
(a dict or guided-diffusion's ``MODEL_FLAGS``); :func:`read_state_dict` reads a file with
``torch.load(weights_only=True)`` (or safetensors) and refuses pickles that need full unpickling;
:func:`build_adm` puts the tensors into an :class:`~fiberscope.priors.adm_unet.ADMUNet`.

Example:
    >>> sorted(ADM_FAMILIES)[:3]
    ['adm-128', 'adm-256', 'adm-256-uncond']
    >>> ADM_FAMILIES["adm-256-uncond"]["config"].attention_resolutions
    (32, 16, 8)
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, PickleRefusedError
from .adm_unet import NOISE_SCHEDULES, ADMConfig, ADMUNet

__all__ = [
    "ADM_FAMILIES",
    "IGNORED_FLAGS",
    "INFERRED",
    "apply_overrides",
    "build_adm",
    "infer_adm_config",
    "parse_spec_options",
    "read_state_dict",
]


def _family(**kw: Any) -> ADMConfig:
    return ADMConfig(**kw)


#: The published checkpoints, with the flags of openai/guided-diffusion's README (and, for ``ffhq-256``,
#: those of DPS's ``configs/model_config.yaml``). ``checkpoints`` are the file names they are published under.
ADM_FAMILIES: dict[str, dict[str, Any]] = {
    "adm-64": {
        "checkpoints": ["64x64_diffusion.pt"],
        "config": _family(
            image_size=64,
            model_channels=192,
            num_res_blocks=3,
            channel_mult=(1, 2, 3, 4),
            attention_ds=(2, 4, 8),
            num_classes=1000,
            num_head_channels=64,
            resblock_updown=True,
            use_new_attention_order=True,
            noise_schedule="cosine",
        ),
    },
    "adm-128": {
        "checkpoints": ["128x128_diffusion.pt"],
        "config": _family(
            image_size=128,
            model_channels=256,
            num_res_blocks=2,
            channel_mult=(1, 1, 2, 3, 4),
            attention_ds=(4, 8, 16),
            num_classes=1000,
            num_heads=4,
            resblock_updown=True,
        ),
    },
    "adm-256": {
        "checkpoints": ["256x256_diffusion.pt"],
        "config": _family(num_classes=1000, num_head_channels=64, resblock_updown=True),
    },
    "adm-256-uncond": {
        "checkpoints": ["256x256_diffusion_uncond.pt"],
        "config": _family(num_head_channels=64, resblock_updown=True),
    },
    "lsun-256": {  # the same architecture as adm-256-uncond; told apart by the file name only
        "checkpoints": ["lsun_bedroom.pt", "lsun_cat.pt", "lsun_horse.pt", "lsun_horse_nodropout.pt"],
        "config": _family(num_head_channels=64, resblock_updown=True),
    },
    "adm-512": {
        "checkpoints": ["512x512_diffusion.pt"],
        "config": _family(
            image_size=512,
            channel_mult=(0.5, 1, 1, 2, 2, 4, 4),
            attention_ds=(16, 32, 64),
            num_classes=1000,
            num_head_channels=64,
            resblock_updown=True,
        ),
    },
    "ffhq-256": {  # DPS / DiffPIR's ffhq_10m.pt (ILVR's FFHQ model), deepinv's DiffUNet(large_model=False)
        "checkpoints": ["ffhq_10m.pt"],
        "config": _family(
            model_channels=128, num_res_blocks=1, attention_ds=(16,), num_head_channels=64, resblock_updown=True
        ),
    },
}

#: What the weights determine (everything else comes from a recognised family, the defaults, or ``adm_config``).
INFERRED = (
    "in_channels",
    "model_channels",
    "out_channels",
    "num_res_blocks",
    "channel_mult",
    "attention_ds",
    "num_classes",
    "use_scale_shift_norm",
    "resblock_updown",
    "conv_resample",
)
_STRUCTURE = ("channel_mult", "num_res_blocks", "attention_ds", "use_scale_shift_norm", "resblock_updown")
#: guided-diffusion flags that do not change the network at inference time (accepted and ignored).
IGNORED_FLAGS = frozenset(
    {"dropout", "use_fp16", "use_checkpoint", "timestep_respacing", "use_kl", "rescale_learned_sigmas", "sigma_small"}
)
_ALIASES = {"num_channels": "model_channels"}


# ---------------------------------------------------------------------------------------------------------------
# reading a state dict and inferring the architecture


class _Bad(ValueError):
    """Internal: a state dict problem, re-raised with the file name by :func:`load_adm_prior`."""


_TOP = ("time_embed.", "label_emb.", "input_blocks.", "middle_block.", "output_blocks.", "out.")


def _layers(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[int, dict[int, dict[str, torch.Tensor]]]:
    """``{block: {layer: {rest: tensor}}}`` for keys ``PREFIX<block>.<layer>.<rest>``."""
    out: dict[int, dict[int, dict[str, torch.Tensor]]] = {}
    pat = re.compile(re.escape(prefix) + r"(\d+)\.(\d+)\.(.+)$")
    for k, v in sd.items():
        m = pat.match(k)
        if m:
            out.setdefault(int(m[1]), {}).setdefault(int(m[2]), {})[m[3]] = v
    return out


def _kind(layer: dict[str, torch.Tensor]) -> str:
    if "in_layers.0.weight" in layer:
        return "res"
    if "qkv.weight" in layer:
        return "attn"
    if "op.weight" in layer:
        return "down"
    if "conv.weight" in layer:
        return "up"
    return "?"


def _shape(sd: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in sd:
        raise _Bad(f"has no key {key!r}")
    return tuple(sd[key].shape)


def _not_adm(sd: Mapping[str, torch.Tensor]) -> str | None:
    """Why ``sd`` is not an ADM UNet state dict at all (None if it looks like one)."""
    keys = list(sd)
    if not keys:
        return "is empty"
    bad = [k for k in keys if not isinstance(sd[k], torch.Tensor)]
    if bad:
        return f"holds non-tensor entries ({', '.join(map(repr, bad[:3]))}), not a state dict of tensors"
    if any(k.startswith("out.2.positional_embedding") or k.startswith("out.2.qkv_proj") for k in keys):
        return "is a guided-diffusion classifier (EncoderUNetModel), not a diffusion UNet"
    if "time_embed.0.weight" not in sd or not any(k.startswith("output_blocks.") for k in keys):
        return (
            f"is not an ADM (guided-diffusion UNetModel) state dict: expected time_embed.*, input_blocks.*, "
            f"middle_block.*, output_blocks.* and out.*; its first keys are {', '.join(map(repr, keys[:3]))}"
        )
    return None


def infer_adm_config(
    state_dict: Mapping[str, torch.Tensor], name: str | None = None
) -> tuple[ADMConfig, dict[str, Any]]:
    """The architecture of an ADM state dict, and what was recognised.

    The weights determine :data:`INFERRED`; heads, attention order, noise schedule and image size are
    taken from the published family whose architecture matches (exactly, or in structure with other
    widths), else from guided-diffusion's defaults (4 heads, legacy order, linear schedule, 1000
    steps) with the image size its default channel multipliers imply (2^(levels+2): 64 for 4
    levels, 256 for 6); ``info["defaulted"]`` lists them.

    Args:
        state_dict: ``{name: tensor}`` as ``torch.load`` returns it.
        name: the file name, used only to tell LSUN checkpoints from the ImageNet one of the same shape.

    Returns:
        ``(config, info)``; ``info`` has ``family`` (or None), ``family_match`` (``"exact"``,
        ``"structure"`` or None), ``checkpoints`` and ``defaulted`` (the fields the weights could not tell).

    Raises:
        ValueError: not an ADM state dict, naming the first keys at fault.

    Example:
        >>> sd = ADMUNet(ADMConfig(image_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
        ...                        attention_ds=(2,), num_head_channels=32)).state_dict()
        >>> cfg, info = infer_adm_config(sd)
        >>> cfg.channel_mult, cfg.attention_ds, info["family"]
        ((1, 2), (2,), None)
    """
    why = _not_adm(state_dict)
    if why:
        raise _Bad(why)
    strange = [k for k in state_dict if not k.startswith(_TOP)]
    if strange:
        raise _Bad(f"has unexpected key(s) {', '.join(map(repr, strange[:3]))} (an ADM UNet has only {list(_TOP)})")
    sd = state_dict
    temb, mc = _shape(sd, "time_embed.0.weight")
    if temb != 4 * mc:
        raise _Bad(f"time_embed.0.weight has shape {[temb, mc]}; an ADM's time embedding is 4× the model channels")
    w0, in_ch = _shape(sd, "input_blocks.0.0.weight")[:2]
    out_ch = _shape(sd, "out.2.weight")[0]
    if in_ch == out_ch and in_ch % 2 == 0 and in_ch >= 6:
        raise _Bad(
            f"takes {in_ch} input channels: it looks like a super-resolution model (64_256_upsampler.pt, "
            "128_512_upsampler.pt), which needs a low-resolution image as input; load a base diffusion model"
        )
    inp, outp = _layers(sd, "input_blocks."), _layers(sd, "output_blocks.")
    if not inp or not outp:
        raise _Bad("has no input_blocks.<i>.<j>.* or output_blocks.<i>.<j>.* keys of an ADM UNet")
    n_out = max(outp) + 1
    n_in = max(inp) + 1
    if n_in != n_out:
        raise _Bad(f"has {n_in} input blocks and {n_out} output blocks; an ADM UNet has as many of each")
    missing_out = [j for j in range(n_out) if j not in outp]
    if missing_out:
        raise _Bad(f"has no keys for output_blocks.{missing_out[0]}.*")

    def has_up(j: int) -> bool:
        kinds = [_kind(outp[j][i]) for i in sorted(outp[j])]
        return "up" in kinds or kinds.count("res") >= 2

    ups = [j for j in range(n_out) if has_up(j)]
    if ups:
        nrb = ups[0]
    else:  # parameter-free resampling (conv_resample=False): the input side shows gaps where the pools are
        downs = [i for i in range(1, n_in) if i not in inp or _kind(inp[i].get(0, {})) == "down"]
        nrb = downs[0] - 1 if downs else n_out - 1
    if nrb < 1 or n_out % (nrb + 1):
        raise _Bad(f"has {n_out} output blocks, which is not levels × (res blocks + 1) for {nrb} res blocks")
    levels = n_out // (nrb + 1)
    widths, attn, scale_shift, updown, conv_resample = [], [], True, False, True
    for lvl in range(levels):
        first = 1 + lvl * (nrb + 1)
        block = inp.get(first, {})
        if _kind(block.get(0, {})) != "res":
            raise _Bad(f"input_blocks.{first}.0 is not a residual block (no input_blocks.{first}.0.in_layers.0.weight)")
        w = _shape(sd, f"input_blocks.{first}.0.in_layers.2.weight")[0]
        widths.append(w)
        if any(_kind(inp.get(first + k, {}).get(1, {})) == "attn" for k in range(nrb)):
            attn.append(2**lvl)
        if lvl == 0:
            scale_shift = _shape(sd, f"input_blocks.{first}.0.emb_layers.1.weight")[0] == 2 * w
        if lvl < levels - 1:
            down = inp.get(first + nrb, {}).get(0, {})
            updown = _kind(down) == "res"
            conv_resample = updown or _kind(down) == "down"
    mult = tuple(int(w // mc) if w % mc == 0 else w / mc for w in widths)
    if int(mult[0] * mc) != w0:
        raise _Bad(f"input_blocks.0.0.weight has {w0} output channels, the first level {widths[0]}")
    num_classes = _shape(sd, "label_emb.weight")[0] if "label_emb.weight" in sd else None
    inferred: dict[str, Any] = {
        "in_channels": int(in_ch),
        "model_channels": int(mc),
        "out_channels": int(out_ch),
        "num_res_blocks": nrb,
        "channel_mult": mult,
        "attention_ds": tuple(attn),
        "num_classes": num_classes,
        "use_scale_shift_norm": bool(scale_shift),
        "resblock_updown": bool(updown),
        "conv_resample": bool(conv_resample),
    }
    family, match = _recognise(inferred, name)
    info: dict[str, Any] = {"family": family, "family_match": match}
    if family is not None:
        base = ADM_FAMILIES[family]["config"]
        info["checkpoints"] = list(ADM_FAMILIES[family]["checkpoints"])
        rest = {f.name: getattr(base, f.name) for f in dataclasses.fields(ADMConfig) if f.name not in INFERRED}
    else:
        rest = {"image_size": 2 ** (levels + 2)}  # guided-diffusion's default channel_mult per size: 4 levels at 64 ...
    info["defaulted"] = sorted(f.name for f in dataclasses.fields(ADMConfig) if f.name not in INFERRED)
    return ADMConfig(**{**rest, **inferred}), info


def _recognise(inferred: dict[str, Any], name: str | None) -> tuple[str | None, str | None]:
    lsun = name is not None and "lsun" in Path(name).name.lower()
    for match, keys in (("exact", INFERRED), ("structure", _STRUCTURE)):
        hits = []
        for fam, entry in ADM_FAMILIES.items():
            cfg = entry["config"]
            same = all(
                tuple(getattr(cfg, k)) == tuple(inferred[k])
                if k in ("channel_mult", "attention_ds")
                else getattr(cfg, k) == inferred[k]
                for k in keys
            )
            same_kind = (cfg.num_classes is None) == (inferred["num_classes"] is None) and cfg.learn_sigma == (
                inferred["out_channels"] == 2 * inferred["in_channels"]
            )
            if same and same_kind:
                hits.append(fam)
        if hits:
            if "lsun-256" in hits and "adm-256-uncond" in hits:
                hits = ["lsun-256" if lsun else "adm-256-uncond"]
            return hits[0], match
    return None, None


def _value(v: str) -> Any:
    """A flag value as guided-diffusion's argparse would read it: booleans, integers, floats, else the string."""
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            continue
    return v


def _parse_flags(text: str) -> dict[str, Any]:
    """guided-diffusion's ``MODEL_FLAGS`` string (``--num_channels 256 --class_cond True ...``) as a dict."""
    words = shlex.split(text)
    out: dict[str, Any] = {}
    for i in range(0, len(words), 2):
        w = words[i]
        if not w.startswith("--") or i + 1 >= len(words):
            raise ValueError(
                f"adm_config flags must be '--name value' pairs (guided-diffusion's MODEL_FLAGS); at {w!r}"
            )
        out[w[2:]] = _value(words[i + 1])
    return out


def parse_spec_options(query: str) -> tuple[dict[str, Any], int | None]:
    """The options of a prior spec ``PATH.pt?class_label=207&image_size=256``: ``(adm_config, class_label)``.

    Example:
        >>> parse_spec_options("class_label=207&num_head_channels=64&use_new_attention_order=true")
        ({'num_head_channels': 64, 'use_new_attention_order': True}, 207)
    """
    from urllib.parse import parse_qsl

    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise ValueError(f"prior options {query!r} must be 'name=value' pairs joined by '&'") from None
    opts = {k: _value(v) for k, v in pairs}
    label = opts.pop("class_label", None)
    if label is not None and (isinstance(label, bool) or not isinstance(label, int)):
        raise ValueError(f"class_label must be an integer, got {label!r}")
    return opts, label


def _ints(v: Any, key: str) -> tuple[Any, ...]:
    if isinstance(v, str):
        v = [x for x in v.replace(" ", "").split(",") if x]
    if isinstance(v, (int, float)):
        v = [v]
    try:
        return tuple(float(x) if float(x) != int(float(x)) else int(float(x)) for x in v)
    except (TypeError, ValueError):
        raise ValueError(f"adm_config[{key!r}] must be a list of numbers or 'a,b,c', got {v!r}") from None


def apply_overrides(
    config: ADMConfig, info: dict[str, Any], overrides: Mapping[str, Any] | str | None
) -> tuple[ADMConfig, list[str]]:
    """``config`` with ``overrides`` (a dict of :class:`ADMConfig` fields or guided-diffusion flags, or a flags string).

    Fields the weights determine may be repeated (e.g. pasting a checkpoint's whole ``MODEL_FLAGS``)
    but not contradicted. Returns the new config and the names of the fields overridden.
    """
    if overrides is None:
        return config, []
    ov = _parse_flags(overrides) if isinstance(overrides, str) else dict(overrides)
    fields = {f.name for f in dataclasses.fields(ADMConfig)}
    allow_other_size = bool(ov.pop("allow_other_size", False))
    new: dict[str, Any] = {}
    for raw, value in ov.items():
        key = _ALIASES.get(raw, raw)
        if key in IGNORED_FLAGS:
            continue
        if key == "learn_sigma":
            if bool(value) != config.learn_sigma:
                raise ValueError(
                    f"adm_config learn_sigma={value} contradicts the checkpoint (out channels {config.out_channels})"
                )
            continue
        if key == "class_cond":
            if bool(value) != (config.num_classes is not None):
                raise ValueError(
                    f"adm_config class_cond={value} contradicts the checkpoint "
                    f"({'has' if config.num_classes else 'has no'} label_emb)"
                )
            continue
        if key == "attention_resolutions":
            size = int(ov.get("image_size", config.image_size))
            new["attention_ds"] = tuple(sorted(size // int(r) for r in _ints(value, key)))
            continue
        if key == "channel_mult":
            if value in ("", None):
                continue
            value = _ints(value, key)
        if key == "attention_ds":
            value = tuple(sorted(int(x) for x in _ints(value, key)))
        if key not in fields:
            raise ValueError(
                f"adm_config: unknown key {raw!r}; valid: {sorted(fields | set(_ALIASES) | {'allow_other_size'})} "
                "(and guided-diffusion flags that do not change inference, which are ignored)"
            )
        new[key] = value
    for key in INFERRED:
        if key in new:
            given, have = new[key], getattr(config, key)
            same = tuple(given) == tuple(have) if isinstance(have, tuple) else given == have
            if not same:
                raise ValueError(f"adm_config {key}={given!r} contradicts the checkpoint, whose weights have {have!r}")
            del new[key]
    if "noise_schedule" in new and new["noise_schedule"] not in NOISE_SCHEDULES:
        raise ValueError(f"adm_config noise_schedule must be one of {NOISE_SCHEDULES}, got {new['noise_schedule']!r}")
    if "image_size" in new:
        size = new["image_size"]
        if not isinstance(size, int) or isinstance(size, bool):
            raise ValueError(f"adm_config image_size must be an integer, got {size!r}")
        config.check_size(size, "adm_config image_size")
        fam = info.get("family")
        native = config.image_size
        if info.get("family_match") == "exact" and size != native and not allow_other_size:
            raise ValueError(
                f"adm_config image_size {size}: {fam} ({', '.join(info.get('checkpoints', []))}) was trained at "
                f"{native}×{native}, the size it takes; add 'allow_other_size': True to run it at {size}×{size} anyway"
            )
    out = dataclasses.replace(config, **new)
    return out, sorted(k for k in new if getattr(out, k) != getattr(config, k))


# ---------------------------------------------------------------------------------------------------------------
# reading a file and building the network


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pt``/``.pth`` (``torch.load(weights_only=True)``, memory-mapped) or ``.safetensors`` file.

    A checkpoint that wraps the state dict (``{"state_dict": ...}``, ``{"model": ...}``, ``{"ema": ...}``)
    is unwrapped, and a ``module.`` prefix (DataParallel) is removed.

    Raises:
        PickleRefusedError: the file holds Python objects beyond tensors (it would need full unpickling).
        CheckpointError: not a readable checkpoint.
    """
    p = Path(path)
    if p.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        sd: Any = load_file(str(p))
    else:
        import pickle

        try:
            try:
                sd = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e) and "zip" not in str(e).lower():
                    raise
                sd = torch.load(p, map_location="cpu", weights_only=True)  # the legacy (pre-zip) format
        except pickle.UnpicklingError as e:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
            if found is None:  # not a pickle the restricted unpickler understands at all
                detail = str(e).split("WeightsUnpickler error:")[-1].split("Check the documentation")[0]
                raise CheckpointError(
                    f"{p}: not a torch checkpoint (torch.load cannot parse it: {' '.join(detail.split())[:120]}); "
                    "download it again"
                ) from None
            reason = f"e.g. {found[1]}"
            raise PickleRefusedError(
                f"{p}: cannot be read with torch.load(weights_only=True), which fiberscope always uses: it holds "
                f"Python objects beyond tensors ({reason}); fiberscope never fully unpickles a file. If you trust "
                "it, load it in a trusted environment and save only its {name: tensor} state dict (torch.save, or "
                "safetensors.torch.save_file), then pass that file"
            ) from None
        except (RuntimeError, EOFError, OSError, ValueError) as e:
            if isinstance(e, FileNotFoundError):
                raise
            raise CheckpointError(
                f"{p}: not a readable torch checkpoint (truncated or corrupt?): {' '.join(str(e).split())[:200]}; "
                "download it again"
            ) from None
    if isinstance(sd, dict) and not all(isinstance(v, torch.Tensor) for v in sd.values()):
        for key in ("state_dict", "model", "ema", "model_state_dict"):
            inner = sd.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                sd = inner
                break
    if not isinstance(sd, dict):
        raise CheckpointError(f"{p}: holds a {type(sd).__name__}, not a state dict of tensors")
    if sd and all(isinstance(k, str) and k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _check_keys(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> str | None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [k for k in expected if k in sd and tuple(sd[k].shape) != expected[k]]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {', '.join(missing[:3])}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {', '.join(unexpected[:3])}")
    if wrong:
        k = wrong[0]
        got, want = list(sd[k].shape), list(expected[k])
        parts.append(f"{len(wrong)} key(s) of the wrong shape: {k} is {got}, expected {want}")
    return "; ".join(parts) or None


def build_adm(
    state_dict: Mapping[str, torch.Tensor],
    config: ADMConfig,
    *,
    dtype: torch.dtype | None = None,
    gradient_checkpointing: bool = False,
) -> ADMUNet:
    """An :class:`ADMUNet` of ``config`` holding the tensors of ``state_dict`` (built on the meta device, no copy)."""
    with torch.device("meta"):
        net = ADMUNet(config)
    problem = _check_keys(net, state_dict)
    if problem:
        raise _Bad(problem)
    net.load_state_dict(dict(state_dict), strict=True, assign=True)
    if any(p.dtype != torch.float32 for p in net.parameters()):
        net.float()
    if dtype not in (None, torch.float32):
        net.set_inner_dtype(dtype)
    if gradient_checkpointing:
        net.set_gradient_checkpointing(True)
    return net.eval().requires_grad_(False)
