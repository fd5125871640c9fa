"""What every guidance method shares: the fiber objective, per-sample noise, the update rule.

One signature for all methods (NDTM, the training-free baselines, plain sampling)::

    method.run(prior, objective, x_init, generator, callback) -> Trajectory

``generator`` is a :class:`SampleNoise`: one ``torch.Generator`` per sample, so sample ``i``
draws the same noise whether it runs alone or in a batch of 8. Network calls are counted by the
prior and subject themselves (see :class:`~fiberscope.priors.CallCounter`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from ..errors import GuidanceError
from ..losses import LossFn, get_loss
from ..priors.base import Denoised, Prior
from ..priors.steps import ancestral_step, ddim_coefficients, ddim_step
from ..subjects.base import Subject

__all__ = [
    "FiberObjective",
    "GuidanceError",
    "GuidanceMethod",
    "SampleNoise",
    "StepRule",
    "Trajectory",
    "per_sample_clip",
]

SAMPLERS = ("ddim", "ancestral", "euler")


class SampleNoise:
    """Per-sample random streams: ``randn(shape)`` draws sample ``i`` from generator ``i``.

    Noise is drawn on the CPU and moved to ``device``, so results do not depend on the device's RNG.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        self.seeds = [int(s) for s in seeds]
        self.generators = [torch.Generator().manual_seed(s) for s in self.seeds]
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        """``[B, *shape]`` standard normal noise, row ``i`` from generator ``i``."""
        return torch.stack([torch.randn(tuple(shape), generator=g) for g in self.generators]).to(self.device)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.randn(x.shape[1:])


def per_sample_clip(g: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Scale each sample's gradient to norm at most ``max_norm`` (the reference's ``1/(‖g‖ + 1e-6)``)."""
    n = g.flatten(1).norm(dim=1).view(-1, *([1] * (g.dim() - 1)))
    return g * torch.clamp(max_norm / (n + 1e-6), max=1.0)


class FiberObjective:
    """The fiber loss of states against the query's features: what every method minimises.

    Args:
        prior: decodes states to data (latent priors) and denoises the query for per-step targets.
        subject: φ.
        query: the query image ``[1, *data_shape]`` in the prior's data range.
        loss: the terminal cost (name or callable); the reference uses ``l2``.
    """

    def __init__(self, prior: Prior, subject: Subject, query: torch.Tensor, loss: str | LossFn = "l2"):
        self.prior = prior
        self.subject = subject
        self.query = query
        self.loss_name = loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")
        self.loss_fn = get_loss(loss)
        with torch.no_grad():
            self.target = self.features_of_data(query).detach()
        self._query_state: torch.Tensor | None = None

    @property
    def data_range(self) -> tuple[float, float] | None:
        return self.prior.data_range

    def features_of_data(self, x: torch.Tensor) -> torch.Tensor:
        """φ of data-space images (no decoding)."""
        return self.subject(x, self.data_range)

    def features(self, state: torch.Tensor) -> torch.Tensor:
        """φ(decode(state))."""
        return self.features_of_data(self.prior.decode(state))

    def loss(self, state: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample terminal cost ``ℓ(φ(decode(state)), target)``, shape [B]."""
        return self.loss_fn(self.features(state), self.target if target is None else target)

    @property
    def query_state(self) -> torch.Tensor:
        if self._query_state is None:
            with torch.no_grad():
                self._query_state = self.prior.encode(self.query).detach()
        return self._query_state

    @torch.no_grad()
    def target_at(
        self,
        t: float,
        noise: SampleNoise,
        clip: tuple[float, float] | None,
        tweedie: Callable[[torch.Tensor, float], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The paper's per-timestep target: φ of the prior's estimate of the query noised to ``t``.

        Each sample draws its own noise, so targets are per sample ``[B, ...]``.
        """
        z = self.query_state
        a, s = self.prior.schedule.alpha_sigma(t)
        xi = noise.randn(z.shape[1:])
        zt = a.float() * z + s.float() * xi
        x0 = tweedie(zt, t) if tweedie is not None else self.prior.denoise(zt, t).x0
        if clip is not None:
            x0 = x0.clamp(*clip)
        return self.features(x0)


@dataclass
class Trajectory:
    """Result of one guidance run (a batch of samples).

    Attributes:
        sample: the output, in state space (``x0`` of the last step or the final state).
        x: the final state.
        x0: the last clean-data estimate.
        loss_history: per step, the mean terminal cost over the batch after the step (if computed).
        info: method-specific extras.
    """

    sample: torch.Tensor
    x: torch.Tensor
    x0: torch.Tensor
    loss_history: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


StepCallback = Callable[[dict[str, Any]], Any]


@dataclass
class StepRule:
    """How to go from time t to s once x̂0 and ε̂ are known: DDIM (any η), DDPM ancestral, or Euler.

    ``ancestral_rescaled`` reproduces the reference implementation's ancestral branch exactly: a
    rescaled linear schedule with K entries (β' = linspace(s·1e-4, s·0.02, K), s = 1000/K) is used
    for the Tweedie estimate and the update, while the network still sees the original t. This
    mis-scales x̂0 early on, but it is what the paper's numbers were produced with. VP priors only.
    """

    sampler: str = "ddim"
    eta: float = 0.0
    variance: str = "small"
    ancestral_rescaled: bool = False

    def validate(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {self.eta}")
        if self.variance not in ("small", "large", "learned_range"):
            raise ValueError(f"variance must be 'small', 'large' or 'learned_range', got {self.variance!r}")

    def prepare(self, prior: Prior, times: list[float]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(α, σ) at every grid time, plus the clean end; the reference's rescaled table if asked."""
        if self.variance == "learned_range" and not prior.learned_variance:
            raise ValueError(
                "variance='learned_range' needs a prior that predicts its variance (learn_sigma); "
                "use 'small' or 'large' with this prior"
            )
        if self.ancestral_rescaled and self.sampler == "ancestral":
            if prior.schedule.kind != "vp":
                raise ValueError("ancestral_rescaled reproduces a quirk of the VP reference code; it needs a VP prior")
            k = len(times)
            sc = 1000.0 / k
            betas = torch.linspace(sc * 1e-4, sc * 0.02, k, dtype=torch.float64)
            ab = torch.cumprod(1 - betas, 0)  # ab[j], j = 0 (clean end) .. K-1 (noisiest)
            table = [(ab[k - 1 - i].sqrt(), (1 - ab[k - 1 - i]).sqrt()) for i in range(k)]
        else:
            table = [prior.schedule.alpha_sigma(t) for t in times]
        table.append(prior.schedule.alpha_sigma(None))
        return [(a.float(), s.float()) for a, s in table]

    def tweedie(self, prior: Prior, d: Denoised, x: torch.Tensor, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """x̂0 from the prior, or from ε̂ with the rescaled ᾱ' of the reference's ancestral branch."""
        if self.ancestral_rescaled and self.sampler == "ancestral":
            return (x - s.to(x) * d.eps) / a.to(x)
        return d.x0

    def step(
        self,
        x: torch.Tensor,
        x0: torch.Tensor,
        d: Denoised,
        ts: tuple[torch.Tensor, torch.Tensor],
        ss: tuple[torch.Tensor, torch.Tensor],
        noise: SampleNoise | None,
    ) -> torch.Tensor:
        (a_t, s_t), (a_s, s_s) = [tuple(v.to(x) for v in p) for p in (ts, ss)]
        if self.sampler == "ancestral":
            xi = noise.randn_like(x) if noise is not None and float(s_s) > 0 else None
            return ancestral_step(x, x0, a_t, s_t, a_s, s_s, xi, self.variance, d.v)
        eta = 0.0 if self.sampler == "euler" else self.eta
        xi = noise.randn_like(x) if (noise is not None and eta > 0 and float(s_s) > 0) else None
        return ddim_step(x0, d.eps, a_t, s_t, a_s, s_s, eta, xi, self.variance, d.v)

    def ddim_c2(
        self,
        ts: tuple[torch.Tensor, torch.Tensor],
        ss: tuple[torch.Tensor, torch.Tensor],
        v: torch.Tensor | None = None,
    ) -> torch.Tensor:
        eta = 0.0 if self.sampler == "euler" else self.eta
        variance = "small" if self.variance == "learned_range" and v is None else self.variance
        return ddim_coefficients(ts[0], ts[1], ss[0], ss[1], eta, variance, v)[1]


class GuidanceMethod(ABC):
    """Base class: a dataclass of settings with :meth:`run` and :meth:`initial_state`."""

    name: str = "method"
    needs_gradients: bool = True

    @abstractmethod
    def run(
        self,
        prior: Prior,
        objective: FiberObjective,
        x_init: torch.Tensor,
        generator: SampleNoise,
        callback: StepCallback | None = None,
    ) -> Trajectory:
        """Sample a batch from ``x_init`` (states at the first grid time)."""

    def times(self, prior: Prior) -> list[float]:
        """The time grid this method walks, noisiest first."""
        steps = int(getattr(self, "steps", 50))
        strength = getattr(self, "strength", None)
        t_max = (
            None
            if strength is None or getattr(self, "init", "noise") == "noise"
            else strength * (prior.schedule.num_train_timesteps - (1 if prior.schedule.kind == "vp" else 0))
        )
        return prior.schedule.grid(steps, t_max)

    def initial_state(self, prior: Prior, objective: FiberObjective, noise: SampleNoise) -> torch.Tensor:
        """Pure noise at the first grid time, or (``init="sdedit"``) the query noised to it."""
        shape = objective.query_state.shape[1:] if getattr(self, "init", "noise") == "sdedit" else prior.data_shape
        xi = noise.randn(shape)
        if getattr(self, "init", "noise") != "sdedit":
            return xi
        t0 = self.times(prior)[0]
        a, s = prior.schedule.alpha_sigma(t0)
        return a.float() * objective.query_state.expand(len(noise), *shape) + s.float() * xi

    def config(self) -> dict[str, Any]:
        """Settings as a JSON-able dict (recorded in every result)."""
        out: dict[str, Any] = {"method": self.name}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            out[f.name] = v if not callable(v) else getattr(v, "__name__", repr(v))
        return out


def check_finite(value: torch.Tensor, what: str, step: int, t: float) -> None:
    """Raise :class:`GuidanceError` naming the step, time and samples if ``value`` is not finite."""
    bad = ~torch.isfinite(value.detach().flatten(1) if value.dim() > 1 else value.detach())
    if bad.any():
        idx = bad.reshape(bad.shape[0], -1).any(1).nonzero().flatten().tolist() if bad.dim() else [0]
        raise GuidanceError(
            f"{what} became NaN/inf at step {step} (t={t:g}) for samples {idx}: lower the learning rate or "
            "gamma, check the subject for operations that can produce NaN (log of 0, division), or run in float32"
        )


def cosine_ramp(start: float, end: float, t_start: float, t_end: float, t: float) -> float:
    """γ = end + ½(start − end)(1 + cos(π (t_start − t)/(t_start − t_end))): start at t_start, end at t_end."""
    if t_start == t_end:
        return float(start)
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * (t_start - t) / (t_start - t_end)))
