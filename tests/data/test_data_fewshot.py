"""Few-shot subsets equal the official ones; the custom sampler and the base-to-new split."""

from __future__ import annotations

import json
import logging
import os
import random
from collections import defaultdict

import pytest
from coop_layouts import write_imagenet, write_split_json

from vlprompt.data import apply_few_shot, load_dataset, sample_few_shot, sample_few_shot_coop, subsample_classes
from vlprompt.data.records import DatasetSplits, Sample
from vlprompt.data.splitfile import read_split_file
from vlprompt.errors import ConfigError, DataError


# --- an independent re-statement of the official code (global `random`, as Dassl) ------------------------------
def _official_read_split(filepath, path_prefix):  # OxfordPets.read_split
    with open(filepath) as f:
        split = json.load(f)
    return [[(os.path.join(path_prefix, p), int(y), c) for p, y, c in split[k]] for k in ("train", "val", "test")]


def _official_generate_fewshot_dataset(data_source, num_shots=-1, repeat=False):  # Dassl DatasetBase
    if num_shots < 1:
        return data_source
    tracker = defaultdict(list)
    for item in data_source:
        tracker[item[1]].append(item)
    dataset = []
    for _, items in tracker.items():
        if len(items) >= num_shots:
            sampled_items = random.sample(items, num_shots)
        else:
            sampled_items = random.choices(items, k=num_shots) if repeat else items
        dataset.extend(sampled_items)
    return dataset


def _official_subset(split_path, image_dir, num_shots, seed):
    random.seed(seed)  # set_random_seed(cfg.SEED) in train.py, before the dataset is built
    train, val, _ = _official_read_split(split_path, image_dir)
    if num_shots >= 1:
        train = _official_generate_fewshot_dataset(train, num_shots=num_shots)
        val = _official_generate_fewshot_dataset(val, num_shots=min(num_shots, 4))
    return train, val


@pytest.fixture
def global_random_state():
    state = random.getstate()
    yield
    random.setstate(state)


def _random_split_file(path, seed):
    """A split file with interleaved labels and uneven class sizes (some smaller than 16)."""
    rng = random.Random(seed)
    split = {}
    for s in ("train", "val", "test"):
        rows = [[f"c{y}/img_{s}_{y}_{i}.jpg", y, f"class_{y}"] for y in range(7) for i in range(rng.randint(1, 25))]
        rng.shuffle(rows)
        split[s] = rows
    with open(path, "w") as f:
        json.dump(split, f)


@pytest.mark.parametrize("file_seed", [0, 1])
def test_coop_sampler_equals_official(tmp_path, file_seed, global_random_state):
    path = str(tmp_path / "split.json")
    _random_split_file(path, file_seed)
    image_dir = str(tmp_path / "images")
    train, val, _, _ = read_split_file(path, image_dir)
    for k in (1, 2, 4, 8, 16):
        for seed in (1, 2, 3):
            want_train, want_val = _official_subset(path, image_dir, k, seed)
            got_train, got_val = sample_few_shot_coop(train, val, k, seed)
            assert [(r.path, r.label, r.classname) for r in got_train] == want_train
            assert [(r.path, r.label, r.classname) for r in got_val] == want_val


def test_coop_sampler_on_a_benchmark_and_properties(tmp_path, global_random_state):
    root = str(tmp_path)
    write_split_json("oxford_pets", root, shuffle_seed=3)
    ds = load_dataset("oxford_pets", root)
    split_path = os.path.join(root, "oxford_pets", "split_zhou_OxfordPets.json")
    for k, seed in [(1, 1), (2, 2), (4, 3), (16, 1)]:
        got = apply_few_shot(ds, k, seed)
        want_train, want_val = _official_subset(split_path, ds.root, k, seed)
        assert [(r.path, r.label, r.classname) for r in got.train] == want_train
        assert [(r.path, r.label, r.classname) for r in got.val] == want_val
        assert got.test == ds.test and got.info["shots"] == k and got.info["fewshot_seed"] == seed
    # k train and min(k, 4) val per class, grouped by label in first-appearance order; deterministic.
    tr, va = sample_few_shot_coop(ds.train, ds.val, 2, 5)
    first_seen = list(dict.fromkeys(r.label for r in ds.train))
    assert [r.label for r in tr] == [y for y in first_seen for _ in range(2)]
    assert len(va) == 3 * 2  # val has only 2 per class
    assert (tr, va) == sample_few_shot_coop(ds.train, ds.val, 2, 5)
    assert sample_few_shot_coop(ds.train, ds.val, 2, 6) != (tr, va)
    # k <= 0 / None keeps everything; the global random state is untouched.
    state = random.getstate()
    assert sample_few_shot_coop(ds.train, ds.val, 0, 1) == (ds.train, ds.val)
    assert sample_few_shot_coop(ds.train, ds.val, None, 1) == (ds.train, ds.val)
    sample_few_shot_coop(ds.train, ds.val, 4, 1)
    assert random.getstate() == state


def test_imagenet_val_stays_test(tmp_path):
    write_imagenet(str(tmp_path))
    ds = apply_few_shot(load_dataset("imagenet", str(tmp_path)), 2, 1)
    assert len(ds.train) == 6 and ds.val == ds.test and len(ds.test) == 6


def _recs(counts):
    return [Sample(f"/x/{y}_{i}.png", y, f"c{y}") for y, n in enumerate(counts) for i in range(n)]


def test_pure_sampler_warns_or_refuses_short_classes(caplog):
    recs = _recs([5, 2, 6])
    with caplog.at_level(logging.WARNING):
        out = sample_few_shot(recs, 4, seed=0)
    assert "1 class(es) have fewer than 4 images: c1 (2)" in caplog.text
    assert [r.label for r in out] == [0] * 4 + [1] * 2 + [2] * 4
    assert out == sample_few_shot(recs, 4, seed=0) and out != sample_few_shot(recs, 4, seed=1)
    with pytest.raises(DataError, match=r"fewer than 4 images: c1 \(2\).*--strict"):
        sample_few_shot(recs, 4, seed=0, strict=True)
    assert sample_few_shot(recs, 0, seed=0) == recs


def test_apply_few_shot_custom_and_strict_benchmark():
    ds = DatasetSplits("folder", "/x", ["c0", "c1"], _recs([6, 3]), _recs([4, 4]), _recs([2, 2]),
                       info={"sampler": "pure"})
    out = apply_few_shot(ds, 4, 1)
    assert len(out.train) == 7 and len(out.val) == 8
    with pytest.raises(DataError, match="c1 \\(3\\)"):
        apply_few_shot(ds, 4, 1, strict=True)
    coop = DatasetSplits("split", "/x", ["c0", "c1"], _recs([6, 3]), [], [], info={"sampler": "coop"})
    with pytest.raises(DataError, match="fewer than 4"):
        apply_few_shot(coop, 4, 1, strict=True)


def test_subsample_base_new():
    names = [f"c{y}" for y in range(5)]
    train = [Sample(f"/t/{y}_{i}", y, names[y]) for i in range(2) for y in (4, 0, 3, 1, 2)]
    test = [Sample(f"/e/{y}", y, names[y]) for y in range(5)]
    ds = DatasetSplits("x", "/", names, train, [], test)
    base = subsample_classes(ds, "base")  # ceil(5/2) = 3 base classes
    new = subsample_classes(ds, "new")
    assert base.classnames == ["c0", "c1", "c2"] and new.classnames == ["c3", "c4"]
    assert [(r.label, r.classname) for r in base.test] == [(0, "c0"), (1, "c1"), (2, "c2")]
    assert [(r.label, r.classname) for r in new.test] == [(0, "c3"), (1, "c4")]
    assert [r.path for r in new.train] == ["/t/4_0", "/t/3_0", "/t/4_1", "/t/3_1"]  # order kept
    assert base.info["subsample_labels"] == [0, 1, 2]
    assert subsample_classes(ds, "all") is ds
    with pytest.raises(ConfigError, match="'base', 'new' or 'all'"):
        subsample_classes(ds, "half")
