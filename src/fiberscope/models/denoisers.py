"""Denoising networks of the zoo's priors: the 28×28 pixel UNet's settings and the latent residual MLP.

The pixel priors are diffusers ``UNet2DModel``s built with :data:`UNET_28`; the latent prior's
denoiser is :class:`LatentDenoiser`. :func:`timestep_embedding` is the sinusoidal embedding the
latent networks share.

Example:
    >>> import torch
    >>> from fiberscope.models import LatentDenoiser
    >>> LatentDenoiser(dim=8, width=32, blocks=2, temb=16)(torch.zeros(3, 8), torch.tensor([0, 10, 999])).shape
    torch.Size([3, 8])
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNET_28", "LatentDenoiser", "timestep_embedding"]

#: ``diffusers.UNet2DModel`` settings of the zoo's 28×28 pixel priors (about 1 M parameters); the
#: FeatInv model uses them when it trains from scratch.
UNET_28: dict[str, Any] = dict(
    sample_size=28,
    block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    layers_per_block=1,
    norm_num_groups=8,
    attention_head_dim=32,
)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of (float) timesteps ``t`` [B] → [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class _ResBlock(nn.Module):
    def __init__(self, width: int, temb: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.t = nn.Linear(temb, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, te: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(F.silu(self.fc1(self.norm(h)) + self.t(te)))


class LatentDenoiser(nn.Module):
    """Residual-MLP ε-prediction network on vector latents (the paper's colour-MNIST prior shape).

    ``forward(z, t)`` takes latents ``[B, dim]`` and integer or float diffusion timesteps ``[B]``.
    """

    def __init__(self, dim: int = 32, width: int = 512, blocks: int = 6, temb: int = 64):
        super().__init__()
        self.dim, self.temb = dim, temb
        self.t_mlp = nn.Sequential(nn.Linear(temb, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList([_ResBlock(width, temb) for _ in range(blocks)])
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, dim))

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0:
            t = t.expand(z.shape[0])
        te = self.t_mlp(timestep_embedding(t, self.temb))
        h = self.inp(z)
        for b in self.blocks:
            h = b(h, te)
        return self.out(h)
