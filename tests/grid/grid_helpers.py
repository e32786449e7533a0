"""Shared bits of the grid tests: the fast method setting, running the CLI, and reading the run folders."""

from __future__ import annotations

import json
import re
from pathlib import Path

from vlprompt.cli.main import main

#: The fast setting: one epoch, features through the test transform, a tiny random-weights CLIP on the CPU.
FAST = ["--epochs", "1", "--augment", "none", "--backbone", "vlp-tiny-rn", "--pretrained", "random", "--device", "cpu"]
#: The same with the bundled micro-CLIP, whose trained weights tell the noisy colour classes apart, so accuracies
#: differ between methods and targets (with random weights every method scored the same chance-level number, which
#: would hide a table that mixes them up).
FAST_MICRO = ["--epochs", "1", "--augment", "none", "--backbone", "microclip", "--device", "cpu"]


def benchmark(capsys, *argv: str) -> tuple[int, str, str]:
    """``vlprompt benchmark ARGV``: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(["benchmark", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def dry_run_folders(out: str) -> set[Path]:
    """Every run folder a ``--dry-run`` listing names (each ``→ FOLDER`` of its lines: the job's and its
    evaluations')."""
    return {Path(p) for p in re.findall(r"→ (\S+)", out)}


def finished(runs: Path) -> set[Path]:
    """The finished run folders under ``runs`` (those holding ``metrics.json``)."""
    return {p.parent for p in runs.rglob("metrics.json")}


def read(folder: Path, name: str = "config.json") -> dict:
    """A run folder's JSON file."""
    return json.loads((folder / name).read_text())


def accuracy(folder: Path) -> float:
    """The test accuracy in a run folder's ``metrics.json``."""
    return read(folder, "metrics.json")["accuracy"]
