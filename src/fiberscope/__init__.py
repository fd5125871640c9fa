"""fiberscope: show what a model does not see.

Sample natural-looking images from the fiber ``{x : φ(x) = φ(x*)}`` of any differentiable feature
extractor φ, training-free, by steering a pretrained diffusion or flow prior with NDTM.

Example:
    >>> import fiberscope as fs
    >>> out = fs.sample_fiber("builtin:mnist-cnn", "digit.png", "builtin:mnist-ddpm", n=8,  # doctest: +SKIP
    ...                       layer="penultimate", method=fs.NDTM.preset("builtin-mnist"))
    >>> out.save("fiber/")                                                               # doctest: +SKIP
"""

__version__ = "0.1.0"

from .analysis import ComparisonResult, InvarianceReport, Transformation, compare_subjects, probe_invariances
from .api import FiberSamples, sample_fiber
from .guidance import (
    DPS,
    MPGD,
    NDTM,
    TFG,
    UGD,
    AutoNDTM,
    FiberObjective,
    FreeDoM,
    GuidanceError,
    GuidanceMethod,
    NotGuidedWarning,
    PixelOptimization,
    SampleNoise,
    Trajectory,
    Unguided,
)
from .losses import LOSSES, fiber_loss
from .priors import (
    CallablePrior,
    Denoised,
    FlowSchedule,
    GaussianMixturePrior,
    GaussianPrior,
    ModelNotAvailableError,
    Prior,
    VPSchedule,
    load_prior,
)
from .subjects import Subject, SubjectGradientError, load_subject

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
