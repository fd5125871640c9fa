"""The built-in zoo: small priors and subjects trained by recipes in this package (offline default).

:mod:`~fiberscope.zoo.registry` is the table of entries; :mod:`~fiberscope.zoo.recipes` (what to train
for each entry) and :mod:`~fiberscope.zoo.trainers` (how each kind trains) train them with
:mod:`fiberscope.training`, and :mod:`~fiberscope.zoo.evaluate` and :mod:`~fiberscope.zoo.cards`
measure and describe them. Their networks are in :mod:`fiberscope.models`.
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
