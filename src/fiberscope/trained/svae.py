"""Supervised VAE with nuisance dimensions (after Nguyen & Rodríguez Martínez 2020).

A VAE on MNIST whose latent ``z = [z_task, z_nuisance]`` is split: only the ``task`` dimensions
feed a classifier head (trained with cross-entropy beside the ELBO); the nuisance dimensions carry
the rest of the image. Its "fiber" of a query is: encode the query, keep ``z_task`` (the posterior
mean), draw ``z_nuisance`` from the prior, decode.

Important: this models the invariances of **its own classifier head**, not of an arbitrary
pretrained φ. Its samples are only as invariant for ``builtin:mnist-cnn`` as the two classifiers
happen to agree; report its fiber loss under both (``trained:svae-mnist`` is its own head as a
subject, see :func:`fiberscope.trained.load_trained_subject`).

Example:
    >>> import torch
    >>> m = SupervisedVAE(task_dims=2, nuisance_dims=3, width=8)
    >>> x = torch.rand(4, 1, 28, 28) * 2 - 1
    >>> m.classify(x).shape, m.fiber(x, torch.randn(4, 3)).shape
    (torch.Size([4, 10]), torch.Size([4, 1, 28, 28]))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models import ConvVAE

__all__ = ["SVAEHead", "SupervisedVAE"]


class SupervisedVAE(nn.Module):
    """VAE with a classifier on the first ``task_dims`` latent dimensions.

    Args:
        task_dims: latent dimensions the classifier sees (kept fixed on the fiber).
        nuisance_dims: latent dimensions resampled from N(0, I) on the fiber.
        width: convolution width of the encoder and decoder.
        channels: image channels (1 for MNIST).
        num_classes: classifier outputs.
        head_width: hidden width of the classifier head.
    """

    def __init__(
        self,
        task_dims: int = 8,
        nuisance_dims: int = 24,
        width: int = 32,
        channels: int = 1,
        num_classes: int = 10,
        head_width: int = 128,
    ):
        super().__init__()
        if task_dims < 1 or nuisance_dims < 1:
            raise ValueError(f"task_dims and nuisance_dims must be ≥ 1, got {task_dims} and {nuisance_dims}")
        self.task_dims, self.nuisance_dims = task_dims, nuisance_dims
        self.vae = ConvVAE(latent_dim=task_dims + nuisance_dims, width=width, channels=channels)
        self.head = nn.Sequential(
            nn.Linear(task_dims, head_width), nn.SiLU(), nn.Linear(head_width, head_width), nn.SiLU(),
            nn.Linear(head_width, num_classes),
        )  # fmt: skip

    def task(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior mean of the task dimensions ``[B, task_dims]``."""
        return self.vae.encode(x)[:, : self.task_dims]

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the head on the posterior mean of the task dimensions."""
        return self.head(self.task(x))

    def fiber(self, x: torch.Tensor, nuisance: torch.Tensor) -> torch.Tensor:
        """Decode ``[z_task(x), nuisance]``: the query's task code with new nuisance values."""
        if nuisance.shape[1:] != (self.nuisance_dims,):
            raise ValueError(f"nuisance must be [B, {self.nuisance_dims}], got {tuple(nuisance.shape)}")
        return self.vae.decode(torch.cat([self.task(x), nuisance.to(x)], 1))

    def loss(
        self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator, beta: float = 1.0, alpha: float = 1.0
    ) -> torch.Tensor:
        """(Gaussian reconstruction + β·KL)/pixels + α·cross-entropy of the head on a posterior sample."""
        mu, logvar = self.vae.encode_dist(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=g).to(mu)
        rec = self.vae.decode(z)
        npix = x[0].numel()
        nll = ((rec - x) ** 2).flatten(1).sum(1).mean()
        kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1).mean()
        ce = F.cross_entropy(self.head(z[:, : self.task_dims]), y)
        return (nll + beta * kl) / npix + alpha * ce


class SVAEHead(nn.Module):
    """The supervised VAE's own classifier as a subject: ``x ↦ head(μ_task(x))`` (or ``μ_task`` itself).

    Args:
        model: a trained :class:`SupervisedVAE`.
        output: ``"logits"`` (default) or ``"task"`` (the task dimensions).
    """

    def __init__(self, model: SupervisedVAE, output: str = "logits"):
        super().__init__()
        if output not in ("logits", "task"):
            raise ValueError(f"output must be 'logits' or 'task', got {output!r}")
        self.model = model
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.classify(x) if self.output == "logits" else self.model.task(x)
