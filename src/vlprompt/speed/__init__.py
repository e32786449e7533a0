"""The speed benchmark behind ``vlprompt bench`` (DESIGN.md §5): the official per-step computation side by side with
vlprompt's exact optimisations and the ``cached:K`` approximation, one-time costs, a projection of a full run, and
an end-to-end check of that projection.

- :mod:`vlprompt.speed.worker` measures one configuration (normally in a fresh subprocess, so peak memory is
  that configuration's alone); :mod:`vlprompt.speed.onetime` the one-time costs and the end-to-end run; both use
  :mod:`vlprompt.speed.common` (configurations, backbone and model set-up, device sync);
- :mod:`vlprompt.speed.suite` runs every configuration, projects, checks, and writes ``bench.json`` + ``bench.md``.
"""

from vlprompt.speed.suite import BenchOptions, run_benchmark

__all__ = ["BenchOptions", "run_benchmark"]
