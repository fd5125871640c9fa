"""fiberscope: show what a model does not see.

Sample natural-looking images from the fiber ``{x : φ(x) = φ(x*)}`` of any differentiable feature
extractor φ, training-free, by steering a pretrained diffusion or flow prior with NDTM.

Example:
    >>> import fiberscope as fs
    >>> out = fs.sample_fiber("builtin:mnist-cnn", "digit.png", "builtin:mnist-ddpm", n=8,  # doctest: +SKIP
    ...                       layer="penultimate", method=fs.NDTM.preset("builtin-mnist"))
    >>> out.save("fiber/")                                                               # doctest: +SKIP
"""

from ._version import __version__
from .analysis import ComparisonResult, InvarianceReport, Transformation, compare_subjects, probe_invariances
from .api import FiberSamples, sample_fiber
from .errors import GuidanceError, ModelNotAvailableError, SubjectGradientError
from .guidance import (
    DPS,
    MPGD,
    NDTM,
    TFG,
    UGD,
    AutoNDTM,
    FiberObjective,
    FreeDoM,
    GuidanceMethod,
    NotGuidedWarning,
    PixelOptimization,
    SampleNoise,
    Trajectory,
    Unguided,
)
from .loading import load_prior, load_subject
from .losses import LOSSES, fiber_loss
from .priors.analytic import GaussianMixturePrior, GaussianPrior
from .priors.base import CallablePrior, Denoised, Prior
from .priors.schedule import FlowSchedule, VPSchedule
from .subjects.base import Subject

__all__ = [
    "DPS",
    "LOSSES",
    "MPGD",
    "NDTM",
    "TFG",
    "UGD",
    "AutoNDTM",
    "CallablePrior",
    "ComparisonResult",
    "Denoised",
    "FiberObjective",
    "FiberSamples",
    "FlowSchedule",
    "FreeDoM",
    "GaussianMixturePrior",
    "GaussianPrior",
    "GuidanceError",
    "GuidanceMethod",
    "InvarianceReport",
    "ModelNotAvailableError",
    "NotGuidedWarning",
    "PixelOptimization",
    "Prior",
    "SampleNoise",
    "Subject",
    "SubjectGradientError",
    "Trajectory",
    "Transformation",
    "Unguided",
    "VPSchedule",
    "__version__",
    "compare_subjects",
    "fiber_loss",
    "load_prior",
    "load_subject",
    "probe_invariances",
    "sample_fiber",
]
