"""Metrics: fiber loss forms, nearest-neighbour baseline, Fréchet distance, diversity, agreement."""

from .frechet import feature_stats, frechet_distance, frechet_from_stats

__all__ = ["feature_stats", "frechet_distance", "frechet_from_stats"]
