"""Issue 13: ``RunSpec`` is five frozen, typed parts (data, backbone, method, training, output) behind the flat
surface every caller and ``config.json`` use.

Pinned: the flat keywords land in the part that owns them; ``dataclasses.replace`` with flat names changes that
field only; ``spec_to_dict`` keeps the exact keys, order and values of the pre-issue-13 flat spec (run folders and
configs written before still load); the parts validate on their own and stay frozen.
"""

from __future__ import annotations

import dataclasses

import pytest

from vlprompt.engine.config import TrainConfig
from vlprompt.engine.spec import BackboneSpec, DataSpec, MethodSpec, OutputSpec, RunSpec, spec_to_dict
from vlprompt.errors import ConfigError
from vlprompt.types import ReadOnlyDict

#: config.json's keys of a spec, in order, as the flat 23-field spec wrote them before issue 13.
CONFIG_KEYS = ["dataset", "out", "root", "shots", "seed", "subsample", "backbone", "pretrained", "method", "learner",
               "train", "device", "cache_dir", "classnames_file", "strict", "label", "overwrite", "resume",
               "allow_outside_root", "fewshot_file", "state_every_seconds", "tensorboard", "expect"]


def test_flat_keywords_build_the_parts():
    spec = RunSpec(dataset="dtd", out="runs/x", root="/d", shots=4, seed=3, subsample="base", backbone="ViT-B-16",
                   pretrained="openai", method="cocoop", learner={"n_ctx": 4}, device="cpu", cache_dir="",
                   classnames_file="names.txt", strict=True, label="L", overwrite=True, allow_outside_root=True,
                   fewshot_file="f.pkl", state_every_seconds=5.0, tensorboard=True, train=TrainConfig(epochs=2))
    assert spec.data == DataSpec("dtd", "/d", 4, 3, "base", "names.txt", True, True, "f.pkl")
    assert spec.model == BackboneSpec("ViT-B-16", "openai", "cpu", "")
    assert spec.approach == MethodSpec("cocoop", {"n_ctx": 4}, "L")
    assert spec.output == OutputSpec("runs/x", overwrite=True, resume=False, state_every_seconds=5.0,
                                     tensorboard=True)
    assert spec.train == TrainConfig(epochs=2) and spec.expect is None
    # the flat read-only view reads the parts
    assert (spec.dataset, spec.out, spec.shots, spec.backbone, spec.method, spec.cache_dir, spec.tensorboard) == (
        "dtd", "runs/x", 4, "ViT-B-16", "cocoop", "", True)
    assert isinstance(spec.learner, ReadOnlyDict) and spec.learner is spec.approach.learner


def test_defaults_are_the_flat_specs_defaults():
    d = spec_to_dict(RunSpec(dataset="dtd", out="o"))
    assert list(d) == CONFIG_KEYS
    assert {k: v for k, v in d.items() if k != "train"} == {
        "dataset": "dtd", "out": "o", "root": None, "shots": 16, "seed": 1, "subsample": "all", "backbone": "RN50",
        "pretrained": None, "method": "coop", "learner": {}, "device": "auto", "cache_dir": None,
        "classnames_file": None, "strict": False, "label": None, "overwrite": False, "resume": False,
        "allow_outside_root": False, "fewshot_file": None, "state_every_seconds": 0.0, "tensorboard": False,
        "expect": None}
    assert d["train"] == TrainConfig().to_dict()


def test_replace_with_flat_names_changes_one_field_of_one_part():
    spec = RunSpec(dataset="dtd", out="a", shots=2, method="coop", learner={"n_ctx": 2}, device="cpu")
    twin = dataclasses.replace(spec, out="b", shots=8, method="kgcoop")
    assert twin.output == dataclasses.replace(spec.output, out="b")
    assert twin.data == dataclasses.replace(spec.data, shots=8)
    assert twin.approach == MethodSpec("kgcoop", {"n_ctx": 2})
    assert twin.model is spec.model and twin.train is spec.train
    assert (spec.out, spec.shots, spec.method) == ("a", 2, "coop")  # the original is untouched
    # a whole part, and a part plus a flat override on top of it
    assert dataclasses.replace(spec, model=BackboneSpec("RN101")).backbone == "RN101"
    assert RunSpec(data=DataSpec("eurosat", shots=1), out="o", shots=4).data == DataSpec("eurosat", shots=4)


def test_bad_input_is_refused_clearly():
    with pytest.raises(TypeError, match="missing required argument: 'dataset'"):
        RunSpec(out="o")
    with pytest.raises(TypeError, match="missing required argument: 'out'"):
        RunSpec(dataset="dtd")
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['shot'\]"):
        RunSpec(dataset="dtd", out="o", shot=4)
    with pytest.raises(ConfigError, match="--shots must be ≥ 0"):
        RunSpec(dataset="dtd", out="o", shots=-1)
    with pytest.raises(ConfigError, match="--seed must be in 0..2"):
        DataSpec("dtd", seed=2**32)
    spec = RunSpec(dataset="dtd", out="o")
    for name, value in (("shots", 2), ("out", "x"), ("data", DataSpec("x"))):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(spec, name, value)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.data.shots = 2  # type: ignore[misc]
