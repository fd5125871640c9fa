"""Shared fixtures: tiny models built in the test (no downloads, CPU, seconds)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from audit_assets import one_thread as _one_thread

# One intra-op thread: the test models are tiny, and on a machine busy with other work (a training
# run, another test session) multi-threaded kernels can be tens of times slower than one thread.
torch.set_num_threads(1)


def tiny_unet(channels: int = 1, size: int = 8, out_channels: int | None = None, seed: int = 0):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=size,
        in_channels=channels,
        out_channels=out_channels or channels,
        block_out_channels=(4, 8),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    ).eval()


class TinyCNN(nn.Module):
    """A small conv net with named layers ``conv``, ``pool`` and ``head``."""

    def __init__(self, channels: int = 1, feat: int = 6, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Sequential(
            nn.Conv2d(channels, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 8, 3, padding=1), nn.Tanh()
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(32, feat)

    def forward(self, x):
        return self.head(self.pool(self.conv(x)))


#: torch on one CPU thread, whatever an earlier test set: ``pytestmark = pytest.mark.usefixtures("one_thread")``
one_thread = pytest.fixture(_one_thread)


@pytest.fixture
def unet_dir(tmp_path):
    """A diffusers DDPMPipeline directory with a tiny random UNet (the google/ddpm-cifar10-32 layout)."""
    from diffusers import DDPMPipeline, DDPMScheduler

    pipe = DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=1000))
    d = tmp_path / "tiny-ddpm"
    pipe.save_pretrained(str(d), safe_serialization=True)
    return d


@pytest.fixture
def tiny_prior(unet_dir):
    import fiberscope as fs

    return fs.load_prior(unet_dir)
