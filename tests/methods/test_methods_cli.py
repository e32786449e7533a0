"""`vlprompt train --method cocoop|kgcoop` end to end on tiny image folders: method recipes as defaults, --help,
clear errors, save → load → eval/predict, and the base-to-new protocol through `vlprompt report`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from vlprompt.cli.main import main
from vlprompt.eval.metrics import harmonic_mean

BASE = ["--backbone", "vlp-tiny-vit", "--pretrained", "random", "--device", "cpu", "--cache-dir", ""]


def _train(folder, out, *extra):
    return main(["train", "--dataset", f"folder:{folder}", "--shots", "2", "--out", str(out), *BASE, *extra])


def _json(path):
    return json.loads(path.read_text())


def test_help_lists_methods_and_unknown_method_is_clear(capsys):
    assert main(["train", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    # the prompt learners, then the registered feature-space adapters (issue 16)
    assert "prompt-learning method or feature-space adapter: cocoop, coop, ivlp, kgcoop, maple, promptsrc, vpt" in out
    assert main(["train", "--dataset", "folder:x", "--out", "y", "--method", "cocop"]) == 2
    err = capsys.readouterr().err
    assert "--method 'cocop' is unknown. Did you mean cocoop, coop" in err and "Choices: cocoop, coop, ivlp, kgcoop, maple, promptsrc, vpt" in err
    assert err.count("\n") == 1


def test_cocoop_defaults_to_its_recipe_and_round_trips(image_folder, tmp_path, capsys):
    out = tmp_path / "cocoop"
    assert _train(image_folder, out, "--method", "cocoop", "--augment", "none") == 0
    cfg, learner, metrics = _json(out / "config.json"), _json(out / "learner.json"), _json(out / "metrics.json")
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert cfg["method"] == "cocoop" and cfg["train"]["epochs"] == 10 and cfg["train"]["batch_size"] == 1
    assert len(history) == 10 and cfg["label"] == "CoCoOp M=4 end init 'a photo of a'"
    assert learner["config"]["n_ctx"] == 4 and learner["config"]["ctx_init"] == "a photo of a"
    assert set(load_file(str(out / "learner.safetensors"))) == {
        "ctx", "meta_net.linear1.weight", "meta_net.linear1.bias", "meta_net.linear2.weight", "meta_net.linear2.bias"}
    assert metrics["num_test"] == 12 and 0 <= metrics["accuracy"] <= 100

    # eval of the saved prompt (cached test features, per-image text features) reproduces the run's accuracy
    assert main(["eval", "--run", str(out), "--dataset", f"folder:{image_folder}", "--device", "cpu"]) == 0
    assert _json(out / "eval_data" / "metrics.json")["accuracy"] == pytest.approx(metrics["accuracy"])

    capsys.readouterr()
    assert main(["predict", "--run", str(out), str(image_folder / "test"), "--json", "--device", "cpu"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 12 and all(x["top"][0]["label"] in learner["classnames"] for x in lines)
    predicted = [x["path"].split("/")[-2] == x["top"][0]["label"] for x in lines]
    assert 100.0 * np.mean(predicted) == pytest.approx(metrics["accuracy"])


def test_user_values_win_over_the_method_recipe(image_folder, tmp_path):
    out = tmp_path / "cocoop"
    assert _train(image_folder, out, "--method", "cocoop", "--epochs", "1", "--batch-size", "4", "--n-ctx", "2",
                  "--augment", "none") == 0
    cfg = _json(out / "config.json")
    assert cfg["train"]["epochs"] == 1 and cfg["train"]["batch_size"] == 4
    assert cfg["learner"]["n_ctx"] == 2 and cfg["learner"]["ctx_init"] is None  # --n-ctx alone: random init


def test_kgcoop_trains_with_lambda_and_dataset_template(image_folder, tmp_path, capsys):
    out = tmp_path / "kg"
    assert _train(image_folder, out, "--method", "kgcoop", "--epochs", "2", "--learner-opt", "kg_weight=4") == 0
    cfg, learner = _json(out / "config.json"), _json(out / "learner.json")
    assert cfg["method"] == "kgcoop" and cfg["train"]["batch_size"] == 128 and cfg["train"]["epochs"] == 2  # KgCoOp's own batch
    assert learner["config"]["kg_weight"] == 4.0 and learner["config"]["template"] == "a photo of a {}."
    assert cfg["label"] == "KgCoOp M=4 end init 'a photo of a' kg_weight=4.0"
    assert set(load_file(str(out / "learner.safetensors"))) == {"ctx"}
    assert main(["eval", "--run", str(out), "--dataset", f"folder:{image_folder}", "--device", "cpu"]) == 0

    capsys.readouterr()
    assert _train(image_folder, tmp_path / "bad", "--learner-opt", "kg_weight=4") == 2  # coop has no λ
    assert "--learner-opt kg_weight: not an option of method 'coop'" in capsys.readouterr().err
    assert _train(image_folder, tmp_path / "bad", "--method", "cocoop", "--csc") == 2
    assert "--csc is not available with --method cocoop" in capsys.readouterr().err


def _four_class_split(root, name, seed):
    """A split file (official format, named ``name``) over four classes (2 base, 2 new) with a colour signal."""
    rng = np.random.default_rng(seed)
    colors = {"amber_cat": (220, 160, 40), "blue_jay": (40, 60, 200), "green_frog": (40, 180, 60),
              "red_fox": (200, 40, 40)}
    folder = root / name
    split = {"name": name}
    for part, n in (("train", 4), ("val", 1), ("test", 3)):
        split[part] = []
        for label, (cls, col) in enumerate(colors.items()):
            (folder / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                jitter = np.clip(np.array(col) + rng.integers(-20, 20, size=3), 0, 255).astype(np.uint8)
                rel = f"{cls}/{part}{i}.png"
                Image.fromarray(np.broadcast_to(jitter, (24, 24, 3)).copy()).save(folder / rel)
                split[part].append([rel, label, cls])
    (folder / "split.json").write_text(json.dumps(split))
    return folder / "split.json"


@pytest.mark.parametrize("method", ["coop", "cocoop"])
def test_base_to_new_through_report(tmp_path, capsys, method):
    """Train on the base classes, evaluate on the new ones (unseen names), report base/new/H per dataset and on
    average, H = 2bn/(b+n)."""
    runs = tmp_path / "runs"
    expected = {}
    for i, name in enumerate(["setA", "setB"]):
        split = _four_class_split(tmp_path / "data", name, seed=i)
        run = runs / name / method
        assert main(["train", "--dataset", f"split:{split}", "--shots", "2", "--epochs", "2", "--subsample", "base",
                     "--method", method, "--augment", "none", "--n-ctx", "2", "--out", str(run), *BASE]) == 0
        assert _json(run / "config.json")["dataset"]["classnames"] == ["amber_cat", "blue_jay"]
        assert main(["eval", "--run", str(run), "--dataset", f"split:{split}", "--subsample", "new",
                     "--device", "cpu", "--cache-dir", "", "--out", str(run / "eval_new")]) == 0
        ev = run / "eval_new"
        ev_cfg = _json(ev / "config.json")
        assert ev_cfg["subsample"] == "new" and ev_cfg["dataset"]["classnames"] == ["green_frog", "red_fox"]
        assert _json(ev / "metrics.json")["num_test"] == 6
        expected[name] = (_json(run / "metrics.json")["accuracy"], _json(ev / "metrics.json")["accuracy"])

    capsys.readouterr()
    assert main(["report", str(runs), "--out", str(tmp_path / "report")]) == 0
    summary = _json(tmp_path / "report" / "results.json")
    rows = {r["dataset"]: r for r in summary["base_to_new"]}
    assert set(rows) == {"setA", "setB", "Average"}
    for name, (b, n) in expected.items():
        assert rows[name]["base"] == pytest.approx(b) and rows[name]["new"] == pytest.approx(n)
        assert rows[name]["h"] == pytest.approx(harmonic_mean(b, n))
        if b + n > 0:
            assert rows[name]["h"] == pytest.approx(2 * b * n / (b + n))
    mean_b = np.mean([b for b, _ in expected.values()])
    mean_n = np.mean([n for _, n in expected.values()])
    assert rows["Average"]["base"] == pytest.approx(mean_b) and rows["Average"]["new"] == pytest.approx(mean_n)
    assert rows["Average"]["h"] == pytest.approx(harmonic_mean(mean_b, mean_n))
    assert "Base-to-new generalization" in (tmp_path / "report" / "results.md").read_text()
