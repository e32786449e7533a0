"""``vlprompt`` entry point: a thin argparse front over the library.

Each command lives in its own module ``vlprompt.cli.<name>`` exposing ``register(subparsers)``, which adds its
parser and sets ``func`` to a function ``run(args) -> int``.

Every failure is one readable line on stderr (``--debug`` shows the traceback instead):

- a usage error (unknown flag, wrong value type, missing argument): exit 2, ``vlprompt CMD: error: ...`` with a
  pointer to ``--help``;
- a :class:`vlprompt.errors.VLPromptError` or an ``OSError`` (missing file, permission, disk full): exit 2;
- anything unexpected: exit 1, with the exception type and "(run with --debug for the traceback)";
- Ctrl-C: exit 130.
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
    "export",
    "linear_probe",
    "datasets",
    "demo",
    "benchmark",
    "report",
    "interpret",
    "migrate",
    "bench",
]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (the full usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see '{self.prog} --help')\n")


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(text).split())


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every available subcommand."""
    parser = _Parser(
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


def _failure(e: BaseException) -> tuple[str, int]:
    """The one-line message and exit code for an exception escaping a command."""
    if isinstance(e, KeyboardInterrupt):
        return "interrupted", 130
    msg = one_line(e) or type(e).__name__
    if isinstance(e, (VLPromptError, OSError)):
        return msg, 2
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        msg += " — out of memory: lower --batch-size, use --precision amp on a GPU, or --augment cached:K"
    return f"{type(e).__name__}: {msg} (run with --debug for the traceback)", 1


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (defaults to ``sys.argv[1:]``) and return the exit code (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    if debug:  # accepted anywhere on the line (the error messages suggest adding it), not only before the command
        argv = ["--debug", *(a for a in argv if a != "--debug")]
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed --help (0) or a one-line usage error (2)
        return e.code if isinstance(e.code, int) else 2
    except Exception as e:  # a command module failed to import or register
        if debug:
            raise
        print(f"vlprompt: error: {_failure(e)[0]}", file=sys.stderr)
        return 1
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (Exception, KeyboardInterrupt) as e:
        if args.debug:
            raise
        msg, code = _failure(e)
        print(f"vlprompt {args.command}: error: {msg}", file=sys.stderr)
        return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
