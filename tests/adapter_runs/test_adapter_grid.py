"""Feature-space adapters in the grid (issue 16): registered adapters are methods of the few-shot protocol (each with
its own recipe: the grid's prompt-optimisation flags are the prompt learners'), of base-to-new only where they define
new classes (else refused in the plan with the reason), and of domain generalization (the shifted test sets of the
source's classes or a subset of them); ``--dry-run`` lists them with their views; the report names them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from toy_adapters import registered

from vlprompt.cli.main import main
from vlprompt.data import load_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "baselines"))
from baseline_layouts import single_thread, write_imagenet_family, write_split_benchmark  # noqa: E402

BASE = ["--backbone", "vlp-tiny-rn", "--pretrained", "random", "--device", "cpu", "--seeds", "1"]
DG = ["imagenet_sketch", "imagenet_a", "imagenet_r"]


@pytest.fixture(scope="module", autouse=True)
def _toys_and_one_thread():
    with registered():
        yield from single_thread()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid_adapter_data")
    write_split_benchmark(root, "dtd")
    write_imagenet_family(root, v2=False)
    return root


def _bench(capsys, *argv):
    capsys.readouterr()
    code = main(["benchmark", *argv, *BASE])
    out = capsys.readouterr()
    return code, out.out, out.err


def _json(folder: Path, name: str = "config.json") -> dict:
    return json.loads((folder / name).read_text())


@pytest.fixture(scope="module")
def fewshot(data, tmp_path_factory):
    runs = tmp_path_factory.mktemp("grid_adapters") / "runs"
    # --epochs/--lr are CoOp's; the adapters fit with their own recipe
    assert main(["benchmark", "--protocol", "fewshot", "--datasets", "dtd", "--methods", "coop,toy-bias,toy-shift",
                 "--shots", "1", "--epochs", "1", "--lr", "0.01", "--root", str(data), "--out", str(runs),
                 "--cache-dir", "", *BASE]) == 0
    return runs


def test_dry_run_lists_the_adapters_with_their_views(data, capsys, tmp_path):
    code, out, _ = _bench(capsys, "--protocol", "fewshot", "--datasets", "dtd", "--methods", "toy-bias,toy-shift",
                          "--shots", "1,2", "--root", str(data), "--out", str(tmp_path / "r"), "--dry-run")
    assert code == 0 and not (tmp_path / "r").exists()
    lines = [ln for ln in out.splitlines() if ln.startswith("run ")]
    assert len(lines) == 4
    assert all("toy-bias" not in ln or "adapter, views 2" in ln for ln in lines)  # the toy's recipe: 2 views
    assert all("toy-shift" not in ln or "adapter, views 0" in ln for ln in lines)
    assert not any("epochs" in ln for ln in lines)  # no prompt recipe for an adapter
    code, out, _ = _bench(capsys, "--protocol", "fewshot", "--datasets", "dtd", "--methods", "toy-bias",
                          "--augment", "cached:5", "--root", str(data), "--out", str(tmp_path / "r"), "--dry-run")
    assert code == 0 and "adapter, views 5" in out


def test_fewshot_grid_runs_the_adapters_with_their_own_recipe(fewshot):
    coop = _json(fewshot / "dtd" / "coop" / "1shots" / "seed1")
    assert (coop["train"]["epochs"], coop["train"]["lr"]) == (1, 0.01)
    for method, augment in (("toy-bias", "cached:2"), ("toy-shift", "none")):
        run = fewshot / "dtd" / method / "1shots" / "seed1"
        cfg, meta = _json(run), _json(run, "adapter.json")
        assert cfg["method"] == meta["method"] == method and cfg["train"]["augment"] == augment
        assert cfg["train"]["lr"] is None and cfg["train"]["epochs"] is None  # the grid's --lr/--epochs: CoOp's
        assert cfg["learner"] == meta["config"] and cfg["fewshot"] == coop["fewshot"]  # the same few-shot images
        assert _json(run, "metrics.json")["num_test"] == 18
    # toy-shift's official value for 1 shot (dataset_config), as the user left epochs unset
    shift = fewshot / "dtd" / "toy-shift" / "1shots" / "seed1"
    assert _json(shift)["learner"] == {"epochs": 4, "lr": 0.5} and len(_json(shift, "adapter.json")["record"]["losses"]) == 4
    assert _json(shift)["label"] == "Toy shift"
    report = (fewshot / "results.md").read_text()
    assert "Toy bias" in report and "Toy shift" in report


def test_base2new_only_for_adapters_with_new_classes(data, capsys, tmp_path):
    runs = tmp_path / "runs"
    code, _, err = _bench(capsys, "--protocol", "base2new", "--datasets", "dtd", "--methods", "toy-bias,toy-shift",
                          "--shots", "1", "--root", str(data), "--out", str(runs), "--cache-dir", "", "--no-report")
    assert code == 2 and not runs.exists()
    assert ("--methods toy-bias cannot run the base2new protocol: the toy-bias adapter holds something per fitted "
            "class only (new_classes=False) and has nothing for classes it was not fitted on (use --protocol "
            "fewshot or dg for it)") in err
    assert "toy-shift" not in err
    code, _, err = _bench(capsys, "--protocol", "base2new", "--datasets", "dtd", "--methods", "toy-shift",
                          "--shots", "1", "--root", str(data), "--out", str(runs), "--cache-dir", "", "--no-report")
    assert code == 0, err
    run = runs / "base2new" / "dtd" / "toy-shift" / "1shots" / "seed1"
    assert _json(run)["dataset"]["classnames"] == ["banded", "blotchy"]
    assert _json(run / "eval_new")["dataset"]["classnames"] == ["zigzagged"]
    assert _json(run / "eval_new", "metrics.json")["num_test"] == 6


def test_dg_evaluates_each_target_on_its_own_classes(data, capsys, tmp_path):
    """toy-shift (new classes) on every target's own classes; toy-bias (per fitted class) on Sketch, which has the
    source's classes. (In this tiny tree ImageNet-A and -R hold classes the source lacks — the real ones are subsets
    of ImageNet's 1000 — so they show the per-class adapter's refusal; the subset case: test_adapter_run's eval on
    the base classes.)"""
    runs = tmp_path / "runs"
    code, _, err = _bench(capsys, "--protocol", "dg", "--datasets", ",".join(DG), "--methods", "toy-shift,toy-bias",
                          "--shots", "1", "--root", str(data), "--out", str(runs), "--cache-dir", "", "--no-report")
    assert code != 0
    shift, bias = (runs / "imagenet" / m / "1shots" / "seed1" for m in ("toy-shift", "toy-bias"))
    for run in (shift, bias):
        assert _json(run, "adapter.json")["classnames"] == ["tench", "goldfish", "great white shark"]
    for t in DG:
        cfg = _json(shift / f"eval_{t}")
        assert cfg["dataset"]["classnames"] == load_dataset(t, str(data)).classnames  # A and R: their own classes
        assert cfg["method"] == "toy-shift" and cfg["source_dataset"] == "imagenet"
        assert _json(shift / f"eval_{t}", "metrics.json")["num_test"] == len(load_dataset(t, str(data)).test)
    assert _json(bias / "eval_imagenet_sketch", "metrics.json")["num_test"] == 6
    assert not (bias / "eval_imagenet_a" / "metrics.json").exists()
    assert ("method 'toy-bias' cannot classify classes it was not fitted on (2 of 3, e.g. tiger shark, hammerhead "
            "shark)") in err


def test_xd_refuses_an_adapter_without_new_classes(data, capsys, tmp_path):
    runs = tmp_path / "runs"
    code, _, err = _bench(capsys, "--protocol", "xd", "--datasets", "dtd", "--methods", "toy-bias", "--shots", "1",
                          "--root", str(data), "--out", str(runs), "--no-report")
    assert code == 2 and not runs.exists()
    assert "--methods toy-bias cannot run the xd protocol" in err and "(use --protocol fewshot or dg for it)" in err
