"""FeatInv-style feature inversion: a diffusion model conditioned on the subject's spatial feature map.

After Neukirch, Vielhaben & Strodthoff (2025), scaled to 28×28: a small convolutional *hint
encoder* maps φ(x) (e.g. the 128×7×7 ``features`` map of ``builtin:mnist-cnn``) to a few channels,
which are upsampled bilinearly to the image size and concatenated to the noisy image as extra
input channels of a diffusers ``UNet2DModel`` (ε-prediction, DDPM linear schedule). FeatInv trains
a ControlNet branch next to a frozen pretrained diffusion model; the equivalent here starts from
the pretrained unconditional UNet (``builtin:mnist-ddpm``) with zero weights on the new input
channels, so training begins at the unconditional prior and learns only what the features add.
15 % of training samples get an all-zero feature map (condition dropout), which allows
classifier-free guidance at sampling time. A vector φ (logits, embeddings) is broadcast spatially.

Sampling uses fiberscope's stateless update rules (:class:`~fiberscope.guidance.base.StepRule`:
DDIM with any η, ancestral or Euler), with per-sample noise streams.

Example:
    >>> import torch
    >>> net = FeatInvUNet({"block_out_channels": (4, 8), "norm_num_groups": 4, "layers_per_block": 1,
    ...                    "down_block_types": ("DownBlock2D", "DownBlock2D"),
    ...                    "up_block_types": ("UpBlock2D", "UpBlock2D")},
    ...                   feat_shape=(6, 2, 2), image_shape=(1, 8, 8), hint_channels=2, hint_width=8)
    >>> net(torch.randn(3, 1, 8, 8), torch.tensor([10, 500, 900]), torch.randn(3, 6, 2, 2)).shape
    torch.Size([3, 1, 8, 8])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..guidance.base import SampleNoise, StepRule
from ..priors.base import CallablePrior
from ..priors.schedule import VPSchedule

__all__ = ["FeatInvUNet"]


def _unet_class() -> Any:
    from diffusers import UNet2DModel

    return UNet2DModel


class FeatInvUNet(nn.Module):
    """ε-prediction UNet on ``[x_t, hint(φ)]``.

    Args:
        unet_config: ``UNet2DModel`` settings (block widths, block types, ...); the input and output
            channels and the sample size are set here.
        feat_shape: shape of one condition: ``(C, h, w)`` for a feature map, ``(D,)`` for a vector.
        image_shape: ``(channels, H, W)`` of the images.
        hint_channels: channels the hint encoder adds to the UNet input.
        hint_width: width of the hint encoder's hidden convolutions.
        schedule_T: training timesteps of the DDPM linear schedule.
    """

    def __init__(
        self,
        unet_config: dict[str, Any],
        feat_shape: Sequence[int],
        image_shape: Sequence[int] = (1, 28, 28),
        hint_channels: int = 4,
        hint_width: int = 64,
        schedule_T: int = 1000,
    ):
        super().__init__()
        self.feat_shape = tuple(int(s) for s in feat_shape)
        self.image_shape = tuple(int(s) for s in image_shape)
        if len(self.feat_shape) not in (1, 3):
            raise ValueError(f"feat_shape must be (C, h, w) or (D,), got {self.feat_shape}")
        c_in = self.feat_shape[0]
        self.hint = nn.Sequential(
            nn.Conv2d(c_in, hint_width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(hint_width, hint_width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(hint_width, hint_channels, 3, padding=1),
        )
        ch = self.image_shape[0]
        cfg = {k: v for k, v in unet_config.items() if not k.startswith("_")}
        cfg.update(in_channels=ch + hint_channels, out_channels=ch, sample_size=self.image_shape[-1])
        self.unet = _unet_class()(**cfg)
        self.hint_channels = hint_channels
        self.schedule_T = schedule_T

    def unet_config(self) -> dict[str, Any]:
        """The UNet's settings (JSON-able), enough to rebuild this network."""
        from ..utils import jsonable

        return {k: jsonable(v) for k, v in dict(self.unet.config).items() if not k.startswith("_")}

    def load_unconditional(self, unet: nn.Module) -> None:
        """Start from a pretrained unconditional UNet: copy its weights, zero the hint input channels."""
        sd = {k: v.clone() for k, v in unet.state_dict().items()}
        w = sd["conv_in.weight"]
        target = self.unet.conv_in.weight
        if w.shape[0] != target.shape[0] or w.shape[1] + self.hint_channels != target.shape[1]:
            raise ValueError(
                f"pretrained UNet input conv {tuple(w.shape)} does not match this network "
                f"{tuple(target.shape)} minus {self.hint_channels} hint channels; use the same UNet settings"
            )
        sd["conv_in.weight"] = torch.cat([w, torch.zeros(w.shape[0], self.hint_channels, *w.shape[2:])], 1)
        self.unet.load_state_dict(sd)

    def hint_map(self, feats: torch.Tensor) -> torch.Tensor:
        """Condition ``[B, *feat_shape]`` → hint channels at the image size."""
        f = feats.float()
        if len(self.feat_shape) == 1:
            f = f.flatten(1)[:, :, None, None]
        h = self.hint(f)
        return F.interpolate(h, size=self.image_shape[1:], mode="bilinear", align_corners=False)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0:
            t = t.expand(x_t.shape[0])
        return self.unet(torch.cat([x_t, self.hint_map(feats)], 1), t).sample

    def loss(
        self,
        x0: torch.Tensor,
        feats: torch.Tensor,
        g: torch.Generator,
        p_uncond: float = 0.15,
        snr_gamma: float | None = 5.0,
    ) -> torch.Tensor:
        """ε-prediction loss with condition dropout (all-zero features) and min-SNR-γ weighting."""
        b = x0.shape[0]
        ac = VPSchedule.linear(self.schedule_T).alphas_cumprod.float().to(x0.device)
        t = torch.randint(0, self.schedule_T, (b,), generator=g).to(x0.device)
        eps = torch.randn(x0.shape, generator=g).to(x0)
        drop = (torch.rand(b, generator=g) < p_uncond).to(x0.device)
        feats = torch.where(drop.view(-1, *([1] * (feats.dim() - 1))), torch.zeros_like(feats), feats)
        a = ac[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        err = (self(xt, t, feats) - eps).pow(2).flatten(1).mean(1)
        if snr_gamma is not None:
            snr = ac[t] / (1 - ac[t])
            err = err * torch.clamp(snr, max=snr_gamma) / snr
        return err.mean()

    def guided_eps(self, x: torch.Tensor, t: torch.Tensor, feats: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        """ε of classifier-free guidance: ``ε_u + w·(ε_c − ε_u)`` (w = 1: the conditional model alone)."""
        if guidance_scale == 1.0:
            return self(x, t, feats)
        both = self(torch.cat([x, x]), torch.cat([t, t]), torch.cat([feats, torch.zeros_like(feats)]))
        e_c, e_u = both.chunk(2)
        return e_u + guidance_scale * (e_c - e_u)

    def sample(
        self,
        feats: torch.Tensor,
        noise: SampleNoise,
        steps: int = 50,
        guidance_scale: float = 1.0,
        sampler: str = "ddim",
        eta: float = 0.0,
    ) -> torch.Tensor:
        """Images ``[B, *image_shape]`` in [-1, 1] whose features should match ``feats`` (one per row).

        Args:
            feats: conditions ``[B, *feat_shape]``.
            noise: one random stream per row (:class:`~fiberscope.guidance.base.SampleNoise`).
            steps: denoising steps on the uniform DDPM grid.
            guidance_scale: classifier-free guidance weight (1: none).
            sampler, eta: the update rule (``"ddim"`` with η, or ``"ancestral"``).
        """
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be ≥ 0, got {guidance_scale}")
        if tuple(feats.shape[1:]) != self.feat_shape:
            want = ", ".join(map(str, self.feat_shape))
            raise ValueError(f"feats must have shape [B, {want}], got {tuple(feats.shape)}")
        rule = StepRule(sampler, eta)
        rule.validate()
        net = lambda x, t: self.guided_eps(x, t, feats, guidance_scale)  # noqa: E731
        prior = CallablePrior(net, VPSchedule.linear(self.schedule_T), "eps", state_shape=self.image_shape)
        times = prior.schedule.grid(steps)
        table = rule.prepare(prior, times)
        x = noise.randn(self.image_shape).to(feats.device)
        x0 = x
        with torch.no_grad():
            for i, t in enumerate(times):
                d = prior.denoise(x, t)
                x0 = d.x0.clamp(-1.0, 1.0)
                x = rule.step(x, x0, d, table[i], table[i + 1], noise)
        return x0
