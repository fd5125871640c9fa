"""Metrics: the paper's evaluation protocol, as plain functions on tensors.

* fiber loss in every reported form (:func:`fiber_loss_forms`) and the ``mean ± std`` across
  sampling seeds (:func:`across_seeds`);
* the nearest-neighbour reference (:func:`nearest_neighbour`, :func:`nearest_neighbours`);
* realism: Fréchet distance in a reference model's space (:func:`realism`, :class:`Reference`,
  :func:`default_reference`; :func:`frechet_distance` for any features);
* diversity (:func:`diversity`, :func:`mean_pairwise_distance`, :func:`variance_map`);
* agreement with other models (:func:`label_agreement`, :func:`cross_model_agreement`);
* colour-MNIST ground truth (:func:`colour_histogram_stats`);
* the augmentation reference (:func:`augment`).
"""

from .agreement import cross_model_agreement, label_agreement
from .augment import AUGMENTATIONS, augment
from .colour import colour_histogram_stats
from .diversity import diversity, mean_pairwise_distance, variance_map
from .fiber import REPORTED_FORMS, across_seeds, fiber_loss_forms
from .frechet import feature_stats, frechet_distance, frechet_from_stats
from .neighbours import Neighbour, embed, nearest_neighbour, nearest_neighbours
from .realism import REFERENCES, Reference, default_reference, load_reference, realism

__all__ = [
    "AUGMENTATIONS",
    "REFERENCES",
    "REPORTED_FORMS",
    "Neighbour",
    "Reference",
    "across_seeds",
    "augment",
    "colour_histogram_stats",
    "cross_model_agreement",
    "default_reference",
    "diversity",
    "embed",
    "feature_stats",
    "fiber_loss_forms",
    "frechet_distance",
    "frechet_from_stats",
    "label_agreement",
    "load_reference",
    "mean_pairwise_distance",
    "nearest_neighbour",
    "nearest_neighbours",
    "realism",
    "variance_map",
]
