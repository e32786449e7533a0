"""A feature-space adapter through the application (issue 16): ``vlprompt train --method ADAPTER`` writes the run
folder (config.json, adapter.safetensors + adapter.json, metrics.json), fitted on the cached features of exactly the
few-shot images, their views and the dataset's zero-shot classifier, with no image-encoder call during the fit;
finished runs are kept, resumed and overwritten as other runs; ``vlprompt eval``, ``vlprompt predict`` and
``PromptClassifier.load`` use the saved adapter; export refuses it; flags that do not apply are refused by name.

The two toy adapters of :mod:`toy_adapters` stand in for the real methods (registered for this module only).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from toy_adapters import ToyBias, registered

from vlprompt.backbones import create_backbone
from vlprompt.backbones.text import zero_shot_weights
from vlprompt.cli.main import main
from vlprompt.data import load_dataset
from vlprompt.data.records import Sample
from vlprompt.data.transforms import build_transform
from vlprompt.engine.spec import RunSpec
from vlprompt.errors import ArtifactError, ConfigError
from vlprompt.features import extract_features

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "baselines"))
from baseline_layouts import single_thread, write_split_benchmark  # noqa: E402

BASE = ["--backbone", "vlp-tiny-rn", "--pretrained", "random", "--device", "cpu"]
PETS = ["abyssinian", "beagle", "pug"]
TEMPLATE = "a photo of a {}, a type of pet."  # CoOp's oxford_pets template


@pytest.fixture(scope="module", autouse=True)
def _toys_and_one_thread():
    with registered():
        yield from single_thread()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("adapter_data")
    write_split_benchmark(r, "oxford_pets")  # 3 classes: 6 train, 3 val, 6 test images each
    return r


def _train(root, out, method="toy-bias", *extra):
    return main(["train", "--dataset", "oxford_pets", "--root", str(root), "--shots", "2", "--method", method,
                 "--out", str(out), *BASE, *extra])


def _json(folder: Path, name: str) -> dict:
    return json.loads((folder / name).read_text())


@pytest.fixture(scope="module")
def bias_run(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("toy_bias") / "run"
    assert _train(root, out) == 0
    return out


@pytest.fixture(scope="module")
def backbone():
    return create_backbone("vlp-tiny-rn", "random", device="cpu")


def _features(backbone, root, paths, labels):
    recs = [Sample(str(Path(root) / p), y, PETS[y]) for p, y in zip(paths, labels, strict=True)]
    return extract_features(backbone, recs, build_transform(backbone.preprocess, train=False), batch_size=50)


def _labels(paths):  # oxford_pets file names are <class>_<n>.jpg
    return [PETS.index(Path(p).name.rsplit("_", 1)[0]) for p in paths]


def test_run_folder_contract(bias_run):
    cfg, meta, metrics = (_json(bias_run, n) for n in ("config.json", "adapter.json", "metrics.json"))
    assert (cfg["label"], cfg["method"], cfg["shots"], cfg["seed"]) == ("Toy bias", "toy-bias", 2, 1)
    assert cfg["learner"] == {"epochs": 20, "lr": 1.0}  # the adapter's full config (its defaults)
    assert len(cfg["fewshot"]["train"]) == 6 and len(cfg["fewshot"]["val"]) == 6  # 2 and min(2, 4) per class
    # the views: the recipe's 2, with its crop scale; recorded resolved
    assert cfg["adapter"] == {"views": 2, "uses_views": True, "uses_val": True, "new_classes": False,
                              "recipe": {"num_views": 2, "crop_scale_min": 0.5}}
    assert (cfg["train"]["augment"], cfg["train"]["crop_scale_min"], cfg["train"]["flip"]) == ("cached:2", 0.5, True)
    assert meta["method"] == "toy-bias" and meta["config"] == cfg["learner"] and meta["classnames"] == PETS
    assert meta["backbone"] == cfg["backbone"] and meta["feature_dim"] == 32 and meta["template"] == TEMPLATE
    assert meta["shapes"] == {"bias": [3]} and meta["selection_split"] == "val-fewshot"
    assert meta["logit_scale"] == pytest.approx(1 / 0.07)  # exp(log(1/0.07)): a freshly initialised open_clip CLIP
    # what the run handed to fit (recorded by the toy): train [N, E], views [V, N, E], the few-shot val [M, E]
    assert (meta["record"]["train_shape"], meta["record"]["views_shape"], meta["record"]["val_shape"]) == (
        [6, 32], [2, 6, 32], [6, 32])
    assert meta["record"]["steps"] in (10, 20) and len(meta["record"]["trace"]) == 2
    assert set(load_file(str(bias_run / "adapter.safetensors"))) == {"bias"}
    for key in ("accuracy", "macro_f1", "per_class_accuracy", "num_test", "val_accuracy", "views", "train_seconds",
                "eval_seconds", "peak_memory_mb"):
        assert key in metrics
    assert metrics["num_test"] == 18 and metrics["views"] == 2
    # config.json first, metrics.json last
    times = [(bias_run / n).stat().st_mtime_ns for n in ("config.json", "adapter.json", "metrics.json")]
    assert times == sorted(times)


def test_fit_is_on_the_fewshot_features_and_the_datasets_zero_shot_classifier(root, backbone, tmp_path):
    """With --augment none the single view is the test-transform features; refitting the toy on features and text
    computed here from the recorded image lists gives the saved bias and the run's accuracy."""
    from vlprompt.adapters import AdapterData

    out = tmp_path / "none"
    assert _train(root, out, "toy-bias", "--augment", "none", "--learner-opt", "epochs=6") == 0
    cfg, meta = _json(out, "config.json"), _json(out, "adapter.json")
    assert cfg["train"]["augment"] == "none" and meta["record"]["views_shape"] == [1, 6, 32]
    train, val = cfg["fewshot"]["train"], cfg["fewshot"]["val"]
    x, xv = _features(backbone, cfg["dataset"]["root"], train, _labels(train)), _features(
        backbone, cfg["dataset"]["root"], val, _labels(val))
    text = zero_shot_weights(backbone, PETS, [TEMPLATE])
    toy = ToyBias(ToyBias.config_class(epochs=6))
    toy.fit(AdapterData(train=x, train_labels=torch.tensor(_labels(train)), text=text, logit_scale=1 / 0.07,
                        views=x[None], val=xv, val_labels=torch.tensor(_labels(val)), seed=1))
    saved = load_file(str(out / "adapter.safetensors"))["bias"]
    torch.testing.assert_close(saved, toy.bias.detach(), rtol=0, atol=1e-5)
    test = load_dataset("oxford_pets", str(root)).test
    xt = extract_features(backbone, test, build_transform(backbone.preprocess, train=False), batch_size=50)
    labels = torch.tensor([r.label for r in test])
    with torch.no_grad():
        acc = 100.0 * float((toy(xt).argmax(-1) == labels).float().mean())
    assert _json(out, "metrics.json")["accuracy"] == pytest.approx(acc)


def test_views_follow_augment_and_no_image_is_encoded_during_the_fit(root, backbone, tmp_path, monkeypatch):
    from vlprompt.engine.config import TrainConfig
    from vlprompt.runs.adapter_run import adapter_run

    calls = []
    encode = backbone.encode_image
    monkeypatch.setattr(backbone, "encode_image", lambda images: calls.append(len(images)) or encode(images))
    during = []
    fit = ToyBias.fit

    def spying_fit(self, data):
        n = len(calls)
        record = fit(self, data)
        during.append(len(calls) - n)
        return record

    monkeypatch.setattr(ToyBias, "fit", spying_fit)
    spec = RunSpec(dataset="oxford_pets", root=str(root), out=str(tmp_path / "v3"), shots=2, backbone="vlp-tiny-rn",
                   pretrained="random", device="cpu", method="toy-bias", cache_dir="",
                   train=TrainConfig(augment="cached:3"))
    adapter_run(spec, backbone=backbone)
    meta = _json(tmp_path / "v3", "adapter.json")
    assert meta["record"]["views_shape"] == [3, 6, 32] and during == [0]
    # 6 train + 6 val test-transform images, 3 views of the 6 train images, then 18 test and 6 val for the metrics
    assert sum(calls) == 6 + 6 + 3 * 6 + 18 + 6


def test_a_finished_run_is_kept_resumed_or_overwritten(root, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(root, out, "toy-shift") == 0
    first = _json(out, "metrics.json")
    stamp = (out / "adapter.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert _train(root, out, "toy-shift") == 2
    assert "already holds a finished run (metrics.json); pass --overwrite" in capsys.readouterr().err
    assert _train(root, out, "toy-shift", "--resume") == 0  # the same run: kept
    assert (out / "adapter.safetensors").stat().st_mtime_ns == stamp and _json(out, "metrics.json") == first
    assert _train(root, out, "toy-shift", "--resume", "--learner-opt", "epochs=3") == 2
    assert "learner.epochs: 10 → 3" in capsys.readouterr().err
    assert _train(root, out, "toy-shift", "--resume", "--overwrite") == 2
    assert "contradict each other" in capsys.readouterr().err
    assert _train(root, out, "toy-shift", "--overwrite", "--learner-opt", "epochs=3") == 0
    assert _json(out, "config.json")["learner"]["epochs"] == 3 and len(_json(out, "adapter.json")["record"]["losses"]) == 3


def test_eval_reevaluates_and_takes_a_subset_of_the_fitted_classes(root, bias_run):
    assert main(["eval", "--run", str(bias_run), "--dataset", "oxford_pets", "--root", str(root), "--device", "cpu"]) == 0
    ev = bias_run / "eval_oxford_pets"
    assert _json(ev, "metrics.json")["accuracy"] == pytest.approx(_json(bias_run, "metrics.json")["accuracy"])
    cfg = _json(ev, "config.json")
    assert cfg["method"] == "toy-bias" and cfg["evaluated_from"] == str(bias_run.resolve())
    # base classes (the first 2 of 3): the logits' columns of those classes
    from vlprompt.api import PromptClassifier

    assert main(["eval", "--run", str(bias_run), "--dataset", "oxford_pets", "--root", str(root), "--device", "cpu",
                 "--subsample", "base", "--out", str(bias_run / "eval_base")]) == 0
    clf = PromptClassifier.load(bias_run)
    test = [r for r in load_dataset("oxford_pets", str(root)).test if r.label < 2]
    with torch.no_grad():
        logits = clf.feature_logits(clf.backbone.encode_image(torch.stack(
            [clf.preprocess(r.path)[0] for r in test])))[:, :2]
    acc = 100.0 * float((logits.argmax(-1) == torch.tensor([r.label for r in test])).float().mean())
    assert _json(bias_run / "eval_base", "metrics.json")["accuracy"] == pytest.approx(acc)


def test_new_classes_only_where_the_adapter_defines_them(root, tmp_path, capsys):
    for method in ("toy-bias", "toy-shift"):
        assert _train(root, tmp_path / method, method, "--subsample", "base", "--augment", "none") == 0
    capsys.readouterr()
    new = ["--dataset", "oxford_pets", "--root", str(root), "--device", "cpu", "--subsample", "new"]
    assert main(["eval", "--run", str(tmp_path / "toy-bias"), *new]) == 2
    err = capsys.readouterr().err
    assert "method 'toy-bias' cannot classify classes it was not fitted on (1 of 1, e.g. pug)" in err
    assert "new_classes=False" in err and not (tmp_path / "toy-bias" / "eval_oxford_pets").exists()
    assert main(["eval", "--run", str(tmp_path / "toy-shift"), *new]) == 0
    m = _json(tmp_path / "toy-shift" / "eval_oxford_pets", "metrics.json")
    assert m["num_test"] == 6 and _json(tmp_path / "toy-shift" / "eval_oxford_pets", "config.json")[
        "dataset"]["classnames"] == ["pug"]


def test_predict_and_prompt_classifier(root, bias_run, capsys):
    from vlprompt.api import AdapterClassifier, PromptClassifier

    clf = PromptClassifier.load(bias_run)
    assert isinstance(clf, AdapterClassifier) and clf.classnames == PETS and clf.method == "toy-bias"
    assert not clf.conditional
    with pytest.raises(ConfigError, match="feature-space adapter"):
        clf.text_features()
    test = load_dataset("oxford_pets", str(root)).test
    files = [r.path for r in test]
    pred = clf.predict(files)
    torch.testing.assert_close(pred.probs.sum(-1), torch.ones(len(files)), rtol=0, atol=1e-5)
    acc = 100.0 * sum(label == PETS[r.label] for label, r in zip(pred.labels, test, strict=True)) / len(test)
    assert acc == pytest.approx(_json(bias_run, "metrics.json")["accuracy"])  # the run's own test accuracy
    capsys.readouterr()
    assert main(["predict", "--run", str(bias_run), "--device", "cpu", "--json", *files[:2]]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["top"][0]["label"] for line in lines] == pred.labels[:2]
    assert [line["top"][0]["prob"] for line in lines] == pytest.approx(pred.probs[:2].max(-1).values.tolist())


def test_export_refuses_an_adapter_run(bias_run):
    from vlprompt.export import check_run

    with pytest.raises(ArtifactError, match="is a feature-space adapter run .* export supports learned prompts only"):
        check_run(bias_run)


def test_damaged_artifact_is_named(bias_run, tmp_path):
    import shutil

    from vlprompt.api import PromptClassifier

    run = tmp_path / "copy"
    shutil.copytree(bias_run, run)
    meta = _json(run, "adapter.json")
    (run / "adapter.json").write_text(json.dumps({**meta, "classnames": ["a", "b", "c"]}))
    with pytest.raises(ArtifactError, match="adapter.safetensors' was saved for another classnames_sha256"):
        PromptClassifier.load(run)
    (run / "adapter.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "shapes"}))
    with pytest.raises(ArtifactError, match="lacks 'shapes'"):
        PromptClassifier.load(run)


@pytest.mark.parametrize(("method", "flags", "message"), [
    ("toy-bias", ["--n-ctx", "4"], "--n-ctx: prompt-learner option(s), but --method toy-bias is a feature-space "
                                   "adapter with no prompt; its options (--learner-opt KEY=VALUE): epochs, lr."),
    ("toy-bias", ["--learner-opt", "kg_weight=4"], "--learner-opt kg_weight: not an option of method 'toy-bias'; "
                                                   "valid: epochs, lr."),
    ("toy-bias", ["--momentum", "0.5"], "--momentum does not apply to 'toy-bias' (a feature-space adapter"),
    ("toy-bias", ["--epochs", "4", "--learner-opt", "epochs=5"], "--epochs 4 contradicts --learner-opt epochs=5"),
    ("toy-shift", ["--augment", "cached:2"], "--augment: 'toy-shift' fits on the test-transform features of the "
                                             "training images and uses no augmented views; leave these out."),
])
def test_flags_that_do_not_apply_are_refused(root, tmp_path, capsys, method, flags, message):
    capsys.readouterr()
    assert _train(root, tmp_path / "run", method, *flags) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_user_options_beat_the_official_per_shot_values_and_name_the_variant(root, tmp_path):
    from vlprompt.adapters import FeatureAdapter

    assert _train(root, tmp_path / "one", "toy-shift", "--shots", "1", "--learner-opt", "lr=0.25") == 0
    cfg = _json(tmp_path / "one", "config.json")
    assert cfg["learner"] == {"epochs": 4, "lr": 0.25} and cfg["label"] == "Toy shift lr=0.25"
    assert _train(root, tmp_path / "mine", "toy-shift", "--shots", "1", "--learner-opt", "epochs=2") == 0
    assert _json(tmp_path / "mine", "config.json")["learner"] == {"epochs": 2, "lr": 0.5}

    class WithDataset(FeatureAdapter):  # the default hook: a config with a ``dataset`` field gets the dataset's name
        config_class = type("C", (), {"__dataclass_fields__": {"dataset": None, "k": None}})

    assert WithDataset.dataset_config("oxford_pets", 16) == {"dataset": "oxford_pets"}
    assert ToyBias.dataset_config("oxford_pets", 16) == {}


def test_an_optimisation_flag_sets_the_adapters_option_of_that_name(root, tmp_path):
    assert _train(root, tmp_path / "run", "toy-shift", "--epochs", "4", "--lr", "0.25") == 0
    assert _json(tmp_path / "run", "config.json")["learner"] == {"epochs": 4, "lr": 0.25}
    assert len(_json(tmp_path / "run", "adapter.json")["record"]["losses"]) == 4


def test_an_unknown_method_suggests_adapters_too(capsys):
    assert main(["train", "--dataset", "x", "--out", "y", "--method", "toy-bais"]) == 2
    err = capsys.readouterr().err
    assert "Did you mean toy-bias" in err and "coop" in err and "toy-shift" in err


def test_torchrun_is_refused_with_the_reason(root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it
    capsys.readouterr()
    assert _train(root, tmp_path / "run", "toy-shift") == 2
    assert "nothing to share between torchrun ranks; run it without torchrun" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_config_json_reruns_the_adapter_run(root, bias_run, tmp_path):
    """``vlprompt train --config RUN/config.json`` (issue 17) re-runs an adapter run: the same options, views and
    few-shot images (checked as recorded), so the same fitted tensors and accuracy; a flag still overrides."""
    again = tmp_path / "again"
    assert main(["train", "--config", str(bias_run / "config.json"), "--out", str(again)]) == 0
    cfg = _json(again, "config.json")
    assert (cfg["method"], cfg["learner"], cfg["adapter"]) == ("toy-bias", *(
        _json(bias_run, "config.json")[k] for k in ("learner", "adapter")))
    assert torch.equal(load_file(str(again / "adapter.safetensors"))["bias"],
                       load_file(str(bias_run / "adapter.safetensors"))["bias"])
    assert _json(again, "metrics.json")["accuracy"] == _json(bias_run, "metrics.json")["accuracy"]
    assert main(["train", "--config", str(bias_run / "config.json"), "--out", str(tmp_path / "e4"),
                 "--learner-opt", "epochs=4"]) == 0
    assert _json(tmp_path / "e4", "config.json")["learner"] == {"epochs": 4, "lr": 1.0}


def test_interpret_refuses_an_adapter_run(bias_run, capsys):
    capsys.readouterr()
    assert main(["interpret", "--run", str(bias_run)]) == 2
    assert "is a feature-space adapter run (adapter.json): it learned no context vectors" in capsys.readouterr().err
