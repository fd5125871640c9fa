"""Architectures of the built-in zoo's own networks (the priors are diffusers ``UNet2DModel``s).

Every class here is small enough to train on a laptop CPU; weights ship as safetensors and are
loaded into these classes by :mod:`fiberscope.zoo.registry`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..data.colormnist import decolorize

__all__ = ["ColorblindEmbed", "ConvVAE", "GrayEncoder", "LatentDenoiser", "SmallCNN", "timestep_embedding"]


class SmallCNN(nn.Module):
    """A 28×28 classifier with named layers ``features``, ``penultimate`` and ``logits``.

    Input: images in [-1, 1], ``[B, C, 28, 28]``. ``forward`` returns logits; the named layers are
    plain attributes, so :func:`fiberscope.load_subject` can hook any of them.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, hidden: int = 128):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 14
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 7
            nn.Conv2d(2 * w, 4 * w, 3, padding=1),
            nn.BatchNorm2d(4 * w),
            nn.ReLU(),
        )
        self.penultimate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, hidden), nn.ReLU())
        self.dropout = nn.Dropout(0.2)
        self.logits = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.dropout(self.penultimate(self.features(x))))


class GrayEncoder(nn.Module):
    """Encoder of grey 28×28 digits in [0, 1] to a ``dim``-d embedding (trained as an autoencoder)."""

    def __init__(self, dim: int = 48, width: int = 32):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(1, w, 3, stride=2, padding=1),
            nn.SiLU(),  # 14
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            nn.SiLU(),  # 7
            nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(2 * w * 49, 256),
            nn.SiLU(),
            nn.Linear(256, dim),
        )

    def forward(self, ink: torch.Tensor) -> torch.Tensor:
        return self.net(ink * 2 - 1)


class GrayDecoder(nn.Module):
    """Decoder matching :class:`GrayEncoder` (used only to train it)."""

    def __init__(self, dim: int = 48, width: int = 32):
        super().__init__()
        w = width
        self.fc = nn.Sequential(nn.Linear(dim, 256), nn.SiLU(), nn.Linear(256, 2 * w * 49), nn.SiLU())
        self.net = nn.Sequential(
            nn.ConvTranspose2d(2 * w, 2 * w, 4, stride=2, padding=1),
            nn.SiLU(),  # 14
            nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1),
            nn.SiLU(),  # 28
            nn.Conv2d(w, 1, 3, padding=1),
        )
        self.w = w

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).view(-1, 2 * self.w, 7, 7))  # logits of the ink


class ColorblindEmbed(nn.Module):
    """Colour-blind subject: ``φ(x) = encoder(decolorize(x))`` for colour-MNIST ``x`` in [-1, 1].

    Decolourising first makes φ exactly invariant to every recolouring (background from the
    mixture, foreground = (background + 0.5) mod 1), so its true fiber holds all of them.
    """

    def __init__(self, dim: int = 48, width: int = 32):
        super().__init__()
        self.encoder = GrayEncoder(dim, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(decolorize((x + 1) / 2))


class ConvVAE(nn.Module):
    """A small VAE for 3×28×28 colour MNIST in [-1, 1], with a ``latent_dim``-d Gaussian latent."""

    def __init__(self, latent_dim: int = 32, width: int = 48, channels: int = 3):
        super().__init__()
        w = width
        self.latent_dim = latent_dim
        self.enc = nn.Sequential(
            nn.Conv2d(channels, w, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(w, w, 4, stride=2, padding=1),
            nn.SiLU(),  # 14
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(2 * w, 2 * w, 4, stride=2, padding=1),
            nn.SiLU(),  # 7
            nn.Flatten(),
            nn.Linear(2 * w * 49, 512),
            nn.SiLU(),
            nn.Linear(512, 2 * latent_dim),
        )
        self.dec_fc = nn.Sequential(nn.Linear(latent_dim, 512), nn.SiLU(), nn.Linear(512, 2 * w * 49), nn.SiLU())
        self.dec = nn.Sequential(
            nn.ConvTranspose2d(2 * w, 2 * w, 4, stride=2, padding=1),
            nn.SiLU(),  # 14
            nn.Conv2d(2 * w, w, 3, padding=1),
            nn.SiLU(),
            nn.ConvTranspose2d(w, w, 4, stride=2, padding=1),
            nn.SiLU(),  # 28
            nn.Conv2d(w, channels, 3, padding=1),
        )
        self.w = w

    def encode_dist(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.enc(x).chunk(2, dim=1)
        return mu, logvar.clamp(-12, 6)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior mean of the latent."""
        return self.encode_dist(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent → image in [-1, 1]."""
        return torch.tanh(self.dec(self.dec_fc(z).view(-1, 2 * self.w, 7, 7)))


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
