"""A real learning test on micro-CLIP v1 (world v1's task; v2 has its own, test_learning_microclip_v2.py): a short
CoOp run beats zero-shot CLIP by ≥ 10 points on a task where the hand-written prompt does not fit the images (the
paper's central claim, in seconds on a CPU)."""

from __future__ import annotations

import pytest

from vlprompt.backbones import create_backbone
from vlprompt.backbones.microclip import WEIGHTS_V1
from vlprompt.engine.config import TrainConfig
from vlprompt.engine.run import RunSpec, train_run, zeroshot_run
from vlprompt.microclip.tasks import TASKS, write_task

pytestmark = pytest.mark.skipif(not WEIGHTS_V1.exists(), reason="micro-CLIP v1 weights not in this checkout")

TASK = "sizes"  # sizes with "a photo of a {} shape.": 83% zero-shot with the shipped checkpoint


def test_short_coop_run_beats_zero_shot_by_ten_points(tmp_path):
    split = write_task(TASK, tmp_path / "tasks")
    bb = create_backbone("microclip", "v1")
    common = {"dataset": f"split:{split}", "backbone": "microclip", "pretrained": "v1", "device": "cpu",
              "cache_dir": ""}
    zs = zeroshot_run(RunSpec(out=str(tmp_path / "zs"), shots=None, **common), [TASKS[TASK].template], backbone=bb)
    coop = train_run(
        RunSpec(out=str(tmp_path / "coop"), shots=8, seed=1, learner={"n_ctx": 16},
                train=TrainConfig(augment="none", flip=False, epochs=40), **common),
        backbone=bb,
    )
    assert coop["accuracy"] >= zs["accuracy"] + 10, (zs["accuracy"], coop["accuracy"])
