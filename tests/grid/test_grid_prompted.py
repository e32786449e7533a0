"""A learner that prompts the image tower (issue 15) in the grid: registered, it appears in the grid's methods and
base-to-new's defaults, and each of the four protocols (fewshot, base2new, dg, xd) plans and runs it, every
evaluation through the prompted tower (eval --run) and never through the feature cache (the cache stays empty)."""

from __future__ import annotations

import pytest
from grid_helpers import accuracy, benchmark, finished, read
from grid_layouts import single_thread, write_dtd4, write_imagenet_family

import deep_learners
from vlprompt.runs.grid import default_methods, grid_methods

DG = ["imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"]
FAST_VIT = ["--epochs", "1", "--augment", "none", "--backbone", "vlp-tiny-vit", "--pretrained", "random", "--device",
            "cpu"]
M = deep_learners.METHOD


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    yield from single_thread()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompted_grid_data")
    write_imagenet_family(root)
    write_dtd4(root)
    return root


@pytest.fixture
def deep():
    with deep_learners.registered() as method:
        yield method


def _run(capsys, protocol, data, runs, cache, *extra):
    code, out, err = benchmark(capsys, "--protocol", protocol, "--shots", "2", "--seeds", "1", "--methods", M,
                               "--root", str(data), "--out", str(runs), "--cache-dir", str(cache), *FAST_VIT, *extra)
    assert code == 0, err[-3000:]
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))  # nothing from the feature cache
    return out


def test_the_registered_learner_is_a_grid_method(deep):
    assert M in grid_methods() and M in default_methods("base2new") and M in default_methods("dg")


def test_four_protocols_plan_and_run_a_prompted_learner(deep, data, tmp_path, capsys):
    runs, cache = tmp_path / "runs", tmp_path / "cache"
    _run(capsys, "fewshot", data, runs, cache, "--datasets", "dtd")
    (fewshot,) = [p for p in finished(runs) if "base2new" not in p.parts]
    assert read(fewshot)["method"] == M and read(fewshot, "learner.json")["prompts_image"] is True

    _run(capsys, "base2new", data, runs, cache, "--datasets", "dtd")
    b2n = runs / "base2new" / "dtd" / M / "2shots" / "seed1"
    assert read(b2n)["subsample"] == "base" and read(b2n / "eval_new")["subsample"] == "new"
    assert read(b2n / "eval_new")["dataset"]["classnames"] != read(b2n)["dataset"]["classnames"]
    assert 0 <= accuracy(b2n / "eval_new") <= 100

    _run(capsys, "dg", data, runs, cache)
    src = runs / "imagenet" / M / "2shots" / "seed1"
    assert {src / f"eval_{t}" for t in DG} <= finished(runs)
    trained = (src / "metrics.json").stat().st_mtime_ns
    _run(capsys, "xd", data, runs, cache, "--datasets", "dtd")
    assert (src / "metrics.json").stat().st_mtime_ns == trained  # trained once, for dg; xd only evaluates
    assert read(src / "eval_dtd")["source_dataset"] == "imagenet" and (src / "eval_dtd" / "metrics.json").exists()


def test_learner_opt_reaches_the_methods_that_have_it(deep, data, tmp_path, capsys):
    """--learner-opt depth_*=2 makes a deep method at the official depths fit vlp-tiny-vit's 2 + 2 layers; CoOp in
    the same grid, which has no such option, runs with its own config; an option no learner has is refused."""
    runs = tmp_path / "runs"
    full = deep_learners.FULL_DEPTH
    code, _, err = benchmark(capsys, "--protocol", "fewshot", "--datasets", "dtd", "--shots", "1", "--seeds", "1",
                             "--methods", f"coop,{full}", "--root", str(data), "--out", str(runs), "--cache-dir", "",
                             "--learner-opt", "depth_text=2", "--learner-opt", "depth_vision=2", *FAST_VIT)
    assert code == 0, err[-3000:]
    deep_cfg = read(runs / "dtd" / full / "1shots" / "seed1", "learner.json")["config"]
    assert (deep_cfg["depth_text"], deep_cfg["depth_vision"]) == (2, 2)
    assert "depth_text" not in read(runs / "dtd" / "coop" / "1shots" / "seed1", "learner.json")["config"]
    code, _, err = benchmark(capsys, "--protocol", "fewshot", "--datasets", "dtd", "--methods", "coop", "--root",
                             str(data), "--out", str(tmp_path / "x"), "--learner-opt", "depthh=2", "--dry-run")
    assert code == 2 and "--learner-opt depthh: not an option of any registered prompt learner" in err

