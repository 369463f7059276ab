"""Subcommands of the ``chimap`` command line; one module per subcommand.

Each module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
"""

COMMANDS = ["run", "invert", "simulate", "metrics", "demo"]
