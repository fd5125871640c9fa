"""Data: MNIST / Fashion-MNIST readers, colour MNIST, and query-image loading."""

from .colormnist import colorize, decolorize, sample_background
from .mnist import DATASETS, fetch_mnist, load_dataset, load_fashion_mnist, load_mnist, read_idx

__all__ = [
    "DATASETS",
    "colorize",
    "decolorize",
    "fetch_mnist",
    "load_dataset",
    "load_fashion_mnist",
    "load_mnist",
    "read_idx",
    "sample_background",
]
