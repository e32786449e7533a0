"""Domain generalization: a prompt trained on (tiny) ImageNet, evaluated on ImageNetV2/-Sketch/-A/-R laid out as
officially, each with its own class set; class-specific context refused on a different class set."""

from __future__ import annotations

import json

import pytest
import torch
from baseline_layouts import VARIANT_WNIDS, WNIDS, single_thread, write_imagenet_family

from vlprompt.api import PromptClassifier
from vlprompt.cli.main import main
from vlprompt.data import load_dataset

BASE = ["--backbone", "vlp-tiny-rn", "--pretrained", "random", "--device", "cpu"]
NAMES = dict(WNIDS)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    yield from single_thread()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("dg_data")
    write_imagenet_family(r)
    return r


def _train(root, out, *extra):
    assert main(["train", "--dataset", "imagenet", "--root", str(root), "--shots", "2", "--epochs", "1",
                 "--n-ctx", "4", "--augment", "none", "--out", str(out), *BASE, *extra]) == 0
    return out


@pytest.fixture(scope="module")
def uc_run(root, tmp_path_factory):
    return _train(root, tmp_path_factory.mktemp("dg") / "uc")


@pytest.fixture(scope="module")
def csc_run(root, tmp_path_factory):
    return _train(root, tmp_path_factory.mktemp("dg") / "csc", "--csc")


@pytest.mark.parametrize("variant", ["imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"])
def test_unified_context_transfers_to_each_variant(root, uc_run, variant):
    assert main(["eval", "--run", str(uc_run), "--dataset", variant, "--root", str(root), "--device", "cpu"]) == 0
    out = uc_run / f"eval_{variant}"
    cfg = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    expected = load_dataset(variant, str(root)).classnames  # the variant's own classes, in its label order
    if variant == "imagenetv2":
        assert len(expected) == 1000 and expected[:3] == [NAMES[w] for w, _ in WNIDS[:3]]
    else:  # A and R are 200-way officially: only their own (sorted) wnid folders, here 3 and 2 of the 5
        assert expected == [NAMES[w] for w in sorted(VARIANT_WNIDS[variant])]
    assert cfg["dataset"]["classnames"] == expected and cfg["source_dataset"] == "imagenet"
    assert cfg["shots"] == 2 and cfg["label"] == json.loads((uc_run / "config.json").read_text())["label"]
    assert len(metrics["per_class_accuracy"]) == len(expected)
    assert metrics["num_test"] == (6 if variant == "imagenetv2" else 2 * len(VARIANT_WNIDS[variant]))


def test_unified_class_weights_do_not_depend_on_the_class_set(root, uc_run):
    """With unified context a class's weight is the same whichever other classes are present."""
    src = PromptClassifier.load(uc_run)
    names_a = load_dataset("imagenet_a", str(root)).classnames
    tgt = PromptClassifier.load(uc_run, classnames=names_a)
    shared = [c for c in names_a if c in src.classnames]
    assert shared == ["goldfish"]
    for c in shared:
        assert torch.allclose(src.text_features()[src.classnames.index(c)], tgt.text_features()[names_a.index(c)],
                              atol=1e-5)


def test_class_specific_context_is_refused_on_another_class_set(root, csc_run, capsys):
    assert main(["eval", "--run", str(csc_run), "--dataset", "imagenet_a", "--root", str(root),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "class-specific context" in err and "different class list" in err
    assert "unified context" in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (csc_run / "eval_imagenet_a" / "metrics.json").exists()
    # the same class list (Sketch has ImageNet's classes here) is fine
    assert main(["eval", "--run", str(csc_run), "--dataset", "imagenet_sketch", "--root", str(root),
                 "--device", "cpu"]) == 0
