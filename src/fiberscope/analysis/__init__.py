"""Analyses of what a fiber shows: named invariance probes and cross-model comparison.

* :func:`probe_invariances`: how much of the samples' variation each transformation (colour,
  brightness, contrast, translation, rotation, scale, flip, blur, fine detail, background, or a
  user-given :class:`Transformation`) explains, with unguided and augmentation references.
* :func:`compare_subjects`: every subject's fiber judged by every other subject (what A ignores
  and B sees).

Example:
    >>> import torch, fiberscope as fs
    >>> q = torch.rand(1, 1, 16, 16) * 2 - 1
    >>> fs.probe_invariances(q.flip(3).expand(3, -1, -1, -1), query=q).ranking[0][0]
    'flip'
"""

from .compare import ComparisonResult, compare_subjects
from .invariances import PROBES, InvarianceReport, ProbeResult, Transformation, probe_invariances, unguided_samples

__all__ = [
    "PROBES",
    "ComparisonResult",
    "InvarianceReport",
    "ProbeResult",
    "Transformation",
    "compare_subjects",
    "probe_invariances",
    "unguided_samples",
]
