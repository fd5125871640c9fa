"""Small networks that fiberscope trains itself: the zoo's classifier, autoencoders and denoisers.

Every class here is small enough to train on a laptop CPU (:mod:`fiberscope.training`); the zoo's
recipes (:mod:`fiberscope.zoo.recipes`) and the trained models (:mod:`fiberscope.trained`)
build on them, and the zoo's shipped weights are loaded into them. The pixel priors are diffusers
``UNet2DModel``s (settings :data:`UNET_28`).

* :mod:`~fiberscope.models.classifier`: :class:`SmallCNN` (layers ``features``, ``penultimate``, ``logits``);
* :mod:`~fiberscope.models.autoencoders`: :class:`GrayEncoder`, :class:`GrayDecoder`,
  :class:`ColorblindEmbed` (the colour-blind subject), :class:`ConvVAE`;
* :mod:`~fiberscope.models.denoisers`: :data:`UNET_28`, :class:`LatentDenoiser`, :func:`timestep_embedding`.

Example:
    >>> import torch
    >>> from fiberscope.models import ColorblindEmbed
    >>> ColorblindEmbed(dim=8)(torch.zeros(1, 3, 28, 28)).shape
    torch.Size([1, 8])
"""

from .autoencoders import ColorblindEmbed, ConvVAE, GrayDecoder, GrayEncoder
from .classifier import SmallCNN
from .denoisers import UNET_28, LatentDenoiser, timestep_embedding

__all__ = [
    "UNET_28",
    "ColorblindEmbed",
    "ConvVAE",
    "GrayDecoder",
    "GrayEncoder",
    "LatentDenoiser",
    "SmallCNN",
    "timestep_embedding",
]
