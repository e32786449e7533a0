"""The demo's base-to-new section alone, on a micro-CLIP v2 weights file (issue 15's learning table).

``python benchmarks/microclip/base2new_v2.py --weights FILE --out DIR [--tasks a,b] [--seeds 1,2,3]``: runs the v2
suite's base-to-new protocol (every registered method that supports it, the deep ones at depths that fit the
towers; :mod:`vlprompt.microclip.demo_base2new`) through :func:`vlprompt.microclip.demo.run_demo` with the smallest
few-shot part the demo allows (one task at 16 shots, no domain shift, no adapters), and writes the demo's
``report.md`` / ``results.json`` into ``DIR``. Until a v2 checkpoint passes acceptance this is the way to see the
deep methods learn on real (if weak) micro-CLIP v2 features; say which weights were used.
"""

from __future__ import annotations

import argparse
import logging

from vlprompt.microclip.demo import DemoConfig, run_demo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", required=True, help="a micro-CLIP v2 compact .safetensors file")
    p.add_argument("--out", required=True)
    p.add_argument("--tasks", default=None, help="base-to-new tasks (default: the suite's)")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    seeds = tuple(int(s) for s in a.seeds.split(","))
    cfg = DemoConfig(out=a.out, tasks=("aircraft",), shots=(16,), seeds=seeds, workers=a.workers, domain_shift=False,
                     suite="v2", weights=a.weights, adapters=(),
                     base2new=tuple(a.tasks.split(",")) if a.tasks else None)
    results = run_demo(cfg)
    print(f"{results['seconds']:.0f} s; report: {results['files']['report']}")


if __name__ == "__main__":
    main()
