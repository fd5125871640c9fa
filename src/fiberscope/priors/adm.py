"""OpenAI ADM (guided-diffusion) UNets as fiberscope priors, loaded from their ``.pt`` state dicts.

The paper's ImageNet experiments use ``256x256_diffusion_uncond.pt`` from openai/guided-diffusion
("Diffusion Models Beat GANs on Image Synthesis"), which diffusers cannot load. fiberscope has its
own implementation of that UNet, in three parts:

* :mod:`fiberscope.priors.adm_unet`: the network (:class:`ADMUNet`, :class:`ADMConfig`), written from
  the architecture description with the original parameter names, so that a published checkpoint
  loads with strict key matching; half precision as the original's ``convert_to_fp16``;
* :mod:`fiberscope.priors.adm_checkpoint`: :func:`infer_adm_config` reads the architecture from the
  keys and shapes of a state dict and recognises the published checkpoints (:data:`ADM_FAMILIES`),
  whose README flags fill in what the weights cannot tell (heads, legacy or new attention order,
  noise schedule, image size); :func:`read_state_dict` reads the file with
  ``torch.load(weights_only=True)`` (or safetensors) and refuses pickles that need full unpickling;
* this module: :class:`ADMPrior` wires the network into the prior contract (VP schedule, linear
  1e-4…0.02 or cosine over 1000 steps; ε-prediction; learned-range variance as ``Denoised.v`` in
  [−1, 1], interpolation fraction ``(v + 1) / 2``; data in [−1, 1]; an optional class label), and
  :func:`load_adm_prior` goes from a file to a prior, naming the first bad keys of a state dict
  that is not an ADM UNet.

Example:
    >>> import fiberscope as fs
    >>> prior = fs.load_prior("256x256_diffusion_uncond.pt", dtype="bf16")        # doctest: +SKIP
    >>> prior.describe()["adm"]["family"], prior.state_shape                      # doctest: +SKIP
    ('adm-256-uncond', (3, 256, 256))
    >>> cond = fs.load_prior("256x256_diffusion.pt", class_label=207)             # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .._deprecated import moved
from ..errors import CheckpointError
from .adm_checkpoint import (
    ADM_FAMILIES,
    _Bad,
    apply_overrides,
    build_adm,
    infer_adm_config,
    parse_spec_options,
    read_state_dict,
)
from .adm_unet import ADMConfig, ADMUNet
from .base import Prior
from .schedule import VPSchedule

__all__ = [
    "ADM_FAMILIES",
    "ADMConfig",
    "ADMPrior",
    "ADMUNet",
    "apply_overrides",
    "build_adm",
    "infer_adm_config",
    "load_adm_prior",
    "parse_spec_options",
    "read_state_dict",
]


# ---------------------------------------------------------------------------------------------------------------
# the prior


def _check_label(config: ADMConfig, label: Any, name: str) -> None:
    n = config.num_classes
    if n is None:
        if label is not None:
            raise ValueError(f"{name} is an unconditional ADM: it takes no class_label (got {label!r})")
        return
    if label is None:
        raise ValueError(
            f"{name} is a class-conditional ADM ({n} classes): pass class_label=N, the class index "
            f"0..{n - 1} to condition on (ImageNet: e.g. 207 = golden retriever)"
        )
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < n:
        raise ValueError(f"class_label must be an integer in 0..{n - 1}, got {label!r}")


class ADMPrior(Prior):
    """An ADM UNet as a fiberscope prior (VP schedule, ε-prediction, learned-range variance, data in [−1, 1]).

    Args:
        unet: the network.
        class_label: the class of a class-conditional model (an ImageNet index 0…999), None for
            unconditional ones; can be changed later with :attr:`class_label`.
        info: what :func:`infer_adm_config` recognised (recorded by :meth:`describe`).
        name: recorded in results.

    Example:
        >>> cfg = ADMConfig(image_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
        ...                 attention_ds=(2,), num_head_channels=32)
        >>> prior = ADMPrior(ADMUNet(cfg))
        >>> d = prior.denoise(torch.zeros(1, 3, 8, 8), 500)
        >>> d.eps.shape, d.v.shape
        (torch.Size([1, 3, 8, 8]), torch.Size([1, 3, 8, 8]))
    """

    unet: ADMUNet

    def __init__(
        self,
        unet: ADMUNet,
        *,
        class_label: int | None = None,
        info: dict[str, Any] | None = None,
        name: str = "adm",
    ):
        super().__init__()
        c = unet.config
        self.unet = unet.eval().requires_grad_(False)
        T = c.diffusion_steps
        if c.noise_schedule == "linear":  # guided-diffusion scales the β range by 1000 / T
            self.schedule = VPSchedule.linear(T, 1e-4 * 1000 / T, 0.02 * 1000 / T)
        else:
            self.schedule = VPSchedule.cosine(T)
        self.parameterization = "x0" if c.predict_xstart else "eps"
        self.learned_variance = c.learn_sigma
        self.state_shape = (c.in_channels, c.image_size, c.image_size)
        self.data_range = (-1.0, 1.0)
        self.clip_range = (-1.0, 1.0)
        self.compute_dtype = unet.inner_dtype
        self.info = dict(info or {})
        self.name = name
        self._class_label: int | None = None
        self.class_label = class_label

    @property
    def config(self) -> ADMConfig:
        return self.unet.config

    @property
    def class_label(self) -> int | None:
        """The class the model is conditioned on (None for unconditional models)."""
        return self._class_label

    @class_label.setter
    def class_label(self, label: int | None) -> None:
        _check_label(self.config, label, self.name)
        self._class_label = None if label is None else int(label)

    def network(self, x_t: torch.Tensor, t_model: torch.Tensor) -> torch.Tensor:
        y = None
        if self._class_label is not None:
            y = torch.full((x_t.shape[0],), self._class_label, dtype=torch.long, device=x_t.device)
        return self.unet(x_t, t_model.round(), y)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["adm"] = {
            **self.info,
            "config": self.config.as_dict(),
            "class_label": self._class_label,
            "weights_dtype": str(self.unet.inner_dtype),
        }
        d["parameters"] = sum(p.numel() for p in self.unet.parameters())
        return d


# ---------------------------------------------------------------------------------------------------------------
# loading


def load_adm_prior(
    path: str | os.PathLike[str],
    *,
    adm_config: Mapping[str, Any] | str | None = None,
    class_label: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    gradient_checkpointing: bool = False,
    name: str | None = None,
) -> ADMPrior:
    """Load an OpenAI guided-diffusion checkpoint (``.pt`` state dict, or ``.safetensors``) as an :class:`ADMPrior`.

    The architecture is inferred from the weights; settings they cannot tell come from the
    recognised published checkpoint (:data:`ADM_FAMILIES`) or from ``adm_config``.

    Args:
        path: the checkpoint file, e.g. ``256x256_diffusion_uncond.pt``.
        adm_config: overrides: :class:`ADMConfig` fields or guided-diffusion flags
            (``{"num_head_channels": 64, "noise_schedule": "cosine"}``), or a ``MODEL_FLAGS`` string as
            in guided-diffusion's README. ``image_size`` other than a recognised checkpoint's native
            size needs ``"allow_other_size": True``.
        class_label: the class of a class-conditional checkpoint (required for those).
        device: where to put it.
        dtype: ``torch.float16`` / ``torch.bfloat16`` convert the block convolutions (as the
            original's ``use_fp16``); GroupNorm, softmax, embeddings and the output layer stay float32.
        gradient_checkpointing: recompute block activations in the backward pass (less memory).
        name: recorded in results (default: the path).

    Raises:
        PickleRefusedError: the file needs full unpickling.
        CheckpointError: not an ADM state dict, or missing/unexpected keys (the first ones named).
        ValueError: a bad ``adm_config``, class label or image size.

    Example:
        >>> prior = load_adm_prior("256x256_diffusion_uncond.pt", dtype=torch.bfloat16,   # doctest: +SKIP
        ...                        gradient_checkpointing=True, device="cuda")
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"ADM checkpoint {p} does not exist")
    sd = read_state_dict(p)
    try:
        config, info = infer_adm_config(sd, p.name)
    except _Bad as e:
        raise CheckpointError(f"{p}: {e}") from None
    config, overridden = apply_overrides(config, info, adm_config)
    config.validate()
    _check_label(config, class_label, name or str(path))  # before building a multi-GB network
    info["overridden"] = overridden
    info["defaulted"] = [k for k in info["defaulted"] if k not in overridden]
    info["checkpoint"] = p.name
    try:
        net = build_adm(sd, config, dtype=dtype, gradient_checkpointing=gradient_checkpointing)
    except _Bad as e:
        raise CheckpointError(
            f"{p}: not a complete ADM state dict for the architecture its weights imply "
            f"(channels {config.model_channels}, mult {list(config.channel_mult)}, {config.num_res_blocks} res "
            f"blocks): {e}"
        ) from None
    del sd
    prior = ADMPrior(net, class_label=class_label, info=info, name=name or str(path))
    if device is not None:
        prior.to(device)
    return prior


# the network's parts and the checkpoint constants moved to adm_unet and adm_checkpoint (kept here for one release)
__getattr__ = moved(
    __name__,
    {
        **{
            name: f"fiberscope.priors.adm_unet:{name}"
            for name in (
                "NOISE_SCHEDULES",
                "AttentionBlock",
                "Downsample",
                "EmbedSequential",
                "GroupNorm32",
                "ResBlock",
                "Upsample",
                "attention",
                "timestep_embedding",
            )
        },
        "INFERRED": "fiberscope.priors.adm_checkpoint:INFERRED",
        "IGNORED_FLAGS": "fiberscope.priors.adm_checkpoint:IGNORED_FLAGS",
    },
)
