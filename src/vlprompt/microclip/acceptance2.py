"""Zero-shot acceptance of micro-CLIP v2 on the v2 suite: ``python -m vlprompt.microclip.acceptance2 --weights F``.

For every task of :mod:`vlprompt.microclip.tasks2` (the 11 few-shot tasks and the 4 shifted test sets), the test
images (the very pixels the task folders hold) are classified with the task's hand-written template, as the demo's
zero-shot baseline does. Thresholds sit on the tasks whose words are common in the captions (the model must have
learned the world); the headroom tasks are informational: their zero-shot accuracy is what the suite is for.
The thresholds were fixed before the v2 checkpoint was trained.
"""

from __future__ import annotations

import argparse
import logging
import sys

import numpy as np
import torch

from vlprompt.backbones.microclip import encode_images
from vlprompt.microclip import tasks2
from vlprompt.microclip.acceptance import class_text_features

logger = logging.getLogger(__name__)

#: task → minimum zero-shot accuracy (percent): tasks where the prompt fits words in most captions.
THRESHOLDS: dict[str, float] = {"shapes": 70.0, "colours": 70.0, "positions": 70.0, "colour_shapes": 40.0}


def suite_zero_shot(model: torch.nn.Module, names: tuple[str, ...] | None = None, n_per_class: int | None = None,
                    seed: int = 0) -> dict[str, dict]:  # fmt: skip
    """Zero-shot top-1 accuracy of ``model`` on v2 tasks.

    Args:
        model: micro-CLIP v2 in eval mode.
        names: tasks (default: all of ``tasks2.TASKS``).
        n_per_class: test images per class (default: each task's ``n_test``, i.e. its whole test split).
        seed: task seed (the demo's folders use 0).

    Returns:
        ``{task: {"accuracy", "threshold", "passed", "template", "mirrors", "classes", "n"}}``; ``passed`` is ``None``
        where no threshold applies.
    """
    table = {}
    for name in names or tuple(tasks2.TASKS):
        spec = tasks2.TASKS[name]
        n = n_per_class or spec.n_test
        text = class_text_features(model, spec.template, spec.classnames)  # [C, E]
        correct = 0
        for label in range(len(spec.classnames)):
            feats = encode_images(model, tasks2.class_images(name, label, "test", n, seed))  # [n, E]
            correct += int(((feats @ text.t()).argmax(1) == label).sum())
        acc = 100.0 * correct / (n * len(spec.classnames))
        thr = THRESHOLDS.get(name)
        table[name] = {"accuracy": round(acc, 2), "threshold": thr, "passed": None if thr is None else acc >= thr,
                       "template": spec.template, "mirrors": spec.mirrors, "classes": len(spec.classnames),
                       "n": n * len(spec.classnames)}  # fmt: skip
        logger.info("%s: %.1f%%", name, acc)
    return table


def average(table: dict[str, dict]) -> float:
    """Mean zero-shot accuracy over the few-shot tasks present in ``table`` (the issue's target: ≤ 85)."""
    return float(np.mean([r["accuracy"] for n, r in table.items() if n in tasks2.FEWSHOT_TASKS]))


def format_table(table: dict[str, dict]) -> str:
    """Markdown table of :func:`suite_zero_shot` results, with the few-shot average."""
    lines = ["| task | mirrors | classes | template | zero-shot (%) | threshold | result |",
             "|---|---|---:|---|---:|---:|---|"]  # fmt: skip
    for name, r in table.items():
        thr = "—" if r["threshold"] is None else f"≥ {r['threshold']:g}"
        res = "info" if r["passed"] is None else ("pass" if r["passed"] else "FAIL")
        lines.append(f"| {name} | {r['mirrors']} | {r['classes']} | `{r['template']}` | {r['accuracy']:.1f} | {thr} "
                     f"| {res} |")  # fmt: skip
    if any(n in tasks2.FEWSHOT_TASKS for n in table):
        lines.append(f"| **average (few-shot tasks)** | | | | {average(table):.1f} | ≤ 85 (issue target) | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the v2 zero-shot table; exit status 1 if a thresholded task fails."""
    from vlprompt.backbones.microclip import build_microclip

    p = argparse.ArgumentParser(prog="python -m vlprompt.microclip.acceptance2", description=__doc__.split("\n")[0])
    p.add_argument("--weights", required=True, help="a compact micro-CLIP v2 .safetensors file")
    p.add_argument("--n-per-class", type=int, default=None, help="test images per class (default: the task's)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    table = suite_zero_shot(build_microclip(a.weights), n_per_class=a.n_per_class)
    print(format_table(table))
    failed = [n for n, r in table.items() if r["passed"] is False]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
