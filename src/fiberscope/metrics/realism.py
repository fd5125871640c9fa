"""Realism: Fréchet distance between fiber samples and real images in a *reference* model's space.

FID's formula works in any feature space; what matters is whose features. The audited subject is a
bad choice: its fiber samples match the query in exactly its features, so its own FID collapses
(the paper: InceptionV3 fiber samples score a PyTorch-Inception FID of 3.81 against a TF-Inception
FID of 33.52). :func:`default_reference` therefore picks a model *other than the subject*:

============== ================================================= ===================================
data set       reference (first that is not the subject)           notes
============== ================================================= ===================================
mnist          ``builtin:mnist-cnn`` logits, else                 the zoo's classifiers; the colour-
               ``builtin:colorblind-mnist``                       blind embedding sees a grey digit
                                                                  recoloured with a fixed background
fashion-mnist  ``builtin:fashion-cnn`` logits, else               an MNIST net as a generic feature
               ``builtin:mnist-cnn`` penultimate                  extractor for clothes
colormnist     ``builtin:mnist-cnn`` logits (on the decoloured    digit realism; colour realism is
               digit), else ``builtin:colorblind-mnist``          measured by the colour KL/W1
============== ================================================= ===================================

The same network at another layer is not "another model" (logits are a function of the
penultimate features, so a penultimate-layer fiber also fixes the logits): the rule compares model
specs, not layers.

Example:
    >>> import torch
    >>> from fiberscope.metrics import Reference, realism
    >>> ref = Reference(lambda x: x.flatten(1)[:, :3], name="first-pixels")
    >>> g = torch.Generator().manual_seed(0)
    >>> real = torch.randn(500, 1, 2, 2, generator=g)
    >>> realism(real[:250], real[250:], ref) < 0.2
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .frechet import frechet_distance

__all__ = ["REFERENCES", "Reference", "default_reference", "load_reference", "realism"]

#: Reference candidates per data set, in order of preference: ``(model spec, layer)``.
REFERENCES: dict[str, list[tuple[str, str | None]]] = {
    "mnist": [("builtin:mnist-cnn", "logits"), ("builtin:colorblind-mnist", None)],
    "fashion-mnist": [("builtin:fashion-cnn", "logits"), ("builtin:mnist-cnn", "penultimate")],
    "colormnist": [("builtin:mnist-cnn", "logits"), ("builtin:colorblind-mnist", None)],
}


def _to_grey(x: torch.Tensor, data_range: tuple[float, float]) -> torch.Tensor:
    """Colour-MNIST images → the grey digit (ink) in the same range (the zoo's judge convention)."""
    from ..data.colormnist import decolorize

    lo, hi = data_range
    return decolorize(((x - lo) / (hi - lo)).clamp(0, 1)) * (hi - lo) + lo


def _to_colour(x: torch.Tensor, data_range: tuple[float, float]) -> torch.Tensor:
    """Grey digits → colour-MNIST images on a fixed light-grey background (0.7 per channel)."""
    from ..data.colormnist import colorize

    lo, hi = data_range
    ink = ((x - lo) / (hi - lo)).clamp(0, 1)
    bg = torch.full((x.shape[0], 3), 0.7, dtype=x.dtype, device=x.device)
    return colorize(ink, background=bg) * (hi - lo) + lo


@dataclass
class Reference:
    """A feature map used to judge samples: ``ref(images) -> [N, D]``, batched, no gradient.

    Args:
        fn: features of images given in ``data_range`` (a :class:`~fiberscope.Subject` or any callable).
        name: recorded with every number computed in this space.
        channels: the channel count ``fn`` expects; 3-channel colour-MNIST images are decoloured
            for a 1-channel model and grey digits recoloured for a 3-channel one (None: no adaptation).
        data_range: the range of the images passed in.
        batch_size: images per forward pass.
    """

    fn: Callable[..., Any]
    name: str = "reference"
    channels: int | None = None
    data_range: tuple[float, float] = (-1.0, 1.0)
    batch_size: int = 500

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from ..subjects.base import Subject

        out = []
        with torch.no_grad():
            for i in range(0, len(images), self.batch_size):
                x = images[i : i + self.batch_size].detach().float()
                if self.channels == 1 and x.shape[1] == 3:
                    x = _to_grey(x, self.data_range)
                elif self.channels == 3 and x.shape[1] == 1:
                    x = _to_colour(x, self.data_range)
                f = self.fn(x, self.data_range) if isinstance(self.fn, Subject) else self.fn(x)
                out.append(f.float().flatten(1).cpu())
        return torch.cat(out)


def load_reference(spec: str, layer: str | None = None, data_range: tuple[float, float] = (-1.0, 1.0)) -> Reference:
    """A :class:`Reference` from a subject spec (``builtin:NAME`` knows its channel count)."""
    from ..loading import load_subject

    channels = None
    if spec.startswith("builtin:"):
        from ..zoo.registry import ZOO

        entry = ZOO.get(spec.removeprefix("builtin:"))
        if entry is not None:
            channels = 3 if entry.dataset == "colormnist" else 1
    subj = load_subject(spec, layer)
    return Reference(subj, name=spec + (f":{layer}" if layer else ""), channels=channels, data_range=data_range)


def default_reference(dataset: str, subject: str | None = None) -> tuple[str, str | None]:
    """``(spec, layer)`` of the default reference for ``dataset``, never the audited ``subject``.

    Args:
        dataset: ``mnist``, ``fashion-mnist`` or ``colormnist``.
        subject: the audited subject's spec (e.g. ``"builtin:mnist-cnn"``); its layer is irrelevant.

    Example:
        >>> default_reference("mnist", "builtin:mnist-cnn")
        ('builtin:colorblind-mnist', None)
        >>> default_reference("colormnist", "builtin:colorblind-mnist")
        ('builtin:mnist-cnn', 'logits')
    """
    if dataset not in REFERENCES:
        raise ValueError(f"no default reference for data set {dataset!r}; known: {sorted(REFERENCES)}")
    subj = (subject or "").split(":layer=")[0]
    for spec, layer in REFERENCES[dataset]:
        if spec != subj:
            return spec, layer
    raise ValueError(f"every default reference of {dataset!r} is the subject {subject!r}; name one explicitly")


def realism(
    samples: torch.Tensor,
    real: torch.Tensor,
    reference: Callable[[torch.Tensor], torch.Tensor],
    real_features: torch.Tensor | None = None,
) -> float:
    """Fréchet distance between ``samples`` and ``real`` images in ``reference``'s feature space.

    Args:
        samples: generated images ``[n, C, H, W]``.
        real: real images (ignored when ``real_features`` is given).
        reference: the feature map (a :class:`Reference`); not the audited subject.
        real_features: precomputed features of the real images, to reuse across calls.

    Like FID, the value is biased upwards for small ``n``: compare methods at equal ``n`` and next to
    the distance between two real sets of the same size.
    """
    fr = real_features if real_features is not None else reference(real)
    return frechet_distance(reference(samples), fr)
