"""The benchmark grid's stable import path: ``from vlprompt.benchmark import BenchmarkConfig, plan, run_benchmark``.

The grid lives in the application's run layer (DESIGN.md §3): :mod:`vlprompt.runs.grid` plans the four protocols
(few-shot, base-to-new, domain generalization, cross-dataset transfer) as run folders without loading anything, and
:mod:`vlprompt.runs.grid_run` executes them resumably and writes the report. This module re-exports both, so code
written against the few-shot runner keeps working.

``METHODS`` is every method a grid accepts (the registered prompt learners, their variants and the baselines, read
from the registry when asked for); ``DEFAULT_METHODS`` the few-shot default (``coop``, ``coop-csc``, ``zeroshot``,
``linear-probe``).
"""

from __future__ import annotations

from vlprompt.runs.grid import (
    BASELINES,
    DEFAULT_METHODS,
    DEFAULT_SHOTS,
    PROTOCOLS,
    BenchmarkConfig,
    Evaluation,
    Job,
    dataset_dirname,
    default_methods,
    fewshot_benchmarks,
    grid_methods,
    learner_of,
    parse_datasets,
    parse_ints,
    plan,
    protocol_targets,
)
from vlprompt.runs.grid_run import (
    SETTINGS_FILE,
    BenchmarkSummary,
    check_settings,
    dataset_template,
    describe,
    job_recipe,
    run_benchmark,
    run_job,
)


def __getattr__(name: str):
    if name == "METHODS":  # from the registry when asked for: importing this module does not import torch
        return tuple(grid_methods())
    raise AttributeError(f"module 'vlprompt.benchmark' has no attribute {name!r}")


__all__ = [  # noqa: F822 (METHODS comes from the module __getattr__)
    "BASELINES", "DEFAULT_METHODS", "DEFAULT_SHOTS", "METHODS", "PROTOCOLS", "SETTINGS_FILE", "BenchmarkConfig",
    "BenchmarkSummary", "Evaluation", "Job", "check_settings", "dataset_dirname", "dataset_template",
    "default_methods", "describe", "fewshot_benchmarks", "grid_methods", "job_recipe", "learner_of",
    "parse_datasets", "parse_ints", "plan", "protocol_targets", "run_benchmark", "run_job",
]
