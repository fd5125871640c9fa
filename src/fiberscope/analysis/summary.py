"""The invariance report in words: the plain-language summary and the fitted parameters of a probe.

:func:`summarise` writes the paragraph of :meth:`~fiberscope.analysis.InvarianceReport.summary` from
the numbers: what the samples vary in most (scores at or above :data:`VARIES`), what they keep
(below :data:`KEPT`), and how the references compare.

Example:
    >>> from fiberscope.analysis.probes import ProbeResult
    >>> describe_params(ProbeResult("translation", 0.9, [0.9, 0.9], 0.9, {"dx": [2.0, 3.0], "dy": [-1.0, -1.0]}))
    'dx +2.00 px, dy -1.00 px'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from .probes import LABELS, ProbeResult

if TYPE_CHECKING:
    from .invariances import InvarianceReport

__all__ = ["KEPT", "VARIES", "describe_params", "summarise"]


def describe_params(p: ProbeResult) -> str:
    """The fitted parameters of one probe, as the median over samples (e.g. ``dx +2.0 px, dy −1.0 px``)."""
    if not p.params:
        return p.note
    units = {"dx": " px", "dy": " px", "degrees": "°", "sigma": " px", "hue_shift": "°"}
    parts = []
    for k, v in p.params.items():
        if not v:
            continue
        if isinstance(v[0], str):
            top = max(set(v), key=v.count)
            parts.append(f"{k} {top} ({v.count(top)}/{len(v)})")
            continue
        med = float(torch.tensor([float(a) for a in v]).median())
        signed = k in ("dx", "dy", "degrees", "hue_shift")
        parts.append(f"{k} {med:+.2f}{units.get(k, '')}" if signed else f"{k} {med:.2f}{units.get(k, '')}")
    return ", ".join(parts)


#: scores at or above this are "varies"; below KEPT "kept"
VARIES = 0.3
KEPT = 0.1


def _join(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


#: groups of probes named together when every member is kept
_GROUPS = (
    ("the shape", ("translation", "rotation", "scale", "flip", "fine_detail")),
    ("the layout", ("translation", "rotation", "scale")),
    ("the tones", ("brightness", "contrast", "colour")),
)


def _kept_words(kept: list[str], rep: InvarianceReport, label: Mapping[str, str]) -> list[str]:
    """What is kept, in words: whole groups first (``the shape``), then the other probes, at most four items."""
    missing = {k for k, p in rep.probes.items() if not p.applicable}
    rest = list(kept)
    words = []
    for name, members in _GROUPS:
        present = [m for m in members if m in rep.probes and m not in missing]
        if present and all(m in rest for m in present):
            words.append(name if name == "the shape" else f"{name} ({', '.join(label[m] for m in present)})")
            rest = [k for k in rest if k not in present]
    words += [label[k] for k in rest]
    return words[:4]


def summarise(rep: InvarianceReport) -> str:
    """The plain-language paragraph of :meth:`InvarianceReport.summary`."""
    rank = rep.ranking
    if not rank:
        return "No probe applies to these images."
    label = {**LABELS, **{k: k.replace("_", " ") for k in rep.probes if k not in LABELS}}
    pct = 100 * rep.variation
    top = [(k, s) for k, s in rank if s >= VARIES][:3]
    kept = [k for k, s in rank if s < KEPT]
    sentences = []
    if not top:
        k, s = rank[0]
        sentences.append(
            f"The samples differ from the query by {pct:.1f} % of the value range (RMS), and no probe explains "
            f"much of that: the largest is {label[k]} ({s:.2f})."
        )
        if rep.variation < 0.05:
            sentences.append(
                "The samples stay close to the query: the subject appears to see every aspect probed here."
            )
        else:
            sentences.append("They vary in ways none of the probed transformations describes alone.")
    else:
        words = [f"{label[k]} ({s:.2f})" for k, s in top]
        sentences.append(f"Samples vary most in {_join(words)}.")
        if kept:
            shown = _kept_words(kept, rep, label)
            verb = "is" if len(shown) == 1 else "are"
            text = _join(shown)
            sentences.append(f"{text[:1].upper() + text[1:]} {verb} kept (scores below {KEPT}).")
        unexplained = 1 - top[0][1]
        if unexplained > 0.4:
            sentences.append(
                f"The best probe leaves {100 * unexplained:.0f} % of the variation unexplained: the samples also "
                "change in other ways."
            )
    if top:
        k = top[0][0]
        refs = [
            (what, rep.references[key][k])
            for key, what in (("unguided", "unguided samples of the prior"), ("augmented", "random augmentations"))
            if k in rep.references.get(key, {})
        ]
        if refs:
            parts = [f"{what} score {v:.2f}" for what, v in refs]
            sentences.append(f"For comparison on {label[k]}, {_join(parts)}.")
    return " ".join(sentences)
