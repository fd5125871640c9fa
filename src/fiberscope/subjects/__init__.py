"""Subjects φ: any differentiable feature extractor, with its preprocessing rebuilt as tensor ops.

Library adapters (imported lazily, each behind its optional extra): ``torchvision:``, ``timm:``,
``open_clip:``, ``hf:`` (transformers, including Qwen2-VL vision towers); see
:mod:`fiberscope.subjects.registry`.
"""

from .base import Subject, SubjectGradientError, check_gradients, load_subject
from .hooks import LayerExtractor, list_layers
from .preprocess import Preprocess
from .registry import SUBJECT_PREFIXES, LibrarySubject, subject_layers

__all__ = [
    "SUBJECT_PREFIXES",
    "LayerExtractor",
    "LibrarySubject",
    "Preprocess",
    "Subject",
    "SubjectGradientError",
    "check_gradients",
    "list_layers",
    "load_subject",
    "subject_layers",
]
