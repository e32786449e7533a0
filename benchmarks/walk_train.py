"""The walk of one ``vlprompt train`` from the command line to the training loop, traced (``docs/walkthrough.md``).

Runs a tiny ``vlprompt train`` (the bundled micro-CLIP, 2 classes of generated images, 1 epoch on cached features,
CPU) under :func:`sys.setprofile` and records every *entry* into a vlprompt module: a call whose function lives in
module B while the nearest vlprompt frame below it lives in another module A (calls within a module, and frames of
the standard library or torch in between, are not entries). Recording stops at the first call of
:func:`vlprompt.engine.fit.fit`, the training loop. Each entry is classified with the layer table of
``tests/architecture/test_layering.py``: a *climb* is an entry into a layer that the caller's layer may not import
(at run time that can only be a callback handed down, e.g. ``on_main(fn)``).

    PYTHONPATH=src python benchmarks/walk_train.py            # the table, then the counts
    PYTHONPATH=src python benchmarks/walk_train.py --json     # machine-readable
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "architecture"))

from test_layering import LAYERS, layer_of  # noqa: E402

LOOP = ("vlprompt.engine.fit", "fit")


def _module(frame) -> str | None:
    name = frame.f_globals.get("__name__", "")
    return name if name == "vlprompt" or name.startswith("vlprompt.") else None


def _caller_module(frame) -> str | None:
    f = frame.f_back
    while f is not None:
        m = _module(f)
        if m is not None:
            return m
        f = f.f_back
    return None


def trace(argv: list[str]) -> list[dict]:
    """The entries into vlprompt modules while ``vlprompt ARGV`` runs, up to the training loop."""
    from vlprompt.cli.main import main

    entries: list[dict] = []
    done = [False]

    def profile(frame, event, _arg):
        if done[0] or event != "call":
            return
        callee = _module(frame)
        if callee is None or frame.f_code.co_name == "<module>":  # not ours, or a module body run by an import
            return
        caller = _caller_module(frame)
        if caller is None or caller == callee:
            return
        func = frame.f_code.co_qualname
        entries.append({"from": caller, "to": callee, "function": func})
        if (callee, func) == LOOP:
            done[0] = True

    sys.setprofile(profile)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the run's own summary line: keep stdout for the walk
            code = main(argv)
    finally:
        sys.setprofile(None)
    if code != 0 or not done[0]:
        raise SystemExit(f"vlprompt {' '.join(argv)} exited {code} / reached the loop: {done[0]}")
    return entries


def climbs(entries: list[dict]) -> list[dict]:
    """The entries into a layer the caller's layer may not import (its own layer and its allowed ones)."""
    out = []
    for e in entries:
        a, b = layer_of(e["from"]), layer_of(e["to"])
        if a is not None and b is not None and a != b and b not in LAYERS[a][1]:  # None: an older tree's module
            out.append({**e, "from_layer": a, "to_layer": b})
    return out


def _images(root: Path) -> None:
    from PIL import Image

    for c, colour in enumerate(((200, 30, 30), (30, 30, 200))):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (32, 32), tuple(max(0, v - 10 * i) for v in colour)).save(folder / f"{i}.png")


def main() -> None:
    """Trace the walk and print it (``--json``: as JSON)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        _images(Path(tmp) / "data")
        argv = ["train", "--dataset", f"folder:{tmp}/data", "--shots", "2", "--backbone", "microclip", "--epochs",
                "1", "--augment", "none", "--device", "cpu", "--cache-dir", "", "--out", f"{tmp}/run"]
        entries = trace(argv)
    counts = {m: sum(e["to"] == m for e in entries) for m in ("vlprompt.engine.run", "vlprompt.engine.distributed")}
    up = climbs(entries)
    if a.json:
        print(json.dumps({"entries": entries, "counts": counts, "climbs": up}, indent=1))
        return
    for i, e in enumerate(entries, 1):
        mark = "  ← climb" if e in [{k: c[k] for k in ("from", "to", "function")} for c in up] else ""
        print(f"{i:3d}  {e['from']:32s} → {e['to']:32s} {e['function']}{mark}")
    print(f"entries into engine/run.py: {counts['vlprompt.engine.run']}, into engine/distributed.py: "
          f"{counts['vlprompt.engine.distributed']}; climbs: {len(up)}")


if __name__ == "__main__":
    main()
