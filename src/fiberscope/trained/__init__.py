"""Trained invariance models: the approaches a single guided generation is claimed to replace.

The fiber paper says NDTM "replaces days of training for invariance learning with a single guided
generation procedure at comparable fidelity". To test that on this scale, fiberscope carries the
trained approaches, on the same subjects, queries and metrics (``docs/trained-baselines.md``):

* **conditional fiber models** (the paper's Approach B): a conditional generative model of the
  colour-MNIST VAE latent given φ = ``builtin:colorblind-mnist``, trained with its own loss +
  λ·RMS fiber loss, λ ∈ {0, 1, 10, 100} — conditional flow matching (``cfm-l{λ}``) and a
  conditional coupling flow (``cflow-l{λ}``);
* **FeatInv-style** feature inversion (``featinv-mnist``): a diffusion UNet conditioned on the 7×7
  feature map of ``builtin:mnist-cnn``;
* **supervised VAE with nuisance dimensions** (``svae-mnist``): invariances of its *own* head;
* **conditional INN invariances** of Rombach et al. (``cinn-colorblind``, ``cinn-mnist-cnn``).

Train with ``fiberscope trained train NAME`` (or ``all``); weights go to
``~/.cache/fiberscope/trained/NAME`` (``$FIBERSCOPE_TRAINED_DIR`` or ``--root`` to change).
:class:`TrainedMethod` makes any of them a guidance method for ``fs.sample_fiber`` and
``fiberscope bench`` (``{name: trained, model: cfm-l10}``). The ``trained:`` subject prefix of
:func:`fiberscope.load_subject` (``trained:svae-mnist``: the supervised VAE's own classifier) needs no
import of this package: :mod:`fiberscope.loading` knows it.

Example:
    >>> import fiberscope as fs
    >>> from fiberscope.trained import TrainedMethod
    >>> out = fs.sample_fiber("builtin:colorblind-mnist", query, "builtin:colormnist-latent", n=8,  # doctest: +SKIP
    ...                       method=TrainedMethod("cflow-l10"), seed=0)
"""

from __future__ import annotations

from .cfm import ConditionalFlowMatching
from .common import Codec, model_dir, trained_root
from .featinv import FeatInvUNet
from .flows import ConditionalINN
from .model import TrainedMethod, TrainedModel, load_trained, load_trained_subject
from .recipes import RECIPES, TRAIN_ORDER, train, train_all
from .svae import SupervisedVAE, SVAEHead

__all__ = [
    "RECIPES",
    "TRAIN_ORDER",
    "Codec",
    "ConditionalFlowMatching",
    "ConditionalINN",
    "FeatInvUNet",
    "SVAEHead",
    "SupervisedVAE",
    "TrainedMethod",
    "TrainedModel",
    "load_trained",
    "load_trained_subject",
    "model_dir",
    "train",
    "train_all",
    "trained_root",
]
