"""Guidance methods, one signature for all: ``method.run(prior, objective, x_init, generator, callback)``."""

from .base import FiberObjective, GuidanceError, GuidanceMethod, SampleNoise, StepRule, Trajectory
from .ndtm import NDTM, PRESETS, parse_gamma
from .unguided import Unguided

__all__ = [
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
