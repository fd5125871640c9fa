"""Every error fiberscope raises on purpose, the exit codes, and the classification of any exception.

One taxonomy for the library and the command line. Each class carries the exit code the CLI uses
for it, so a failure means the same thing whether it comes from ``sample_fiber``, a manifest line, a
flag or a model directory:

========================  ====  =================================================================
class                     exit  meaning
========================  ====  =================================================================
:class:`UsageError`       2     a flag, option, method setting or API argument is wrong
:class:`ParameterError`   2     ... of the wrong type or out of its documented bounds
:class:`InputError`       3     bad data: a query image, a manifest, a subject that fails on it
:class:`NumericalError`   4     NaN/inf in guidance, a subject that passes no gradient
(audit)                   5     some units or manifest lines failed, the rest is saved
:class:`OutputError`      6     the output cannot be written (full disk, permissions, read-only)
:class:`ModelNotAvailableError` 7  a model id that is unknown, not cached, or not trained
:class:`WeightsError`     8     a model's files are unusable: corrupt/truncated/mis-shaped weights,
                                a broken ``config.json``, a refused pickle
``KeyboardInterrupt``     130   Ctrl-C, or SIGTERM during an audit
anything else             1     an internal error: a bug in fiberscope (never an input we can name)
========================  ====  =================================================================

:func:`classify` maps *any* exception to ``(exit code, one-line message)``: fiberscope's own by
their class, and the foreign ones we can name (a damaged safetensors file, out of memory, a full
disk, a missing file) by what they are. :func:`printable` makes a message safe for a terminal.

Example:
    >>> from fiberscope.errors import ParameterError, classify, exit_code_for
    >>> exit_code_for(ParameterError("n must be an integer in [1, 100000], got True"))
    2
    >>> classify(KeyboardInterrupt())[0]
    130
    >>> printable("bad\\x1b[2Jname")
    'bad\\\\x1b[2Jname'
"""

from __future__ import annotations

import errno
import re
from typing import Any

from ._deprecated import moved

__all__ = [
    "EXIT",
    "CLIError",
    "CheckpointError",
    "FiberscopeError",
    "GuidanceError",
    "InputError",
    "InternalError",
    "ManifestError",
    "ModelNotAvailableError",
    "NotTrainedError",
    "NumericalError",
    "OutputError",
    "OutputWriteError",
    "ParameterError",
    "ParameterTypeError",
    "PickleRefusedError",
    "QueryError",
    "ShardError",
    "StagingLostError",
    "SubjectError",
    "SubjectGradientError",
    "UsageError",
    "WeightsError",
    "classify",
    "exit_code_for",
    "printable",
]

#: Exit codes of the ``fiberscope`` command (also in its ``--help`` and in docs/reliability.md).
EXIT = {
    "ok": 0,
    "internal": 1,
    "usage": 2,
    "input": 3,
    "numeric": 4,
    "partial": 5,
    "output": 6,
    "model": 7,
    "weights": 8,
    "interrupt": 130,
}


class FiberscopeError(Exception):
    """Base of every error fiberscope raises on purpose; ``exit_code`` is what the CLI returns for it."""

    exit_code: int = EXIT["internal"]


class InternalError(FiberscopeError, RuntimeError):
    """A state fiberscope should never reach: a bug (please report it with the ``--debug`` traceback)."""

    exit_code = EXIT["internal"]


class UsageError(FiberscopeError, ValueError):
    """A flag, option, method setting or API argument that is wrong (names it and what is valid)."""

    exit_code = EXIT["usage"]


class ParameterError(UsageError):
    """A parameter of the wrong type or out of its documented bounds (see :mod:`fiberscope.validation`).

    Attributes:
        name: the parameter's name as the user wrote it (``n``, ``method.steps``, ``--threads``).
    """

    def __init__(self, message: str, name: str | None = None):
        super().__init__(message)
        self.name = name


class ParameterTypeError(ParameterError, TypeError):
    """A parameter of the wrong type (also a ``TypeError``, as Python's own argument checks raise)."""


class InputError(FiberscopeError, ValueError):
    """Bad input data: a query image, a manifest, a subject that cannot take the prior's images."""

    exit_code = EXIT["input"]


class QueryError(InputError):
    """A query that cannot be turned into an image in the prior's space."""


class ManifestError(InputError):
    """A manifest that cannot be read at all (missing, not text, no header): names the file and the fix."""


class SubjectError(InputError):
    """A subject that fails on the query (a shape mismatch, or an error raised inside it): names it and why."""


class ShardError(UsageError):
    """Inconsistent sharding options or launcher variables of an audit (names them and the fix)."""


class ModelNotAvailableError(FiberscopeError, ValueError):
    """A model id that cannot be loaded here: unknown, not in the local cache (no hub is reached), or not trained."""

    exit_code = EXIT["model"]


class NotTrainedError(ModelNotAvailableError, FileNotFoundError):
    """A trained invariance model (:mod:`fiberscope.trained`, or a model it was trained on) has no weights yet."""


class WeightsError(FiberscopeError, ValueError):
    """A model's files cannot be used: corrupt, truncated or mis-shaped weights, a broken or out-of-bounds
    ``config.json`` / scheduler config (names the file and the fix)."""

    exit_code = EXIT["weights"]


class CheckpointError(WeightsError):
    """A weights file that is not what it should be: unreadable, not an ADM state dict, missing or unexpected keys."""


class PickleRefusedError(WeightsError):
    """A model directory holds only pickled weights and the caller did not opt in to reading them."""


class NumericalError(FiberscopeError, ArithmeticError):
    """NaN/inf, or no usable gradient: the numbers went wrong, not the input's format."""

    exit_code = EXIT["numeric"]


class GuidanceError(NumericalError, FloatingPointError):
    """Guidance produced NaN/inf (names the step, the time and the samples concerned)."""


class SubjectGradientError(NumericalError, ValueError):
    """The subject passes no usable gradient to its input (or returns NaN/inf features)."""


class OutputError(FiberscopeError, OSError):
    """The output cannot be written: full disk, permissions, a read-only file system, a file in the way.

    Built like an ``OSError``: ``OutputError(errno.ENOSPC, "No space left on device (writing out/x)")``.
    """

    exit_code = EXIT["output"]


class OutputWriteError(OutputError):
    """Writing a result failed (full disk, permissions, read-only file system): the audit or the report stops."""


class StagingLostError(OutputError):
    """This process's staging directory was removed or replaced while it was being written (an audit or sample)."""


class CLIError(FiberscopeError):
    """An error with a one-line message and an explicit exit code (raised by the command line)."""

    def __init__(self, message: str, code: int = EXIT["input"]):
        super().__init__(message)
        self.code = code
        self.exit_code = code


# ---------------------------------------------------------------------------------------------------------------
# classification

_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT, errno.EPERM}
_OOM = ("out of memory", "bad_alloc", "can't allocate memory", "cannot allocate memory")
_SAFETENSORS = (
    "Error while deserializing header",
    "HeaderTooLarge",
    "MetadataIncompleteBuffer",
    "InvalidHeaderDeserialization",
    "incomplete metadata",
)


_STATE_DICT = ("Error(s) in loading state_dict", "Unable to load weights from checkpoint")


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    return isinstance(e, RuntimeError) and any(s in str(e) for s in _OOM)


def classify(e: BaseException) -> tuple[int, str]:
    """``(exit code, one-line message)`` for any exception, as the ``fiberscope`` command reports it.

    fiberscope's own errors carry their code. Foreign exceptions that name an input are classified
    by what they are: a damaged safetensors file (8), out of memory (2: lower the batch size),
    a full disk or a permission problem on output (6), a missing file (3), any other ``ValueError``
    (2). Everything else is an internal error (1), a bug.
    """
    if isinstance(e, KeyboardInterrupt):
        return EXIT["interrupt"], "interrupted; finished results are kept"
    code = getattr(e, "exit_code", None)
    if isinstance(e, FiberscopeError) and isinstance(code, int):
        msg = str(e)
        if isinstance(e, PickleRefusedError):
            msg = msg.replace("pass trust_pickle=True", "pass --trust-pickle")
        if isinstance(e, OutputError):
            msg = f"cannot write output: {e.strerror or msg}; free space, fix permissions or choose another --out"
        return code, msg
    if type(e).__name__ == "SafetensorError" or any(s in str(e) for s in _SAFETENSORS):
        return EXIT["weights"], (
            f"a weights file is corrupt or truncated ({_short(e)}); re-download it, or re-export it "
            "(`fiberscope zoo train NAME` for the built-in zoo)"
        )
    if isinstance(e, (RuntimeError, OSError)) and any(s in str(e) for s in _STATE_DICT):
        return EXIT["weights"], (
            f"weights do not fit their model ({_short(e)}); re-download or re-export them, or fix the config "
            "that describes the model"
        )
    if _is_oom(e):
        return EXIT["usage"], (
            f"out of memory ({type(e).__name__}: {_short(e, 160)}); lower --batch-size (batch_size=) or the number "
            "of samples, or use a smaller dtype or a larger device"
        )
    if isinstance(e, OSError) and e.errno in _OUTPUT_ERRNOS and not isinstance(e, FileNotFoundError):
        where = f" ({e.filename})" if e.filename else ""
        return EXIT["output"], f"cannot write output: {e.strerror}{where}; free space or choose another --out"
    if isinstance(e, FileNotFoundError):
        return EXIT["input"], str(e)
    if isinstance(e, ValueError):
        return EXIT["usage"], str(e)
    return EXIT["internal"], f"internal error {type(e).__name__}: {e} (rerun with --debug for the traceback)"


def exit_code_for(e: BaseException) -> int:
    """The exit code the ``fiberscope`` command returns for ``e`` (see :func:`classify`)."""
    return classify(e)[0]


def _short(e: BaseException, limit: int = 200) -> str:
    s = " ".join(str(e).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


# C0 controls (but tab), DEL, C1 controls, and the Unicode bidirectional overrides/isolates that can
# make a terminal show text in another order than it is
_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: Any) -> str:
    """``text`` with every terminal control character written as an escape (``\\x1b``, ``\\n``, ``\\u202e``).

    Use it on every string shown on a terminal that may hold user input (file names, manifest
    fields, error messages): an escape sequence in a file name must not recolour, retitle or clear
    the user's terminal.
    """
    s = str(text)
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), s)


# renamed in issue 22: "baseline" means only the training-free guidance methods
__getattr__ = moved(__name__, {"BaselineNotTrainedError": "fiberscope.errors:NotTrainedError"})
