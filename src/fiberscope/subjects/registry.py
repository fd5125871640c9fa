"""Deprecated: the subject spec dispatch moved to :mod:`fiberscope.loading`, the adapters' shared code
to :mod:`fiberscope.subjects.library` (every old name still works, with a ``DeprecationWarning``, until 0.2)."""

from __future__ import annotations

from .._deprecated import moved

_LIBRARY = ("LayerSpec", "LibrarySubject", "Multi", "as_index", "combine", "layer_list", "local_or_hub", "require")

__getattr__ = moved(
    __name__,
    {
        "SUBJECT_PREFIXES": "fiberscope.loading:SUBJECT_PREFIXES",
        "load_named_subject": "fiberscope.loading:load_named_subject",
        "subject_layers": "fiberscope.loading:subject_layers",
        **{name: f"fiberscope.subjects.library:{name}" for name in _LIBRARY},
    },
)
