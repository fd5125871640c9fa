"""Fréchet distance between two sets of features (FID's formula, in any feature space).

``FD = ‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a^½ Σ_b Σ_a^½)^½)``, computed with symmetric
eigendecompositions in float64 (no scipy needed, no complex round-off).

Example:
    >>> import torch
    >>> from fiberscope.metrics import frechet_distance
    >>> g = torch.Generator().manual_seed(0)
    >>> a, b = torch.randn(2000, 3, generator=g), torch.randn(2000, 3, generator=g) + 1.0
    >>> round(frechet_distance(a, b), 1)           # ≈ ‖μ_a − μ_b‖² = 3
    3.0
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["feature_stats", "frechet_distance", "frechet_from_stats"]


def feature_stats(feats: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64) of ``[N, D]`` features (flattened beyond dim 1)."""
    f = feats.detach().cpu().double().numpy() if isinstance(feats, torch.Tensor) else np.asarray(feats, np.float64)
    f = f.reshape(f.shape[0], -1)
    if f.shape[0] < 2:
        raise ValueError("need at least two feature vectors to estimate a covariance")
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_from_stats(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians N(μ_a, Σ_a) and N(μ_b, Σ_b)."""
    sa = _sqrt_psd(cov_a)
    cross = np.linalg.eigvalsh((sa @ cov_b @ sa + (sa @ cov_b @ sa).T) / 2)
    tr_cross = float(np.sqrt(np.clip(cross, 0, None)).sum())
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_cross)


def frechet_distance(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between feature sets ``a`` [N, D] and ``b`` [M, D]."""
    return frechet_from_stats(*feature_stats(a), *feature_stats(b))
