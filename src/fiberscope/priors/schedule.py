"""Interpolant schedules ``x_t = α(t)·x0 + σ(t)·ε`` in each prior's native time units.

Two families cover the priors fiberscope meets:

* :class:`VPSchedule` — variance-preserving diffusion from a model's ``alphas_cumprod``
  (α = √ᾱ_t, σ = √(1 − ᾱ_t)); time is the integer training timestep 0 … T−1.
* :class:`FlowSchedule` — rectified flow, α = 1 − σ, σ = t / T; time is the diffusers
  convention ``timestep = σ · T`` (σ = 1 is noise, σ = 0 is data).

Times are plain floats in ``[0, T]``; ``None`` stands for "clean data" (α = 1, σ = 0), the target
of the final step. Grids run from the noisiest time down, as the NDTM reference does.

Example:
    >>> s = VPSchedule.linear(1000)
    >>> s.grid(4)                                    # the reference's uniform grid, noisiest first
    [750.0, 500.0, 250.0, 0.0]
    >>> round(float(s.alpha_sigma(0)[0]), 3)
    1.0
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

__all__ = ["FlowSchedule", "Schedule", "VPSchedule", "abar"]


def abar(alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """ᾱ = α² / (α² + σ²): the signal fraction of ``x_t = α·x0 + σ·ε``, comparable across families.

    ᾱ = α² for VP schedules (α² + σ² = 1); on a flow it is 0 at pure noise (σ = 1) and 1 at the data.

    Example:
        >>> round(float(abar(*VPSchedule.linear().alpha_sigma(999))), 6)   # ᾱ at the last training step
        4e-05
        >>> float(abar(*FlowSchedule().alpha_sigma(500))), float(abar(*FlowSchedule().alpha_sigma(1000)))
        (0.5, 0.0)
    """
    return alpha * alpha / (alpha * alpha + sigma * sigma)


class Schedule(ABC):
    """``x_t = α(t)·x0 + σ(t)·ε``; subclasses give α, σ and the grid in native time units."""

    kind: str = "abstract"
    num_train_timesteps: int = 1000

    @abstractmethod
    def alpha_sigma(self, t: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        """α(t), σ(t) as 0-d float64 tensors; ``t=None`` is clean data (1, 0)."""

    @abstractmethod
    def grid(self, steps: int, t_max: float | None = None) -> list[float]:
        """``steps`` times from the noisiest down (``t_max`` caps the start, e.g. for SDEdit)."""

    def model_time(self, t: float) -> float:
        """The timestep value the network was trained to receive at time ``t``."""
        return t

    def beta(self, t: float) -> torch.Tensor:
        """The one-step β at ``t``: ``1 − ᾱ(t)/ᾱ(t − 1)`` on the training grid (ᾱ = 1 before t = 0).

        This is the β of the *full* schedule, not of a strided sampling step (``1 − ᾱ_t/ᾱ_s``).
        """
        prev = float(t) - 1
        return 1 - abar(*self.alpha_sigma(t)) / abar(*self.alpha_sigma(prev if prev >= 0 else None))

    def config(self) -> dict:
        return {"kind": self.kind, "num_train_timesteps": self.num_train_timesteps}


class VPSchedule(Schedule):
    """Variance-preserving diffusion from ``alphas_cumprod`` (a DDPM/DDIM training schedule).

    Args:
        alphas_cumprod: ᾱ_t for t = 0 … T−1.
        betas: the training β_t, when known exactly (a scheduler's ``betas``); otherwise they are
            recovered as ``1 − ᾱ_t/ᾱ_{t−1}``. Only :attr:`linear_betas` and :meth:`beta` read them.

    Example:
        >>> VPSchedule.linear(1000, 1e-4, 0.02).linear_betas
        (0.0001, 0.02)
        >>> VPSchedule.cosine().linear_betas is None
        True
    """

    kind = "vp"

    def __init__(self, alphas_cumprod: torch.Tensor, betas: torch.Tensor | None = None):
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if ac.numel() < 2 or not bool(((ac > 0) & (ac <= 1)).all()):
            raise ValueError("alphas_cumprod must be a 1-D sequence of values in (0, 1]")
        self.alphas_cumprod = ac
        self.num_train_timesteps = ac.numel()
        if betas is None:
            self.betas = 1 - ac / torch.cat([ac.new_ones(1), ac[:-1]])
        else:
            b = torch.as_tensor(betas, dtype=torch.float64).flatten()
            if b.shape != ac.shape:
                raise ValueError(
                    f"betas has {b.numel()} entries but alphas_cumprod has {ac.numel()}; give one per step"
                )
            if not torch.allclose(torch.cumprod(1 - b, 0), ac, rtol=1e-4, atol=1e-7):
                raise ValueError("betas and alphas_cumprod disagree (cumprod(1 − betas) ≠ alphas_cumprod)")
            self.betas = b

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> VPSchedule:
        """The DDPM linear β schedule (the default of the paper's priors)."""
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        return cls(torch.cumprod(1 - betas, 0), betas)

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008) -> VPSchedule:
        """The improved-DDPM cosine schedule (diffusers ``squaredcos_cap_v2``)."""
        f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
        betas = torch.tensor([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)], dtype=torch.float64)
        return cls(torch.cumprod(1 - betas, 0), betas)

    @property
    def linear_betas(self) -> tuple[float, float] | None:
        """``(β_first, β_last)`` when the training β rise linearly over the T steps, else None.

        Tolerance: ``max(1e-6, 1e-4·max β)`` absolute, which admits a float32 scheduler's rounding
        and rejects cosine or scaled-linear (Stable Diffusion) schedules by orders of magnitude.
        """
        b = self.betas
        line = torch.linspace(float(b[0]), float(b[-1]), b.numel(), dtype=torch.float64)
        tol = max(1e-6, 1e-4 * float(b.abs().max()))
        if float((b - line).abs().max()) > tol:
            return None
        return float(b[0]), float(b[-1])

    def beta(self, t: float) -> torch.Tensor:
        """The training β_t at integer step ``t`` (the one-step β of the full schedule)."""
        return self.betas[self._index(t)]

    def _index(self, t: float) -> int:
        i = round(float(t))
        if not 0 <= i < self.num_train_timesteps:
            raise ValueError(f"timestep {t} outside [0, {self.num_train_timesteps - 1}]")
        return i

    def alpha_sigma(self, t: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        if t is None or t < 0:
            return torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
        a = self.alphas_cumprod[self._index(t)]
        return a.sqrt(), (1 - a).sqrt()

    def grid(self, steps: int, t_max: float | None = None) -> list[float]:
        """The reference's ``ddpm_uniform`` stride: ``floor(k·T/K)`` for k = K−1 … 0.

        With ``t_max`` (SDEdit), the same number of steps spans ``[0, t_max]`` instead.
        """
        T = self.num_train_timesteps if t_max is None else min(self.num_train_timesteps, int(t_max) + 1)
        return [float(math.floor(k * T / steps)) for k in range(steps - 1, -1, -1)]

    def config(self) -> dict:
        return {
            **super().config(),
            "alphas_cumprod_first_last": [float(self.alphas_cumprod[0]), float(self.alphas_cumprod[-1])],
        }


class FlowSchedule(Schedule):
    """Rectified flow: ``x_σ = (1 − σ)·x0 + σ·ε`` with ``σ = t / T`` and velocity ``v = ε − x0``.

    ``shift`` applies diffusers' time shift ``σ' = shift·σ / (1 + (shift − 1)·σ)`` to the grid.
    """

    kind = "flow"

    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0):
        self.num_train_timesteps = int(num_train_timesteps)
        self.shift = float(shift)

    def alpha_sigma(self, t: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        if t is None or t < 0:
            return torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
        s = torch.tensor(float(t) / self.num_train_timesteps, dtype=torch.float64).clamp(0, 1)
        return 1 - s, s

    def grid(self, steps: int, t_max: float | None = None) -> list[float]:
        """Uniform in σ from ``t_max`` (default T, pure noise) down to ``T/K``; shifted if asked."""
        top = self.num_train_timesteps if t_max is None else float(t_max)
        out = []
        for k in range(steps, 0, -1):
            s = k / steps * top / self.num_train_timesteps
            s = self.shift * s / (1 + (self.shift - 1) * s)
            out.append(s * self.num_train_timesteps)
        return out

    def config(self) -> dict:
        return {**super().config(), "shift": self.shift}
