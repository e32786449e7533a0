"""The dataset default of the recipe resolver is a typed property of the benchmark's metadata
(:attr:`vlprompt.data.Benchmark.coop_epochs`), not a dataset name compared inside the engine: ImageNet's 50 epochs
for every shot count (``CoOp:COOP.md``: its ``*_ep50`` configs), every other benchmark by the shot count."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from vlprompt.data import BENCHMARKS
from vlprompt.engine.config import TrainConfig
from vlprompt.engine.recipe import coop_epochs, method_recipe, resolve_train_config

SHOTS = (1, 2, 4, 8, 16, None)
BY_SHOTS = (50, 100, 100, 200, 200, 200)  # CoOp:COOP.md rn50_ep50 / _ep100 / rn50


def test_only_imagenet_has_its_own_epoch_count():
    assert {name: b.coop_epochs for name, b in BENCHMARKS.items() if b.coop_epochs is not None} == {"imagenet": 50}


@pytest.mark.parametrize("dataset", [*BENCHMARKS, "my_folder", None])
def test_the_resolver_reads_the_benchmark(dataset):
    want = (50,) * len(SHOTS) if dataset == "imagenet" else BY_SHOTS
    assert tuple(coop_epochs(k, dataset) for k in SHOTS) == want
    assert tuple(resolve_train_config(TrainConfig(), "coop", k, dataset).epochs for k in SHOTS) == want
    # a method's own recipe wins over the dataset default (CoCoOp 10, KgCoOp 100, on ImageNet too), the user's value
    # over both
    assert method_recipe("cocoop", 16, dataset)["epochs"] == 10 and method_recipe("kgcoop", 1, dataset)["epochs"] == 100
    assert resolve_train_config(TrainConfig(epochs=3), "coop", 16, dataset).epochs == 3


def test_no_dataset_name_is_compared_in_the_engine():
    """No ``… == "imagenet"`` (or any benchmark name) in vlprompt/engine: the behaviour comes from the metadata."""
    engine = Path(__file__).resolve().parents[2] / "src" / "vlprompt" / "engine"
    offences = []
    for path in sorted(engine.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare):
                names = [n.value for n in (node.left, *node.comparators) if isinstance(n, ast.Constant)]
                offences += [f"{path.name}:{node.lineno} compares {v!r}" for v in names if v in BENCHMARKS]
    assert not offences
