"""Issue 13: a run's inputs are one frozen, named object (``RunInputs``), not a positional ``(device, data,
backbone)`` tuple that callers index (``loaded[1].train``)."""

from __future__ import annotations

import dataclasses

import pytest

from vlprompt.engine.run import RunInputs, RunSpec, load_inputs
from vlprompt.errors import ConfigError


def test_load_inputs_names_the_device_data_and_backbone(image_folder, tmp_path):
    spec = RunSpec(dataset=f"folder:{image_folder}", out=str(tmp_path / "r"), shots=2, backbone="vlp-tiny-rn",
                   pretrained="random", device="cpu", cache_dir="")
    inputs = load_inputs(spec)
    assert isinstance(inputs, RunInputs)
    assert inputs.backbone.name == "vlp-tiny-rn" and str(inputs.device) == "cpu" == str(inputs.backbone.device)
    # the image_folder fixture: 3 classes, 8 train and 4 test images each; 2 shots per class drawn
    assert inputs.data.splits.num_classes == 3 and len(inputs.data.train) == 6 and len(inputs.data.splits.test) == 12
    with pytest.raises(dataclasses.FrozenInstanceError):
        inputs.data = None  # type: ignore[misc]
    device, data, backbone = inputs  # the former tuple's order, for callers written against it
    assert (device, data, backbone) == (inputs.device, inputs.data, inputs.backbone)
    assert not (tmp_path / "r").exists()  # loading touches no run folder

    # a backbone passed in is reused, and refused when it is not the spec's
    assert load_inputs(spec, inputs.backbone).backbone is inputs.backbone
    with pytest.raises(ConfigError, match="the backbone passed in is 'vlp-tiny-rn' but the run asks for 'RN50'"):
        load_inputs(dataclasses.replace(spec, backbone="RN50"), inputs.backbone)
