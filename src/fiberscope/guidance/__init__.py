"""Guidance methods, one signature for all: ``method.run(prior, objective, x_init, noise, callback)``.

NDTM (the paper's method), the training-free baselines it is compared with (DPS, FreeDoM, UGD, MPGD,
TFG — one unified loop, :mod:`fiberscope.guidance.tfg`), prior-free pixel optimisation, and plain
unguided sampling, and the projection onto the fiber that ends AutoNDTM's runs
(:mod:`~fiberscope.guidance.projection`). The settings several methods share, one Adam step and the clip range live in
:mod:`~fiberscope.guidance.base`; NDTM's presets in :mod:`~fiberscope.guidance.presets`.
"""

from .auto import AutoNDTM, NotGuidedWarning
from .base import FiberObjective, GuidanceError, GuidanceMethod, SampleNoise, StepRule, Trajectory
from .dps import DPS
from .freedom import FreeDoM
from .mpgd import MPGD
from .ndtm import NDTM, parse_gamma
from .pixel_opt import PixelOptimization
from .presets import PRESETS
from .projection import ProjectionInfo, project_to_fiber
from .tfg import TFG, TrainingFreeGuidance
from .ugd import UGD
from .unguided import Unguided

#: Guidance methods by name (``fiberscope sample --method NAME``, manifests, the bench).
METHODS: dict[str, type[GuidanceMethod]] = {
    "ndtm": NDTM,
    "auto": AutoNDTM,
    "unguided": Unguided,
    "dps": DPS,
    "freedom": FreeDoM,
    "ugd": UGD,
    "mpgd": MPGD,
    "tfg": TFG,
    "pixel_opt": PixelOptimization,
}

__all__ = [
    "DPS",
    "METHODS",
    "MPGD",
    "NDTM",
    "PRESETS",
    "TFG",
    "UGD",
    "AutoNDTM",
    "FiberObjective",
    "FreeDoM",
    "GuidanceError",
    "GuidanceMethod",
    "NotGuidedWarning",
    "PixelOptimization",
    "ProjectionInfo",
    "SampleNoise",
    "StepRule",
    "TrainingFreeGuidance",
    "Trajectory",
    "Unguided",
    "parse_gamma",
    "project_to_fiber",
]
