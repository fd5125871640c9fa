"""The GPU path: bf16 autocast, channels_last, ``torch.compile`` and the automatic batch size.

All four are opt-in and recorded in every result's ``config``:

* ``autocast="bf16"`` (or ``"fp16"``): the prior's network (and a latent prior's decoder) and the
  subject run under :func:`torch.autocast`; their outputs are cast back to float32 at the boundary,
  so the NDTM control, its Adam state, the update rule and the fiber loss stay in float32. The
  weights stay as loaded (``dtype=`` casts the weights instead; both can be combined).
* ``channels_last=True``: the prior's and the subject's 4-D weights and inputs use the NHWC memory
  layout, which cuDNN's tensor-core convolutions prefer. Results equal the default layout's up to
  rounding.
* ``compile=True`` (or a backend name such as ``"inductor"``, ``"aot_eager"``): the prior's network
  call is wrapped by :func:`torch.compile` once per prior object. The batch shape is fixed (see
  ``batch_size``), so it compiles once per grad mode.
* ``batch_size="auto"``: the largest batch that fits, found by running one real guidance step at a
  candidate size and halving it on ``torch.OutOfMemoryError`` (CUDA) or a host allocation failure.
  The search starts at the smallest power of two ≥ ``n``, capped at :data:`AUTO_MAX_BATCH` on a GPU
  and at :data:`AUTO_MAX_BATCH_CPU` on the CPU (bigger CPU batches buy no throughput and risk swap).
  The size found depends on the device's free memory: a result records it, and only a rerun at that
  size reproduces the samples bit for bit.

Example:
    >>> import torch
    >>> from fiberscope.runtime import find_batch_size
    >>> def probe(b):                       # a simulated device: batches above 3 do not fit
    ...     if b > 3:
    ...         raise torch.OutOfMemoryError("simulated")
    >>> find_batch_size(probe, n=20, device=torch.device("cpu"))
    2
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = [
    "AUTO_MAX_BATCH",
    "AUTO_MAX_BATCH_CPU",
    "apply_channels_last",
    "apply_compile",
    "autocast",
    "find_batch_size",
    "is_oom",
]

AUTO_MAX_BATCH = 64
AUTO_MAX_BATCH_CPU = 8


@contextlib.contextmanager
def autocast(device: torch.device | str, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast`` on ``device``'s type when ``dtype`` is set; nothing otherwise."""
    if dtype is None:
        yield
        return
    kind = torch.device(device).type
    with torch.autocast(device_type=kind, dtype=dtype):
        yield


def to_channels_last(x: torch.Tensor, enabled: bool) -> torch.Tensor:
    """``x`` in NHWC layout when ``enabled`` and 4-D (values unchanged)."""
    if enabled and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def apply_channels_last(*modules: torch.nn.Module) -> None:
    """Put the 4-D weights of each module in NHWC layout and make it convert its inputs (idempotent)."""
    for m in modules:
        if getattr(m, "channels_last", False):
            continue
        m.to(memory_format=torch.channels_last)
        setattr(m, "channels_last", True)  # noqa: B010 - Prior/Subject declare it; other modules get it


def apply_compile(prior: Any, backend: str) -> None:
    """Wrap ``prior.network`` with ``torch.compile(backend=backend)``, once per prior object."""
    done = getattr(prior, "compiled_with", None)
    if done == backend:
        return
    if done is not None:
        raise ValueError(
            f"this prior's network was compiled with backend {done!r}; load the prior again to compile it with "
            f"{backend!r}"
        )
    fn = type(prior).network.__get__(prior)
    prior.network = torch.compile(fn, backend=backend, dynamic=False)
    prior.compiled_with = backend


def is_oom(e: BaseException) -> bool:
    """Whether ``e`` is an out-of-memory failure (CUDA's, or the host allocator's)."""
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(e, RuntimeError) and (
        "can't allocate memory" in str(e) or "out of memory" in str(e).lower() or "bad_alloc" in str(e)
    )


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def find_batch_size(probe: Callable[[int], Any], n: int, device: torch.device, cap: int | None = None) -> int:
    """The largest batch size, halving from a power of two, for which ``probe(size)`` does not run out of memory.

    Args:
        probe: runs one guidance step at a batch size; raises an out-of-memory error if it does not fit.
        n: samples wanted (the search starts at the smallest power of two ≥ n, at most ``cap``).
        device: where the batch runs (sets the default cap and frees CUDA's cache between tries).
        cap: the largest size tried (default :data:`AUTO_MAX_BATCH`, :data:`AUTO_MAX_BATCH_CPU` on the CPU).

    Raises:
        the last out-of-memory error when even a batch of 1 does not fit.
    """
    cap = cap or (AUTO_MAX_BATCH if device.type != "cpu" else AUTO_MAX_BATCH_CPU)
    size = 1
    while size < min(n, cap):
        size *= 2
    size = min(size, cap)
    while True:
        try:
            probe(size)
            _free(device)
            return size
        except BaseException as e:
            if not is_oom(e):
                raise
            if size == 1:
                raise
        _free(device)
        size //= 2


def batch_size_arg(text: str) -> int | str:
    """``--batch-size``: an integer or ``auto`` (bounds are checked with the other flags)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        import argparse

        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None


def add_runtime_args(p: Any) -> None:
    """``--batch-size``, ``--autocast``, ``--channels-last`` and ``--compile`` (``sample`` and ``audit``)."""
    p.add_argument(
        "--batch-size",
        type=batch_size_arg,
        help="samples per guidance batch (default 8; 'auto': the largest that fits); a sample is bit-identical "
        "only at the same batch size",
    )
    p.add_argument(
        "--autocast",
        choices=["bf16", "fp16"],
        help="run the prior and the subject under torch.autocast (the control, Adam and the fiber loss stay fp32)",
    )
    p.add_argument("--channels-last", action="store_true", help="NHWC memory layout for the convolutions (GPUs)")
    p.add_argument(
        "--compile",
        nargs="?",
        const="inductor",
        metavar="BACKEND",
        help="torch.compile the prior's network (default backend inductor)",
    )


def runtime_kwargs(args: Any) -> dict[str, Any]:
    """The ``sample_fiber`` keywords of the flags added by :func:`add_runtime_args`."""
    return {
        "batch_size": getattr(args, "batch_size", None),
        "autocast": getattr(args, "autocast", None),
        "channels_last": bool(getattr(args, "channels_last", False)),
        "compile": getattr(args, "compile", None) or False,
    }
