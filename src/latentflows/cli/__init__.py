"""Command line: ``latentflows train | sample | evaluate | compare | interpolate | info | push |
export | demo | cache``.

Each command is a module (or a function pair elsewhere, as ``export.py``) with
``add_arguments(parser)`` and ``run(args)``, listed once in ``app.COMMANDS``; the flags
that change a run config are in ``options.py``.
"""

from .app import COMMANDS, Command, build_parser, main
from .options import with_options

__all__ = ["COMMANDS", "Command", "build_parser", "main", "with_options"]
