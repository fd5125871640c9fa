"""Quality figures of the zoo's models, as written in their model cards: ``fiberscope zoo evaluate NAME``.

Priors: the Fréchet distance between ``n`` unguided samples and ``n`` real test images in the logit
space of the data set's classifier, beside the same distance between two disjoint sets of ``n``
real test images (the floor set by sampling noise), and their ratio. Colour-MNIST samples are
decolourised before the classifier sees them, and their background colours are compared with the
true colour mixture. Subjects: test accuracy (classifiers) or reconstruction error and exact
colour invariance (the colour-blind embedding).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..data.colormnist import colorize, decolorize
from ..data.mnist import load_dataset
from ..loading import load_builtin_prior, load_builtin_subject
from ..metrics.colour import colour_histogram_stats
from ..metrics.frechet import frechet_distance
from .registry import ZOO

__all__ = ["colour_histogram_stats", "evaluate", "evaluate_prior", "evaluate_subject", "real_images"]


def real_images(dataset: str, split: str = "test", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Real images in [-1, 1] ``[N, C, 28, 28]`` and labels; colour MNIST is coloured with ``seed``."""
    base = "mnist" if dataset == "colormnist" else dataset
    x, y = load_dataset(base, split)
    t = torch.from_numpy(x).float().div(255.0).unsqueeze(1)
    if dataset == "colormnist":
        t = colorize(t, generator=torch.Generator().manual_seed(seed))
    return t * 2 - 1, torch.from_numpy(y)


def _judge_input(images: torch.Tensor) -> torch.Tensor:
    """Colour images are decolourised into the grey digits the classifier was trained on."""
    if images.shape[1] == 3:
        return decolorize((images + 1) / 2) * 2 - 1
    return images


@torch.no_grad()
def _logits(judge: torch.nn.Module, images: torch.Tensor, bs: int = 500) -> torch.Tensor:
    return torch.cat([judge(_judge_input(images[i : i + bs])) for i in range(0, len(images), bs)])


def evaluate_prior(
    name: str, n: int = 1000, seed: int = 0, steps: int | None = None, batch_size: int = 250, progress: bool = True
) -> dict[str, Any]:
    """Fréchet ratio (samples vs real, over real vs real) in the judge classifier's logit space."""
    from ..api import sample_fiber
    from ..guidance.unguided import Unguided

    entry = ZOO[name]
    prior = load_builtin_prior(name)
    judge = load_builtin_subject(entry.judge or "mnist-cnn", "logits")
    real, labels = real_images(entry.dataset, "test", seed=seed)
    if 3 * n > len(real):
        raise ValueError(f"n={n} needs {3 * n} test images; the test split has {len(real)}")
    sampling = dict(entry.sampling)
    if steps is not None:
        sampling["steps"] = steps
    t0 = time.perf_counter()
    out = sample_fiber(
        lambda x: x.flatten(1)[:, :1],
        real[:1],
        prior,
        n=n,
        seed=seed,
        batch_size=min(batch_size, n),
        method=Unguided(**sampling),
        progress=progress,
    )
    sample_seconds = time.perf_counter() - t0
    f_samples = _logits(judge, out.images)
    f_a, f_b = _logits(judge, real[n : 2 * n]), _logits(judge, real[2 * n : 3 * n])
    fd = frechet_distance(f_samples, f_a)
    fd_real = frechet_distance(f_b, f_a)
    probs = torch.softmax(f_samples, 1)
    class_freq = torch.bincount(probs.argmax(1), minlength=probs.shape[1]).float() / n
    res: dict[str, Any] = {
        "model": f"builtin:{name}",
        "n": n,
        "seed": seed,
        "sampling": sampling,
        "judge": f"builtin:{entry.judge}:logits",
        "fd_samples_vs_real": fd,
        "fd_real_vs_real": fd_real,
        "fd_ratio": fd / fd_real,
        "judge_confidence_mean": float(probs.max(1).values.mean()),
        "class_frequencies": [round(float(v), 4) for v in class_freq],
        "sampling_seconds": sample_seconds,
        "seconds_per_sample": sample_seconds / n,
    }
    if getattr(prior, "encoder", None) is not None:
        # the autoencoder alone: its reconstructions of real test images bound what the latent prior can reach
        with torch.no_grad():
            zs = [prior.encode(real[i : min(i + 250, n)]) for i in range(0, n, 250)]
            rec = torch.cat([prior.decode(z) for z in zs]).clamp(-1, 1)
        f_rec = _logits(judge, rec)
        res["fd_reconstructions_vs_real"] = frechet_distance(f_rec, f_a)
        res["fd_ratio_reconstructions"] = res["fd_reconstructions_vs_real"] / fd_real
        # how precisely the latent prior must place its samples: decode the same latents after adding
        # Gaussian noise of these standard deviations (in the prior's normalised latent space)
        g = torch.Generator().manual_seed(seed)
        res["fd_ratio_reconstructions_noised"] = {}
        with torch.no_grad():
            for sd in (0.05, 0.1, 0.2):
                noised = [prior.decode(z + sd * torch.randn(z.shape, generator=g)).clamp(-1, 1) for z in zs]
                fd_sd = frechet_distance(_logits(judge, torch.cat(noised)), f_a)
                res["fd_ratio_reconstructions_noised"][str(sd)] = fd_sd / fd_real
        res["judge_accuracy_reconstructions"] = float((f_rec.argmax(1) == labels[:n]).float().mean())
        res["judge_accuracy_real"] = float((_logits(judge, real[:n]).argmax(1) == labels[:n]).float().mean())
    if entry.dataset == "colormnist":
        res.update({f"samples_{k}": v for k, v in colour_histogram_stats(out.images).items()})
        res.update({f"real_{k}": v for k, v in colour_histogram_stats(real[n : 2 * n]).items()})
    res["_images"] = out.images
    return res


def evaluate_subject(name: str, n: int | None = None, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Test accuracy of a classifier; reconstruction error and recolouring invariance of the colour-blind one."""
    entry = ZOO[name]
    real, labels = real_images("mnist" if entry.dataset == "colormnist" else entry.dataset, "test")
    if n is not None:
        real, labels = real[:n], labels[:n]
    res: dict[str, Any] = {"model": f"builtin:{name}", "n": len(real)}
    if entry.name == "colorblind-mnist":
        subj = load_builtin_subject(name)
        ink = (real + 1) / 2
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            a = torch.cat([subj(colorize(ink[i : i + 500], generator=g) * 2 - 1) for i in range(0, len(ink), 500)])
            b = torch.cat([subj(colorize(ink[i : i + 500], generator=g) * 2 - 1) for i in range(0, len(ink), 500)])
        res["recolouring_max_abs_change"] = float((a - b).abs().max())
        res["embedding_rms"] = float(a.pow(2).mean().sqrt())
        from safetensors.torch import load_file

        from ..models import GrayDecoder
        from .registry import weights_dir

        dec = GrayDecoder(a.shape[1])
        dec.load_state_dict(load_file(str(weights_dir(name) / "decoder.safetensors")))
        with torch.no_grad():
            rec = torch.sigmoid(dec(a))
        res["reconstruction_mse"] = float(((rec - ink) ** 2).mean())
        return res
    subj = load_builtin_subject(name, "logits")
    with torch.no_grad():
        pred = torch.cat([subj(real[i : i + 1000]).argmax(1) for i in range(0, len(real), 1000)])
    res["test_accuracy"] = float((pred == labels).float().mean())
    return res


def evaluate(name: str, **kwargs: Any) -> dict[str, Any]:
    """Quality figures of zoo entry ``name`` (see the module docstring)."""
    if name not in ZOO:
        raise ValueError(f"unknown zoo entry {name!r}; known: {sorted(ZOO)}")
    if ZOO[name].kind == "prior":
        return evaluate_prior(name, **kwargs)
    kwargs.pop("steps", None)
    kwargs.pop("batch_size", None)
    return evaluate_subject(name, **kwargs)
