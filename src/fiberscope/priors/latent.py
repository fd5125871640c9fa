"""Latent priors: a denoiser on an autoencoder's latents, with differentiable ``decode``/``encode``.

The state is the (normalised) latent ``z``; data is ``decode(z)``. Guidance methods backpropagate
the fiber loss through the decoder, so the same NDTM runs on latent diffusion unchanged.

Example:
    >>> import torch
    >>> from fiberscope.priors import VPSchedule
    >>> from fiberscope.priors.latent import LatentPrior
    >>> dec, enc = torch.nn.Linear(2, 4), torch.nn.Linear(4, 2)
    >>> prior = LatentPrior(lambda z, t: torch.zeros_like(z), VPSchedule.linear(), "eps", latent_shape=(2,),
    ...                     decoder=dec, encoder=enc, image_shape=(4,), data_range=None)
    >>> prior.decode(torch.zeros(3, 2)).shape
    torch.Size([3, 4])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..counting import count_backward
from ..runtime import autocast
from .base import Prior, _check_param
from .schedule import Schedule

__all__ = ["LatentPrior"]


class LatentPrior(Prior):
    """A denoiser on latents ``z = (encoder(x) − shift) · scale`` with ``x = decoder(z / scale + shift)``.

    Args:
        denoiser: ``denoiser(z_t, t) -> Tensor`` (an ``nn.Module`` is registered and moved with the prior).
        schedule, parameterization: as for any prior.
        latent_shape: shape of one latent.
        decoder: latent → image (module or callable; differentiable).
        encoder: image → latent (posterior mean), needed for per-timestep targets and SDEdit.
        image_shape: shape of one decoded image.
        data_range: range of decoded images.
        shift, scale: latent normalisation (per dimension or scalar).
        clip_range: clip of x̂0 in latent space (None by default: latents are unbounded).
        info: extra JSON-able facts recorded by :meth:`describe` (e.g. the loader's classes, prompt).
    """

    is_latent = True

    def __init__(
        self,
        denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        schedule: Schedule,
        parameterization: str = "eps",
        *,
        latent_shape: tuple[int, ...],
        decoder: Callable[[torch.Tensor], torch.Tensor],
        encoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
        image_shape: tuple[int, ...],
        data_range: tuple[float, float] | None = (-1.0, 1.0),
        shift: torch.Tensor | float = 0.0,
        scale: torch.Tensor | float = 1.0,
        clip_range: tuple[float, float] | None = None,
        name: str = "latent",
        info: dict[str, Any] | None = None,
    ):
        super().__init__()
        _check_param(parameterization, schedule)
        self.schedule = schedule
        self.parameterization = parameterization
        self.state_shape = tuple(latent_shape)
        self.image_shape = tuple(image_shape)
        self.data_range = data_range
        self.clip_range = clip_range
        self.name = name
        self.info = dict(info or {})
        self.denoiser = denoiser if isinstance(denoiser, nn.Module) else _Wrap(denoiser)
        self.decoder = decoder if isinstance(decoder, nn.Module) else _Wrap(decoder)
        self.encoder = encoder if (encoder is None or isinstance(encoder, nn.Module)) else _Wrap(encoder)
        for m in (self.denoiser, self.decoder, self.encoder):
            if m is not None:
                m.eval().requires_grad_(False)
        self.register_buffer("shift", torch.as_tensor(shift, dtype=torch.float32).clone())
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32).clone())

    shift: torch.Tensor
    scale: torch.Tensor

    def network(self, x_t: torch.Tensor, t_model: torch.Tensor) -> torch.Tensor:
        out = self.denoiser(x_t, t_model)
        return out.sample if hasattr(out, "sample") else out

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        with autocast(z.device, getattr(self, "autocast_dtype", None)):
            x = self.decoder(z.float() / self.scale + self.shift)
        x = (x.sample if hasattr(x, "sample") else x).float()
        if self.counter is not None:
            self.counter.decoder_forwards += z.shape[0]
            x = count_backward(x, self.counter, "decoder_backwards")
        return x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.encoder is None:
            raise ValueError(f"prior {self.name!r} has no encoder: per-timestep targets and SDEdit need one")
        z = self.encoder(x)
        z = (z.latents if hasattr(z, "latents") else z).float()
        return (z - self.shift) * self.scale

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["latent_scale_shift"] = [float(self.scale.flatten()[0]), float(self.shift.flatten()[0])]
        d.update(self.info)
        params = {
            id(p): p.numel()
            for m in (self.denoiser, self.decoder, self.encoder)
            if m is not None
            for p in m.parameters()
        }
        d["parameters"] = sum(params.values())
        return d


class _Wrap(nn.Module):
    def __init__(self, fn: Callable[..., torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.fn(*args)
