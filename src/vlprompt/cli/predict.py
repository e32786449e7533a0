"""``vlprompt predict``: classify image files with a trained prompt."""

from __future__ import annotations

import argparse
import json
import os

from vlprompt.errors import DataError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``predict`` command."""
    p = sub.add_parser("predict", help="classify images or folders of images with a trained prompt",
                       description="Print one line per image: path, predicted class and probability.")
    p.add_argument("--run", required=True, help="training run folder")
    p.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--top-k", type=int, default=1, help="print the k most probable classes (default 1)")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--pretrained", default=None, help="where the backbone weights are now, if they moved")
    p.set_defaults(func=run)


def _expand(paths: list[str]) -> list[str]:
    files = []
    for path in paths:
        if os.path.isdir(path):
            for d, _, names in sorted(os.walk(path)):
                files += [os.path.join(d, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTS)]
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise DataError(f"'{path}' is neither an image file nor a folder.")
    if not files:
        raise DataError(f"no image files ({', '.join(IMAGE_EXTS)}) found in {', '.join(paths)}.")
    return files


def run(args: argparse.Namespace) -> int:
    """Run ``vlprompt predict``."""
    from vlprompt.api import PromptClassifier
    from vlprompt.engine.pipeline import resolve_device

    clf = PromptClassifier.load(args.run, device=resolve_device(args.device), pretrained=args.pretrained)
    files = _expand(args.images)
    pred = clf.predict(files)
    k = max(1, min(args.top_k, len(clf.classnames)))
    for path, probs in zip(files, pred.probs, strict=True):
        top = probs.topk(k)
        items = [(clf.classnames[i], float(p)) for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]
        if args.json:
            print(json.dumps({"path": path, "top": [{"label": c, "prob": p} for c, p in items]}))
        else:
            print(path + "\t" + "\t".join(f"{c} {p:.3f}" for c, p in items))
    return 0
