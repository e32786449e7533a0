"""Custom data: folder:, csv: and split: readers, class-name files, and every bad-input rule."""

from __future__ import annotations

import json
import logging
import os

import pytest
from coop_layouts import tiny_image

from vlprompt.data import load_dataset
from vlprompt.errors import DataError


def _folder(root, classes, n=10, split=None):
    for c in classes:
        for i in range(n):
            parts = [root] + ([split] if split else []) + [c, f"{i}.png"]
            tiny_image(os.path.join(*parts))


def test_folder_generated_split_is_stratified_and_seeded(tmp_path):
    _folder(str(tmp_path), ["dog", "cat", "blue_jay"], n=10)
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.name == "folder" and ds.classnames == ["blue_jay", "cat", "dog"]  # sorted folder names
    assert [len(ds.train), len(ds.val), len(ds.test)] == [15, 6, 9]  # 5/2/3 per class
    assert all(sum(r.label == y for r in ds.test) == 3 for y in range(3))
    assert ds.info["split"] == "generated" and ds.info["ratios"] == [0.5, 0.2, 0.3] and ds.info["split_seed"] == 1
    assert load_dataset(f"folder:{tmp_path}").train == ds.train  # deterministic
    other = load_dataset(f"folder:{tmp_path}", split_seed=2)
    assert other.train != ds.train and sorted(r.path for r in other.train + other.val + other.test) == sorted(
        r.path for r in ds.train + ds.val + ds.test)
    assert {r.path for r in ds.train}.isdisjoint(r.path for r in ds.test)


def test_folder_with_split_levels(tmp_path):
    _folder(str(tmp_path), ["a", "b"], n=3, split="train")
    _folder(str(tmp_path), ["a", "b"], n=2, split="val")
    _folder(str(tmp_path), ["a", "b"], n=2, split="test")
    ds = load_dataset(f"folder:{tmp_path}")
    assert [len(ds.train), len(ds.val), len(ds.test)] == [6, 4, 4] and ds.info["split"] == "given"
    assert ds.info["folder_layout"] == "splits"


def test_folder_train_test_carves_val(image_folder):  # the shared fixture: train/ (8 per class) and test/
    ds = load_dataset(f"folder:{image_folder}")
    assert ds.classnames == ["blue_jay", "green_frog", "red_fox"]
    assert [len(ds.train), len(ds.val), len(ds.test)] == [18, 6, 12]  # round(0.2 * 8) = 2 val per class
    assert ds.info["split"] == "val_from_train" and ds.info["val_ratio"] == 0.2


def test_folder_train_val_without_test_refused(tmp_path):
    _folder(str(tmp_path), ["a"], n=2, split="train")
    _folder(str(tmp_path), ["a"], n=2, split="val")
    with pytest.raises(DataError, match="no test data"):
        load_dataset(f"folder:{tmp_path}")


def test_folder_bad_inputs(tmp_path, caplog):
    root = str(tmp_path)
    _folder(root, ["a", "b"], n=5)
    os.makedirs(os.path.join(root, "empty_class"))
    open(os.path.join(root, "a", "zero.png"), "wb").close()  # zero bytes
    with open(os.path.join(root, "a", "notes.txt"), "w") as f:
        f.write("not an image")
    with open(os.path.join(root, "b", "fake.jpg"), "w") as f:
        f.write("not an image either")
    tiny_image(os.path.join(root, "b", "gray.png"), 128, mode="L")  # converted, kept
    tiny_image(os.path.join(root, "b", "cmyk.jpg"), (1, 2, 3, 4), mode="CMYK")
    tiny_image(os.path.join(root, "loose.png"))  # not in a class folder
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(f"folder:{root}")
    assert ds.classnames == ["a", "b"]  # the empty class is skipped
    assert "1 class folder(s) without images" in caplog.text and "empty_class" in caplog.text
    assert "ignored 1 file(s) without an image extension" in caplog.text and "notes.txt" in caplog.text
    assert "ignored 1 file(s) outside class folders" in caplog.text and "loose.png" in caplog.text
    assert "skipping 2 unreadable image file(s)" in caplog.text
    assert "zero.png" in caplog.text and "fake.jpg" in caplog.text
    paths = {os.path.basename(r.path) for r in ds.train + ds.val + ds.test}
    assert {"gray.png", "cmyk.jpg"} <= paths and not {"zero.png", "fake.jpg"} & paths
    with pytest.raises(DataError, match="class folder.* without images.*--strict"):
        load_dataset(f"folder:{root}", strict=True)
    os.rmdir(os.path.join(root, "empty_class"))
    with pytest.raises(DataError, match=r"2 unreadable image file\(s\) \(refused under --strict\)"):
        load_dataset(f"folder:{root}", strict=True)


def test_folder_missing_or_without_images(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'nope'}")
    (tmp_path / "x").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        load_dataset(f"folder:{tmp_path}")


def test_folder_small_class_warns_or_refuses(tmp_path, caplog):
    _folder(str(tmp_path), ["big"], n=10)
    _folder(str(tmp_path), ["tiny"], n=2)
    with caplog.at_level(logging.WARNING):
        load_dataset(f"folder:{tmp_path}")
    assert "too small" in caplog.text and "tiny (2)" in caplog.text
    with pytest.raises(DataError, match=r"tiny \(2\)"):
        load_dataset(f"folder:{tmp_path}", strict=True)


def test_classnames_file_for_folder(tmp_path):
    _folder(str(tmp_path / "d"), ["n01", "n02"], n=5)
    txt = tmp_path / "names.txt"
    txt.write_text("n01 great white shark\nn02 tench\n")
    assert load_dataset(f"folder:{tmp_path / 'd'}", classnames_file=str(txt)).classnames == [
        "great white shark", "tench"]
    txt.write_text("shark\ntench\n")
    ds = load_dataset(f"folder:{tmp_path / 'd'}", classnames_file=str(txt))
    assert ds.classnames == ["shark", "tench"] and ds.test[0].classname == ds.classnames[ds.test[0].label]
    txt.write_text("only one\n")
    with pytest.raises(DataError, match="has 1 names for 2 classes"):
        load_dataset(f"folder:{tmp_path / 'd'}", classnames_file=str(txt))


def _csv(path, rows, header="path,label,split"):
    with open(path, "w") as f:
        f.write(header + "\n" + "\n".join(rows) + "\n")
    return str(path)


def test_csv_names_split_column_and_relative_paths(tmp_path):
    for i in range(4):
        tiny_image(str(tmp_path / "img" / f"cat{i}.png"))
        tiny_image(str(tmp_path / "img" / f"dog{i}.png"))
    rows = [f"img/cat{i}.png,cat,{s}" for i, s in enumerate(["train", "train", "val", "test"])]
    rows += [f"{tmp_path}/img/dog{i}.png,dog,{s}" for i, s in enumerate(["train", "train", "validation", "test"])]
    ds = load_dataset(f"csv:{_csv(tmp_path / 'd.csv', rows)}")
    assert ds.classnames == ["cat", "dog"] and ds.root == str(tmp_path)
    assert [len(ds.train), len(ds.val), len(ds.test)] == [4, 2, 2]
    assert ds.train[0].path == str(tmp_path / "img" / "cat0.png") and ds.info["split"] == "given"


def test_csv_integer_labels_and_classnames_file(tmp_path, caplog):
    for i in range(10):
        tiny_image(str(tmp_path / f"{i}.png"))
    csv = _csv(tmp_path / "d.csv", [f"{i}.png,{i % 2}" for i in range(10)], header="path,label")
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(f"csv:{csv}")
    assert ds.classnames == ["0", "1"] and "meaningless" in caplog.text
    # 5 per class: round(2.5) = 2 train (Python rounds half to even, as the official generators), 1 val, 2 test.
    assert [len(ds.train), len(ds.val), len(ds.test)] == [4, 2, 4] and ds.info["split"] == "generated"
    names = tmp_path / "names.txt"
    names.write_text("red fox\ngreen frog\n")
    ds = load_dataset(f"csv:{csv}", classnames_file=str(names))
    assert ds.classnames == ["red fox", "green frog"] and {r.classname for r in ds.train} == set(ds.classnames)
    _csv(tmp_path / "gap.csv", ["0.png,0", "1.png,2"], header="path,label")
    with pytest.raises(DataError, match="must cover 0..2, but 1 never appear"):
        load_dataset(f"csv:{tmp_path / 'gap.csv'}")


def test_csv_unknown_labels_skip_or_refuse(tmp_path, caplog):
    for i in range(6):
        tiny_image(str(tmp_path / f"{i}.png"))
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n")
    csv = _csv(tmp_path / "d.csv", ["0.png,cat,train", "1.png,dog,train", "2.png,cat,test", "3.png,dog,test",
                                    "4.png,zebra,train", "5.png,7,test"])
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(f"csv:{csv}", classnames_file=str(names))
    assert "2 row(s) with label(s) not in" in caplog.text and "'7'" not in caplog.text and "7, zebra" in caplog.text
    assert len(ds.train) + len(ds.val) == 2 and len(ds.test) == 2
    with pytest.raises(DataError, match="label.* not in .*zebra.*--strict"):
        load_dataset(f"csv:{csv}", classnames_file=str(names), strict=True)


def test_csv_duplicates(tmp_path, caplog):
    for i in range(3):
        tiny_image(str(tmp_path / f"{i}.png"))
    rows = ["0.png,a,train", "1.png,b,train", "2.png,a,test", "./0.png,a,train", "1.png,b,test"]
    csv = _csv(tmp_path / "d.csv", rows[:4] + ["3.png,b,test"])
    tiny_image(str(tmp_path / "3.png"))
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(f"csv:{csv}")
    assert "1 duplicate row(s)" in caplog.text and len(ds.train) + len(ds.val) == 2
    with pytest.raises(DataError, match="duplicate row.*--strict"):
        load_dataset(f"csv:{csv}", strict=True)
    csv = _csv(tmp_path / "conflict.csv", rows)
    with pytest.raises(DataError, match="line 6: .*1.png.* already listed on line 3 with another label or split"):
        load_dataset(f"csv:{csv}")


def test_csv_escaping_paths_and_malformed(tmp_path):
    tiny_image(str(tmp_path / "outside.png"))
    (tmp_path / "sub").mkdir()
    csv = _csv(tmp_path / "sub" / "d.csv", ["../outside.png,a"], header="path,label")
    with pytest.raises(DataError, match="points outside"):
        load_dataset(f"csv:{csv}")
    csv = _csv(tmp_path / "sub" / "abs.csv", [f"{tmp_path}/outside.png,a"], header="path,label")
    with pytest.raises(DataError, match="points outside"):
        load_dataset(f"csv:{csv}")
    assert load_dataset(f"csv:{csv}", allow_outside_root=True).classnames == ["a"]
    with pytest.raises(DataError, match="needs a header with columns 'path' and 'label'"):
        load_dataset(f"csv:{_csv(tmp_path / 'h.csv', ['x.png,a'], header='file,cls')}")
    with pytest.raises(DataError, match="line 2: split 'holdout' is not one of"):
        load_dataset(f"csv:{_csv(tmp_path / 's.csv', ['outside.png,a,holdout'])}")
    with pytest.raises(DataError, match="line 2: empty path or label"):
        load_dataset(f"csv:{_csv(tmp_path / 'e.csv', ['outside.png,'], header='path,label')}")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"csv:{tmp_path / 'missing.csv'}")


def test_split_spec(tmp_path):
    rows = {"train": [["a/0.png", 0, "ant"], ["b/0.png", 1, "bee"]], "val": [], "test": [["a/1.png", 0, "ant"]],
            "template": "a drawing of a {}.", "classnames": ["ant", "bee", "cow"]}
    for s in ("a/0.png", "b/0.png", "a/1.png"):
        tiny_image(str(tmp_path / "suite" / s))
    (tmp_path / "suite" / "task.json").write_text(json.dumps(rows))
    ds = load_dataset("split:suite/task.json", root=str(tmp_path))
    assert ds.classnames == ["ant", "bee", "cow"] and ds.template == "a drawing of a {}."
    assert ds.root == str(tmp_path / "suite") and ds.info["sampler"] == "coop" and len(ds.info["split_sha256"]) == 64
    rows["train"].append(["../../etc/passwd", 0, "ant"])
    (tmp_path / "suite" / "task.json").write_text(json.dumps(rows))
    with pytest.raises(DataError, match="points outside"):
        load_dataset(f"split:{tmp_path / 'suite' / 'task.json'}")
    rows["train"] = [["a/0.png", 0, "ant"], ["a/0.png", 1, "bee"]]
    (tmp_path / "suite" / "task.json").write_text(json.dumps(rows))
    with pytest.raises(DataError, match="listed with two labels"):
        load_dataset(f"split:{tmp_path / 'suite' / 'task.json'}")
    rows["train"] = [["a/0.png", 0, "ant"], ["a/1.png", 0, "ant"]]
    (tmp_path / "suite" / "task.json").write_text(json.dumps(rows))
    with pytest.raises(DataError, match="refused under --strict.*more than one split"):
        load_dataset(f"split:{tmp_path / 'suite' / 'task.json'}", strict=True)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"split:{tmp_path / 'none.json'}")
