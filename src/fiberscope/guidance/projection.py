"""Projection onto the fiber: Gauss-Newton steps that move a finished sample the least it takes to match φ(x*).

The denoising run leaves a sample close to the fiber {x : φ(x) = y}; the last stretch is where the
prior has least left to say (the denoiser is near the identity at low noise) and where control steps
through it are dearest (a prior forward and backward each). :func:`project_to_fiber` closes that gap
on the subject alone. Each *outer* step linearises r(x) = φ(decode(x)) − y and takes the
minimum-norm step that zeroes the linearised residual,

    δ = argmin ‖δ‖  subject to  r + J δ = 0,

solved per sample by conjugate gradients on the normal equations (CGLS): each CG iteration costs one
backward through φ (Jᵀs, from the graph of the outer step) and one forward (J p by a forward
difference), so no Jacobian is ever formed and the cost does not grow with the feature dimension.
On a linear φ one outer step with as many CG iterations as the rank of J lands on the fiber at the
point nearest to x (tests/test_projection.py checks it against the pseudo-inverse).

Three guards keep the projection from spoiling a sample:

* pixels at the clip range (an MNIST background at −1) are held fixed: a step there would be
  clipped away, so the solver spends its iterations on the pixels that can move;
* each outer step's RMS is capped at ``max_step`` × the RMS of the sample;
* a sample's step is kept only where it lowered the sample's residual ‖φ(x) − y‖; otherwise the
  sample stays where it was and its cap is halved (one backtracking step per outer step), so the
  projection never raises that residual, nor the losses that are functions of it (``l2``,
  ``sq_l2``, ``rms``). It aims at φ(x) = y itself, the fiber of every loss; other losses (``l1``,
  ``cosine``) usually fall with the residual but are not guaranteed to.

Rows are independent: every scalar (step sizes, caps, acceptance) is per sample, so a sample's
projection does not depend on the rest of the batch.

Example:
    >>> import torch, fiberscope as fs
    >>> from fiberscope.guidance.projection import project_to_fiber
    >>> prior = fs.GaussianPrior(dim=3)
    >>> A = torch.tensor([[1.0, 2.0, 0.0]])
    >>> subject = fs.load_subject(lambda x: x @ A.T)
    >>> obj = fs.FiberObjective(prior, subject, torch.tensor([[1.0, 1.0, 0.0]]))   # φ(x*) = 3
    >>> x, info = project_to_fiber(obj, torch.tensor([[1.0, 0.0, 0.0]]), steps=1, cg_steps=1, max_step=100.0)
    >>> [round(v, 3) for v in x[0].tolist()]                # the point nearest (1, 0, 0) with x1 + 2 x2 = 3
    [1.4, 0.8, 0.0]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import FiberObjective

__all__ = ["ProjectionInfo", "project_to_fiber"]


@dataclass
class ProjectionInfo:
    """What a projection did, per sample (``[B]`` tensors on the CPU)."""

    residual_before: torch.Tensor  #: ‖φ(x) − y‖ of the samples given
    residual_after: torch.Tensor  #: ‖φ(x) − y‖ of the samples returned
    moved: torch.Tensor  #: RMS of the total move, in units of the sample's RMS


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.flatten(1) * b.flatten(1)).sum(1)


def _rows(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view((-1,) + (1,) * (like.dim() - 1))


def _jt(f: torch.Tensor, xg: torch.Tensor, s: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
    """Jᵀs on the free coordinates, from the graph of ``f = φ(decode(xg))`` (kept for the next call)."""
    (g,) = torch.autograd.grad(f, xg, grad_outputs=s, retain_graph=True)
    return g * free


@torch.no_grad()
def _jp(objective: FiberObjective, x: torch.Tensor, fd: torch.Tensor, p: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """J p by a forward difference whose step has RMS ``h`` per sample (``fd`` = φ(decode(x)))."""
    step = h / p.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-30)
    return (objective.features(x + _rows(step, p) * p) - fd) / _rows(step, fd)


def project_to_fiber(
    objective: FiberObjective,
    x: torch.Tensor,
    steps: int,
    cg_steps: int,
    max_step: float,
    clip: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, ProjectionInfo]:
    """Move states ``x`` onto the fiber of ``objective`` by ``steps`` Gauss-Newton steps (see the module).

    Args:
        objective: the fiber objective (its subject, target and decoder).
        x: ``[B, ...]`` states (the prior's state space: pixels, or latents that the prior decodes).
        steps: outer (linearisation) steps; each costs one forward and, with ``cg_steps`` = n,
            n backwards and n forwards of φ∘decode.
        cg_steps: CG iterations per outer step (the rank of J is enough on a linear φ).
        max_step: cap on one outer step's RMS, in units of the RMS of each sample.
        clip: the state's clip range: coordinates within 1/2000 of its width of a bound are held
            fixed and the result is clipped to it.

    Returns:
        The projected states and a :class:`ProjectionInfo`.
    """
    x = x.detach()
    x_start = x
    target = objective.target
    rms = x.flatten(1).pow(2).mean(1).sqrt()
    scale = torch.where(rms > 0, rms, torch.ones_like(rms))  # the unit of caps and difference steps
    cap = max_step * scale
    eps_rel = float(torch.finfo(x.dtype).eps) ** 0.5  # the forward difference's step, relative to the state

    def linearise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            f = objective.features(xg)
        return xg, f, (f - target).detach().flatten(1).norm(dim=1)

    xg, f, res = linearise(x)
    before = res
    for k in range(steps):
        fd = f.detach()
        free = torch.ones_like(x)
        if clip is not None:  # within 1/2000 of the range's width of a bound (1e-3 on [-1, 1])
            tol = 5e-4 * (clip[1] - clip[0])
            free = ((x > clip[0] + tol) & (x < clip[1] - tol)).to(x.dtype)

        # CGLS on J δ = −r from δ = 0: the minimum-norm solution in the free coordinates
        delta = torch.zeros_like(x)
        s = target - fd
        direction = _jt(f, xg, s, free)
        gamma = _dot(direction, direction)
        for i in range(cg_steps):
            q = _jp(objective, x, fd, direction, eps_rel * scale)
            alpha = torch.where(gamma > 0, gamma / _dot(q, q).clamp_min(1e-30), torch.zeros_like(gamma))
            delta = delta + _rows(alpha, delta) * direction
            if i == cg_steps - 1:
                break
            s = s - _rows(alpha, q) * q
            g = _jt(f, xg, s, free)
            gamma_new = _dot(g, g)
            direction = g + _rows(gamma_new / gamma.clamp_min(1e-30), g) * direction
            gamma = gamma_new
        move = delta.flatten(1).pow(2).mean(1).sqrt()
        shrink = torch.where(move > cap, cap / move.clamp_min(1e-30), torch.ones_like(move))
        x_new = x + _rows(shrink, delta) * delta
        if clip is not None:
            x_new = x_new.clamp(*clip)
        xg, f, res_new = linearise(x_new)
        worse = ~(res_new < res)  # NaN counts as worse
        if bool(worse.any()):  # those samples stay where they were, with half the cap
            x_new = torch.where(_rows(worse, x), x, x_new)
            cap = torch.where(worse, cap / 2, cap)
            res_new = torch.where(worse, res, res_new)
            if k < steps - 1:  # linearise again where the samples are (the kept rows come out the same)
                xg, f, res_new = linearise(x_new)
        x, res = x_new.detach(), res_new
    moved = (x - x_start).flatten(1).pow(2).mean(1).sqrt() / scale
    return x, ProjectionInfo(before.detach().cpu(), res.detach().cpu(), moved.cpu())
