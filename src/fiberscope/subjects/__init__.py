"""Subjects φ: any differentiable feature extractor, with its preprocessing rebuilt as tensor ops.

The contract is :class:`Subject` (:mod:`fiberscope.subjects.base`). Library adapters (imported lazily,
each behind its optional extra): ``torchvision:``, ``timm:``, ``open_clip:``, ``hf:`` (transformers,
including Qwen2-VL vision towers); their shared code is :mod:`fiberscope.subjects.library`. A spec
string becomes a subject in :func:`fiberscope.load_subject` (:mod:`fiberscope.loading`).
"""

from .._deprecated import moved
from .base import Subject, SubjectGradientError, check_gradients
from .hooks import LayerExtractor, list_layers
from .library import LibrarySubject
from .preprocess import Preprocess

__all__ = [
    "LayerExtractor",
    "LibrarySubject",
    "Preprocess",
    "Subject",
    "SubjectGradientError",
    "check_gradients",
    "list_layers",
]

__getattr__ = moved(
    __name__,
    {
        "SUBJECT_PREFIXES": "fiberscope.loading:SUBJECT_PREFIXES",
        "load_subject": "fiberscope.loading:load_subject",
        "subject_layers": "fiberscope.loading:subject_layers",
    },
)
