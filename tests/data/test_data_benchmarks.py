"""Every benchmark loads from a tiny tree in its official layout with the right classes, names, counts, labels."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from coop_layouts import (
    SPLIT_JSON_CASES,
    SPLIT_SIZES,
    WNIDS,
    tiny_image,
    write_fgvc,
    write_imagenet,
    write_split_json,
    write_variant,
)

from vlprompt.cli.main import main
from vlprompt.data import BENCHMARKS, CUSTOM_TEMPLATES, list_datasets, load_dataset
from vlprompt.data.check import check_dataset
from vlprompt.errors import DataError


@pytest.fixture
def data_root(tmp_path):
    d = tmp_path / "DATA"
    d.mkdir()
    return str(d)


def test_table_covers_all_benchmarks():
    assert list_datasets() == ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
                               "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101", "imagenetv2",
                               "imagenet_sketch", "imagenet_a", "imagenet_r"]
    assert {n for n, b in BENCHMARKS.items() if b.reader == "split_json"} == set(SPLIT_JSON_CASES)
    for name, b in BENCHMARKS.items():
        assert b.template == CUSTOM_TEMPLATES[name]
        assert "DATASETS.md" in b.source
    # Official split sizes quoted in the issue.
    assert BENCHMARKS["food101"].counts == (50500, 20200, 30300)
    assert BENCHMARKS["fgvc_aircraft"].counts == (3334, 3333, 3333)
    assert BENCHMARKS["imagenet"].counts[2] == 50000


@pytest.mark.parametrize("name", sorted(SPLIT_JSON_CASES))
def test_split_json_benchmark_loads(name, data_root):
    split = write_split_json(name, data_root)
    ddir, idir, split_file, classes = SPLIT_JSON_CASES[name]
    ds = load_dataset(name, data_root)
    assert ds.name == name
    assert ds.classnames == [c for _, c in classes]
    assert ds.template == CUSTOM_TEMPLATES[name]
    assert ds.root == os.path.join(data_root, ddir, idir) if idir else os.path.join(data_root, ddir)
    for s in ("train", "val", "test"):
        records = getattr(ds, s)
        assert len(records) == SPLIT_SIZES[s] * len(classes)
        # Same order as the file, absolute paths relative to the image folder, labels and names as stored.
        assert [(os.path.relpath(r.path, ds.root), r.label, r.classname) for r in records] == [
            tuple(row) for row in split[s]]
        assert all(os.path.isabs(r.path) and os.path.isfile(r.path) for r in records)
    digest = hashlib.sha256(open(os.path.join(data_root, ddir, split_file), "rb").read()).hexdigest()
    assert ds.info["split_sha256"] == digest and ds.info["sampler"] == "coop"
    # Official names work as aliases.
    assert load_dataset(BENCHMARKS[name].official_name, data_root).classnames == ds.classnames
    # The stored names agree with the official class-name rule where it depends only on the path.
    report = check_dataset(name, data_root)
    assert report.missing == [] and report.num_name_mismatches == 0
    assert report.counts["train"][0] == SPLIT_SIZES["train"] * 3


def test_imagenet_sorted_listing_and_val_is_test(data_root):
    write_imagenet(data_root)
    ds = load_dataset("imagenet", data_root)
    assert ds.classnames == ["tench", "goldfish", "great white shark"]  # sorted wnid folders
    assert len(ds.train) == 15 and len(ds.test) == 6
    assert ds.val == ds.test and ds.info["val_is_test"]
    rel = [os.path.relpath(r.path, ds.root) for r in ds.train]
    assert rel == sorted(rel) and rel[0] == "train/n01440764/n01440764_train_0.JPEG"
    assert [r.label for r in ds.train] == [0] * 5 + [1] * 5 + [2] * 5


def test_imagenet_flat_val_is_explained(data_root):
    ddir = write_imagenet(data_root)
    val = os.path.join(ddir, "images", "val")
    for wnid, _ in WNIDS[:3]:
        for f in os.listdir(os.path.join(val, wnid)):
            os.rename(os.path.join(val, wnid, f), os.path.join(val, f))
        os.rmdir(os.path.join(val, wnid))
    with pytest.raises(DataError, match="must contain one folder per class"):
        load_dataset("imagenet", data_root)


def test_imagenet_unknown_wnid(data_root):
    ddir = write_imagenet(data_root)
    os.makedirs(os.path.join(ddir, "images", "train", "n99999999"))
    with pytest.raises(DataError, match="n99999999 are not listed in"):
        load_dataset("imagenet", data_root)


def test_fgvc_official_lists(data_root):
    write_fgvc(data_root)
    ds = load_dataset("fgvc_aircraft", data_root)
    assert ds.classnames == ["707-320", "727-200", "A300B4"]  # label = line index of variants.txt
    assert [len(ds.train), len(ds.val), len(ds.test)] == [6, 6, 6]
    assert [r.label for r in ds.train] == [2, 2, 1, 1, 0, 0]  # file order kept
    assert ds.train[0].classname == "A300B4" and ds.train[0].path.endswith("images/1000001.jpg")
    assert len(ds.info["list_sha256"]) == 3


def test_fgvc_unknown_variant(data_root):
    ddir = write_fgvc(data_root)
    with open(os.path.join(ddir, "images_variant_val.txt"), "a") as f:
        f.write("1234567 Spitfire\n")
    with pytest.raises(DataError, match="variant 'Spitfire' is not in variants.txt"):
        load_dataset("fgvc_aircraft", data_root)


def test_imagenetv2_maps_integer_folders_through_classnames(data_root):
    write_variant(data_root, "imagenetv2")
    ds = load_dataset("imagenetv2", data_root)
    assert ds.train == [] and ds.val == [] and ds.num_classes == 1000
    assert [(r.label, r.classname) for r in ds.test] == [(0, "tench")] * 3 + [(2, "great white shark")] * 3


@pytest.mark.parametrize("name", ["imagenet_sketch", "imagenet_a", "imagenet_r"])
def test_wnid_folder_variants_are_n_way_over_their_folders(name, data_root):
    write_variant(data_root, name)
    ds = load_dataset(name, data_root)
    # 3 sorted wnid folders (README.txt ignored) → 3-way, names looked up in the 5-line classnames.txt.
    assert ds.classnames == ["goldfish", "great white shark", "hammerhead shark"]
    assert ds.train == [] and ds.val == [] and [r.label for r in ds.test] == [0, 0, 1, 1, 2, 2]
    assert ds.template == "a photo of a {}."


def test_missing_root_dataset_dir_and_split_file(data_root, tmp_path):
    with pytest.raises(DataError, match="does not exist; pass the folder"):
        load_dataset("dtd", str(tmp_path / "nope"))
    with pytest.raises(DataError, match="required"):
        load_dataset("dtd", None)
    with pytest.raises(DataError, match=r"expected dataset folder .*dtd.*DATASETS\.md"):
        load_dataset("dtd", data_root)
    write_split_json("dtd", data_root)
    os.remove(os.path.join(data_root, "dtd", "split_zhou_DescribableTextures.json"))
    with pytest.raises(DataError, match=r"expected split file .*split_zhou_DescribableTextures\.json.*drive\.google"):
        load_dataset("dtd", data_root)
    with pytest.raises(DataError, match=r"expected file .*classnames\.txt"):
        os.makedirs(os.path.join(data_root, "imagenet-adversarial", "imagenet-a"))
        load_dataset("imagenet_a", data_root)


def test_unknown_name_suggests(data_root):
    with pytest.raises(DataError, match="Did you mean oxford_pets"):
        load_dataset("oxford_pet", data_root)


def test_wrong_root_level_is_caught_early(data_root):
    write_split_json("eurosat", data_root)
    os.rename(os.path.join(data_root, "eurosat", "2750", "Forest"), os.path.join(data_root, "Forest"))
    report = check_dataset("eurosat", data_root)
    assert len(report.missing) == 9 and not report.ok


def test_split_file_escaping_paths_refused(data_root):
    split = write_split_json("food101", data_root)
    split["test"].append(["../../outside.jpg", 0, "apple_pie"])
    tiny_image(os.path.join(data_root, "outside.jpg"))
    with open(os.path.join(data_root, "food-101", "split_zhou_Food101.json"), "w") as f:
        json.dump(split, f)
    with pytest.raises(DataError, match="points outside"):
        load_dataset("food101", data_root)
    ds = load_dataset("food101", data_root, allow_outside_root=True)
    assert ds.test[-1].path == os.path.join(data_root, "outside.jpg")


def test_split_file_bad_format(data_root):
    write_split_json("dtd", data_root)
    path = os.path.join(data_root, "dtd", "split_zhou_DescribableTextures.json")
    with open(path, "w") as f:
        json.dump({"train": [["a.jpg", 0]]}, f)
    with pytest.raises(DataError, match=r"entry train\[0\]"):
        load_dataset("dtd", data_root)
    with open(path, "w") as f:
        f.write("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_dataset("dtd", data_root)


def test_check_reports_counts_missing_files_and_name_rule(data_root):
    split = write_split_json("oxford_pets", data_root)
    missing = os.path.join(data_root, "oxford_pets", "images", split["test"][1][0])
    os.remove(missing)
    report = check_dataset("oxford_pets", data_root)
    assert report.missing == [missing]
    assert report.counts == {"train": (12, 2944), "val": (6, 736), "test": (9, 3669)}
    assert report.num_classes == (3, 37)
    text = "\n".join(report.lines())
    assert "MISSING 1 file(s)" in text and missing in text and "(official 2944)  MISMATCH" in text
    # A split file whose stored name disagrees with the official rule is flagged.
    for rows in split.values():
        for row in rows:
            if row[1] == 0:
                row[2] = "Wrong Name"
    with open(os.path.join(data_root, "oxford_pets", "split_zhou_OxfordPets.json"), "w") as f:
        json.dump(split, f)
    report = check_dataset("oxford_pets", data_root)
    assert report.num_name_mismatches > 0 and not report.ok


def test_cli_list_and_check(data_root, capsys):
    assert main(["datasets", "list"]) == 0
    out = capsys.readouterr().out
    assert "oxford_pets" in out and "2944/736/3669" in out and "imagenet_r" in out
    write_split_json("eurosat", data_root)
    assert main(["datasets", "check", "eurosat", "--root", data_root]) == 1  # counts differ from the official
    out = capsys.readouterr().out
    assert "official 13500" in out and "PROBLEMS FOUND" in out
    assert main(["datasets", "check", "eurosat", "--root", os.path.join(data_root, "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_classnames_file_renames_benchmark_classes(data_root, tmp_path):
    write_imagenet(data_root)
    names = tmp_path / "names.json"  # keyed by the current names; classes not listed keep theirs
    names.write_text(json.dumps({"tench": "Tinca tinca", "goldfish": "Carassius auratus"}))
    ds = load_dataset("imagenet", data_root, classnames_file=str(names))
    assert ds.classnames == ["Tinca tinca", "Carassius auratus", "great white shark"]
    assert ds.train[0].classname == "Tinca tinca" and ds.val is ds.test and "classnames_file_sha256" in ds.info


def test_check_custom_spec_and_cli_help(tmp_path, capsys):
    for c in ("a", "b"):
        for i in range(5):
            tiny_image(str(tmp_path / "imgs" / c / f"{i}.png"))
    report = check_dataset(f"folder:{tmp_path / 'imgs'}", images=True)
    assert report.ok and report.num_classes == (2, None) and report.counts["test"] == (4, None)
    assert main(["datasets"]) == 2
    assert "{list,check}" in capsys.readouterr().out
