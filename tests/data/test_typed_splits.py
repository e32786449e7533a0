"""Issue 13: what the engine and the samplers act on are typed fields of ``DatasetSplits`` (``val_is_test``,
``sampler``, ``benchmark``) set by each reader, not keys of the ``info`` dict; ``info`` keeps recording them, so a
run's ``config.json`` keeps its form.

ImageNet's val is its test set (``CoOp:datasets/imagenet.py`` passes ``val=test``) and benchmarks and split files
use Dassl's sampler; folder/CSV data use the pure seeded one.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
from coop_layouts import write_imagenet, write_split_json

from vlprompt.data import load_dataset
from vlprompt.data.fewshot import apply_few_shot, subsample_classes
from vlprompt.data.records import DatasetSplits, Sample


def _typed(ds: DatasetSplits) -> tuple:
    return ds.val_is_test, ds.sampler, ds.benchmark


def test_each_reader_sets_the_typed_fields(tmp_path, image_folder):
    root = str(tmp_path / "DATA")
    os.makedirs(root)
    write_imagenet(root)
    imagenet = load_dataset("imagenet", root)
    assert _typed(imagenet) == (True, "coop", "imagenet")
    assert (imagenet.info["val_is_test"], imagenet.info["sampler"], imagenet.info["benchmark"]) == (
        True, "coop", "imagenet")  # still recorded in config.json's dataset.info
    write_split_json("dtd", root)
    assert _typed(load_dataset("dtd", root)) == (False, "coop", "dtd")
    folder = load_dataset(f"folder:{image_folder}")
    assert _typed(folder) == (False, "pure", None) and folder.info["sampler"] == "pure"

    split = tmp_path / "split.json"
    rel = os.path.relpath(folder.train[0].path, tmp_path)
    split.write_text(json.dumps({"train": [[rel, 0, "red_fox"]], "val": [], "test": [[rel, 0, "red_fox"]]}))
    assert _typed(load_dataset(f"split:{split}")) == (False, "coop", None)

    # few-shot sampling and the base/new split keep them
    fewshot = subsample_classes(apply_few_shot(imagenet, 1, 1), "base")
    assert _typed(fewshot) == (True, "coop", "imagenet") and fewshot.val == fewshot.test


def _recs(counts):
    return [Sample(f"/x/{y}_{i}.png", y, f"c{y}") for y, n in enumerate(counts) for i in range(n)]


def test_the_samplers_act_on_the_typed_fields_not_on_info():
    """A ``DatasetSplits`` whose typed fields say "val is test" with an ``info`` that records nothing: the val split
    is left whole (ImageNet's rule). The legacy form (only ``info`` keys) still works."""
    ds = DatasetSplits("x", "/x", ["c0", "c1"], _recs([6, 6]), _recs([5, 5]), _recs([5, 5]), val_is_test=True,
                       sampler="pure")
    assert ds.info == {}
    assert len(apply_few_shot(ds, 2, 1).val) == 10  # whole
    assert len(apply_few_shot(replace(ds, val_is_test=False), 2, 1).val) == 4  # min(2, 4) per class
    legacy = DatasetSplits("x", "/x", ["c0"], [], [], [], info={"val_is_test": True, "sampler": "coop",
                                                                  "benchmark": "imagenet"})
    assert _typed(legacy) == (True, "coop", "imagenet")
    assert _typed(DatasetSplits("x", "/x", ["c0"], [], [], [])) == (False, "pure", None)


def test_typed_fields_and_info_must_agree():
    with pytest.raises(ValueError, match="val_is_test=False but info records True"):
        DatasetSplits("x", "/x", ["c0"], [], [], [], info={"val_is_test": True}, val_is_test=False)
    with pytest.raises(ValueError, match="sampler 'dassl' is not one of coop, pure"):
        DatasetSplits("x", "/x", ["c0"], [], [], [], sampler="dassl")
