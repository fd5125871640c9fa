"""The ``fiberscope`` command (also ``python -m fiberscope``): one module per command group.

``sample``, ``demo``, ``zoo``, ``layers``/``report``/``presets``/``data`` (:mod:`~fiberscope.cli.info`),
``audit``/``manifest``/``neighbours``, ``bench``, ``trained`` and ``compare`` each live in their own
module here; :mod:`~fiberscope.cli.app` builds the parser (adding the command groups of installed
plugins), runs the command and maps errors to the exit codes listed in its docstring. The commands
parse flags and print; what they run is library code, which raises :mod:`fiberscope.errors` and never
exits.
"""

from .._deprecated import moved
from ..errors import EXIT, CLIError
from .app import build_parser, check_args, main, register_command
from .common import add_method_args, method_from_args

__all__ = [
    "EXIT",
    "CLIError",
    "add_method_args",
    "build_parser",
    "check_args",
    "main",
    "method_from_args",
    "register_command",
]

__getattr__ = moved(
    __name__,
    {
        "method_from_spec": "fiberscope.methods:method_from_spec",
        "load_config_file": "fiberscope.utils:load_config_file",
        "_error_code": "fiberscope.errors:classify",
        "_check_writable": "fiberscope.cli.common:check_writable",
        "_sub": "fiberscope.cli.common:add_command",
    },
)
