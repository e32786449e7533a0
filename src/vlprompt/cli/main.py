"""``vlprompt`` entry point: a thin argparse front over the library.

Each command lives in its own module ``vlprompt.cli.<name>`` exposing ``register(subparsers)``, which adds its
parser and sets ``func`` to a function ``run(args) -> int``. Errors raised as :class:`vlprompt.errors.VLPromptError`
(and common user errors) become one readable line on stderr and exit code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from vlprompt.errors import VLPromptError

# Command modules, in the order they appear in --help. A module that is not present yet is skipped.
COMMAND_MODULES = [
    "train",
    "evaluate",
    "zeroshot",
    "predict",
    "linear_probe",
    "datasets",
    "demo",
    "benchmark",
    "report",
    "interpret",
    "bench",
]


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="vlprompt",
        description="Prompt learning (CoOp) for CLIP-like vision-language models.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log INFO messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"vlprompt.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"vlprompt.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (defaults to ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (VLPromptError, FileNotFoundError, KeyboardInterrupt) as e:
        if args.debug:
            raise
        msg = "interrupted" if isinstance(e, KeyboardInterrupt) else str(e)
        print(f"vlprompt {args.command}: error: {msg}", file=sys.stderr)
        return 130 if isinstance(e, KeyboardInterrupt) else 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
