"""The ``chimap`` command: one entry point, one subcommand per module (see ``chimap.commands``).

Exit codes: 0 success, 2 bad input (with a message), 1 failure.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__
from .commands import COMMANDS

log = logging.getLogger("chimap")


class UsageError(ValueError):
    """Bad input from the user; reported without a traceback, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chimap",
        description="Quantitative susceptibility mapping, from raw data to region readouts.",
    )
    parser.add_argument("--version", action="version", version=f"chimap {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    verbosity.add_argument("-v", "--verbose", action="store_true", help="print debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f".commands.{name}", __package__)
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.ERROR if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(message)s")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (UsageError, ValueError, FileNotFoundError, MemoryError) as exc:
        print(f"chimap {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1
    except Exception as exc:  # last resort: a message, and the traceback only with --verbose
        if args.verbose:
            raise
        print(f"chimap {args.command}: failed: {type(exc).__name__}: {exc} (run with -v for details)",
              file=sys.stderr)
        return 1


def console_main() -> int:
    """The ``chimap`` command: :func:`main` with the allocator set for large arrays
    (:func:`chimap.allocator.retain_freed_memory`; ``CHIMAP_SYSTEM_MALLOC=1`` opts out)."""
    from .allocator import retain_freed_memory

    retain_freed_memory()
    return main()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(console_main())
