"""``DatasetSplits`` is frozen (issue 13): no step assigns into a caller's splits; few-shot sampling, class
subsampling and renaming derive new splits (``dataclasses.replace``) and leave the ones they were given as read."""

from __future__ import annotations

import dataclasses
import os

import pytest
from coop_layouts import write_imagenet, write_split_json

from vlprompt.data import load_dataset
from vlprompt.data.fewshot import apply_few_shot, subsample_classes
from vlprompt.data.records import DatasetSplits, Sample


def _snapshot(ds: DatasetSplits) -> tuple:
    return (ds.name, ds.root, list(ds.classnames), list(ds.train), list(ds.val), list(ds.test), ds.template,
            dict(ds.info), ds.val_is_test, ds.sampler, ds.benchmark)


def test_assigning_into_splits_is_refused():
    ds = DatasetSplits("d", "/r", ["a", "b"], [Sample("/r/0.png", 0, "a")], [], [Sample("/r/1.png", 1, "b")],
                       info={"sampler": "coop"})
    assert ds.sampler == "coop" and ds.val_is_test is False and ds.benchmark is None  # filled from info once
    for name, value in (("train", []), ("classnames", ["x"]), ("info", {}), ("sampler", "pure"), ("name", "e")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(ds, name, value)
    derived = dataclasses.replace(ds, classnames=["x", "y"])
    assert derived.classnames == ["x", "y"] and ds.classnames == ["a", "b"] and derived.sampler == "coop"


def test_derivations_leave_the_loaded_splits_as_read(tmp_path):
    root = str(tmp_path / "DATA")
    os.makedirs(root)
    write_imagenet(root)
    write_split_json("dtd", root)
    for name in ("imagenet", "dtd"):
        ds = load_dataset(name, root)
        before = _snapshot(ds)
        k1 = apply_few_shot(ds, 1, seed=1)
        base = subsample_classes(k1, "base")
        assert len(k1.train) < len(ds.train) and base.num_classes < ds.num_classes
        assert _snapshot(ds) == before  # the loaded splits are unchanged
        assert "shots" not in ds.info and k1.info["shots"] == 1 and base.info["subsample"] == "base"
    names = tmp_path / "names.txt"
    ds = load_dataset("dtd", root)
    names.write_text("\n".join(f"class {i}" for i in range(ds.num_classes)))
    renamed = load_dataset("dtd", root, classnames_file=str(names))
    assert renamed.classnames[0] == "class 0" and ds.classnames[0] != "class 0"
