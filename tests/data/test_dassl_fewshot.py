"""Official few-shot subsets (issue 12 §5): Dassl's ``split_fewshot/shot_K-seed_S.pkl`` read through the restricted
unpickler give exactly the file's train/val images on the user's machine, recorded in config.json with the file's
sha256; anything that is not such a file, or does not fit the dataset, is one clear error.

The files are written as the official code writes them (``pickle.dump({"train": [Datum...], "val": [...]},
protocol=HIGHEST_PROTOCOL)``, see ``tests/dassl_pickles.py``), with the absolute paths of *another* machine, and
with subsets that vlprompt's own sampler would not draw for that seed (so the test sees which images are used).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle

import pytest
from coop_layouts import write_imagenet, write_split_json

from dassl_pickles import OfficialDatum, dumps_official, write_official
from vlprompt.data import apply_few_shot, load_dataset
from vlprompt.data.dassl_fewshot import read_dassl_fewshot
from vlprompt.engine.pipeline import prepare_data
from vlprompt.errors import DataError

WRITER = "/home/someone/DATA"  # $DATA on the machine that wrote the files


def _pets(tmp_path):
    root = tmp_path / "data"
    write_split_json("oxford_pets", str(root))
    return root, load_dataset("oxford_pets", str(root))


def _datums(records, image_dir_rel, pick, writer=WRITER, sep="/"):
    """Datums of ``records[i]`` for ``i in pick``, with the writer machine's absolute paths
    (``<writer>/<image_dir_rel>/<path relative to the image folder>``, joined with ``sep``)."""
    out = []
    for i in pick:
        r = records[i]
        at = r.path.replace(os.sep, "/").rindex("/" + image_dir_rel + "/") + len(image_dir_rel) + 2
        rel = r.path.replace(os.sep, "/")[at:]
        out.append(OfficialDatum("/".join([writer, image_dir_rel, rel]).replace("/", sep),
                                 r.label, 0, r.classname))
    return out


def _pick(records, k, reverse=True):
    """Per class, the last ``k`` records (not what the seeded sampler draws), classes in descending label order."""
    by = {}
    for i, r in enumerate(records):
        by.setdefault(r.label, []).append(i)
    return [i for lab in sorted(by, reverse=reverse) for i in by[lab][-k:]]


def test_real_file_names_only_the_datum_global():
    """The premise of the unpickler: an official file (Python 3, protocol 2-5) names exactly one global, Dassl's
    Datum, once; dicts, lists, str and int are opcodes. Recorded by an unpickler that resolves every global."""
    data = {"train": [OfficialDatum("/d/imagenet/images/train/n1/a.JPEG", 0, 0, "tench")] * 2, "val": []}

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            seen.append(f"{module}.{name}")
            return OfficialDatum

    for protocol in (2, 3, 4, 5):
        seen: list[str] = []
        Recorder(io.BytesIO(dumps_official(data, protocol))).load()
        assert seen == ["dassl.data.datasets.base_dataset.Datum"], protocol


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_split_json_benchmark_gets_exactly_the_file_subsets(tmp_path, protocol):
    root, ds = _pets(tmp_path)
    train_pick, val_pick = _pick(ds.train, 2), _pick(ds.val, 1)
    f = tmp_path / "shot_2-seed_1.pkl"
    write_official(f, _datums(ds.train, "oxford_pets/images", train_pick),
                   _datums(ds.val, "oxford_pets/images", val_pick), protocol)
    data = prepare_data("oxford_pets", str(root), 2, 1, fewshot_file=str(f))
    assert [r.path for r in data.train] == [ds.train[i].path for i in train_pick]  # the file's images, its order
    assert [r.path for r in data.val] == [ds.val[i].path for i in val_pick]
    drawn = apply_few_shot(ds, 2, 1)
    assert [r.path for r in data.train] != [r.path for r in drawn.train]  # not what the sampler would give
    info = data.splits.info
    assert info["fewshot_file"] == str(f) and info["fewshot_file_sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    assert data.splits.test == ds.test


def test_imagenet_file_has_train_only_and_windows_paths(tmp_path):
    root = tmp_path / "data"
    write_imagenet(str(root))
    ds = load_dataset("imagenet", str(root))
    pick = _pick(ds.train, 2)
    f = tmp_path / "shot_2-seed_3.pkl"
    write_official(f, _datums(ds.train, "imagenet/images", pick, writer="C:\\data", sep="\\"), None)
    data = prepare_data("imagenet", str(root), 2, 3, fewshot_file=str(f))
    assert [r.path for r in data.train] == [ds.train[i].path for i in pick]
    assert data.val == ds.test  # ImageNet's val is the test set, whole, as officially


def test_subsample_applies_after_the_file(tmp_path):
    root, ds = _pets(tmp_path)
    f = tmp_path / "shot_2-seed_1.pkl"
    write_official(f, _datums(ds.train, "oxford_pets/images", _pick(ds.train, 2)),
                   _datums(ds.val, "oxford_pets/images", _pick(ds.val, 1)))
    data = prepare_data("oxford_pets", str(root), 2, 1, fewshot_file=str(f), subsample="base")
    assert data.splits.classnames == ds.classnames[:2] and {r.label for r in data.train} == {0, 1}


def _refused(tmp_path, root, train, val, match, *, name=None, shots=2, seed=1, dataset="oxford_pets"):
    f = tmp_path / (name or f"shot_{shots}-seed_1.pkl")
    write_official(f, train, val)
    with pytest.raises(DataError, match=match) as e:
        prepare_data(dataset, str(root), shots, seed, fewshot_file=str(f))
    assert str(f) in str(e.value)
    return str(e.value)


def test_wrong_shots_or_seed_names_the_flag(tmp_path):
    root, ds = _pets(tmp_path)
    tr, va = _datums(ds.train, "oxford_pets/images", _pick(ds.train, 2)), _datums(ds.val, "oxford_pets/images", [0])
    _refused(tmp_path, root, tr, va, "holds 2-shot subsets but --shots is 16; pass --shots 2", shots=16,
             name="shot_2-seed_1.pkl")
    _refused(tmp_path, root, tr, va, "subset of seed 1 but --seed is 2; pass --seed 1", seed=2)
    # renamed file: K is the largest class count
    _refused(tmp_path, root, tr, va, "holds 2-shot subsets but --shots is 4", name="mine.pkl", shots=4)


def test_missing_images_are_listed(tmp_path):
    root, ds = _pets(tmp_path)
    tr = _datums(ds.train, "oxford_pets/images", _pick(ds.train, 2))
    va = _datums(ds.val, "oxford_pets/images", [0])
    os.remove(ds.train[_pick(ds.train, 2)[0]].path)
    rel = os.path.relpath(ds.train[_pick(ds.train, 2)[0]].path, ds.root)
    msg = _refused(tmp_path, root, tr, va, "1 of its 6 train images are missing under")
    assert rel in msg and "vlprompt datasets check" in msg


def test_labels_and_classnames_must_agree(tmp_path):
    root, ds = _pets(tmp_path)
    va = _datums(ds.val, "oxford_pets/images", [0])
    tr = _datums(ds.train, "oxford_pets/images", _pick(ds.train, 2))
    tr[0]._label = (tr[0]._label + 1) % 3
    _refused(tmp_path, root, tr, va, "labels or class names of 1 train image")
    tr = _datums(ds.train, "oxford_pets/images", _pick(ds.train, 2))
    tr[1]._classname = "not a pet"
    assert "'not a pet'" in _refused(tmp_path, root, tr, va, "disagree with the dataset's")


def test_files_of_other_datasets_or_splits_are_refused(tmp_path):
    root, ds = _pets(tmp_path)
    va = _datums(ds.val, "oxford_pets/images", [0])
    other = [OfficialDatum(f"{WRITER}/dtd/images/banded/banded_0001.jpg", 0, 0, "banded")]
    _refused(tmp_path, root, other, va, "do not contain '/oxford_pets/images/'", shots=1)
    # a val image listed as train: exists on disk, not in the train split
    _refused(tmp_path, root, _datums(ds.val, "oxford_pets/images", [0]), va, "not in the dataset's train split",
             shots=1)
    _refused(tmp_path, root, _datums(ds.train, "oxford_pets/images", [0]), None, "has no 'val' list", shots=1)


def test_imagenet_file_with_val_and_custom_data_are_refused(tmp_path, image_folder):
    root = tmp_path / "data"
    write_imagenet(str(root))
    ds = load_dataset("imagenet", str(root))
    tr = _datums(ds.train, "imagenet/images", [0])
    _refused(tmp_path, root, tr, tr, "it is not an ImageNet file", shots=1, dataset="imagenet")
    f = tmp_path / "shot_1-seed_1.pkl"
    with pytest.raises(DataError, match="is custom data"):
        prepare_data(f"folder:{image_folder}", None, 1, 1, fewshot_file=str(f))


def test_protocol_0_and_1_are_refused_naming_the_global(tmp_path):
    """Never written by the official code (HIGHEST_PROTOCOL); they need copyreg._reconstructor, which is refused."""
    for protocol in (0, 1):
        f = tmp_path / f"p{protocol}.pkl"
        write_official(f, [OfficialDatum("/d/oxford_pets/images/a_1.jpg", 0, 0, "a")], [], protocol)
        with pytest.raises(DataError, match=r"copy_?reg\._reconstructor.*refused"):
            read_dassl_fewshot(str(f))


def test_cli_train_records_the_file(tmp_path, capsys):
    from vlprompt.cli.main import main

    root, ds = _pets(tmp_path)
    train_pick, val_pick = _pick(ds.train, 2), _pick(ds.val, 1)
    f = tmp_path / "shot_2-seed_1.pkl"
    write_official(f, _datums(ds.train, "oxford_pets/images", train_pick),
                   _datums(ds.val, "oxford_pets/images", val_pick))
    out = tmp_path / "run"
    argv = ["train", "--dataset", "oxford_pets", "--root", str(root), "--fewshot-file", str(f), "--shots", "2",
            "--epochs", "1", "--n-ctx", "2", "--backbone", "microclip", "--device", "cpu", "--cache-dir", "",
            "--out", str(out)]
    assert main(argv) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dataset"]["info"]["fewshot_file"] == str(f)
    assert cfg["dataset"]["info"]["fewshot_file_sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    assert cfg["fewshot"]["train"] == [os.path.relpath(ds.train[i].path, ds.root) for i in train_pick]
    assert cfg["fewshot"]["val"] == [os.path.relpath(ds.val[i].path, ds.root) for i in val_pick]
    probe = ["linear-probe", *argv[1:9], "--backbone", "microclip", "--device", "cpu", "--cache-dir", "",
             "--out", str(tmp_path / "probe")]
    assert main(probe) == 0  # the linear probe fits on the same official subsets
    pcfg = json.loads((tmp_path / "probe" / "config.json").read_text())
    assert pcfg["fewshot"] == cfg["fewshot"] and pcfg["dataset"]["info"]["fewshot_file"] == str(f)
    capsys.readouterr()
    assert main([*argv[:-1], str(tmp_path / "run2"), "--shots", "4"]) == 2  # last --shots wins: 4 ≠ the file's 2
    err = capsys.readouterr().err.strip()
    assert "pass --shots 2" in err and len(err.splitlines()) == 1
