"""The ADM (OpenAI guided-diffusion) UNet, written from its architecture description with the original
parameter names, so that a published checkpoint loads with strict key matching.

:class:`ADMConfig` holds one network's architecture and diffusion settings (guided-diffusion's
flags); :class:`ADMUNet` is the network. Precision follows the original's ``convert_to_fp16``:
with ``dtype=float16``/``bfloat16`` only the convolutions of the input, middle and output blocks
are converted; the time and class embeddings, every GroupNorm (computed in float32) and the output
layer stay float32, and attention runs through :func:`torch.nn.functional.scaled_dot_product_attention`
(softmax accumulated in float32). Reading checkpoints is :mod:`fiberscope.priors.adm_checkpoint`;
the prior is :mod:`fiberscope.priors.adm`.

Example:
    >>> import torch
    >>> cfg = ADMConfig(image_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
    ...                 attention_ds=(2,), num_head_channels=32)
    >>> ADMUNet(cfg)(torch.zeros(1, 3, 8, 8), torch.tensor([10])).shape
    torch.Size([1, 6, 8, 8])
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "NOISE_SCHEDULES",
    "ADMConfig",
    "ADMUNet",
    "AttentionBlock",
    "Downsample",
    "EmbedSequential",
    "GroupNorm32",
    "ResBlock",
    "Upsample",
    "attention",
    "timestep_embedding",
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
