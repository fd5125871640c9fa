"""Priors: one contract (``denoise(x_t, t) -> Denoised(x0, eps)``), many adapters.

The contract is :mod:`fiberscope.priors.base` with :mod:`~fiberscope.priors.schedule` and the
stateless update rules of :mod:`~fiberscope.priors.steps`; the adapters are
:mod:`~fiberscope.priors.diffusers`, :mod:`~fiberscope.priors.latent`, :mod:`~fiberscope.priors.adm`
and :mod:`~fiberscope.priors.analytic`. A spec string becomes a prior in :func:`fiberscope.load_prior`
(:mod:`fiberscope.loading`).
"""

from .._deprecated import moved
from .adm import ADMConfig, ADMPrior, ADMUNet, load_adm_prior
from .analytic import GaussianMixturePrior, GaussianPrior
from .base import PARAMETERIZATIONS, CallablePrior, Denoised, Prior
from .schedule import FlowSchedule, Schedule, VPSchedule
from .steps import ancestral_step, ddim_step

__all__ = [
    "PARAMETERIZATIONS",
    "ADMConfig",
    "ADMPrior",
    "ADMUNet",
    "CallablePrior",
    "Denoised",
    "FlowSchedule",
    "GaussianMixturePrior",
    "GaussianPrior",
    "Prior",
    "Schedule",
    "VPSchedule",
    "ancestral_step",
    "ddim_step",
    "load_adm_prior",
]

__getattr__ = moved(
    __name__,
    {
        "CallCounter": "fiberscope.counting:CallCounter",
        "CheckpointError": "fiberscope.errors:CheckpointError",
        "ModelNotAvailableError": "fiberscope.errors:ModelNotAvailableError",
        "load_prior": "fiberscope.loading:load_prior",
    },
)
