"""Moved: the zoo's networks live in :mod:`fiberscope.models` (the trained models use them too).

``from fiberscope.zoo.models import SmallCNN`` keeps working until fiberscope 0.2, with a
``DeprecationWarning``; import from :mod:`fiberscope.models` instead.
"""

from __future__ import annotations

from .._deprecated import moved

__getattr__ = moved(
    __name__,
    {
        name: f"fiberscope.models:{name}"
        for name in (
            "ColorblindEmbed",
            "ConvVAE",
            "GrayDecoder",
            "GrayEncoder",
            "LatentDenoiser",
            "SmallCNN",
            "timestep_embedding",
        )
    },
)
