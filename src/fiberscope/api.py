"""``sample_fiber``: draw natural images that a model cannot tell apart from a query.

:func:`sample_fiber` checks its arguments, loads the models and the query, and draws its samples
with the one batch driver, :func:`fiberscope.sampling.draw_rows` (which the bench uses too); it adds
the tolerance, the redraws, the unguided reference and the result, :class:`FiberSamples`.

Example:
    >>> import fiberscope as fs
    >>> out = fs.sample_fiber("builtin:mnist-cnn", query, "builtin:mnist-ddpm", n=8,   # doctest: +SKIP
    ...                       method=fs.NDTM(steps=50, inner_steps=3, lr=0.02, gamma=2.0), seed=0)
    >>> out.fiber_loss            # per sample, squared L2 in feature space          # doctest: +SKIP
    >>> out.save("fiber/")        # PNGs, a grid, record.json and samples.npz          # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._deprecated import moved
from ._version import __version__
from .acceptance import acceptance_summary, check_resample, check_tolerance, nn_tolerance
from .counting import CallCounter
from .data.query import load_query
from .errors import ParameterError, ParameterTypeError
from .guidance.auto import NotGuidedWarning, strength_hint
from .guidance.base import FiberObjective, GuidanceMethod, SampleNoise
from .guidance.ndtm import resolve_method
from .guidance.unguided import Unguided
from .loading import load_prior, load_subject
from .losses import LOSSES
from .priors.base import Prior
from .runtime import apply_channels_last, apply_compile, find_batch_size
from .sampling import DEFAULT_BATCH_SIZE, draw_rows, pad_seeds, redraw_misses, sample_seeds, sum_calls
from .subjects.base import Subject, check_gradients
from .utils import atomic_write_bytes, atomic_write_json, is_rank_zero, jsonable
from .validation import (
    check,
    check_autocast,
    check_batch_size,
    check_compile,
    check_device,
    check_dtype,
    check_seeds,
)

__all__ = ["FiberSamples", "sample_fiber", "sample_seeds"]

REPORTED_LOSSES = ("sq_l2", "l2", "rms", "l1", "cosine")


@dataclass
class FiberSamples:
    """Samples from the fiber of one query, with everything needed to judge and reproduce them.

    Attributes:
        images: ``[n, C, H, W]`` float32 in the prior's data range (``data_range``).
        features: ``[n, ...]`` φ of each sample.
        target: ``[1, ...]`` φ of the query.
        fiber_loss: ``[n]`` per-sample fiber loss in the ``metric`` form (squared L2 by default,
            the paper's reported number).
        seeds: per-sample seeds: ``sample_fiber(..., seeds=[s])`` regenerates one sample alone.
        config: prior, subject, method settings and everything else needed to rerun.
        timings: seconds (``total``, ``target``, ``sampling``, ``per_sample``).
        counts: network evaluations per sample (prior/subject forwards and backwards).
        query: ``[1, C, H, W]`` the query as the prior sees it.
        losses: every reported loss form, per sample (``sq_l2``, ``l2``, ``rms``, ``l1``, ``cosine``).
        states: the raw states (latents for latent priors; equal to ``images`` for pixel priors).
        loss_history: per batch, the mean terminal cost after each denoising step.
        in_fiber: ``[n]`` bool, per sample: fiber loss ≤ ``tolerance`` (None: no tolerance set).
        tolerance: the fiber-loss tolerance (in ``metric``) that ``in_fiber`` was judged by.
        acceptance: with ``resample``: acceptance rates before and after the redraws and their cost.
        warnings: what went wrong without failing (e.g. the samples were not guided).
    """

    images: torch.Tensor
    features: torch.Tensor
    target: torch.Tensor
    fiber_loss: torch.Tensor
    seeds: list[int]
    config: dict[str, Any]
    timings: dict[str, float]
    counts: dict[str, float]
    query: torch.Tensor
    metric: str = "sq_l2"
    data_range: tuple[float, float] | None = (-1.0, 1.0)
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    states: torch.Tensor | None = None
    loss_history: list[list[float]] = field(default_factory=list)
    in_fiber: torch.Tensor | None = None
    tolerance: float | None = None
    acceptance: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        fl = self.fiber_loss
        return (
            f"FiberSamples(n={len(self)}, image_shape={tuple(self.images.shape[1:])}, "
            f"fiber_loss[{self.metric}]={float(fl.mean()):.4g}±{float(fl.std()) if len(fl) > 1 else 0:.2g}, "
            f"method={self.config.get('method', {}).get('method')!r})"
        )

    def to_pil(self, scale: int = 1) -> list[Any]:
        """The samples as PIL images."""
        from .report.grid import to_pil

        return [to_pil(x, self.data_range, scale) for x in self.images]

    def grid(
        self,
        scale: int | None = None,
        nn_image: torch.Tensor | None = None,
        nn_loss: float | None = None,
        ncol: int | None = None,
    ) -> Any:
        """Query (and optionally its nearest neighbour), then the samples with their fiber losses."""
        from .report.grid import captioned_grid

        scale = scale or max(1, 112 // max(self.images.shape[-1], 1))
        head = [self.query[0]]
        caps = ["query"]
        if nn_image is not None:
            head.append(nn_image)
            caps.append("nearest real" + (f"\n{nn_loss:.3g}" if nn_loss is not None else ""))
        imgs = list(self.images)
        ncol = ncol or min(len(imgs), 8)
        rows, captions, marks = [], [], []
        for r in range(0, len(imgs), ncol):
            chunk = imgs[r : r + ncol]
            lead = (
                head
                if r == 0
                else [torch.full_like(self.query[0], self.data_range[1] if self.data_range else 1.0)] * len(head)
            )
            rows.append(lead + chunk)
            captions.append(
                (caps if r == 0 else [""] * len(head))
                + [f"{self.metric} {float(v):.3g}" for v in self.fiber_loss[r : r + ncol]]
            )
            inside = [None] * len(chunk) if self.in_fiber is None else [bool(v) for v in self.in_fiber[r : r + ncol]]
            marks.append([None] * len(head) + inside)
        return captioned_grid(
            rows, captions, data_range=self.data_range, scale=scale, gap_after=(len(head) - 1,), marks=marks
        )

    def record(self) -> dict[str, Any]:
        """The JSON record: config, per-sample losses and seeds, timings and counts."""
        return {
            "fiberscope_record": 1,
            "n": len(self),
            "metric": self.metric,
            "fiber_loss": self.fiber_loss.tolist(),
            "fiber_loss_mean": float(self.fiber_loss.mean()),
            "losses": {k: v.tolist() for k, v in self.losses.items()},
            "seeds": self.seeds,
            "timings": self.timings,
            "counts": self.counts,
            "config": self.config,
            "image_shape": list(self.images.shape[1:]),
            "data_range": list(self.data_range) if self.data_range else None,
            "loss_history": self.loss_history,
            "in_fiber": None if self.in_fiber is None else [bool(v) for v in self.in_fiber],
            "tolerance": self.tolerance,
            "acceptance": self.acceptance,
            "warnings": self.warnings,
        }

    def save(self, directory: str | os.PathLike[str], *, pngs: bool = True) -> Path:
        """Write ``query.png``, ``sample_XXX.png``, ``grid.png``, ``record.json`` and ``samples.npz``.

        Every file is written atomically; the JSON record is written last, so its presence marks a
        complete result.
        """
        import io

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        if pngs:
            from .report.grid import to_pil

            for i, img in enumerate(self.to_pil()):
                buf = io.BytesIO()
                img.save(buf, format="PNG")
                atomic_write_bytes(d / f"sample_{i:03d}.png", buf.getvalue())
            buf = io.BytesIO()
            to_pil(self.query[0], self.data_range).save(buf, format="PNG")
            atomic_write_bytes(d / "query.png", buf.getvalue())
            buf = io.BytesIO()
            self.grid().save(buf, format="PNG")
            atomic_write_bytes(d / "grid.png", buf.getvalue())
        buf = io.BytesIO()
        arrays: dict[str, Any] = {
            "images": self.images.numpy(),
            "features": self.features.numpy(),
            "target": self.target.numpy(),
            "fiber_loss": self.fiber_loss.numpy(),
            "seeds": np.array(self.seeds, dtype=np.int64),
            "query": self.query.numpy(),
        }
        if self.states is not None:
            arrays["states"] = self.states.numpy()
        np.savez_compressed(buf, **arrays)
        atomic_write_bytes(d / "samples.npz", buf.getvalue())
        atomic_write_json(d / "record.json", self.record())
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> FiberSamples:
        """Read a result written by :meth:`save` (no pickle involved)."""
        import json

        d = Path(directory)
        rec = json.loads((d / "record.json").read_text())
        with np.load(d / "samples.npz", allow_pickle=False) as z:
            arr = {k: torch.from_numpy(z[k]) for k in z.files}
        return cls(
            images=arr["images"],
            features=arr["features"],
            target=arr["target"],
            fiber_loss=arr["fiber_loss"],
            seeds=[int(s) for s in arr["seeds"]],
            config=rec["config"],
            timings=rec["timings"],
            counts=rec["counts"],
            query=arr["query"],
            metric=rec["metric"],
            data_range=tuple(rec["data_range"]) if rec.get("data_range") else None,
            losses={k: torch.tensor(v) for k, v in rec.get("losses", {}).items()},
            states=arr.get("states"),
            loss_history=rec.get("loss_history", []),
            in_fiber=None if rec.get("in_fiber") is None else torch.tensor(rec["in_fiber"], dtype=torch.bool),
            tolerance=None if rec.get("tolerance") is None else float(rec["tolerance"]),
            acceptance=rec.get("acceptance"),
            warnings=list(rec.get("warnings") or []),
        )


#: Phrases of torch's errors for tensors of the wrong shape (conv channels, matmul sizes, reshapes, ...).
_SHAPE_ERRORS = (
    "size mismatch",
    "shape",
    "channels",
    "must match the size",
    "mat1 and mat2",
    "expected input",
    "Expected input",
    "Expected size",
    "Expected 3D",
    "Expected 4D",
    "Given groups=",
    "Kernel size can't be greater",
    "cannot be multiplied",
    "Sizes of tensors must match",
    "out of bounds for dimension",
    "is invalid for input of size",
    "Output size is too small",
)


def _check_subject_accepts(subj: Subject, q: torch.Tensor, prior: Prior) -> None:
    """One forward pass on the query: a shape/channel mismatch, an error inside φ or NaN features get a clear error.

    Only an error that is about the input's shape is reported as a mismatch with the prior; any
    other exception raised inside the subject is reported as that: the subject's name, the
    exception and its message.
    """
    from .errors import SubjectError

    name = getattr(subj, "name", "subject")
    try:
        with torch.no_grad():
            out = subj(q, prior.data_range)
    except (torch.OutOfMemoryError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:
        first = " ".join(str(e).split())[:200]
        if isinstance(e, RuntimeError) and any(s in str(e) for s in _SHAPE_ERRORS):
            raise SubjectError(
                f"subject {name!r} cannot take the prior's images (shape "
                f"{tuple(q.shape[1:])}): {first}; pair it with a prior of the channel count and size it expects, "
                "or give it a preprocessing that resizes / converts channels"
            ) from None
        raise SubjectError(
            f"subject {name!r} failed on the query ({type(e).__name__}: {first}); the error was raised inside the "
            "subject's own code: fix it there, or check that the subject and layer are the ones you meant"
        ) from None
    if isinstance(out, torch.Tensor) and out.is_floating_point() and not torch.isfinite(out).all():
        from .subjects.base import SubjectGradientError

        raise SubjectGradientError(
            f"subject {getattr(subj, 'name', 'subject')!r} returns NaN/inf features for the query: fix the "
            "operations in φ that can produce them (log of 0, division by 0) or check its weights"
        )


class _ProbeDone(Exception):
    """Raised by the batch-size probe's callback after the first step: the step fitted."""


def _per_sample_fe(totals: dict[str, float], n: int) -> float:
    """Forward-equivalents per sample of call counts summed over a run (fractional: padding rows excluded)."""
    return CallCounter(**totals).forward_equivalents() / n  # type: ignore[arg-type]


def _probe_step(
    method: GuidanceMethod, prior: Prior, objective: FiberObjective, seeds: list[int], size: int, dev: torch.device
) -> None:
    """One real guidance step at batch ``size`` (the first; the rest is skipped); raises if it runs out of memory."""

    def stop(info: dict[str, Any]) -> None:
        raise _ProbeDone

    noise = SampleNoise(pad_seeds(seeds[:size], size), dev)
    objective = FiberObjective.rows([objective] * size)  # as the driver builds a batch
    with contextlib.suppress(_ProbeDone):
        method.run(prior, objective, method.initial_state(prior, objective, noise), noise, stop)
    with torch.no_grad():  # the final decoding and φ at that size too
        objective.features_of_data(prior.decode(noise.randn(prior.state_shape)))


def _progress(total: int, enabled: bool, desc: str) -> Any:
    if not enabled or not is_rank_zero():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True)


def sample_fiber(
    subject: str | torch.nn.Module | Callable[[torch.Tensor], Any] | Subject,
    query: Any,
    prior: str | os.PathLike[str] | Prior,
    n: int = 8,
    method: GuidanceMethod | None = None,
    seed: int = 0,
    batch_size: int | str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    callback: Callable[[dict[str, Any]], Any] | None = None,
    progress: bool = True,
    *,
    layer: str | Sequence[str] | Mapping[str, float] | None = None,
    seeds: Sequence[int] | None = None,
    metric: str = "sq_l2",
    autocast: str | torch.dtype | None = None,
    channels_last: bool = False,
    compile: bool | str = False,
    tolerance: float | str | None = None,
    reference_images: Any = None,
    resample: int = 0,
) -> FiberSamples:
    """Sample ``n`` images from the fiber ``{x : φ(x) = φ(query)}`` of ``subject``.

    Args:
        subject: φ: ``"builtin:mnist-cnn"``, a library spec (``"timm:resnet50.a1_in1k"``), an
            ``nn.Module`` or any callable returning features ``[B, ...]``.
        query: the image whose fiber is sampled: a tensor in the prior's data space, a PIL
            image, an array, or a path to an image or .npy file (converted to the prior's space).
        prior: ``"builtin:mnist-ddpm"``, a diffusers directory, a cached hub id, or a Prior.
        n: number of samples.
        method: a guidance method (default: see below); ``Unguided()`` samples the prior alone.
        seed: run seed; sample ``i`` gets its own seed from it (see ``seeds`` in the result).
        batch_size: samples per guidance batch (default 8, whatever ``n``; ``"auto"``: the largest
            batch that fits in memory, found by one probe step per size tried, halving on out of
            memory, see :func:`fiberscope.runtime.find_batch_size`). A last partial batch
            is padded to this size with repeats of its seeds, whose results are dropped (their
            network calls are not counted in ``counts``; their time is in ``timings``), so every
            sample runs in a batch of the same shape: ``sample_fiber(..., seeds=[out.seeds[i]])``
            with the same ``batch_size`` on the same device reproduces sample ``i`` bit for bit.
            Another ``batch_size`` gives the same samples up to floating-point rounding, which
            guidance can amplify to visible differences over many steps. ``n`` below the batch
            size still costs a full batch; pass ``batch_size=n`` (or 1) to save the time.
        device: ``"cuda"``, ``"cpu"``... (default: the prior's device).
        dtype: network dtype of the prior (guidance arithmetic stays float32).
        callback: called after every denoising step with a dict: ``step``, ``t``, ``x``, ``x0``,
            ``cost``, ``steps`` from every method, extra keys by method (the table in
            :mod:`fiberscope.guidance.base`), and ``batch``; its per-sample tensors hold the
            batch's real samples only, never the padding.
        progress: show a tqdm bar (never on non-zero ranks).
        layer: layer(s) of ``subject`` to use as φ (see :func:`~fiberscope.load_subject`).
        seeds: explicit per-sample seeds (overrides ``seed``; ``n`` becomes ``len(seeds)``).
        metric: the form of ``fiber_loss`` in the result (default ``"sq_l2"``, as the paper reports).
        autocast: ``"bf16"`` or ``"fp16"``: run the prior's network, its decoder and the subject under
            ``torch.autocast``; the control, its Adam state, the update and the fiber loss stay float32
            (see :mod:`fiberscope.runtime`).
        channels_last: NHWC memory layout for the prior's and the subject's convolutions (GPU speed).
        compile: ``True`` (inductor) or a ``torch.compile`` backend name: compile the prior's network
            call (once per prior object).
        tolerance: judge each sample in or out of the fiber (``in_fiber``): fiber loss (in ``metric``)
            ≤ this number, or ``"nn"``: ≤ the query's nearest real neighbour's among ``reference_images``.
        reference_images: ``[M, C, H, W]`` real images in the prior's data space, for ``tolerance="nn"``.
        resample: redraw the samples outside the fiber with new (recorded) seeds, up to this many
            rounds; a redraw replaces a miss when its fiber loss is lower. ``acceptance`` reports
            the acceptance rates and the extra cost.

    With ``method=None`` or an ``NDTM`` with settings left open (``NDTM()``, ``NDTM(steps=50)``),
    the prior's registered preset fills them, and a prior without one gets the scale-free
    :class:`~fiberscope.guidance.auto.AutoNDTM` (``config["method_defaults"]`` says which). A
    guided run whose samples end above half the unguided fiber-loss level (a short unguided chain
    from the same noise, ``config["unguided_reference"]``) warns with :class:`NotGuidedWarning`.

    Returns:
        :class:`FiberSamples`.

    Raises:
        ParameterError: an argument of the wrong type or out of its documented bounds (``n`` and
            ``batch_size`` in [1, 100000], ``seed`` in [0, 2⁶⁴ − 1], ``seeds`` a list of integers in
            [0, 2⁶³ − 1], a floating-point ``dtype``, a ``device`` that exists here), checked before any
            model is loaded (see :mod:`fiberscope.validation`).
        QueryError, SubjectError: the query cannot be read or the subject fails on it.
        ModelNotAvailableError, WeightsError: the prior or subject cannot be loaded.
        GuidanceError, SubjectGradientError: NaN/inf, or no gradient through the subject.
    """
    t_total = time.perf_counter()
    if method is not None and not isinstance(method, GuidanceMethod):
        raise ParameterTypeError(
            f"method must be a guidance method such as fiberscope.NDTM(...), got {type(method).__name__}", "method"
        )
    if not isinstance(metric, str) or metric not in LOSSES:
        raise ParameterError(f"metric must be one of {sorted(LOSSES)}, got {metric!r}", "metric")
    # every argument is checked (types and bounds, fiberscope.validation) before any model is loaded
    if seeds is not None:
        seeds = check_seeds(seeds)
        n = len(seeds)
    n = check("n", n)
    seed = check("seed", seed)
    batch_size = check_batch_size(batch_size)
    check_dtype(dtype)
    check_device(device)
    amp = check_autocast(autocast)
    channels_last = check("channels_last", channels_last)
    backend = check_compile(compile)
    tolerance = check_tolerance(tolerance, reference_images)
    resample = check_resample(resample, tolerance)
    prior_obj = load_prior(prior, device=device, dtype=dtype)
    method, defaults = resolve_method(method, prior_obj)  # the prior's preset, or the scale-free default
    dev = torch.device(device) if device is not None else prior_obj.device
    subj = load_subject(subject, layer, device=dev)
    q = load_query(query, image_shape=prior_obj.image_shape, data_range=prior_obj.data_range, device=dev)
    all_seeds = list(seeds) if seeds is not None else sample_seeds(seed, n)
    if channels_last:
        apply_channels_last(prior_obj, subj)
    if backend is not None:
        apply_compile(prior_obj, backend)

    timings: dict[str, float] = {}
    counter = CallCounter()
    guided = method.needs_gradients and not isinstance(method, Unguided)
    totals: dict[str, float] = {}
    ref_totals: dict[str, float] = {}
    # the checks on the query run in the precision of the sampling (autocast is reset afterwards)
    prior_obj.autocast_dtype = amp
    subj.autocast_dtype = amp
    try:
        _check_subject_accepts(subj, q, prior_obj)
        if method.needs_gradients:
            check_gradients(subj, q, prior_obj.data_range)
        prior_obj.counter = counter
        subj.counter = counter
        t0 = time.perf_counter()
        objective = FiberObjective(prior_obj, subj, q, loss=getattr(method, "loss", "l2"))
        timings["target"] = time.perf_counter() - t0
        if batch_size == "auto":
            t0 = time.perf_counter()
            prior_obj.counter = subj.counter = None
            bs = find_batch_size(lambda b: _probe_step(method, prior_obj, objective, all_seeds, b, dev), n, dev)
            prior_obj.counter = subj.counter = counter
            timings["batch_search"] = time.perf_counter() - t0
        else:
            bs = int(batch_size or DEFAULT_BATCH_SIZE)
        tol_info: dict[str, Any] | None = None
        if tolerance == "nn":
            prior_obj.counter = subj.counter = None  # the bank's features are not the sampler's cost
            tolerance, tol_info = nn_tolerance(objective, reference_images, metric)
        per_batch_steps = len(method.times(prior_obj))
        bar = _progress(
            per_batch_steps * ((n + bs - 1) // bs), progress, f"{method.name} {getattr(subj, 'name', 'subject')}"
        )
        t0 = time.perf_counter()

        def step(info: dict[str, Any]) -> None:
            if bar is not None:
                bar.update(1)
            if callback is not None:
                callback(info)

        rows = [objective] * n  # every row steers towards the one query
        reference = guided and getattr(method, "init", "noise") == "noise"
        drawn = draw_rows(prior_obj, method, rows, all_seeds, bs, step, device=dev, reference=reference)
        histories = drawn.loss_history
        totals = sum_calls(drawn.calls)  # network calls of the real samples (padding excluded)
        ref_totals = sum_calls(drawn.reference_calls)
        target = objective.target.float()
        fl = LOSSES[metric](drawn.features, target).cpu()
        in_fiber = None if tolerance is None else fl <= float(tolerance)
        acceptance: dict[str, Any] | None = None
        if in_fiber is not None and resample:
            first, fe_first = in_fiber.clone(), _per_sample_fe(totals, n)
            redo = redraw_misses(
                prior_obj, method, rows, all_seeds, bs, drawn, fl, float(tolerance), resample, metric, step,  # type: ignore[arg-type]
                device=dev, first_batch=len(histories),
            )  # fmt: skip
            in_fiber = redo.in_fiber
            histories += redo.loss_history
            totals = sum_calls([totals, redo.calls])
            acceptance = acceptance_summary(
                first, in_fiber, redo.rounds, redo.redrawn, fe_first, _per_sample_fe(totals, n)
            )
        state, images, feats, ref_feats = drawn.states, drawn.images, drawn.features, drawn.reference
        if bar is not None:
            bar.close()
        timings["sampling"] = time.perf_counter() - t0
    finally:
        prior_obj.counter = None
        subj.counter = None
        prior_obj.autocast_dtype = None
        subj.autocast_dtype = None
    for k, v in counter.as_dict().items():  # φ(query), counted once for the whole run
        totals[k] = totals.get(k, 0.0) + v
    losses = {k: LOSSES[k](feats, target).cpu() for k in REPORTED_LOSSES}
    timings["total"] = time.perf_counter() - t_total
    timings["per_sample"] = timings["sampling"] / n
    counts: dict[str, float] = {k: v / n for k, v in totals.items()}
    counts["forward_equivalents"] = _per_sample_fe(totals, n)
    warnings_out: list[str] = []
    unguided_level = None
    if ref_feats is not None:
        counts["reference_forward_equivalents"] = _per_sample_fe(ref_totals, n)
        unguided_level = float(LOSSES[metric](ref_feats, target.cpu()).mean())
        mean = float(fl.mean())
        if mean > 0.5 * unguided_level:
            msg = (
                f"{method.name} did not guide: its samples end at fiber loss {metric} {mean:.4g}, "
                f"{mean / max(unguided_level, 1e-30):.0%} of the unguided level {unguided_level:.4g} "
                "(above half of it); " + strength_hint(method)
            )
            warnings_out.append(msg)
            warnings.warn(NotGuidedWarning(msg), stacklevel=2)
    config = {
        "method": method.config(),
        "method_defaults": defaults,
        "prior": prior_obj.describe(),
        "subject": subj.describe(),
        "n": n,
        "seed": seed if seeds is None else None,
        "batch_size": bs,
        "batch_size_requested": batch_size,
        "padding": -n % bs,
        "device": str(dev),
        "dtype": str(getattr(prior_obj, "compute_dtype", torch.float32)),
        "autocast": None if amp is None else str(amp),
        "channels_last": bool(getattr(prior_obj, "channels_last", False)),
        "compile": getattr(prior_obj, "compiled_with", None),
        "torch": torch.__version__,
        "unguided_reference": unguided_level,
    }
    if tolerance is not None:
        config["tolerance"] = {"value": float(tolerance), "source": "nn" if tol_info else "given", "nn": tol_info}
    if acceptance is not None:
        config["resample"] = {"rounds_allowed": resample, **acceptance}
    config["fiberscope"] = __version__
    return FiberSamples(
        images=images.cpu(),
        features=feats.cpu(),
        target=target.cpu(),
        fiber_loss=fl,
        seeds=all_seeds,
        config=jsonable(config),
        timings=timings,
        counts=counts,
        query=q.cpu(),
        metric=metric,
        data_range=prior_obj.data_range,
        losses=losses,
        states=state.cpu() if prior_obj.is_latent else None,
        loss_history=histories,
        in_fiber=in_fiber,
        tolerance=None if tolerance is None else float(tolerance),
        acceptance=acceptance,
        warnings=warnings_out,
    )


#: The padding helpers moved to the batch driver (issue 22).
__getattr__ = moved(__name__, {"real_rows": "fiberscope.sampling:real_rows"})
