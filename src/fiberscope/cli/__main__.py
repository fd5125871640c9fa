"""``python -m fiberscope.cli`` is the ``fiberscope`` command (as is ``python -m fiberscope``)."""

from .app import main

raise SystemExit(main())
