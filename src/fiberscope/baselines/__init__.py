"""Moved: the trained invariance models are :mod:`fiberscope.trained` (issue 22: "baseline" means only the
training-free guidance methods now).

``from fiberscope.baselines import TrainedBaseline`` (now ``fiberscope.trained.TrainedMethod``) and every other
name of this package and its modules keep working until fiberscope 0.2, with a ``DeprecationWarning``
naming the new home.
"""

from __future__ import annotations

from .._deprecated import moved

__getattr__ = moved(
    __name__,
    {
        "BaselineNotTrainedError": "fiberscope.errors:NotTrainedError",
        "Codec": "fiberscope.trained:Codec",
        "ConditionalFlowMatching": "fiberscope.trained:ConditionalFlowMatching",
        "ConditionalINN": "fiberscope.trained:ConditionalINN",
        "FeatInvUNet": "fiberscope.trained:FeatInvUNet",
        "RECIPES": "fiberscope.trained:RECIPES",
        "SVAEHead": "fiberscope.trained:SVAEHead",
        "SupervisedVAE": "fiberscope.trained:SupervisedVAE",
        "TRAIN_ORDER": "fiberscope.trained:TRAIN_ORDER",
        "TrainedBaseline": "fiberscope.trained:TrainedMethod",
        "TrainedModel": "fiberscope.trained:TrainedModel",
        "baselines_root": "fiberscope.trained:trained_root",
        "load_baseline": "fiberscope.trained:load_trained",
        "load_baseline_subject": "fiberscope.trained:load_trained_subject",
        "model_dir": "fiberscope.trained:model_dir",
        "train": "fiberscope.trained:train",
        "train_all": "fiberscope.trained:train_all",
    },
)
