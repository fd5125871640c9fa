"""Conditional flow matching on vector latents: ``v_θ(z_t, t, c)`` with a linear interpolation path.

The path is ``z_t = (1 − t)·ε + t·z`` (noise at t = 0, data at t = 1) and the regression target is
``z − ε`` (Lipman et al. 2023, the paper's ``FM`` class). Samples integrate the ODE from
``ε ~ N(0, I)`` with a few fixed Euler or midpoint steps; the solve is an ordinary differentiable
function of ``ε`` and ``c``, so a fiber loss on its output trains the velocity field through it.

Example:
    >>> import torch
    >>> m = ConditionalFlowMatching(dim=4, cond_dim=3, width=16, blocks=1)
    >>> z, c = torch.randn(5, 4), torch.randn(5, 3)
    >>> m.loss(z, c, torch.Generator().manual_seed(0)).shape
    torch.Size([])
    >>> m.generate(c, torch.randn(5, 4)).shape
    torch.Size([5, 4])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models import timestep_embedding

__all__ = ["SOLVERS", "ConditionalFlowMatching", "ConditionalVelocity"]

SOLVERS = ("euler", "midpoint")


class _Block(nn.Module):
    """Pre-norm residual MLP block modulated by an embedding of (t, c)."""

    def __init__(self, width: int, emb: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(emb, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(F.silu(self.fc1(self.norm(h)) + self.emb(e)))


class ConditionalVelocity(nn.Module):
    """Residual-MLP velocity field ``v(z_t, t, c)``; ``c`` is standardised with stored statistics.

    Args:
        dim: latent dimension.
        cond_dim: dimension of the (flattened) condition.
        width, blocks: the MLP (the paper's FM: 6 blocks of width 512).
        emb: size of the time and condition embeddings.
    """

    cond_shift: torch.Tensor
    cond_scale: torch.Tensor

    def __init__(self, dim: int, cond_dim: int, width: int = 512, blocks: int = 4, emb: int = 128):
        super().__init__()
        self.dim, self.cond_dim, self.emb_dim = dim, cond_dim, emb
        self.t_mlp = nn.Sequential(nn.Linear(emb, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.c_mlp = nn.Sequential(nn.Linear(cond_dim, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList([_Block(width, emb) for _ in range(blocks)])
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, dim))
        self.register_buffer("cond_shift", torch.zeros(cond_dim))
        self.register_buffer("cond_scale", torch.ones(cond_dim))

    def forward(self, z: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0:
            t = t.expand(z.shape[0])
        c = (c.flatten(1) - self.cond_shift) * self.cond_scale
        e = self.t_mlp(timestep_embedding(t * 1000.0, self.emb_dim)) + self.c_mlp(c)
        h = self.inp(z)
        for b in self.blocks:
            h = b(h, e)
        return self.out(h)


class ConditionalFlowMatching(nn.Module):
    """A conditional generator ``G(ε, c)``: flow matching training and a fixed-step ODE sampler.

    Args:
        dim, cond_dim, width, blocks, emb: see :class:`ConditionalVelocity`.
        solver: ``"euler"`` or ``"midpoint"`` (the sampler, also used inside the fiber regulariser).
        ode_steps: steps of the solver from t = 0 to 1.
    """

    def __init__(
        self,
        dim: int,
        cond_dim: int,
        width: int = 512,
        blocks: int = 4,
        emb: int = 128,
        solver: str = "midpoint",
        ode_steps: int = 8,
    ):
        super().__init__()
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        if not isinstance(ode_steps, int) or ode_steps < 1:
            raise ValueError(f"ode_steps must be a positive integer, got {ode_steps!r}")
        self.velocity = ConditionalVelocity(dim, cond_dim, width, blocks, emb)
        self.dim, self.cond_dim = dim, cond_dim
        self.solver, self.ode_steps = solver, ode_steps

    def set_condition_stats(self, c: torch.Tensor) -> None:
        """Standardise conditions with the training set's per-dimension mean and std."""
        c = c.flatten(1).float()
        self.velocity.cond_shift.copy_(c.mean(0))
        self.velocity.cond_scale.copy_(1.0 / c.std(0).clamp_min(1e-6))

    def loss(self, z: torch.Tensor, c: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Flow-matching loss ``‖v(z_t, t, c) − (z − ε)‖²`` (mean over batch and dimensions)."""
        b = z.shape[0]
        t = torch.rand(b, generator=g).to(z)
        eps = torch.randn(z.shape, generator=g).to(z)
        zt = (1 - t[:, None]) * eps + t[:, None] * z
        return F.mse_loss(self.velocity(zt, t, c), z - eps)

    def generate(
        self, c: torch.Tensor, eps: torch.Tensor, steps: int | None = None, solver: str | None = None
    ) -> torch.Tensor:
        """Integrate the ODE from ``eps`` (t = 0) to data (t = 1); differentiable. Returns ``[B, dim]``."""
        steps = self.ode_steps if steps is None else int(steps)
        solver = self.solver if solver is None else solver
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        if steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps}")
        z = eps
        h = 1.0 / steps
        for k in range(steps):
            t = torch.full((z.shape[0],), k * h, device=z.device, dtype=z.dtype)
            v = self.velocity(z, t, c)
            if solver == "midpoint":
                v = self.velocity(z + 0.5 * h * v, t + 0.5 * h, c)
            z = z + h * v
        return z

    def evaluations(self, steps: int | None = None, solver: str | None = None) -> int:
        """Network evaluations per sample of :meth:`generate`."""
        steps = self.ode_steps if steps is None else int(steps)
        return steps * (2 if (solver or self.solver) == "midpoint" else 1)
