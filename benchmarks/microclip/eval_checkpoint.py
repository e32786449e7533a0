"""Zero-shot table of an in-progress (or finished) pretraining run's latest checkpoint.

Usage: ``python benchmarks/microclip/eval_checkpoint.py runs/microclip --n-per-class 50``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from vlprompt.microclip.acceptance import format_table, zero_shot_table
from vlprompt.microclip.pretrain_export import model_from_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="the --out folder of `python -m vlprompt.microclip.pretrain`")
    p.add_argument("--n-per-class", type=int, default=50)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    step = json.loads((a.run / "checkpoint.json").read_text())["step"]
    print(f"step {step}")
    print(format_table(zero_shot_table(model_from_checkpoint(a.run), a.n_per_class, a.seed)))


if __name__ == "__main__":
    main()
