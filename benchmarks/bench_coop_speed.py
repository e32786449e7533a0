"""Speed benchmark of issue 5 — the same as ``vlprompt bench`` (see ``vlprompt bench --help``).

Side by side on one machine: the official CoOp per-step computation (image encoder + full 77-token text encoder
forward/backward over all classes), vlprompt with each exact optimisation added in turn, and ``--augment cached:K``;
one-time costs; a projected 16-shot, 100-class run under the official schedule; and a measured end-to-end run that
checks the projection. Writes ``bench.json`` and ``bench.md``.

    python benchmarks/bench_coop_speed.py --out benchmarks/results/cpu-2threads --memory-limit-gb 10  # hours
    python benchmarks/bench_coop_speed.py --quick --out /tmp/bench-quick                              # seconds
    python benchmarks/bench_coop_speed.py --device cuda --precision amp --threads 16 --out benchmarks/results/gpu-bf16
"""

from __future__ import annotations

import sys

from vlprompt.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
