"""The built-in zoo: small priors and subjects trained by recipes in this package (offline default).

:mod:`~fiberscope.zoo.registry` is the table of entries; :mod:`~fiberscope.zoo.models` the small
networks; :mod:`~fiberscope.zoo.recipes`, :mod:`~fiberscope.zoo.training`,
:mod:`~fiberscope.zoo.evaluate` and :mod:`~fiberscope.zoo.cards` train, measure and describe them.
"""

from .._deprecated import moved
from .registry import ZOO, ZooEntry, card_path, weights_dir

__all__ = ["ZOO", "ZooEntry", "card_path", "weights_dir"]

__getattr__ = moved(
    __name__,
    {
        "load_builtin_prior": "fiberscope.loading:load_builtin_prior",
        "load_builtin_subject": "fiberscope.loading:load_builtin_subject",
    },
)
