"""The prior contract: ``denoise(x_t, t) -> Denoised(x0, eps)``, whatever the network predicts.

A :class:`Prior` owns a :class:`~fiberscope.priors.schedule.Schedule`, a raw network call
(:meth:`Prior.network`) and the parameterisation of that network's output (``eps``, ``x0``,
``v`` for v-prediction, ``velocity`` for flow matching, plus ``learned_range`` variance when the
network also predicts it). Guidance methods see only :meth:`denoise`, the schedule, and
``encode``/``decode`` (identity for pixel priors), so one method serves pixel DDPMs, latent
diffusion and rectified flows.

Example (any callable becomes a prior once its parameterisation is declared):
    >>> import torch
    >>> from fiberscope.priors import CallablePrior, VPSchedule
    >>> net = lambda x, t: torch.zeros_like(x)                      # predicts ε = 0
    >>> prior = CallablePrior(net, VPSchedule.linear(), "eps", state_shape=(2,), data_range=None)
    >>> d = prior.denoise(torch.ones(3, 2), 500)
    >>> d.x0.shape, prior.state_shape, prior.image_shape
    (torch.Size([3, 2]), (2,), (2,))

Shapes: ``state_shape`` is the shape of one state the sampler walks in (what noise, guidance and
step rules see: the latent for a latent prior), ``image_shape`` that of one decoded image (what
``decode`` returns; the state shape for a pixel prior). ``data_shape``, their old single name, still
reads (and sets) the state shape for one release, with a ``DeprecationWarning``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import counting
from .._deprecated import REMOVED_IN, moved
from ..runtime import autocast, to_channels_last
from .schedule import Schedule

__all__ = ["PARAMETERIZATIONS", "CallablePrior", "Denoised", "Prior"]

PARAMETERIZATIONS = ("eps", "x0", "v", "velocity")


@dataclass
class Denoised:
    """Output of :meth:`Prior.denoise`: the clean-data estimate, the noise estimate, and extras.

    ``v`` holds the model's variance interpolation in [-1, 1] for ``learned_range`` priors.
    """

    x0: torch.Tensor
    eps: torch.Tensor
    v: torch.Tensor | None = None


class Prior(nn.Module):
    """Base class of every prior. Subclasses implement :meth:`network` (raw model output).

    Attributes:
        schedule: the interpolant and time grid.
        parameterization: what :meth:`network` predicts: ``eps``, ``x0``, ``v`` or ``velocity``.
        learned_variance: the network output carries a second half with the variance (ADM style).
        state_shape: shape of one state, what noise, guidance and the step rules see (the latent shape
            for latent priors).
        image_shape: shape of one decoded image, what :meth:`decode` returns (= ``state_shape`` for
            pixel priors, which is what it reads unless set).
        data_shape: deprecated name of ``state_shape`` (reads and sets it, with a warning).
        data_range: ``(lo, hi)`` of decoded data (images), or None when unbounded.
        clip_range: default clip of x̂0 in state space (None: no clipping, e.g. latents).
        preset: the NDTM preset tuned for this prior (``fiberscope presets``), or None; set by the
            loader for the zoo's ``builtin:`` priors, read by the guidance defaults.
        counter: where network evaluations are counted (set by the sampler).
    """

    schedule: Schedule
    parameterization: str = "eps"
    learned_variance: bool = False
    state_shape: tuple[int, ...] = ()
    _image_shape: tuple[int, ...] | None = None  # None: the state shape (a pixel prior)
    data_range: tuple[float, float] | None = (-1.0, 1.0)
    clip_range: tuple[float, float] | None = (-1.0, 1.0)
    is_latent: bool = False
    name: str = "prior"
    preset: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Subclasses written before the shapes were named may declare ``data_shape``: read it as ``state_shape``."""
        super().__init_subclass__(**kwargs)
        legacy = cls.__dict__.get("data_shape")
        if legacy is not None:
            warnings.warn(
                f"{cls.__name__}.data_shape is deprecated: declare state_shape (the shape of one state) instead "
                f"(data_shape is removed in fiberscope {REMOVED_IN})",
                DeprecationWarning,
                stacklevel=2,
            )
            if not isinstance(legacy, property):
                cls.state_shape = tuple(legacy)
            elif "state_shape" not in cls.__dict__:  # a computed data_shape: state_shape reads it
                cls.state_shape = property(lambda self: tuple(legacy.fget(self)))  # type: ignore[assignment,misc]
            delattr(cls, "data_shape")
        if "image_shape" in cls.__dict__ and not isinstance(cls.__dict__["image_shape"], property):
            shape = cls.__dict__["image_shape"]
            cls._image_shape = tuple(shape) if shape is not None else None
            delattr(cls, "image_shape")

    def __init__(self) -> None:
        super().__init__()
        self.counter: counting.CallCounter | None = None
        self.compute_dtype: torch.dtype = torch.float32
        #: autocast dtype of the network and decoder calls (set by ``sample_fiber(autocast=...)``)
        self.autocast_dtype: torch.dtype | None = None
        self.channels_last: bool = False

    # ---- what subclasses provide -------------------------------------------------------------
    def network(self, x_t: torch.Tensor, t_model: torch.Tensor) -> torch.Tensor:
        """Raw network output for states ``x_t`` at native timesteps ``t_model`` [B]."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """State → data (identity for pixel priors)."""
        return z

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Data → state (identity for pixel priors)."""
        return x

    # ---- shapes ----------------------------------------------------------------------------------
    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one decoded image (what :meth:`decode` returns): ``state_shape`` unless set."""
        return self._image_shape if self._image_shape is not None else tuple(self.state_shape)

    @image_shape.setter
    def image_shape(self, shape: tuple[int, ...] | None) -> None:
        self._image_shape = tuple(shape) if shape is not None else None

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Deprecated: the state shape; read :attr:`state_shape` (or :attr:`image_shape` for decoded images)."""
        warnings.warn(
            f"Prior.data_shape is deprecated: read state_shape (the shape of one state; image_shape for decoded "
            f"images) instead (data_shape is removed in fiberscope {REMOVED_IN})",
            DeprecationWarning,
            stacklevel=2,
        )
        return tuple(self.state_shape)

    @data_shape.setter
    def data_shape(self, shape: tuple[int, ...]) -> None:
        warnings.warn(
            f"setting Prior.data_shape is deprecated: set state_shape (the shape of one state) instead "
            f"(data_shape is removed in fiberscope {REMOVED_IN})",
            DeprecationWarning,
            stacklevel=2,
        )
        self.state_shape = tuple(shape)

    # ---- the contract ----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    def denoise(self, x_t: torch.Tensor, t: float) -> Denoised:
        """Clean-data and noise estimates at time ``t`` (native units), in float32."""
        a, s = self.schedule.alpha_sigma(t)
        a = a.to(x_t.device, torch.float32)
        s = s.to(x_t.device, torch.float32)
        tm = torch.full((x_t.shape[0],), self.schedule.model_time(t), device=x_t.device, dtype=torch.float32)
        x_in = to_channels_last(x_t.to(self.compute_dtype), getattr(self, "channels_last", False))
        with autocast(x_t.device, getattr(self, "autocast_dtype", None)):
            out = self.network(x_in, tm)
        out = out.float().contiguous()
        if self.counter is not None:
            self.counter.prior_forwards += x_t.shape[0]
            out = counting.count_backward(out, self.counter, "prior_backwards")
        v = None
        if self.learned_variance:
            out, v = out.chunk(2, dim=1)
        p = self.parameterization
        if p == "eps":
            eps = out
            x0 = (x_t - s * eps) / a
        elif p == "x0":
            x0 = out
            eps = (x_t - a * x0) / torch.clamp(s, min=1e-12)
        elif p == "v":  # v = α ε − σ x0 on a VP schedule
            x0 = a * x_t - s * out
            eps = s * x_t + a * out
        elif p == "velocity":  # v = ε − x0 on a linear interpolant α = 1 − σ
            x0 = x_t - s * out
            eps = x_t + a * out
        else:  # pragma: no cover - validated at construction
            raise ValueError(p)
        return Denoised(x0=x0, eps=eps, v=v)

    def describe(self) -> dict[str, Any]:
        """A JSON-able description recorded in every result."""
        return {
            "name": self.name,
            "class": type(self).__name__,
            "schedule": self.schedule.config(),
            "parameterization": self.parameterization,
            "learned_variance": self.learned_variance,
            "state_shape": list(self.state_shape),
            "image_shape": list(self.image_shape),
            "data_shape": list(self.state_shape),  # the state shape's old name, for readers of older records
            "data_range": list(self.data_range) if self.data_range else None,
            "latent": self.is_latent,
        }


def _check_param(parameterization: str, schedule: Schedule) -> None:
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}")
    if parameterization == "velocity" and schedule.kind != "flow":
        raise ValueError(
            "parameterization='velocity' needs a FlowSchedule (rectified flow); use 'v' for VP v-prediction"
        )
    if parameterization == "v" and schedule.kind != "vp":
        raise ValueError("parameterization='v' is VP v-prediction; a flow model predicts 'velocity'")


@dataclass
class _Fn:
    fn: Callable[..., torch.Tensor]
    kwargs: dict[str, Any] = field(default_factory=dict)


class CallablePrior(Prior):
    """Any callable ``net(x_t, t) -> Tensor`` with a declared parameterisation becomes a prior.

    Args:
        net: callable on ``(x_t [B, ...], t [B] native timesteps)``; an ``nn.Module`` is registered.
        schedule: its training schedule.
        parameterization: ``eps``, ``x0``, ``v`` or ``velocity``.
        state_shape: shape of one state.
        data_range: range of (decoded) data, e.g. ``(-1, 1)``; None if unbounded.
        decode / encode: for latent priors, state ↔ data maps (differentiable).
        clip_range: clip of x̂0 in state space used by guidance (None for latents).
        learned_variance: output has a second half holding ADM's variance interpolation.
        image_shape: shape of one decoded image (default: ``state_shape``).
        name: shown in results and messages.
        data_shape: deprecated name of ``state_shape`` (works until fiberscope 0.2, with a warning).
    """

    def __init__(
        self,
        net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        schedule: Schedule,
        parameterization: str = "eps",
        *,
        state_shape: tuple[int, ...] | None = None,
        data_range: tuple[float, float] | None = (-1.0, 1.0),
        decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
        encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
        clip_range: tuple[float, float] | None = "auto",  # type: ignore[assignment]
        learned_variance: bool = False,
        image_shape: tuple[int, ...] | None = None,
        name: str = "callable",
        data_shape: tuple[int, ...] | None = None,
    ):
        super().__init__()
        _check_param(parameterization, schedule)
        if data_shape is not None:
            if state_shape is not None:
                raise TypeError("CallablePrior: give state_shape only (data_shape is its deprecated name)")
            warnings.warn(
                "CallablePrior(data_shape=...) is deprecated: pass state_shape=... (the shape of one state) "
                f"(data_shape is removed in fiberscope {REMOVED_IN})",
                DeprecationWarning,
                stacklevel=2,
            )
            state_shape = data_shape
        if state_shape is None:
            raise TypeError("CallablePrior needs state_shape=(...), the shape of one state, e.g. (3, 32, 32)")
        if isinstance(net, nn.Module):
            self.net = net
        else:
            self._fn = _Fn(net)
        self.schedule = schedule
        self.parameterization = parameterization
        self.state_shape = tuple(state_shape)
        self.data_range = data_range
        self.is_latent = decode is not None
        self._decode, self._encode = decode, encode
        if clip_range == "auto":
            clip_range = None if self.is_latent else data_range
        self.clip_range = clip_range
        self.learned_variance = learned_variance
        self.image_shape = image_shape
        self.name = name

    def network(self, x_t: torch.Tensor, t_model: torch.Tensor) -> torch.Tensor:
        fn = self.net if hasattr(self, "net") else self._fn.fn
        out = fn(x_t, t_model)
        return out.sample if hasattr(out, "sample") else out

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if self._decode is None:
            return z
        with autocast(z.device, getattr(self, "autocast_dtype", None)):
            x = self._decode(z)
        x = x.float() if x.is_floating_point() else x
        if self.counter is not None:
            self.counter.decoder_forwards += z.shape[0]
            x = counting.count_backward(x, self.counter, "decoder_backwards")
        return x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if self._encode is None:
            if self._decode is not None:
                raise ValueError(f"prior {self.name!r} has no encoder; start from noise instead of the query")
            return x
        return self._encode(x)


# CallCounter and count_backward count subject calls too: they live in fiberscope.counting
__getattr__ = moved(
    __name__,
    {"CallCounter": "fiberscope.counting:CallCounter", "count_backward": "fiberscope.counting:count_backward"},
)
