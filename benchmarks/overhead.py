"""How much does fiberscope's sampling loop cost on top of the network calls it must make?

Runs ``sample_fiber`` with NDTM for a small UNet prior (the zoo's 28×28 architecture, random
weights) and a small CNN subject on the CPU, then times the same network calls on their own — the
guided forward+backward passes through prior and subject, the plain prior forwards and the subject
forwards, at the same batch size and in the same counts as the run recorded — and prints

    ratio <wall time of sample_fiber / time of its raw network calls>

The target is ≤ 1.10. Results go to ``--out`` (JSON) as well. Each measurement is repeated and the
fastest repetition kept, so other load on the machine inflates both sides alike.

    python benchmarks/overhead.py [--steps 20 --inner 3 --n 8 --repeats 3 --threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch


def build(seed: int = 0):
    from diffusers import DDPMScheduler, UNet2DModel

    from fiberscope.models import UNET_28, SmallCNN
    from fiberscope.priors.diffusers import DiffusersPrior

    torch.manual_seed(seed)
    unet = UNet2DModel(in_channels=1, out_channels=1, **UNET_28)
    prior = DiffusersPrior(unet, dict(DDPMScheduler(num_train_timesteps=1000).config), name="unet28-random")
    cnn = SmallCNN().eval()
    return prior, cnn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--inner", type=int, default=3)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="bench-out/overhead.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import fiberscope as fs

    prior, cnn = build()
    subject = fs.load_subject(cnn, layer="penultimate")
    query = torch.rand(1, 1, 28, 28) * 2 - 1
    method = fs.NDTM(steps=args.steps, inner_steps=args.inner, lr=0.02, gamma=1.0, sampler="ddim", eta=0.5)
    n = args.n

    # one warm-up run (allocator, lazy imports), then the measured ones
    fs.sample_fiber(subject, query, prior, n=n, method=method, progress=False)
    walls, counts = [], None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = fs.sample_fiber(subject, query, prior, n=n, method=method, progress=False)
        walls.append(time.perf_counter() - t0)
        counts = out.counts
    assert counts is not None

    # the same calls, raw and batched like the run: with one batch of n, a per-sample count is a call count
    guided = counts["prior_backwards"]  # forward+backward passes through prior and subject
    plain_prior = counts["prior_forwards"] - counts["prior_backwards"]
    plain_subject = counts["subject_forwards"] - counts["subject_backwards"]
    x = torch.randn(n, 1, 28, 28)
    tm = torch.full((n,), 500.0)

    def guided_call():
        u = torch.zeros_like(x, requires_grad=True)
        out = prior.network(x + u, tm)
        feats = subject(out.clamp(-1, 1))
        (g,) = torch.autograd.grad(feats.pow(2).sum(), u)
        return g

    def prior_call():
        with torch.no_grad():
            return prior.network(x, tm)

    def subject_call():
        with torch.no_grad():
            return subject(x)

    def timed(fn, reps):
        fn()
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            best = min(best, (time.perf_counter() - t0) / reps)
        return best

    t_guided = timed(guided_call, 10)
    t_prior = timed(prior_call, 10)
    t_subject = timed(subject_call, 10)
    raw = guided * t_guided + plain_prior * t_prior + plain_subject * t_subject
    wall = min(walls)
    ratio = wall / raw
    rows = [
        ("guided fwd+bwd passes", guided, t_guided),
        ("plain prior forwards", plain_prior, t_prior),
        ("plain subject forwards (per sample)", plain_subject, t_subject),
    ]
    print(
        f"overhead: NDTM K={args.steps} N={args.inner}, batch {n}, 28×28 UNet (random), SmallCNN penultimate, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(f"{'call':38s} {'count':>7s} {'s each':>9s} {'s total':>9s}")
    for name, c, t in rows:
        print(f"{name:38s} {c:7.1f} {t:9.4f} {c * t:9.3f}")
    print(f"{'raw network time':38s} {'':7s} {'':9s} {raw:9.3f}")
    print(f"{'sample_fiber wall time (best of ' + str(args.repeats) + ')':38s} {'':7s} {'':9s} {wall:9.3f}")
    print(f"ratio {ratio:.3f}")
    res = {
        "ratio": ratio,
        "wall_s": wall,
        "raw_s": raw,
        "walls": walls,
        "counts": counts,
        "per_call_s": {"guided": t_guided, "prior": t_prior, "subject": t_subject},
        "settings": vars(args),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
