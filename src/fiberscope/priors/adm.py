"""OpenAI ADM (guided-diffusion) UNets as fiberscope priors, loaded from their ``.pt`` state dicts.

The paper's ImageNet experiments use ``256x256_diffusion_uncond.pt`` from openai/guided-diffusion
("Diffusion Models Beat GANs on Image Synthesis"), which diffusers cannot load. This module is
fiberscope's own implementation of that UNet (:class:`ADMUNet`), written from the architecture
description with the original parameter names, so that a published checkpoint loads with strict key
matching:

* :func:`infer_adm_config` reads the architecture from the keys and shapes of a state dict (model
  channels, channel multipliers, residual blocks per level, attention levels, learned σ, class
  conditioning, resblock up/down sampling, scale-shift norm) and recognises the published
  checkpoints (:data:`ADM_FAMILIES`), whose README flags fill in what the weights cannot tell
  (heads, legacy or new attention order, noise schedule, image size);
* :class:`ADMPrior` wires the network into the prior contract: VP schedule (linear 1e-4…0.02 or
  cosine over 1000 steps), ε-prediction, learned-range variance as ``Denoised.v`` (in [−1, 1],
  interpolation fraction ``(v + 1) / 2``), data in [−1, 1], an optional class label;
* :func:`load_adm_prior` reads the file with ``torch.load(weights_only=True)`` (or a
  ``.safetensors`` file), refuses pickles that need full unpickling and names the first bad keys
  of a state dict that is not an ADM UNet.

Precision follows the original's ``convert_to_fp16``: with ``dtype=float16``/``bfloat16`` only the
convolutions of the input, middle and output blocks are converted; the time and class embeddings,
every GroupNorm (computed in float32) and the output layer stay float32, and attention runs
through :func:`torch.nn.functional.scaled_dot_product_attention` (softmax accumulated in float32).

Example:
    >>> import fiberscope as fs
    >>> prior = fs.load_prior("256x256_diffusion_uncond.pt", dtype="bf16")        # doctest: +SKIP
    >>> prior.describe()["adm"]["family"], prior.data_shape                       # doctest: +SKIP
    ('adm-256-uncond', (3, 256, 256))
    >>> cond = fs.load_prior("256x256_diffusion.pt", class_label=207)             # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import CheckpointError, PickleRefusedError
from .base import Prior
from .schedule import VPSchedule

__all__ = [
    "ADM_FAMILIES",
    "ADMConfig",
    "ADMPrior",
    "ADMUNet",
    "infer_adm_config",
    "load_adm_prior",
    "parse_spec_options",
    "read_state_dict",
]

NOISE_SCHEDULES = ("linear", "cosine")


# ---------------------------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class ADMConfig:
    """The architecture and diffusion settings of one ADM UNet (guided-diffusion's flags).

    Attributes:
        image_size: side of the (square) images it was trained on.
        in_channels: image channels (3).
        model_channels: base width (``--num_channels``).
        out_channels: ``in_channels`` (ε only) or twice that (ε and the learned variance, ``--learn_sigma``).
        num_res_blocks: residual blocks per resolution level.
        channel_mult: width of each level as a multiple of ``model_channels`` (0.5 for the 512 model).
        attention_ds: downsampling factors (1, 2, 4, ...) of the levels with self-attention;
            guided-diffusion's ``--attention_resolutions 32,16,8`` at image size 256 is ``(8, 16, 32)``.
        num_classes: class-conditional models: number of classes (1000 for ImageNet), else None.
        num_heads: attention heads when ``num_head_channels`` is −1.
        num_head_channels: channels per head (−1: use ``num_heads``).
        num_heads_upsample: heads in the decoder's attention (−1: as ``num_heads``).
        use_scale_shift_norm: the time embedding scales and shifts the second GroupNorm (FiLM).
        resblock_updown: down/upsampling by residual blocks instead of (strided) convolutions.
        conv_resample: convolutional down/upsampling (False: average pooling / nearest neighbour).
        use_new_attention_order: split q, k, v before heads (``QKVAttention``) instead of the legacy
            per-head layout (``QKVAttentionLegacy``).
        noise_schedule: ``"linear"`` (β 1e-4…0.02 scaled by 1000/T) or ``"cosine"``.
        diffusion_steps: T.
        predict_xstart: the network predicts x0 instead of ε.
        rescale_timesteps: the network was fed ``t·1000/T`` (guided-diffusion's ``--rescale_timesteps``).
    """

    image_size: int = 256
    in_channels: int = 3
    model_channels: int = 256
    out_channels: int = 6
    num_res_blocks: int = 2
    channel_mult: tuple[float, ...] = (1, 1, 2, 2, 4, 4)
    attention_ds: tuple[int, ...] = (8, 16, 32)
    num_classes: int | None = None
    num_heads: int = 4
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False
    conv_resample: bool = True
    use_new_attention_order: bool = False
    noise_schedule: str = "linear"
    diffusion_steps: int = 1000
    predict_xstart: bool = False
    rescale_timesteps: bool = False

    @property
    def learn_sigma(self) -> bool:
        return self.out_channels == 2 * self.in_channels

    @property
    def levels(self) -> int:
        return len(self.channel_mult)

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (``2 ** (levels − 1)``)."""
        return 2 ** (self.levels - 1)

    @property
    def attention_resolutions(self) -> tuple[int, ...]:
        """The attention levels as guided-diffusion's ``--attention_resolutions`` (pixels), largest first."""
        return tuple(sorted((self.image_size // d for d in self.attention_ds), reverse=True))

    def widths(self) -> list[int]:
        return [int(m * self.model_channels) for m in self.channel_mult]

    def heads(self, channels: int, upsample: bool = False) -> int:
        """Attention heads of a block with ``channels`` channels (raises if they do not divide)."""
        if self.num_head_channels != -1:
            if self.num_head_channels <= 0 or channels % self.num_head_channels:
                raise ValueError(
                    f"attention at {channels} channels cannot be split into heads of {self.num_head_channels} "
                    "channels: pass adm_config={'num_head_channels': N} with N dividing it, or {'num_heads': N}"
                )
            return channels // self.num_head_channels
        n = self.num_heads_upsample if upsample and self.num_heads_upsample != -1 else self.num_heads
        if n <= 0 or channels % n:
            raise ValueError(
                f"{n} attention heads do not divide {channels} channels: pass adm_config={{'num_heads': N}}"
            )
        return n

    def check_size(self, size: int | tuple[int, ...], what: str = "image size") -> None:
        """Raise a ValueError naming the accepted sizes unless every side is a multiple of :attr:`size_multiple`."""
        sides = (size,) if isinstance(size, int) else tuple(size)
        m = self.size_multiple
        if any(int(s) <= 0 or int(s) % m for s in sides):
            got = "×".join(str(int(s)) for s in sides)
            examples = ", ".join(str(m * k) for k in (1, 2, 4, 8))
            raise ValueError(
                f"{what} {got}: this ADM has {self.levels} resolution levels, so it takes image sides that are "
                f"multiples of {m} ({examples}, ...; it was configured for {self.image_size}×{self.image_size})"
            )

    def validate(self) -> None:
        if self.noise_schedule not in NOISE_SCHEDULES:
            raise ValueError(f"noise_schedule must be one of {NOISE_SCHEDULES}, got {self.noise_schedule!r}")
        if self.out_channels not in (self.in_channels, 2 * self.in_channels):
            raise ValueError(
                f"out_channels {self.out_channels} must be in_channels ({self.in_channels}) or twice that (learn_sigma)"
            )
        if self.diffusion_steps < 2:
            raise ValueError(f"diffusion_steps must be at least 2, got {self.diffusion_steps}")
        self.check_size(self.image_size)
        bad = [d for d in self.attention_ds if d not in [2**lvl for lvl in range(self.levels)]]
        if bad:
            raise ValueError(
                f"attention_ds {list(self.attention_ds)}: {bad} is not the downsampling factor of a level "
                f"(1 .. {self.size_multiple} for {self.levels} levels)"
            )
        widths = self.widths()
        if any(w % 32 for w in widths):
            raise ValueError(f"level widths {widths} must be multiples of 32 (ADM's GroupNorm has 32 groups)")
        for lvl, w in enumerate(widths):
            if 2**lvl in self.attention_ds:
                self.heads(w)
                self.heads(w, upsample=True)
        self.heads(widths[-1])

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attention_ds"] = list(self.attention_ds)
        d["attention_resolutions"] = list(self.attention_resolutions)
        d["learn_sigma"] = self.learn_sigma
        return d


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
# the network


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype, cast back (as the original's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps).to(x.dtype)


def _norm(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t·f_i), sin(t·f_i)]`` with ``f_i = max_period^(−i/half)``, float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class _Checkpointed(nn.Module):
    """A block whose activations can be recomputed in the backward pass."""

    gradient_checkpointing: bool = False

    def _forward(self, *args: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(self._forward, *args, use_reentrant=False)
        return self._forward(*args)


class Downsample(nn.Module):
    """Halve the resolution: a strided 3×3 convolution (``op``) or average pooling."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.op: nn.Module = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double the resolution (nearest neighbour), then a 3×3 convolution (``conv``) if asked."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class ResBlock(_Checkpointed):
    """Norm → SiLU → conv, time-embedding injection (add, or scale-and-shift), norm → SiLU → conv, plus skip.

    With ``up``/``down`` the block also resamples (nearest / average pooling) between the first
    norm-activation and its convolution, and on the skip path.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int,
        scale_shift: bool,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        self.in_layers = nn.Sequential(_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.resample = "up" if up else ("down" if down else None)
        self.scale_shift = scale_shift
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, (2 if scale_shift else 1) * out_channels))
        self.out_layers = nn.Sequential(
            _norm(out_channels), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        self.skip_connection: nn.Module = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        return x

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        norm, act, conv = self.in_layers
        h = conv(self._resample(act(norm(x))))
        x = self._resample(x)
        e = self.emb_layers(emb).to(h.dtype)[..., None, None]
        out_norm, rest = self.out_layers[0], self.out_layers[1:]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = rest(out_norm(h) * (1 + scale) + shift)
        else:
            h = rest(out_norm(h + e))
        return self.skip_connection(x) + h


def attention(qkv: torch.Tensor, heads: int, new_order: bool) -> torch.Tensor:
    """Multi-head self-attention on ``qkv`` ``[B, 3·C, T]`` → ``[B, C, T]`` through SDPA.

    The legacy layout (guided-diffusion's ``QKVAttentionLegacy``) holds per head its q, k, v
    (``[heads, 3, ch]`` along the channels); the new one (``QKVAttention``) first q, k, v then heads
    (``[3, heads, ch]``). The scale is ``1/√ch`` either way.
    """
    b, c3, t = qkv.shape
    ch = c3 // (3 * heads)
    if new_order:
        q, k, v = qkv.reshape(b, 3, heads, ch, t).unbind(1)
    else:
        q, k, v = qkv.reshape(b, heads, 3, ch, t).unbind(2)
    out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
    return out.transpose(-1, -2).reshape(b, heads * ch, t)


class AttentionBlock(_Checkpointed):
    """Self-attention over all positions: GroupNorm, a 1×1 ``qkv`` convolution, attention, ``proj_out``, residual."""

    def __init__(self, channels: int, heads: int, new_order: bool):
        super().__init__()
        self.heads = heads
        self.new_order = new_order
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = self.proj_out(attention(self.qkv(self.norm(x)), self.heads, self.new_order))
        return (x + h).reshape(b, c, *spatial)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x)


class EmbedSequential(nn.Sequential):
    """A sequence of layers that each receive the time embedding (ResBlocks use it, the others ignore it)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, (ResBlock, AttentionBlock, Downsample, Upsample)) else layer(x)
        return x


class ADMUNet(nn.Module):
    """The ADM UNet, with guided-diffusion's parameter names (``input_blocks.3.0.in_layers.2.weight``, ...).

    ``forward(x, t, y=None)`` returns the raw output ``[B, out_channels, H, W]`` (ε and, with learned
    σ, the variance interpolation v) in float32.

    Args:
        config: the architecture.
        dtype: dtype of the convolutions in the input, middle and output blocks (the original's
            ``use_fp16`` converts exactly those); everything else stays float32.

    Example:
        >>> import torch
        >>> cfg = ADMConfig(image_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
        ...                 attention_ds=(2,), num_head_channels=32)
        >>> net = ADMUNet(cfg)
        >>> net(torch.zeros(1, 3, 8, 8), torch.tensor([10])).shape
        torch.Size([1, 6, 8, 8])
    """

    def __init__(self, config: ADMConfig, dtype: torch.dtype = torch.float32):
        super().__init__()
        config.validate()
        self.config = c = config
        mc = c.model_channels
        temb = 4 * mc
        self.time_embed = nn.Sequential(nn.Linear(mc, temb), nn.SiLU(), nn.Linear(temb, temb))
        if c.num_classes is not None:
            table = torch.empty(c.num_classes, temb)
            if table.device.type != "meta":  # on the meta device (loading) normal_ would import torch._dynamo (seconds)
                nn.init.normal_(table)
            self.label_emb = nn.Embedding(c.num_classes, temb, _weight=table)
        widths = c.widths()
        ch = widths[0]
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(c.in_channels, ch, 3, padding=1))])
        skips = [ch]
        ds = 1
        for level, w in enumerate(widths):
            for _ in range(c.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, temb, w, c.use_scale_shift_norm)]
                ch = w
                if ds in c.attention_ds:
                    layers.append(AttentionBlock(ch, c.heads(ch), c.use_new_attention_order))
                self.input_blocks.append(EmbedSequential(*layers))
                skips.append(ch)
            if level < len(widths) - 1:
                down = (
                    ResBlock(ch, temb, ch, c.use_scale_shift_norm, down=True)
                    if c.resblock_updown
                    else Downsample(ch, c.conv_resample)
                )
                self.input_blocks.append(EmbedSequential(down))
                skips.append(ch)
                ds *= 2
        self.middle_block = EmbedSequential(
            ResBlock(ch, temb, ch, c.use_scale_shift_norm),
            AttentionBlock(ch, c.heads(ch), c.use_new_attention_order),
            ResBlock(ch, temb, ch, c.use_scale_shift_norm),
        )
        self.output_blocks = nn.ModuleList()
        for level, w in reversed(list(enumerate(widths))):
            for i in range(c.num_res_blocks + 1):
                layers = [ResBlock(ch + skips.pop(), temb, w, c.use_scale_shift_norm)]
                ch = w
                if ds in c.attention_ds:
                    layers.append(AttentionBlock(ch, c.heads(ch, upsample=True), c.use_new_attention_order))
                if level and i == c.num_res_blocks:
                    layers.append(
                        ResBlock(ch, temb, ch, c.use_scale_shift_norm, up=True)
                        if c.resblock_updown
                        else Upsample(ch, c.conv_resample)
                    )
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(widths[0], c.out_channels, 3, padding=1))
        self.inner_dtype = torch.float32
        self.set_inner_dtype(dtype)

    def _blocks(self) -> Iterator[nn.Module]:
        yield from self.input_blocks
        yield self.middle_block
        yield from self.output_blocks

    def set_inner_dtype(self, dtype: torch.dtype) -> ADMUNet:
        """Convert the block convolutions to ``dtype`` (the original's ``convert_to_fp16``); the rest stays float32."""
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"ADM weights can be float32, float16 or bfloat16, not {dtype}")
        for block in self._blocks():
            for m in block.modules():
                if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                    m.to(dtype)
        self.inner_dtype = dtype
        return self

    def set_gradient_checkpointing(self, enabled: bool = True) -> ADMUNet:
        """Recompute each residual and attention block's activations in the backward pass."""
        for m in self.modules():
            if isinstance(m, _Checkpointed):
                m.gradient_checkpointing = enabled
        return self

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        c = self.config
        if (y is None) != (c.num_classes is None):
            raise ValueError(
                "this ADM is class-conditional: pass class labels y"
                if y is None
                else "this ADM is unconditional: it takes no class labels"
            )
        if x.dim() != 4 or x.shape[1] != c.in_channels:
            raise ValueError(f"ADM input must be [B, {c.in_channels}, H, W], got {list(x.shape)}")
        c.check_size(tuple(x.shape[-2:]), "input")
        if c.rescale_timesteps:
            t = t.float() * (1000.0 / c.diffusion_steps)
        emb = self.time_embed(timestep_embedding(t, c.model_channels))
        if y is not None:
            emb = emb + self.label_emb(y)
        h = x.to(self.inner_dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.float())


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
        self.data_shape = (c.in_channels, c.image_size, c.image_size)
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
