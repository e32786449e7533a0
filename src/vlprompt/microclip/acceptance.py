"""Zero-shot acceptance checks for micro-CLIP: ``python -m vlprompt.microclip.acceptance``.

Each check classifies held-out world images (world seed ≠ the pretraining seed 0) of one rendering style by one
attribute, with one prompt template over that attribute's canonical words, and compares the top-1 accuracy with a
threshold. Informational rows (no threshold) show where hand-written prompts fit badly — the gaps CoOp closes.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass

import numpy as np
import torch

from vlprompt.backbones.microclip import build_microclip, encode_images
from vlprompt.microclip import world

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZeroShotCheck:
    """One zero-shot measurement.

    Attributes:
        name: row label.
        attribute: the attribute whose canonical words are the classes.
        style: rendering style of the images.
        template: prompt with ``{}`` for the class word.
        threshold: minimum accuracy (percent) for acceptance; ``None`` for an informational row.
    """

    name: str
    attribute: str
    style: str
    template: str
    threshold: float | None = None


CHECKS: tuple[ZeroShotCheck, ...] = (
    ZeroShotCheck("photo shape", "shape", "photo", "a photo of a {}.", 72.0),
    ZeroShotCheck("photo colour", "colour", "photo", "a photo of a {}.", 98.0),
    ZeroShotCheck("photo size", "size", "photo", "a photo of a {}.", 95.0),
    ZeroShotCheck("photo position, tuned prompt", "position", "photo", "a photo of a shape on the {}.", 97.0),
    ZeroShotCheck("sketch shape, sketch prompt", "shape", "sketch", "a sketch of a {}.", 65.0),
    ZeroShotCheck("photo position, plain prompt", "position", "photo", "a photo of a {}."),
    ZeroShotCheck("photo background", "background", "photo", "a photo of a shape on a {} background."),
    ZeroShotCheck("sketch shape, photo prompt", "shape", "sketch", "a photo of a {}."),
    ZeroShotCheck("cartoon shape, cartoon prompt", "shape", "cartoon", "a cartoon of a {}."),
    ZeroShotCheck("blurry shape, blurry prompt", "shape", "blurry", "a blurry photo of a {}."),
    ZeroShotCheck("noisy shape, noisy prompt", "shape", "noisy", "a noisy photo of a {}."),
)


@torch.no_grad()
def class_text_features(model: torch.nn.Module, template: str, classnames: list[str]) -> torch.Tensor:
    """L2-normalised text features ``[C, E]`` of ``template.format(c)`` for each class name."""
    from open_clip import tokenize

    return model.encode_text(tokenize([template.format(c) for c in classnames]), normalize=True)


def check_images(check: ZeroShotCheck, n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The check's images ``uint8[C·n, 64, 64, 3]`` and labels ``int64[C·n]`` (pure function of the arguments)."""
    style = world.ATTRIBUTES["style"].index(check.style)
    images, labels = [], []
    for c in range(len(world.ATTRIBUTES[check.attribute])):
        fixed = {check.attribute: c, "style": style}
        images.append(world.generate(seed, c * n_per_class, n_per_class, fixed).images)
        labels.append(np.full(n_per_class, c, np.int64))
    return np.concatenate(images), np.concatenate(labels)


def zero_shot_table(model: torch.nn.Module, n_per_class: int = 100, seed: int = 1,
                    checks: tuple[ZeroShotCheck, ...] = CHECKS) -> dict[str, dict]:  # fmt: skip
    """Run the zero-shot checks.

    Args:
        model: micro-CLIP in eval mode (e.g. ``build_microclip()``).
        n_per_class: held-out images per class.
        seed: world seed of the held-out images (pretraining used 0).
        checks: which checks to run.

    Returns:
        ``{check name: {"accuracy", "threshold", "passed", "template", "style", "attribute", "n"}}``; ``passed``
        is ``None`` for informational rows.
    """
    table = {}
    for check in checks:
        images, labels = check_images(check, n_per_class, seed)
        text = class_text_features(model, check.template, list(world.ATTRIBUTES[check.attribute]))  # [C, E]
        pred = (encode_images(model, images) @ text.t()).argmax(1).numpy()
        acc = float((pred == labels).mean() * 100.0)
        passed = None if check.threshold is None else acc >= check.threshold
        table[check.name] = {"accuracy": round(acc, 2), "threshold": check.threshold, "passed": passed,
                             "template": check.template, "style": check.style, "attribute": check.attribute,
                             "n": len(labels)}  # fmt: skip
        logger.info("%s: %.1f%%", check.name, acc)
    return table


def format_table(table: dict[str, dict]) -> str:
    """Markdown table of :func:`zero_shot_table` results."""
    lines = ["| check | template | accuracy (%) | threshold | result |", "|---|---|---:|---:|---|"]
    for name, r in table.items():
        thr = "—" if r["threshold"] is None else f"≥ {r['threshold']:g}"
        res = "info" if r["passed"] is None else ("pass" if r["passed"] else "FAIL")
        lines.append(f"| {name} | `{r['template']}` | {r['accuracy']:.1f} | {thr} | {res} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the zero-shot table; exit status 1 if a thresholded check fails."""
    p = argparse.ArgumentParser(prog="python -m vlprompt.microclip.acceptance", description=__doc__.split("\n")[0])
    p.add_argument("--weights", default="v1",
                   help="'v1' (micro-CLIP v1, the checkpoint this world-v1 table accepts) or a compact micro-CLIP "
                        ".safetensors file; micro-CLIP v2 has its own: vlprompt.microclip.acceptance2")
    p.add_argument("--n-per-class", type=int, default=200, help="held-out images per class")
    p.add_argument("--seed", type=int, default=1, help="world seed of the held-out images (pretraining used 0)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    table = zero_shot_table(build_microclip(a.weights), a.n_per_class, a.seed)
    print(format_table(table))
    failed = [n for n, r in table.items() if r["passed"] is False]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
