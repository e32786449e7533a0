"""Issue 13: "benchmark" named four things. The commands keep their names (users have scripts), and their help
now says which is which: ``vlprompt benchmark`` is the accuracy grid, ``vlprompt bench`` the speed suite, each
pointing at the other; ``datasets`` lists benchmark *datasets*."""

from __future__ import annotations

import argparse

from vlprompt.cli.main import build_parser


def _commands() -> dict[str, str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {c.dest: c.help for c in sub._choices_actions}


def test_benchmark_is_the_accuracy_grid_and_bench_the_speed_suite():
    helps = _commands()
    assert helps["benchmark"].startswith("the accuracy grid") and "speed suite is `vlprompt bench`" in helps["benchmark"]
    assert helps["bench"].startswith("the speed suite") and "accuracy grid is `vlprompt benchmark`" in helps["bench"]
    assert "benchmark datasets" in helps["datasets"]
