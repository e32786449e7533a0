"""Quick side-by-side timing of one CoOp text-side training step (logits, loss, backward, SGD) on cached image
features: the official full 77-token path, + EOS truncation, + shared prefix. Full-size architecture with random
weights, 100 ImageNet class names, M = 16, batch 32; configurations alternate, minimum over 3 rounds.

A minute on 2 CPU threads, against the hour of ``vlprompt bench``: for checking that a code change did not alter the
text-side speed (run it on two checkouts with ``PYTHONPATH=<checkout>/src``).

    python benchmarks/text_step.py --threads 2 --backbone RN50
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from vlprompt.backbones import create_backbone
from vlprompt.engine.model import PromptModel
from vlprompt.prompts import CoOp, CoOpConfig
from vlprompt.speed.worker import classnames

CONFIGS = {"official": (False, False), "truncate": (True, False), "prefix": (True, True)}  # (truncate, shared prefix)


def main() -> None:
    """Time the three configurations and print wall and CPU seconds per step, and the speed-ups."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--backbone", default="RN50")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    bb = create_backbone(a.backbone, "random")
    names = classnames(a.classes)
    steps = {}
    for name, (truncate, prefix) in CONFIGS.items():
        torch.manual_seed(0)
        learner = CoOp(bb, names, CoOpConfig(n_ctx=16, truncate=truncate))
        steps[name] = (PromptModel(bb, learner, shared_prefix=prefix),
                       torch.optim.SGD(learner.parameters(), lr=0.002, momentum=0.9))
    img = F.normalize(torch.randn(32, bb.embed_dim), dim=-1)  # (B, E) cached image features
    labels = torch.randint(a.classes, (32,))

    def step(name: str) -> tuple[float, float]:
        model, opt = steps[name]
        t0, c0 = time.perf_counter(), time.process_time()
        loss = F.cross_entropy(model.logits(img), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t0, time.process_time() - c0

    for name in steps:  # warm-up
        step(name)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in steps}
    for _ in range(a.rounds):
        for name in steps:
            times[name].append(step(name))
    base = min(t[0] for t in times["official"]), min(t[1] for t in times["official"])
    for name, ts in times.items():
        wall, cpu = min(t[0] for t in ts), min(t[1] for t in ts)
        print(f"{name:9s} wall {wall:7.3f} s  cpu {cpu:7.3f} s  speed-up {base[0] / wall:5.1f}x wall, "
              f"{base[1] / cpu:5.1f}x cpu")


if __name__ == "__main__":
    main()
