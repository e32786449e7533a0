"""Issue 13: every closed choice is one ``Literal`` in :mod:`vlprompt.types`, and the command line, the dataclasses
and the samplers all take their values from it (before, "fp32/amp/fp16" was written in four places, the class-token
positions in three). The values themselves are pinned too: they are the recorded ``config.json`` vocabulary."""

from __future__ import annotations

import argparse
from typing import get_args

import pytest

from vlprompt.cli.main import build_parser
from vlprompt.engine.config import TrainConfig, parse_augment
from vlprompt.errors import ConfigError
from vlprompt.types import (
    AUGMENT_MODES,
    CLASS_TOKEN_POSITIONS,
    PRECISIONS,
    SUBSAMPLES,
    AugmentMode,
    ClassTokenPosition,
    Precision,
    Subsample,
)


def test_the_literal_values():
    assert get_args(Precision) == PRECISIONS == ("fp32", "amp", "fp16")
    assert get_args(Subsample) == SUBSAMPLES == ("all", "base", "new")
    assert get_args(ClassTokenPosition) == CLASS_TOKEN_POSITIONS == ("end", "middle", "front")
    assert get_args(AugmentMode) == AUGMENT_MODES == ("online", "none", "cached")


def _choices(command: str) -> dict[str, tuple]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: tuple(a.choices) for a in sub.choices[command]._actions if a.choices is not None}


@pytest.mark.parametrize("command", ["train", "zeroshot", "linear-probe", "benchmark"])
def test_command_line_choices_come_from_the_literals(command):
    choices = _choices(command)
    assert choices["precision"] == PRECISIONS
    if command != "benchmark":
        assert choices["subsample"] == SUBSAMPLES
    if command in ("train", "benchmark"):
        assert choices["class_token_position"] == CLASS_TOKEN_POSITIONS


def test_dataclasses_accept_exactly_the_literal_values():
    from vlprompt.backbones import PRECISIONS as BACKBONE_PRECISIONS
    from vlprompt.prompts.coop import POSITIONS, CoOpConfig

    assert BACKBONE_PRECISIONS is PRECISIONS and POSITIONS is CLASS_TOKEN_POSITIONS
    for p in PRECISIONS:
        assert TrainConfig(precision=p).precision == p
    with pytest.raises(ConfigError, match="--precision 'bf16' is not one of fp32, amp, fp16"):
        TrainConfig(precision="bf16")
    for pos in CLASS_TOKEN_POSITIONS:
        assert CoOpConfig(class_token_position=pos).class_token_position == pos
    with pytest.raises(ConfigError, match="is not one of end, middle, front"):
        CoOpConfig(class_token_position="start")
    assert [parse_augment(a) for a in ("online", "none", "cached:3")] == [("online", 1), ("none", 1), ("cached", 3)]
    for bad in ("cached", "cached:0", "offline"):
        with pytest.raises(ConfigError, match=f"--augment '{bad}' is invalid"):
            parse_augment(bad)
