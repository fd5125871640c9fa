"""The built-in zoo: small priors and subjects trained by recipes in this package (offline default)."""

from .registry import ZOO, ZooEntry, card_path, load_builtin_prior, load_builtin_subject, weights_dir

__all__ = ["ZOO", "ZooEntry", "card_path", "load_builtin_prior", "load_builtin_subject", "weights_dir"]
