"""The ``dcsim`` command line (its commands: :func:`build_parser`). Every command takes ``--json PATH`` ('-': stdout).
Exit codes: 0 success, 1 a run-time error (bad file, data or model), 2 bad usage (a flag's value, or an unwritable
output: checked before any work, see dcsim.cli.checks). Commands run with dcsim.allocator.steady's thresholds."""

import sys

from .checks import UsageError, check_args
from .parser import build_parser

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (argparse exits with 2 itself on unknown flags)."""
    from ..allocator import steady
    from ..analysis.tables import write_json
    from ..parallel.distributed import setup, teardown

    steady()  # the allocator's thresholds fixed for the command's tensors (dcsim.allocator)
    args, where = build_parser().parse_args(argv), ""
    try:
        check_args(args)
        args.world = setup(args.command, getattr(args, "device", None))
        where = f" (rank {args.world.rank} of {args.world.size})" if args.world.distributed else ""
        result = args.func(args)
    except (ValueError, TypeError, FileNotFoundError, IndexError) as err:  # UsageError is a ValueError
        print(f"dcsim {args.command}{where}: error: {err}", file=sys.stderr)
        return EXIT_USAGE if isinstance(err, UsageError) else EXIT_ERROR
    finally:
        teardown()
    if args.json is not None and args.world.main:
        write_json(args.json, result)
    return EXIT_OK
