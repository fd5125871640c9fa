"""A conditional invertible network (coupling flow) on vector latents, with exact likelihood.

Each block is an affine normalisation (learned, starting at the identity), a fixed random rotation
(an orthogonal matrix, log-determinant 0) and an affine coupling: the first half ``x₁`` passes
unchanged and, together with the condition embedding ``e``, sets scale and shift of the second half,
``y₂ = x₂·exp(s(x₁, e)) + t(x₁, e)`` with ``s`` soft-clamped to ``±clamp`` (as in Glow/RealNVP and
the "all-in-one" blocks of the paper's ``NF`` class). The last layer of every coupling network
starts at zero, so a fresh flow is a pure rotation-and-scale map.

``forward(x, c) -> (z, log|det ∂z/∂x|)`` is the normalising direction; :meth:`ConditionalINN.generate`
inverts it exactly and differentiably, so a fiber loss on generated latents trains the flow.

Example:
    >>> import torch
    >>> flow = ConditionalINN(dim=4, cond_dim=3, blocks=2, width=16)
    >>> x, c = torch.randn(5, 4), torch.randn(5, 3)
    >>> z, logdet = flow(x, c)
    >>> bool(torch.allclose(flow.generate(c, z), x, atol=1e-5))
    True
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ConditionalINN"]


class _Coupling(nn.Module):
    rotation: torch.Tensor

    def __init__(self, dim: int, emb: int, width: int, depth: int, clamp: float, seed: int):
        super().__init__()
        self.d1 = dim // 2
        self.d2 = dim - self.d1
        self.clamp = float(clamp)
        layers: list[nn.Module] = [nn.Linear(self.d1 + emb, width), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.SiLU()]
        last = nn.Linear(width, 2 * self.d2)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        q, r = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed)))
        self.register_buffer("rotation", q * torch.sign(torch.diagonal(r))[None, :])

    def _st(self, x1: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self.net(torch.cat([x1, e], 1)).chunk(2, dim=1)
        return self.clamp * torch.tanh(s / self.clamp), t

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (x * self.log_scale.exp() + self.bias) @ self.rotation.T
        x1, x2 = x[:, : self.d1], x[:, self.d1 :]
        s, t = self._st(x1, e)
        y = torch.cat([x1, x2 * s.exp() + t], 1)
        return y, s.sum(1) + self.log_scale.sum()

    def inverse(self, y: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        y1, y2 = y[:, : self.d1], y[:, self.d1 :]
        s, t = self._st(y1, e)
        x = torch.cat([y1, (y2 - t) * (-s).exp()], 1) @ self.rotation
        return (x - self.bias) * (-self.log_scale).exp()


class ConditionalINN(nn.Module):
    """Conditional coupling flow ``z = f(x; c)`` with ``z ~ N(0, I)``, trained by maximum likelihood.

    Args:
        dim: latent dimension (≥ 2).
        cond_dim: dimension of the flattened condition ``c`` (standardised with stored statistics).
        blocks: coupling blocks (the paper's NF: 40 blocks of width 512; Rombach et al.: 20 flows).
        width, depth: hidden width and number of hidden layers of each coupling network.
        clamp: soft bound on the log-scale of each coupling.
        embed: None feeds the standardised ``c`` to every block; an int first maps it through an
            MLP embedder to that many dimensions (the conditioning network of Rombach et al.).
        embed_width: hidden width of the embedder.
        seed: seed of the fixed rotations (part of the architecture, stored with the weights).
    """

    cond_shift: torch.Tensor
    cond_scale: torch.Tensor

    def __init__(
        self,
        dim: int,
        cond_dim: int,
        blocks: int = 12,
        width: int = 256,
        depth: int = 2,
        clamp: float = 2.0,
        embed: int | None = None,
        embed_width: int = 256,
        seed: int = 0,
    ):
        super().__init__()
        if dim < 2:
            raise ValueError(f"dim must be at least 2 for a coupling flow, got {dim}")
        if blocks < 1 or depth < 1:
            raise ValueError(f"blocks and depth must be positive, got blocks={blocks}, depth={depth}")
        self.dim, self.cond_dim = dim, cond_dim
        if embed is None:
            self.embedder: nn.Module = nn.Identity()
            emb = cond_dim
        else:
            self.embedder = nn.Sequential(
                nn.Linear(cond_dim, embed_width),
                nn.SiLU(),
                nn.Linear(embed_width, embed_width),
                nn.SiLU(),
                nn.Linear(embed_width, embed),
            )
            emb = embed
        self.blocks = nn.ModuleList([_Coupling(dim, emb, width, depth, clamp, seed * 1000 + i) for i in range(blocks)])
        self.register_buffer("cond_shift", torch.zeros(cond_dim))
        self.register_buffer("cond_scale", torch.ones(cond_dim))

    def set_condition_stats(self, c: torch.Tensor) -> None:
        """Standardise conditions with the training set's per-dimension mean and std."""
        c = c.flatten(1).float()
        self.cond_shift.copy_(c.mean(0))
        self.cond_scale.copy_(1.0 / c.std(0).clamp_min(1e-6))

    def embed(self, c: torch.Tensor) -> torch.Tensor:
        return self.embedder((c.flatten(1) - self.cond_shift) * self.cond_scale)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, log|det ∂z/∂x|)`` per sample."""
        e = self.embed(c)
        logdet = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        for b in self.blocks:
            x, ld = b(x, e)
            logdet = logdet + ld
        return x, logdet

    def generate(self, c: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``x = f⁻¹(z; c)``: latents from Gaussian codes ``z`` (exact, differentiable)."""
        e = self.embed(c)
        for b in reversed(list(self.blocks)):
            z = b.inverse(z, e)  # type: ignore[operator]
        return z

    def nll(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood per dimension (nats), per sample ``[B]``."""
        z, logdet = self(x, c)
        nll = 0.5 * (z * z).sum(1) + 0.5 * self.dim * math.log(2 * math.pi) - logdet
        return nll / self.dim

    def loss(self, x: torch.Tensor, c: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Mean NLL per dimension (the training loss; ``g`` is unused, kept for a uniform signature)."""
        return self.nll(x, c).mean()

    def evaluations(self) -> int:
        """Network evaluations per sample of :meth:`generate` (one pass through the flow)."""
        return 1
