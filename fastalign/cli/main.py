"""``fastalign`` command line: one module per subcommand.

Each module in ``COMMANDS`` defines ``register(subparsers)``, which adds its
parser and sets ``func(args) -> int``. Command modules import what they use at the
top (the package root imports torch anyway, so deferring imports would save nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import warnings
from typing import List, Optional

from .. import __version__

# (module, command) in the order the help lists them.
COMMANDS = [
    ("run", "run"),
    ("split_triplets", "split-triplets"),
    ("fit_teacher", "fit-teacher"),
    ("make_triplets", "make-triplets"),
    ("triplets_io", "export-triplets / import-triplets"),
    ("distill", "distill"),
    ("embed", "embed"),
    ("evaluate", "evaluate"),
    ("bench", "bench"),
    ("info", "info"),
]


# What to do after Ctrl-C, per command: only make-triplets needs a flag to continue (it refuses a
# non-empty --out otherwise), distill and run resume by themselves, fit-teacher starts over in its
# own folder, and import-triplets leaves a store its writer will not reopen without resume.
INTERRUPT_ADVICE = {
    "make-triplets": "rerun the same command with --resume to continue it",
    "distill": "rerun the same command to resume from the newest checkpoint in its run folder",
    "run": "rerun the same command to resume it (finished stages are kept)",
    "fit-teacher": "rerun the same command to fit again (fit-teacher does not resume)",
    "import-triplets": "the store in --out may be incomplete: remove that folder, then rerun the same command",
}
DEFAULT_INTERRUPT_ADVICE = "rerun the same command to start again (it does not resume)"


class CLIError(Exception):
    """A user error: printed as one line, exit status 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastalign",
        description="Fast human-aligned representation learning (AligNet) with fused triplet kernels.",
    )
    parser.add_argument("--version", action="version", version=f"fastalign {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module, _ in COMMANDS:
        importlib.import_module(f"{__package__}.{module}").register(sub)
    return parser


@contextlib.contextmanager
def _one_line_warnings(command: str):
    """Warnings as ``fastalign CMD: warning: ...`` lines: a user of the command line needs the
    message, not the library's file, line number and source line."""
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"fastalign {command}: warning: {message}", file=file or sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with _one_line_warnings(args.command):
            rc = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe raises here, inside the handler, not at interpreter exit
        return rc
    except BrokenPipeError:
        # `fastalign info --json | head`: the reader left; no traceback, and no second error when
        # Python flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except (CLIError, ValueError, TypeError, FileNotFoundError, FileExistsError) as exc:
        print(f"fastalign {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        advice = INTERRUPT_ADVICE.get(args.command, DEFAULT_INTERRUPT_ADVICE)
        print(f"fastalign {args.command}: interrupted; {advice}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
