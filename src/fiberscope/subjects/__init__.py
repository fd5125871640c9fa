"""Subjects φ: any differentiable feature extractor, with its preprocessing rebuilt as tensor ops."""

from .base import Subject, SubjectGradientError, check_gradients, load_subject
from .hooks import LayerExtractor, list_layers

__all__ = ["LayerExtractor", "Subject", "SubjectGradientError", "check_gradients", "list_layers", "load_subject"]
