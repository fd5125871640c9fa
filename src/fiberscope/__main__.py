"""``python -m fiberscope`` is the ``fiberscope`` command."""

from .cli import main

raise SystemExit(main())
