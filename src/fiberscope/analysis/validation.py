"""Subjects whose invariances are known by construction, and the validation runs of the probes.

* :func:`thumbnail_subject`: a 7×7 thumbnail (4×4 average pooling): blind to fine detail.
* :func:`identity_subject`: every pixel: blind to nothing.
* :func:`colour_sensitive_subject`: ``builtin:colorblind-mnist``'s embedding plus the image's 7×7
  colour thumbnail: its fiber keeps shape and colours, and lies inside the colour-blind subject's
  fiber (nested invariances).

:func:`synthetic_rows` and :func:`end_to_end_rows` produce the validation table of
``docs/invariances.md`` (``python benchmarks/invariance_validation.py``).

Example:
    >>> import torch
    >>> thumbnail_subject()(torch.zeros(2, 1, 28, 28), (-1.0, 1.0)).shape
    torch.Size([2, 49])
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..loading import load_subject
from ..subjects.base import Subject

__all__ = [
    "E2E_CASES",
    "E2ECase",
    "colour_sensitive_subject",
    "end_to_end_rows",
    "identity_subject",
    "synthetic_rows",
    "thumbnail_subject",
]


def thumbnail_subject() -> Subject:
    """φ(x) = the 7×7 thumbnail of a 28×28 image (4×4 average pooling), on images in [0, 1]."""
    return load_subject(lambda x: F.avg_pool2d(x, 4).flatten(1), input_range=(0.0, 1.0), name="thumbnail-7x7")


def identity_subject() -> Subject:
    """φ(x) = x: a subject that sees every pixel."""
    return load_subject(lambda x: x.flatten(1), input_range=(0.0, 1.0), name="identity")


class _ColourSensitive(torch.nn.Module):
    def __init__(self, weight: float) -> None:
        super().__init__()
        self.blind = load_subject("builtin:colorblind-mnist")
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x in [0, 1]
        return torch.cat([self.blind(x, (0.0, 1.0)), self.weight * F.avg_pool2d(x, 4).flatten(1)], 1)


def colour_sensitive_subject(weight: float = 10.0) -> Subject:
    """``builtin:colorblind-mnist``'s embedding and the image's 7×7 colour thumbnail (× ``weight``).

    On colour MNIST in [0, 1]: it sees the colours of background and ink as well as the shape, so its
    fiber keeps them, and it lies inside the colour-blind subject's fiber. (A first version added only
    the background colour: the probes showed its fibers recolouring the ink — the colour-blind
    embedding reads the ink along one colour direction only, so ink colours orthogonal to it are free.)
    """
    return load_subject(_ColourSensitive(weight), input_range=(0.0, 1.0), name="colour-sensitive")


@dataclass(frozen=True)
class E2ECase:
    """One end-to-end validation: a subject with a known invariance, on the zoo prior whose data can show it."""

    name: str
    subject: Callable[[], Any]
    prior: str
    dataset: str
    known: str  # the invariance built in, or "none"
    expect: str  # what the probes must show, in words


E2E_CASES: tuple[E2ECase, ...] = (
    E2ECase(
        "colorblind-mnist",
        lambda: "builtin:colorblind-mnist",
        "builtin:colormnist-latent",
        "colormnist",
        "colour",
        "colour ranked first",
    ),
    E2ECase("thumbnail-7x7", thumbnail_subject, "builtin:mnist-ddpm", "mnist", "fine_detail", "fine_detail first"),
    E2ECase("identity", identity_subject, "builtin:mnist-ddpm", "mnist", "none", "every probe < 0.25"),
    E2ECase(
        "colour-sensitive",
        colour_sensitive_subject,
        "builtin:colormnist-latent",
        "colormnist",
        "none (sees colour)",
        "colour < 0.2, not first",
    ),
)


def _passed(case: E2ECase, ranking: list[tuple[str, float]]) -> bool:
    scores = dict(ranking)
    if case.known == "none":
        return max(scores.values()) < 0.25
    if case.name == "colour-sensitive":
        return scores.get("colour", 0.0) < 0.2 and ranking[0][0] != "colour"
    return ranking[0][0] == case.known


def synthetic_rows(queries: dict[str, torch.Tensor], n: int = 6, seed: int = 1) -> list[dict[str, Any]]:
    """For every query and every kind of :mod:`~fiberscope.analysis.synthetic` fiber: the rank its probe gets."""
    from .invariances import probe_invariances
    from .synthetic import KINDS, synthetic_fiber

    rows = []
    for qname, q in queries.items():
        for kind in KINDS:
            if kind == "colour" and q.shape[1] != 3:
                continue
            rep = probe_invariances(synthetic_fiber(q, kind, n=n, seed=seed), query=q, augmented=False)
            names = [k for k, _ in rep.ranking]
            rows.append(
                {
                    "query": qname,
                    "transformation": kind,
                    "rank": names.index(kind) + 1,
                    "score": rep.score(kind),
                    "runner_up": rep.ranking[1][0] if names[0] == kind else rep.ranking[0][0],
                    "runner_up_score": rep.ranking[1][1] if names[0] == kind else rep.ranking[0][1],
                }
            )
    return rows


def end_to_end_rows(
    cases: tuple[E2ECase, ...] = E2E_CASES,
    labels: tuple[int, ...] = (3, 7),
    n: int = 4,
    seed: int = 0,
    log: Callable[[str], Any] | None = None,
) -> list[dict[str, Any]]:
    """Sample each case's fiber of the first test digit of each label (the zoo's preset), and probe it."""
    from ..api import sample_fiber
    from ..guidance.ndtm import NDTM
    from ..zoo.evaluate import real_images
    from ..zoo.registry import ZOO
    from .invariances import probe_invariances, unguided_samples

    rows = []
    images: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    refs: dict[str, torch.Tensor] = {}
    for case in cases:
        if case.dataset not in images:
            images[case.dataset] = real_images(case.dataset, "test")
        bank, lab = images[case.dataset]
        if case.prior not in refs:
            refs[case.prior] = unguided_samples(case.prior, max(8, n), seed=seed + 1)
        preset = ZOO[case.prior.removeprefix("builtin:")].preset
        if preset is None:  # every zoo prior registers one; a case on another prior names it itself
            raise ValueError(f"{case.prior} has no registered NDTM preset")
        for label in labels:
            idx = int((lab == label).nonzero()[0])
            t0 = time.perf_counter()
            res = sample_fiber(
                case.subject(),
                bank[idx : idx + 1],
                case.prior,
                n=n,
                seed=seed,
                method=NDTM.preset(preset),
                progress=False,
            )
            rep = probe_invariances(res, unguided=refs[case.prior], seed=seed)
            row = {
                "subject": case.name,
                "prior": case.prior,
                "known": case.known,
                "expect": case.expect,
                "label": label,
                "test_index": idx,
                "ranking": [[k, v] for k, v in rep.ranking],
                "first": rep.ranking[0][0],
                "first_score": rep.ranking[0][1],
                "rank_of_known": ([k for k, _ in rep.ranking].index(case.known) + 1)
                if case.known in rep.probes
                else None,
                "colour_score": rep.probes["colour"].score if rep.probes["colour"].applicable else None,
                "max_score": max(v for _, v in rep.ranking),
                "unguided": rep.references.get("unguided", {}),
                "fiber_loss_mean": float(res.fiber_loss.mean()),
                "variation": rep.variation,
                "passed": _passed(case, rep.ranking),
                "seconds": time.perf_counter() - t0,
                "summary": rep.summary(),
            }
            rows.append(row)
            if log is not None:
                top = ", ".join(f"{k} {v:.2f}" for k, v in rep.ranking[:3])
                verdict = "pass" if row["passed"] else "FAIL"
                log(f"{case.name} on digit {label}: {top} ({verdict}, {row['seconds']:.0f} s)")
    return rows
