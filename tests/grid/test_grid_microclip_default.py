"""``benchmark.json`` names micro-CLIP's weights (``v2`` for the default), and a grid folder started while v1 was the
default (``pretrained`` null) resumes only on v1: without this, its unfinished runs would train on v2 and land in
one table with its finished v1 runs."""

from __future__ import annotations

import json

import pytest

from vlprompt.benchmark import BenchmarkConfig, check_settings
from vlprompt.engine.config import TrainConfig
from vlprompt.errors import ConfigError

GRID = dict(datasets=("dtd",), shots=(1,), seeds=(1,), methods=("coop",), backbone="microclip",
            train=TrainConfig(epochs=1, augment="none"))


def test_the_default_is_recorded_as_v2(tmp_path):
    check_settings(BenchmarkConfig(**GRID, out=str(tmp_path)))
    assert json.loads((tmp_path / "benchmark.json").read_text())["settings"]["pretrained"] == "v2"
    check_settings(BenchmarkConfig(**GRID, out=str(tmp_path), pretrained="shipped"))  # the same weights: resumes
    with pytest.raises(ConfigError, match="pretrained: was 'v2', now 'v1'"):
        check_settings(BenchmarkConfig(**GRID, out=str(tmp_path), pretrained="v1"))


def test_a_folder_of_the_old_default_resumes_on_v1_only(tmp_path):
    settings = BenchmarkConfig(**GRID, out=str(tmp_path), pretrained="v1").settings()
    old = {"format": 2, "settings": {**settings, "pretrained": None}, "grids": {}}  # as the v1-default era wrote it
    (tmp_path / "benchmark.json").write_text(json.dumps(old))
    with pytest.raises(ConfigError, match="pretrained: was 'v1', now 'v2'.*Use the same flags"):
        check_settings(BenchmarkConfig(**GRID, out=str(tmp_path)))  # the new default
    check_settings(BenchmarkConfig(**GRID, out=str(tmp_path), pretrained="v1"))
    assert json.loads((tmp_path / "benchmark.json").read_text())["settings"]["pretrained"] == "v1"
