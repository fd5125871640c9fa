"""Guidance methods, one signature for all: ``method.run(prior, objective, x_init, generator, callback)``."""

from .base import FiberObjective, GuidanceError, GuidanceMethod, SampleNoise, StepRule, Trajectory
from .ndtm import NDTM, PRESETS, parse_gamma
from .unguided import Unguided

#: Guidance methods by name (``fiberscope sample --method NAME``, manifests, the bench).
METHODS: dict[str, type[GuidanceMethod]] = {"ndtm": NDTM, "unguided": Unguided}

__all__ = [
    "METHODS",
    "NDTM",
    "PRESETS",
    "FiberObjective",
    "GuidanceError",
    "GuidanceMethod",
    "SampleNoise",
    "StepRule",
    "Trajectory",
    "Unguided",
    "parse_gamma",
]
