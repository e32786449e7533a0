"""Child-process helpers of the portability tests: run the CLI or compute fingerprints with a given thread count.

``python portability_child.py CONFIG_DIR THREADS cli ARGV...`` runs ``vlprompt ARGV`` (exit status = the CLI's);
``python portability_child.py CONFIG_DIR THREADS fingerprints NAME[=PRETRAINED]...`` prints one JSON object: for each
backbone its new fingerprint and its vlprompt 0.1.0 one, and the thread count used. The tiny open_clip test configs
in CONFIG_DIR are registered first, so ``--backbone vlp-tiny-rn`` works as in the parent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def run(config_dir: str, threads: int, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run this file in a fresh process with ``threads`` torch threads (OMP_NUM_THREADS and set_num_threads)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return subprocess.run([sys.executable, __file__, config_dir, str(threads), *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def _main(argv: list[str]) -> int:
    import open_clip
    import torch

    config_dir, threads, mode, *rest = argv
    open_clip.add_model_config(config_dir)
    torch.set_num_threads(int(threads))
    if mode == "cli":
        from vlprompt.cli.main import main

        return main(rest)
    from vlprompt.backbones import create_backbone
    from vlprompt.backbones.base import legacy_fingerprint_v0

    out: dict = {"threads": torch.get_num_threads()}
    for spec in rest:
        name, _, pretrained = spec.partition("=")
        bb = create_backbone(name, pretrained or None)
        out[spec] = {"fingerprint": bb.fingerprint, "legacy": legacy_fingerprint_v0(bb.model)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
