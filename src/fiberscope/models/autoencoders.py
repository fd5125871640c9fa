"""Small autoencoders on 28×28 digits: the colour-blind subject's encoder and the colour-MNIST VAE.

:class:`GrayEncoder` / :class:`GrayDecoder` are trained together on grey ink; the encoder, after
decolourising, is the colour-blind subject :class:`ColorblindEmbed` (``builtin:colorblind-mnist``).
:class:`ConvVAE` is the autoencoder of the latent prior ``builtin:colormnist-latent``, and of the
trained models that model a latent space.

Example:
    >>> import torch
    >>> from fiberscope.models import ConvVAE
    >>> vae = ConvVAE(latent_dim=4, width=8)
    >>> vae.decode(vae.encode(torch.zeros(2, 3, 28, 28))).shape
    torch.Size([2, 3, 28, 28])
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.colormnist import decolorize

__all__ = ["ColorblindEmbed", "ConvVAE", "GrayDecoder", "GrayEncoder"]


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
