"""``vlprompt linear-probe``: the run folder, the same few-shot subset as CoOp, the probe as saved, the C search on
recomputed features, and ImageNet (val = test) choosing C on a min(K, 4)-shot draw instead of the whole test set."""

from __future__ import annotations

import json

import pytest
import torch
from baseline_layouts import single_thread, write_imagenet_family, write_split_benchmark
from safetensors.torch import load_file

from vlprompt.backbones import create_backbone
from vlprompt.cli.main import main
from vlprompt.data.records import Sample
from vlprompt.data.transforms import build_transform
from vlprompt.engine.baselines import load_probe
from vlprompt.eval.linear_probe import fit_linear_probe, predict
from vlprompt.features import extract_features

BASE = ["--backbone", "vlp-tiny-rn", "--pretrained", "random", "--device", "cpu"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    yield from single_thread()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("lp_data")
    write_split_benchmark(r, "oxford_pets")
    write_imagenet_family(r, v2=False)
    return r


def _lp(root, out, dataset="oxford_pets", shots=2, seed=1, *extra):
    return main(["linear-probe", "--dataset", dataset, "--root", str(root), "--shots", str(shots), "--seed", str(seed),
                 "--out", str(out), *BASE, *extra])


def _features(bb, paths, labels):
    recs = [Sample(p, y, str(y)) for p, y in zip(paths, labels, strict=True)]
    return extract_features(bb, recs, build_transform(bb.preprocess, train=False), batch_size=50)


@pytest.fixture(scope="module")
def lp_run(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("lp") / "run"
    assert _lp(root, out) == 0
    return out


def test_run_folder_contract(lp_run):
    cfg = json.loads((lp_run / "config.json").read_text())
    metrics = json.loads((lp_run / "metrics.json").read_text())
    probe = json.loads((lp_run / "probe.json").read_text())
    assert (cfg["label"], cfg["method"], cfg["shots"], cfg["seed"]) == ("Linear probe", "linear-probe", 2, 1)
    assert cfg["dataset"]["name"] == "oxford_pets" and cfg["backbone"]["name"] == "vlp-tiny-rn"
    assert len(cfg["fewshot"]["train"]) == 6 and len(cfg["fewshot"]["val"]) == 6  # 2 and min(2, 4) per class
    for key in ("accuracy", "macro_f1", "per_class_accuracy", "num_test", "val_accuracy", "C", "train_seconds",
                "eval_seconds", "peak_memory_mb"):
        assert key in metrics
    assert metrics["num_test"] == 18 and probe["C"] == metrics["C"] and probe["selection"] == "val"
    assert probe["classnames"] == ["abyssinian", "beagle", "pug"] and probe["selection_split"] == "val-fewshot"
    assert probe["trace"][0] == {"stage": "grid", "C": 1e6, "accuracy": probe["trace"][0]["accuracy"],
                                 "converged": probe["trace"][0]["converged"]}
    assert sum(t["stage"] == "search" for t in probe["trace"]) == 8
    tensors = load_file(str(lp_run / "probe.safetensors"))
    assert tensors["coef"].shape == (3, 32) and tensors["classes"].tolist() == [0, 1, 2]


def test_same_fewshot_subset_as_coop(root, lp_run, tmp_path):
    """A CoOp run with the same dataset, shots and seed trains on exactly the probe's images (and val)."""
    coop = tmp_path / "coop"
    assert main(["train", "--dataset", "oxford_pets", "--root", str(root), "--shots", "2", "--seed", "1",
                 "--epochs", "1", "--n-ctx", "2", "--augment", "none", "--out", str(coop), *BASE]) == 0
    lp_cfg, coop_cfg = (json.loads((d / "config.json").read_text()) for d in (lp_run, coop))
    assert lp_cfg["fewshot"] == coop_cfg["fewshot"]
    other = tmp_path / "seed2"
    assert _lp(root, other, seed=2) == 0
    assert json.loads((other / "config.json").read_text())["fewshot"]["train"] != lp_cfg["fewshot"]["train"]


def test_probe_reloads_and_matches_a_direct_fit(root, lp_run):
    """Refit on features recomputed from the recorded image lists: same C, same weights, same test accuracy."""
    from vlprompt.data import load_dataset

    cfg = json.loads((lp_run / "config.json").read_text())
    metrics = json.loads((lp_run / "metrics.json").read_text())
    splits = load_dataset("oxford_pets", str(root))
    label = {r.path: r.label for r in splits.train + splits.val}
    bb = create_backbone("vlp-tiny-rn", "random")
    ds_root = cfg["dataset"]["root"]
    xs = {}
    for part in ("train", "val"):
        paths = [f"{ds_root}/{p}" for p in cfg["fewshot"][part]]
        xs[part] = (_features(bb, paths, [label[p] for p in paths]), torch.tensor([label[p] for p in paths]))
    direct = fit_linear_probe(*xs["train"], *xs["val"])
    saved, meta = load_probe(lp_run)
    assert saved.C == direct.C == metrics["C"]
    assert torch.allclose(saved.coef, direct.coef, atol=1e-6)
    test_x = _features(bb, [r.path for r in splits.test], [r.label for r in splits.test])
    preds, _ = predict(saved, test_x)
    acc = 100.0 * (preds == torch.tensor([r.label for r in splits.test])).float().mean().item()
    assert acc == pytest.approx(metrics["accuracy"]) and meta["backbone"]["name"] == "vlp-tiny-rn"


def test_imagenet_chooses_C_on_a_fewshot_draw_not_the_test_set(root, tmp_path):
    out = tmp_path / "in"
    assert _lp(root, out, "imagenet", 2) == 0
    probe = json.loads((out / "probe.json").read_text())
    assert probe["selection_split"] == "val-probe"
    assert len(probe["selection_images"]) == 3 * 2  # min(K, 4) per class of the 9 test images, not all 9
    assert json.loads((out / "metrics.json").read_text())["num_test"] == 9


def test_finished_run_is_not_overwritten(root, lp_run, capsys):
    assert _lp(root, lp_run) == 2
    assert "already holds a finished run" in capsys.readouterr().err
