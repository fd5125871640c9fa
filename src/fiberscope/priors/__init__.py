"""Priors: one contract (``denoise(x_t, t) -> Denoised(x0, eps)``), many adapters."""

from .adm import ADMConfig, ADMPrior, ADMUNet, load_adm_prior
from .analytic import GaussianMixturePrior, GaussianPrior
from .base import PARAMETERIZATIONS, CallablePrior, CallCounter, Denoised, Prior
from .loading import CheckpointError, ModelNotAvailableError, load_prior
from .schedule import FlowSchedule, Schedule, VPSchedule
from .steps import ancestral_step, ddim_step

__all__ = [
    "PARAMETERIZATIONS",
    "ADMConfig",
    "ADMPrior",
    "ADMUNet",
    "CallCounter",
    "CallablePrior",
    "CheckpointError",
    "Denoised",
    "FlowSchedule",
    "GaussianMixturePrior",
    "GaussianPrior",
    "ModelNotAvailableError",
    "Prior",
    "Schedule",
    "VPSchedule",
    "ancestral_step",
    "ddim_step",
    "load_adm_prior",
    "load_prior",
]
