"""``fiberscope demo``: fibers of real digits under two subjects, offline, on the CPU, in minutes.

Section 1 audits the MNIST classifier's penultimate layer (``builtin:mnist-cnn``) with the pixel
DDPM prior: the samples show which changes of handwriting the classifier's features ignore.
Section 2 audits the colour-blind embedding (``builtin:colorblind-mnist``) on colour MNIST with the
latent prior: its true fiber holds every recolouring, so the samples should keep the digit and vary
the colours. Each query gets a grid in the paper's layout (query, nearest real image in feature
space, fiber samples with their fiber loss), the variation map and the invariance ranking (how much
of the samples' variation each named transformation explains, against unguided samples of the prior
and random augmentations of the query), and the run writes ``demo.json`` and ``report.html``.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .utils import atomic_write_bytes, atomic_write_json, atomic_write_text

__all__ = ["DemoSection", "default_sections", "run_demo"]


@dataclass
class DemoSection:
    """One subject/prior pair of the demo and the digits it audits."""

    key: str
    title: str
    prior: str
    subject: str
    layer: str | None
    dataset: str
    labels: tuple[int, ...]
    n: int
    explanation: str
    overrides: dict[str, Any] = field(default_factory=dict)


def default_sections(quick: bool = False) -> list[DemoSection]:
    """The demo's sections; ``quick`` shrinks every budget (used by the tests)."""
    q = {"steps": 8, "inner_steps": 1} if quick else {}
    return [
        DemoSection(
            key="mnist-cnn",
            title="MNIST classifier, penultimate layer (128-d) — pixel DDPM prior",
            prior="builtin:mnist-ddpm",
            subject="builtin:mnist-cnn",
            layer="penultimate",
            dataset="mnist",
            labels=(3, 7) if quick else (2, 3, 7),
            n=3 if quick else 6,
            overrides=q,
            explanation=(
                "Each sample is a natural-looking digit whose 128 penultimate features are (nearly) those of "
                "the query. What stays fixed across the samples is what the classifier encodes; what varies "
                "(stroke thickness, slant, small shape details) is what its features ignore."
            ),
        ),
        DemoSection(
            key="colorblind",
            title="Colour-blind embedding (48-d) on colour MNIST — latent diffusion prior",
            prior="builtin:colormnist-latent",
            subject="builtin:colorblind-mnist",
            layer=None,
            dataset="colormnist",
            labels=(5,) if quick else (0, 5, 9),
            n=3 if quick else 8,
            overrides=q,
            explanation=(
                "This subject decolourises its input before embedding it, so it is blind to colour by "
                "construction: its true fiber holds every recolouring of the query. A good fiber sampler keeps "
                "the digit's shape and varies background and foreground colours as the data set does."
            ),
        ),
    ]


def _pick_queries(labels: torch.Tensor, wanted: tuple[int, ...]) -> list[int]:
    return [int((labels == lab).nonzero()[0]) for lab in wanted]


def _png(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def ranking_text(inv: Any, top: int = 3) -> str:
    """The first ``top`` probes of a ranking with their references, e.g. ``colour 0.84 (unguided 0.02) · ...``."""
    parts = []
    for name, score in inv.ranking[:top]:
        refs = ", ".join(f"{r} {v[name]:.2f}" for r, v in inv.references.items() if name in v)
        parts.append(f"{name} {score:.2f}" + (f" ({refs})" if refs else ""))
    return " · ".join(parts)


def run_demo(
    out: str | Path,
    *,
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
    sections: list[DemoSection] | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Run the demo and write grids, ``demo.json`` and ``report.html`` into ``out``.

    Returns the JSON record. ``quick=True`` runs a reduced budget (seconds, for tests).
    """
    from .analysis.invariances import probe_invariances
    from .api import sample_fiber
    from .guidance.ndtm import NDTM
    from .guidance.unguided import Unguided
    from .loading import load_prior, load_subject
    from .losses import fiber_loss
    from .metrics.neighbours import embed, nearest_neighbour
    from .report.html import Report
    from .report.invariances import add_fiber_section, variation_image
    from .zoo.evaluate import real_images

    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sections = sections or default_sections(quick)
    record: dict[str, Any] = {"fiberscope_demo": 1, "quick": quick, "seed": seed, "sections": []}
    report = Report(
        "fiberscope demo: what do these models not see?",
        f"Fibers of real test digits under {len(sections)} subjects, drawn with fiberscope's default sampler "
        "(AutoNDTM: NDTM with scale-free control steps and a final projection onto the fiber, untuned). "
        "Offline, on the built-in zoo.",
    )
    report.paragraph(
        "How to read a grid: the first image is the query, the second is the real test image whose features "
        "are closest to the query's (the nearest-neighbour reference), and the rest are samples from the fiber: "
        "images the subject maps to (almost) the same features. The number under each image is its fiber "
        "loss, the squared L2 distance between its features and the query's. A sampler does its job when "
        "the samples' losses are well below the nearest real image's, while the samples still look like "
        "data; a green frame marks a sample whose loss is at most the nearest real image's (in the fiber), a "
        "red one a sample that is not. What changes across the samples is what the subject ignores. Under each "
        "grid: where the samples "
        "vary, and the invariance ranking — for each named transformation, the share of the samples' "
        "difference from the query that it explains, beside the same score for unguided samples of the prior "
        "and for random augmentations of the query — with a summary in words.",
        cls="note",
    )
    for sec in sections:
        t_sec = time.perf_counter()
        prior = load_prior(sec.prior, device=device)
        subject = load_subject(sec.subject, sec.layer, device=device)
        # the default sampler (what sample_fiber runs with no method): NDTM with its settings left open
        method = NDTM(**sec.overrides)
        bank, labels = real_images(sec.dataset, "test", seed=seed)

        def phi(x: torch.Tensor, s: Any = subject, p: Any = prior) -> torch.Tensor:
            return s(x.to(p.device), p.data_range)

        bank_feats = embed(phi, bank)
        unguided = sample_fiber(
            subject,
            bank[:1],
            prior,
            n=sec.n,
            seed=seed + 1,
            progress=False,
            method=Unguided(**_unguided_settings(sec.prior, quick)),
        )
        sec_rec: dict[str, Any] = {
            "key": sec.key,
            "title": sec.title,
            "prior": sec.prior,
            "subject": sec.subject,
            "layer": sec.layer,
            "queries": [],
        }
        report.heading(sec.title, anchor=sec.key)
        report.paragraph(sec.explanation)
        summary_rows = []
        for qi, idx in enumerate(_pick_queries(labels, sec.labels)):
            query = bank[idx : idx + 1]
            res = sample_fiber(
                subject,
                query,
                prior,
                n=sec.n,
                method=method,
                seed=seed + 100 * qi,
                progress=progress,
                tolerance="nn",  # in the fiber: closer to the query, for the subject, than any real test image
                reference_images=bank,
            )
            sec_rec.setdefault("method", res.config["method"])
            nn = nearest_neighbour(res.target, bank_feats, "sq_l2", exclude=idx)
            ung_loss = fiber_loss(unguided.features, res.target, "sq_l2")
            name = f"{sec.key}_query{qi}_label{int(labels[idx])}"
            res.save(out / name)
            grid = res.grid(nn_image=bank[nn.index], nn_loss=nn.loss)
            atomic_write_bytes(out / f"grid_{name}.png", _png(grid))
            var = variation_image(res.images)
            atomic_write_bytes(out / f"variation_{name}.png", _png(var))
            inv = probe_invariances(res, unguided=unguided, seed=seed)
            q_rec = {
                "name": name,
                "test_index": idx,
                "label": int(labels[idx]),
                "fiber_loss": res.fiber_loss.tolist(),
                "fiber_loss_mean": float(res.fiber_loss.mean()),
                "nearest_neighbour": {"test_index": nn.index, "label": int(labels[nn.index]), "fiber_loss": nn.loss},
                "unguided_fiber_loss_mean": float(ung_loss.mean()),
                "seconds": res.timings["total"],
                "forward_equivalents_per_sample": res.counts["forward_equivalents"],
                "grid": f"grid_{name}.png",
                "ranking": [[k, v] for k, v in inv.ranking],
                "ranking_text": ranking_text(inv),
                "summary": inv.summary(),
                "invariances": inv.to_dict(),
            }
            sec_rec["queries"].append(q_rec)
            summary_rows.append(
                [
                    f"{int(labels[idx])} (test #{idx})",
                    q_rec["fiber_loss_mean"],
                    nn.loss,
                    q_rec["unguided_fiber_loss_mean"],
                    f"{res.timings['total']:.1f}",
                ]
            )
            report.heading(f"Query: a {int(labels[idx])} (test image #{idx})", level=3)
            add_fiber_section(
                report,
                res,
                inv=inv,
                grid=grid,
                grid_caption=f"query | nearest real image in feature space | {sec.n} fiber samples; "
                "numbers: fiber loss (squared L2 in feature space)",
            )
            summary_rows[-1].insert(4, ranking_text(inv, top=2))
        report.table(
            ["query", "fiber loss (mean)", "nearest real", "unguided prior samples", "varies most in", "seconds"],
            summary_rows,
        )
        report.details(
            "Sampler settings for this section (fiberscope's default, AutoNDTM)",
            "\n".join(f"{k}: {v}" for k, v in sec_rec["method"].items()),
        )
        sec_rec["seconds"] = time.perf_counter() - t_sec
        record["sections"].append(sec_rec)
    record["seconds"] = time.perf_counter() - t_start
    report.paragraph(
        f"Total time {record['seconds']:.0f} s on {torch.get_num_threads()} CPU threads "
        f"(torch {torch.__version__}). Reproduce with `fiberscope demo --out DIR`."
    )
    atomic_write_json(out / "demo.json", record)
    atomic_write_text(out / "report.html", report.render())
    return record


def _unguided_settings(prior: str, quick: bool) -> dict[str, Any]:
    from .zoo.registry import ZOO

    s = dict(ZOO[prior.removeprefix("builtin:")].sampling)
    if quick:
        s["steps"] = 5
    return s
