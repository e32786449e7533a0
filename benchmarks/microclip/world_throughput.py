"""Measure the world generator's rendering throughput (images/s) for 1..N processes.

Usage: ``python benchmarks/microclip/world_throughput.py --processes 1 2 --images 4096``
"""

from __future__ import annotations

import argparse
import time

from vlprompt.microclip import world


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=128)
    a = p.parse_args()
    n = a.images // a.batch_size
    for procs in a.processes:
        it = world.iter_batches(0, a.batch_size, num_batches=n + 1, processes=procs)
        next(it)  # exclude pool start-up
        t = time.perf_counter()
        for _ in it:
            pass
        dt = time.perf_counter() - t
        print(f"processes={procs}: {n * a.batch_size / dt:.0f} images/s")


if __name__ == "__main__":
    main()
