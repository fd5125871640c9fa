"""One validation layer: typed, bounded parameters shared by the API, manifests and CLI flags.

Every number a user can give fiberscope — ``n``, a seed, a batch size, denoising steps, γ, a learning
rate, a thread count — has one :class:`Param` here with its type and documented bounds. The same
check runs whether the value comes from ``sample_fiber(n=...)``, a manifest line, a ``--flag`` or a
config file, and it runs before any model is loaded, so a bad value costs nothing and is named
in a one-line :class:`~fiberscope.errors.ParameterError` (exit code 2).

The rules:

* **a bool is not a number**: ``True`` is refused where an integer or a float is expected;
* **integers are integers**: ``1.5`` is refused (``2.0`` too, except from text sources: CSV cells,
  config files), and so are strings, except from text sources;
* **floats are finite** and inside their bounds (``gamma = 1e308`` is refused, not overflowed);
* **unknown keys are refused** with the list of the valid ones (:func:`check_keys`).

Documented maxima (a value above them is far outside any useful setting and would only exhaust
memory or time):

=========================  ============  =============================================================
parameter                  bounds        why
=========================  ============  =============================================================
``n``, ``batch_size``      1 … 100,000   samples of one query; every sample is kept in memory
``seed``                   0 … 2⁶⁴ − 1   the run seed (NumPy ``SeedSequence``)
``seeds[i]``               0 … 2⁶³ − 1   per-sample seeds are stored as int64
``steps``                  1 … 10,000    denoising steps K (priors are trained on ≤ 1,000 levels)
``inner_steps``            0 … 1,000     NDTM's Adam steps N per denoising step (the paper: 1–10)
``gamma``                  0 … 10,000    γ levels (the paper's presets use ≤ 20)
``lr``                     (0, 1,000]    learning rates of the control / pixels
``threads``                1 … 1,024     torch CPU threads
``sample_size``            1 … 8,192     a model config's image (or latent) side
image side / pixels        ≤ 32,768 / 2²⁷  query images, checked before decoding (files: ≤ 1 GiB)
=========================  ============  =============================================================

Example:
    >>> from fiberscope.validation import check, check_keys
    >>> check("n", 8)
    8
    >>> check("n", True)
    Traceback (most recent call last):
    ...
    fiberscope.errors.ParameterTypeError: n must be an integer in [1, 100000] (samples per query), got True
    >>> check_keys({"steps": 3, "stepz": 1}, {"steps", "eta"}, "method 'unguided'")
    Traceback (most recent call last):
    ...
    fiberscope.errors.ParameterError: method 'unguided': unknown setting(s) ['stepz']; valid: ['eta', 'steps']
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ParameterError, ParameterTypeError

__all__ = [
    "MAX_BATCH_SIZE",
    "MAX_GAMMA",
    "MAX_IMAGE_PIXELS",
    "MAX_IMAGE_SIDE",
    "MAX_INNER_STEPS",
    "MAX_N",
    "MAX_SAMPLE_SEED",
    "MAX_SAMPLE_SIZE",
    "MAX_SEED",
    "MAX_STEPS",
    "MAX_THREADS",
    "PARAMS",
    "Param",
    "check",
    "check_autocast",
    "check_batch_size",
    "check_compile",
    "check_device",
    "check_dtype",
    "check_flags",
    "check_gamma",
    "check_keys",
    "check_method_settings",
    "check_seeds",
    "loads_json",
]

MAX_N = 100_000
MAX_BATCH_SIZE = MAX_N
MAX_SEED = 2**64 - 1
MAX_SAMPLE_SEED = 2**63 - 1
MAX_STEPS = 10_000
MAX_INNER_STEPS = 1_000
MAX_GAMMA = 10_000.0
MAX_LR = 1_000.0
MAX_THREADS = 1_024
MAX_REPEATS = 1_000
MAX_ITERATIONS = 1_000_000
MAX_SCALE = 1e6
MAX_TRAIN_STEPS = 10**9
MAX_SAMPLE_SIZE = 8_192
MAX_IMAGE_SIDE = 32_768
MAX_IMAGE_PIXELS = 2**27


@dataclass(frozen=True)
class Param:
    """A typed, bounded parameter.

    Attributes:
        kind: ``"int"``, ``"float"`` or ``"bool"``.
        lo, hi: inclusive bounds (None: unbounded on that side).
        lo_open: the lower bound is excluded (``lr > 0``).
        optional: None is accepted (and returned).
        doc: what the parameter is, shown in the error.
    """

    kind: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    optional: bool = False
    doc: str = ""

    def describe(self) -> str:
        """``"an integer in [1, 100000]"``, ``"a finite number > 0"``, ..."""
        what = {"int": "an integer", "float": "a finite number", "bool": "true or false"}[self.kind]
        if self.kind == "bool":
            return what
        lo, hi = self.lo, self.hi
        fmt: Callable[[float], str] = (lambda v: str(int(v))) if self.kind == "int" else (lambda v: f"{v:g}")
        if lo is not None and hi is not None:
            what += f" in {'(' if self.lo_open else '['}{fmt(lo)}, {fmt(hi)}]"
        elif lo is not None:
            what += f" {'>' if self.lo_open else '≥'} {fmt(lo)}"
        elif hi is not None:
            what += f" ≤ {fmt(hi)}"
        return what

    def check(self, name: str, value: Any, *, text: bool = False) -> Any:
        """``value`` checked (and, from text sources, converted); raises :class:`ParameterError` naming ``name``.

        Args:
            name: as the user wrote it (``n``, ``--threads``, ``method.steps``).
            value: the value.
            text: the value comes from a text source (a CSV cell, a config file): numeric strings and
                integral floats are converted.
        """
        if value is None and self.optional:
            return None
        if text and isinstance(value, str):
            value = _from_text(value.strip(), self.kind)
        if self.kind == "bool":
            if isinstance(value, (bool, np.bool_)):
                return bool(value)
            raise self._error(name, value, type_error=True)
        if isinstance(value, (bool, np.bool_)):
            raise self._error(name, value, type_error=True)
        if self.kind == "int":
            if isinstance(value, float) and text and math.isfinite(value) and value.is_integer():
                value = int(value)
            if not isinstance(value, numbers.Integral):
                raise self._error(name, value, type_error=True)
            v: Any = int(value)
        else:
            if not isinstance(value, numbers.Real):
                raise self._error(name, value, type_error=True)
            v = float(value)
            if not math.isfinite(v):
                raise self._error(name, value)
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            raise self._error(name, value)
        if self.hi is not None and v > self.hi:
            raise self._error(name, value)
        return v

    def _error(self, name: str, value: Any, type_error: bool = False) -> ParameterError:
        doc = f" ({self.doc})" if self.doc else ""
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:79] + "…"
        cls = ParameterTypeError if type_error else ParameterError
        return cls(f"{name} must be {self.describe()}{doc}, got {shown}", name)


def _from_text(s: str, kind: str) -> Any:
    if kind == "bool":
        low = s.lower()
        return True if low in ("true", "yes", "1") else False if low in ("false", "no", "0") else s
    try:
        return int(s)
    except ValueError:
        pass
    try:
        return float(s)
    except ValueError:
        return s


def Int(lo: int | None, hi: int | None, doc: str = "", optional: bool = False) -> Param:
    """An integer parameter in ``[lo, hi]``."""
    return Param("int", lo, hi, optional=optional, doc=doc)


def Float(lo: float | None, hi: float | None, doc: str = "", *, lo_open: bool = False, optional: bool = False) -> Param:
    """A finite float parameter in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""
    return Param("float", lo, hi, lo_open=lo_open, optional=optional, doc=doc)


BOOL = Param("bool")

#: Every bounded parameter by name. Sampling and run options, then guidance-method settings (shared
#: by every method that has a setting of that name; settings not listed here are checked by the
#: method itself: strings with a fixed set of choices, clip ranges, weight schemes, callables).
PARAMS: dict[str, Param] = {
    # sampling (sample_fiber, manifests, `fiberscope sample`)
    "n": Int(1, MAX_N, "samples per query"),
    "seed": Int(0, MAX_SEED, "the run seed"),
    "batch_size": Int(1, MAX_BATCH_SIZE, "samples per batch", optional=True),
    "channels_last": BOOL,
    # running (audit, bench, zoo, trained)
    "threads": Int(1, MAX_THREADS, "torch CPU threads", optional=True),
    "cache_size": Int(1, 1000, "loaded models kept per process"),
    "workers": Int(1, 4096, "Ray actors"),
    # guidance settings
    "steps": Int(1, MAX_STEPS, "denoising steps K"),
    "inner_steps": Int(0, MAX_INNER_STEPS, "Adam steps N per denoising step"),
    "lr": Float(0.0, MAX_LR, "learning rate", lo_open=True),
    "eta": Float(0.0, 1.0, "DDIM stochasticity"),
    "strength": Float(0.0, 1.0, "SDEdit strength", lo_open=True),
    "w_terminal": Float(0.0, MAX_SCALE, "weight of the fiber cost"),
    "scale": Float(0.0, MAX_SCALE, "guidance scale"),
    "backward_scale": Float(0.0, MAX_SCALE, "backward guidance step"),
    "rho": Float(0.0, MAX_SCALE, "TFG ρ"),
    "mu": Float(0.0, MAX_SCALE, "TFG μ"),
    "sigma": Float(0.0, MAX_SCALE, "TFG σ"),
    "t_stop": Float(0.0, None, "time below which guidance stops"),
    "recur_steps": Int(1, MAX_REPEATS, "recurrences per step"),
    "iter_steps": Int(1, MAX_REPEATS, "gradient steps on x̂0 per step"),
    "backward_steps": Int(1, MAX_REPEATS, "backward guidance steps"),
    "mc_samples": Int(1, MAX_REPEATS, "Monte-Carlo samples"),
    "iterations": Int(1, MAX_ITERATIONS, "optimisation iterations"),
    "init_std": Float(0.0, MAX_SCALE, "std of the initial pixels"),
    "grad_clip": Float(0.0, MAX_SCALE, "per-sample gradient norm clip", lo_open=True, optional=True),
    "adam_eps": Float(0.0, 1.0, "Adam ε", lo_open=True),
    "warm_start": BOOL,
    "per_timestep_target": BOOL,
    "ancestral_rescaled": BOOL,
    "track_loss": BOOL,
    "reference_ddim": BOOL,
}

#: Flags whose meaning differs by command: ``(command, dest) -> Param``.
COMMAND_PARAMS: dict[tuple[str, str], Param] = {
    ("zoo train", "steps"): Int(1, MAX_TRAIN_STEPS, "training steps"),
    ("trained train", "steps"): Int(1, MAX_TRAIN_STEPS, "training steps"),
    ("zoo evaluate", "n"): Int(1, MAX_N, "samples to evaluate"),
    ("bench", "queries"): Int(1, MAX_N, "queries per pair"),
    ("bench", "query_seed"): Int(0, MAX_SEED, "seed of the query set"),
    ("bench", "bank"): Int(1, None, "real images searched", optional=True),
    ("bench", "real"): Int(1, None, "real images for the Fréchet distance", optional=True),
}


#: Flags of the command line only (the rest share :data:`PARAMS`).
FLAG_PARAMS: dict[str, Param] = {
    "max_minutes": Float(0.0, None, "minutes of training", lo_open=True, optional=True),
    "num_shards": Int(1, 10**6, "shards", optional=True),
    "shard_index": Int(0, 10**6, "this process's shard", optional=True),
    "temperature": Float(0.0, MAX_SCALE, "scale of the Gaussian codes", lo_open=True),
    "guidance_scale": Float(0.0, MAX_SCALE, "classifier-free guidance weight", optional=True),
}


def check_flags(values: Mapping[str, Any], command: str = "") -> None:
    """Check parsed command-line options (``vars(args)``) of ``command`` (``"sample"``, ``"zoo train"``).

    Every option with a spec — :data:`COMMAND_PARAMS` for ``command``, else :data:`FLAG_PARAMS`, else
    :data:`PARAMS` — is checked; ``--device`` must name a device that exists here. Options left unset
    (None) are skipped. The error names the flag (``--batch-size must be an integer in [1, 100000]
    (samples per batch), got 0``).
    """
    top = command.split(" ", 1)[0]
    for dest, v in values.items():
        if v is None:
            continue
        flag = "--" + dest.replace("_", "-")
        if dest == "device":
            check_device(v, flag)
            continue
        if dest in _SPECIAL_FLAGS and command.split(" ", 1)[0] in ("sample", "audit"):
            _SPECIAL_FLAGS[dest](v, flag)
            continue
        spec = COMMAND_PARAMS.get((command, dest)) or COMMAND_PARAMS.get((top, dest))
        spec = spec or FLAG_PARAMS.get(dest) or PARAMS.get(dest)
        if spec is not None:
            spec.check(flag, v)


def check(name: str, value: Any, *, param: Param | None = None, text: bool = False, label: str | None = None) -> Any:
    """Check ``value`` against the parameter ``name`` of :data:`PARAMS` (or ``param``).

    Args:
        name: the parameter's name in :data:`PARAMS`.
        value: the value.
        param: a spec to use instead of ``PARAMS[name]``.
        text: the value comes from text (CSV, config file): numeric strings are converted.
        label: how to name it in the error (default ``name``), e.g. ``"--batch-size"``.

    Returns:
        The value, as ``int``/``float``/``bool``.

    Raises:
        ParameterError: wrong type (also a ``TypeError``) or out of bounds.
    """
    spec = param or PARAMS[name]
    return spec.check(label or name, value, text=text)


def check_keys(values: Mapping[str, Any] | Iterable[str], allowed: Iterable[str], what: str) -> None:
    """Refuse keys of ``values`` that are not in ``allowed`` (the message lists the valid ones)."""
    allowed = set(allowed)
    unknown = sorted(str(k) for k in values if k not in allowed)
    if unknown:
        raise ParameterError(f"{what}: unknown setting(s) {unknown}; valid: {sorted(allowed)}", unknown[0])


def check_gamma(value: Any, name: str = "gamma") -> Any:
    """γ: a number in [0, MAX_GAMMA], a list of anchors ``(start, end, t_start, t_end)`` with finite
    times and levels in [0, MAX_GAMMA], or a callable. Returns ``value`` unchanged."""
    if callable(value):
        return value
    level = Float(0.0, MAX_GAMMA, "the guidance strength γ")
    if isinstance(value, (str, bytes, Mapping, bool)):
        raise ParameterTypeError(
            f"{name} must be a number in [0, {MAX_GAMMA:g}] or a list of (start, end, t_start, t_end) anchors, "
            f"got {value!r}"[:300],
            name,
        )
    if isinstance(value, numbers.Real):
        level.check(name, value)
        return value
    try:
        anchors = list(value)
    except TypeError:
        raise ParameterTypeError(
            f"{name} must be a number or a list of (start, end, t_start, t_end) anchors, got {value!r}"[:300], name
        ) from None
    for a in anchors:
        if isinstance(a, (str, bytes, Mapping)) or not isinstance(a, Iterable):
            raise ParameterTypeError(f"{name}: each anchor must be (start, end, t_start, t_end), got {a!r}"[:300], name)
        vals = list(a)
        if len(vals) != 4:
            raise ParameterError(
                f"{name}: each anchor must be (start, end, t_start, t_end), got {a!r} with {len(vals)} values"[:300],
                name,
            )
        for i, v in enumerate(vals):
            if i < 2:
                level.check(f"{name} anchor {i + 1} of {vals!r}"[:120], v)
            else:
                Float(None, None, "a time").check(f"{name} anchor time {vals!r}"[:120], v)
    return value


def check_method_settings(method: Any) -> None:
    """Check every setting of a guidance method (a dataclass) that has a :data:`PARAMS` entry.

    Called from each method's ``__post_init__``, so ``fs.NDTM(steps=True)``, a manifest's
    ``"method": {"name": "ndtm", "steps": 1e9}`` and ``--steps 1000000000`` fail the same way.
    """
    from dataclasses import fields

    owner = type(method).__name__
    for f in fields(method):
        if f.name == "gamma":
            check_gamma(getattr(method, f.name), f"{owner}.gamma")
        elif f.name in PARAMS:
            PARAMS[f.name].check(f"{owner}.{f.name}", getattr(method, f.name))


def check_seeds(seeds: Any, name: str = "seeds") -> list[int]:
    """Explicit per-sample seeds: a non-empty sequence of at most MAX_N integers in [0, 2⁶³ − 1]."""
    if isinstance(seeds, (str, bytes, Mapping, numbers.Number, bool)):
        raise ParameterTypeError(f"{name} must be a list of integers, got {seeds!r}"[:300], name)
    try:
        items = list(seeds)
    except TypeError:
        raise ParameterTypeError(f"{name} must be a list of integers, got {seeds!r}"[:300], name) from None
    if not items:
        raise ParameterError(f"{name} is empty; give at least one seed", name)
    if len(items) > MAX_N:
        raise ParameterError(f"{name} has {len(items)} seeds; at most {MAX_N} samples per query", name)
    spec = Int(0, MAX_SAMPLE_SEED, "a per-sample seed")
    return [spec.check(f"{name}[{i}]", s) for i, s in enumerate(items)]


def check_dtype(dtype: Any, name: str = "dtype") -> Any:
    """A floating-point ``torch.dtype``, one of its names (``"fp16"``, ``"bfloat16"``, ...), ``"auto"`` or None.

    Returns the ``torch.dtype`` (None for None/``"auto"``).
    """
    import torch

    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "half": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float64": torch.float64,
        "fp64": torch.float64,
        "auto": None,
    }
    if dtype is None:
        return None
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key not in table:
            raise ParameterError(f"{name} must be a floating-point dtype, one of {sorted(table)}, got {dtype!r}", name)
        return table[key]
    if not isinstance(dtype, torch.dtype):
        raise ParameterTypeError(f"{name} must be a torch.dtype or one of {sorted(table)}, got {dtype!r}", name)
    if not dtype.is_floating_point:
        raise ParameterError(
            f"{name} must be a floating-point dtype (float32, float16, bfloat16), got {dtype}: networks cannot "
            "run in integer or complex arithmetic",
            name,
        )
    return dtype


def check_batch_size(value: Any, name: str = "batch_size") -> Any:
    """A batch size: None (the default, 8), ``"auto"`` (the largest that fits) or an integer in [1, 100000]."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, str):
        msg = f"{name} must be an integer in [1, {MAX_BATCH_SIZE}] or 'auto', got {value!r}"
        raise ParameterTypeError(msg[:300], name)
    return PARAMS["batch_size"].check(name, value)


AUTOCAST_DTYPES = {
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
}


def check_autocast(value: Any, name: str = "autocast") -> Any:
    """An autocast dtype: None/``"off"`` (float32), ``"bf16"``, ``"fp16"`` (or their long names, or a torch.dtype).

    Returns the ``torch.dtype`` (None for off).
    """
    import torch

    if value is None or value is False:
        return None
    if isinstance(value, torch.dtype):
        if value in (torch.bfloat16, torch.float16):
            return value
        if value == torch.float32:
            return None
    elif isinstance(value, str):
        key = value.strip().lower().removeprefix("torch.")
        if key in ("off", "none", "fp32", "float32"):
            return None
        if key in AUTOCAST_DTYPES:
            return getattr(torch, AUTOCAST_DTYPES[key])
    raise ParameterError(f"{name} must be 'bf16' or 'fp16' (or None for float32 throughout), got {value!r}"[:300], name)


def check_compile(value: Any, name: str = "compile") -> Any:
    """``torch.compile`` of the prior: False/None (off), True (``"inductor"``) or a backend name.

    Returns the backend name, or None when off.
    """
    if value is None or value is False:
        return None
    if value is True:
        return "inductor"
    if isinstance(value, str) and value.strip():
        import torch._dynamo

        if value.strip() not in torch._dynamo.list_backends(exclude_tags=()):
            known = sorted(torch._dynamo.list_backends())
            raise ParameterError(f"{name}: unknown torch.compile backend {value!r}; known: {known}", name)
        return value.strip()
    raise ParameterTypeError(f"{name} must be true/false or a torch.compile backend name, got {value!r}"[:300], name)


#: Flags of ``sample`` and ``audit`` that are not plain numbers.
_SPECIAL_FLAGS: dict[str, Callable[[Any, str], Any]] = {
    "batch_size": check_batch_size,
    "autocast": check_autocast,
    "compile": check_compile,
}


def check_device(device: Any, name: str = "device") -> Any:
    """A device that exists here: ``"cpu"``, ``"cuda"``/``"cuda:N"`` with that GPU visible, ``"mps"``, ...

    Returns ``device`` unchanged (None stays None).

    Raises:
        ParameterError: not a device name, or a GPU that this machine does not have.
    """
    if device is None:
        return None
    import torch

    if isinstance(device, bool) or not isinstance(device, (str, torch.device, int)):
        raise ParameterTypeError(f"{name} must be a device name such as 'cpu' or 'cuda:0', got {device!r}", name)
    try:
        dev = torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
    except (RuntimeError, ValueError, TypeError):
        raise ParameterError(
            f"{name} {device!r} is not a device name; use cpu, cuda, cuda:N (or mps on Apple silicon)", name
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ParameterError(
                f"{name} {device!r}: no CUDA GPU is visible on this machine (torch.cuda.is_available() is False"
                f"{'' if torch.version.cuda else '; this torch build has no CUDA'}); use --device cpu, or run where "
                "a GPU is visible (check CUDA_VISIBLE_DEVICES)",
                name,
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ParameterError(
                f"{name} {device!r}: this machine has {count} visible GPU(s) (cuda:0 … cuda:{count - 1})", name
            )
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ParameterError(f"{name} {device!r}: MPS is not available here; use --device cpu", name)
    elif dev.type == "meta":
        raise ParameterError(f"{name} 'meta' holds no data and cannot sample; use cpu or cuda", name)
    elif dev.type != "cpu" and not _backend_available(dev.type):
        raise ParameterError(f"{name} {device!r}: no {dev.type} device is available here; use cpu or cuda", name)
    return device


def _backend_available(kind: str) -> bool:
    import torch

    mod = getattr(torch, kind, None)
    try:
        return bool(mod is not None and mod.is_available())
    except Exception:  # pragma: no cover - odd backends
        return False


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r} in a JSON object; each key may appear once")
        out[k] = v
    return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON; write a finite number")


def loads_json(text: str | bytes) -> Any:
    """Strict JSON: a repeated key in an object or ``NaN``/``Infinity`` is an error (``ValueError``).

    Python's ``json.loads`` keeps the last of repeated keys silently and accepts ``NaN``; a manifest
    line ``{"n": 2, "n": 2000}`` must not be read as whichever came last.
    """
    return json.loads(text, object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant)
