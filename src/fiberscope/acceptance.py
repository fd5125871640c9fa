"""Whether samples are in the fiber: a tolerance, and redrawing the samples that miss it.

``sample_fiber(..., tolerance=0.05)`` marks each sample ``in_fiber`` when its fiber loss (in the
result's ``metric``) is at most 0.05; ``tolerance="nn"`` takes the fiber loss of the query's nearest
real neighbour among ``reference_images`` (the query itself excluded), the natural yardstick: a
sample in the fiber is closer to the query, for the subject, than any real image. ``resample=K``
redraws the samples that miss, each with a new seed (recorded, so ``sample_fiber(seeds=[s])``
regenerates it), up to K rounds; the result reports the acceptance rate and the extra cost.

Example:
    >>> check_tolerance(0.5, None), check_tolerance("nn", object()) == "nn"
    (0.5, True)
    >>> redraw_seed(12345, 1) != redraw_seed(12345, 2) != 12345
    True
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .errors import ParameterError, ParameterTypeError

__all__ = ["acceptance_summary", "check_resample", "check_tolerance", "nn_tolerance", "redraw_seed"]

MAX_RESAMPLE = 100


def check_tolerance(tolerance: Any, reference_images: Any) -> float | str | None:
    """``tolerance`` checked: None, a finite number ≥ 0, or ``"nn"`` (which needs ``reference_images``)."""
    if tolerance is None:
        return None
    if isinstance(tolerance, str):
        if tolerance != "nn":
            raise ParameterError(
                f"tolerance must be a number or 'nn' (the nearest real image's fiber loss), got {tolerance!r}",
                "tolerance",
            )
        if reference_images is None:
            raise ParameterError(
                "tolerance='nn' needs reference_images: the real images whose nearest neighbour to the query "
                "sets the tolerance (e.g. the test split of the prior's data set)",
                "tolerance",
            )
        return "nn"
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float, np.floating, np.integer)):
        raise ParameterTypeError(f"tolerance must be a number or 'nn', got {type(tolerance).__name__}", "tolerance")
    v = float(tolerance)
    if not math.isfinite(v) or v < 0:
        raise ParameterError(f"tolerance must be a finite number ≥ 0 (a fiber loss), got {tolerance!r}", "tolerance")
    return v


def check_resample(resample: Any, tolerance: Any) -> int:
    """``resample`` checked: an integer in [0, 100]; above 0 it needs a tolerance to judge misses by."""
    if isinstance(resample, bool) or not isinstance(resample, (int, np.integer)):
        raise ParameterTypeError(f"resample must be an integer (rounds of redraws), got {resample!r}", "resample")
    if not 0 <= int(resample) <= MAX_RESAMPLE:
        raise ParameterError(f"resample must be in [0, {MAX_RESAMPLE}], got {resample}", "resample")
    if resample and tolerance is None:
        raise ParameterError(
            "resample redraws the samples outside the fiber, which needs a tolerance: give tolerance=<fiber loss> "
            "or tolerance='nn' with reference_images",
            "resample",
        )
    return int(resample)


def redraw_seed(seed: int, round_: int) -> int:
    """The seed of a redraw: a new independent stream derived from the missed sample's seed and the round."""
    a, b = np.random.SeedSequence([int(seed), 0x5EED, int(round_)]).generate_state(2, np.uint32)
    return int((int(a) << 31) ^ int(b)) & ((1 << 62) - 1)


@torch.no_grad()
def nn_tolerance(
    objective: Any, reference_images: Any, metric: str, batch_size: int = 256
) -> tuple[float, dict[str, Any]]:
    """The fiber loss (in ``metric``) of the query's nearest real image among ``reference_images``.

    ``reference_images``: ``[M, C, H, W]`` in the prior's data range (a tensor or array). The query
    itself, if it is among them, is excluded.
    """
    from .metrics.neighbours import nearest_neighbour

    bank = torch.as_tensor(
        np.asarray(reference_images) if not isinstance(reference_images, torch.Tensor) else reference_images
    )
    query = objective.query
    if bank.dim() == query.dim() - 1:
        bank = bank.unsqueeze(1)
    if bank.shape[1:] != query.shape[1:]:
        raise ParameterError(
            f"reference_images must be [M, {', '.join(map(str, query.shape[1:]))}] like the query in the prior's "
            f"data space, got {list(bank.shape)}",
            "reference_images",
        )
    if len(bank) < 1:
        raise ParameterError("reference_images is empty; give at least one real image", "reference_images")
    bank = bank.float().to(query.device)
    feats = torch.cat(
        [
            objective.features_of_data(bank[i : i + batch_size]).float().flatten(1)
            for i in range(0, len(bank), batch_size)
        ]
    )
    nb = nearest_neighbour(
        objective.target.float()[:1], feats, metric, query_image=query[:1].cpu(), bank_images=bank.cpu()
    )
    return nb.loss, {"index": nb.index, "loss": nb.loss, "excluded": nb.excluded, "bank_size": len(bank)}


def acceptance_summary(
    first: torch.Tensor, final: torch.Tensor, rounds: int, redrawn: int, fe_first: float, fe_total: float
) -> dict[str, Any]:
    """What resampling did: acceptance rates before and after, redraws and their cost."""
    n = len(first)
    return {
        "acceptance_first_draw": float(first.float().mean()) if n else float("nan"),
        "acceptance": float(final.float().mean()) if n else float("nan"),
        "rounds": rounds,
        "redrawn_samples": redrawn,
        "forward_equivalents_first_draw": fe_first,
        "forward_equivalents_total": fe_total,
        "extra_cost": (fe_total / fe_first - 1.0) if fe_first > 0 else 0.0,
    }
