"""Zero-shot CLIP end to end with every template kind: the templates used, the label, and the accuracy recomputed
by hand from the backbone (per-template L2-normalised features averaged, as the official ZeroshotCLIP2)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from baseline_layouts import single_thread, write_imagenet_family, write_split_benchmark

from vlprompt.backbones import create_backbone
from vlprompt.cli.main import main
from vlprompt.data import IMAGENET_TEMPLATES, IMAGENET_TEMPLATES_SELECT, load_dataset
from vlprompt.data.transforms import build_transform
from vlprompt.features import extract_features

BASE = ["--backbone", "vlp-tiny-rn", "--pretrained", "random", "--device", "cpu"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    yield from single_thread()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("zs_data")
    write_split_benchmark(r, "dtd")
    write_imagenet_family(r, v2=False)
    return r


@pytest.fixture(scope="module")
def backbone():
    return create_backbone("vlp-tiny-rn", "random")


def _zeroshot(root, out, dataset, *extra):
    assert main(["zeroshot", "--dataset", dataset, "--root", str(root), "--out", str(out), *BASE, *extra]) == 0
    return json.loads((out / "config.json").read_text()), json.loads((out / "metrics.json").read_text())


def _by_hand(bb, root, dataset, templates):
    """Accuracy and per-class accuracy of the ensemble classifier, computed without vlprompt's zero-shot code."""
    splits = load_dataset(dataset, str(root))
    names = [c.replace("_", " ") for c in splits.classnames]
    per_template = [F.normalize(bb.encode_text([t.format(n) for n in names]), dim=-1) for t in templates]
    weights = F.normalize(torch.stack(per_template).mean(0), dim=-1)  # (C, E)
    feats = extract_features(bb, splits.test, build_transform(bb.preprocess, train=False), batch_size=50)
    pred = (F.normalize(feats, dim=-1) @ weights.t()).argmax(-1)
    labels = torch.tensor([r.label for r in splits.test])
    per_class = [100.0 * (pred[labels == c] == c).float().mean().item() for c in range(len(names))]
    return 100.0 * (pred == labels).float().mean().item(), per_class


@pytest.mark.parametrize(
    ("kind", "expected", "label"),
    [
        ("dataset", ["{} texture."], "Zero-shot CLIP"),
        ("ensemble7", [*IMAGENET_TEMPLATES_SELECT, "{} texture."], "Zero-shot CLIP (8 templates)"),
        ("ensemble80", list(IMAGENET_TEMPLATES), "Zero-shot CLIP (80 templates)"),
        ("FILE", ["a blurry photo of {}.", "{}, up close."], "Zero-shot CLIP (2 templates)"),
    ],
)
def test_template_kinds_end_to_end(root, backbone, tmp_path, kind, expected, label):
    if kind == "FILE":
        f = tmp_path / "templates.txt"
        f.write_text("\n".join(expected) + "\n\n")  # blank lines are ignored
        kind = str(f)
    cfg, metrics = _zeroshot(root, tmp_path / "zs", "dtd", "--templates", kind)
    assert cfg["method"] == "zeroshot" and cfg["label"] == label and cfg["shots"] is None
    assert cfg["learner"]["templates"] == expected
    assert metrics["num_test"] == 18
    acc, per_class = _by_hand(backbone, root, "dtd", expected)
    assert metrics["accuracy"] == pytest.approx(acc)
    assert metrics["per_class_accuracy"] == pytest.approx(per_class)


def test_imagenet_ensemble7_is_the_seven_templates(root, tmp_path):
    """Officially the dataset's own template is added to the 7 for every dataset except ImageNet itself."""
    cfg, _ = _zeroshot(root, tmp_path / "a", "imagenet", "--templates", "ensemble7")
    assert cfg["learner"]["templates"] == list(IMAGENET_TEMPLATES_SELECT)
    cfg, _ = _zeroshot(root, tmp_path / "b", "imagenet_a", "--templates", "ensemble7")
    assert cfg["learner"]["templates"] == [*IMAGENET_TEMPLATES_SELECT, "a photo of a {}."]


def test_template_without_placeholder_is_refused(root, tmp_path, capsys):
    f = tmp_path / "bad.txt"
    f.write_text("a photo of a {}.\na photo without a slot.\n")
    assert main(["zeroshot", "--dataset", "dtd", "--root", str(root), "--out", str(tmp_path / "z"), *BASE,
                 "--templates", str(f)]) == 2
    err = capsys.readouterr().err
    assert "line 2" in err and "{}" in err
