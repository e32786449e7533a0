"""Issue 13: the two run functions that did a dozen jobs each are split into named steps, to the issue's ~60-line
target (the hard limit of :mod:`test_code_size` is 80): training into the locked folder (was 68 lines) and the
linear-probe run (was 66). Measured like ``test_code_size``: ``def`` line to last line."""

from __future__ import annotations

import inspect

import pytest

from vlprompt.runs import probe, train

TARGET = 60


@pytest.mark.parametrize("function", [train._train_locked, probe.linear_probe_run],
                         ids=["train_locked", "linear_probe_run"])
def test_run_function_is_within_the_issue_13_target(function):
    lines, _ = inspect.getsourcelines(function)
    assert len(lines) <= TARGET, f"{function.__module__}.{function.__qualname__}: {len(lines)} lines > {TARGET}"
