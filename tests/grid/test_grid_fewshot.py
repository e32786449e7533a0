"""The few-shot protocol through the registry-driven grid: every registered method (coop, cocoop, kgcoop), the
coop-csc variant and both baselines run as run folders, each trained with its own official recipe; the dry run
lists exactly the folders a real run creates; a resumed grid re-runs only what is unfinished."""

from __future__ import annotations

import pytest
from grid_helpers import FAST, benchmark, dry_run_folders, finished, read
from grid_layouts import single_thread, write_dtd4

from vlprompt.adapters import get_adapter_class, list_adapters
from vlprompt.cli.main import main
from vlprompt.engine.recipe import method_recipe
from vlprompt.prompts import get_prompt_learner_class, list_prompt_learners
from vlprompt.runs.grid import grid_methods

#: Every method the grid accepts, from the registry: a newly registered method runs in this grid too — except the
#: methods that prompt the image tower (IVLP, VPT-deep, MaPLe, PromptSRC), which need a ViT and refuse this grid's
#: ResNet (``vlp-tiny-rn``); they run every protocol in tests/grid/test_grid_prompted.py. ``prompts_image`` is a
#: class attribute or, where it depends on the options (depth_vision 0 prompts no image), a property: truthy either way.
VIT_ONLY = {m for m in list_prompt_learners() if get_prompt_learner_class(m).prompts_image}
METHODS = [m for m in grid_methods() if m not in VIT_ONLY]
#: Official train batch sizes (CoOp:configs/trainers/CoOp/rn50.yaml 32, CoCoOp:…/vit_b16_c4_ep10_batch1_ctxv1.yaml
#: 1, KgCoOp:…/vit_b16_ep100_ctxv1.yaml 128) and epochs for 1 shot (CoOp rn50_ep50; CoCoOp 10; KgCoOp 100).
BATCH = {"coop": 32, "coop-csc": 32, "cocoop": 1, "kgcoop": 128}
EPOCHS_1SHOT = {"coop": 50, "coop-csc": 50, "cocoop": 10, "kgcoop": 100}
#: Each method's own learner defaults (CoOpConfig, CoCoOpConfig, KgCoOpConfig).
LEARNER = {"coop": (16, None), "coop-csc": (16, None), "cocoop": (4, "a photo of a"), "kgcoop": (4, "a photo of a")}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    yield from single_thread()


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    base = tmp_path_factory.mktemp("fewshot")
    write_dtd4(base / "data")
    runs = base / "runs"
    argv = ["--datasets", "dtd", "--shots", "1", "--seeds", "1", "--methods", ",".join(METHODS),
            "--root", str(base / "data"), "--out", str(runs), *FAST]
    return runs, argv


@pytest.fixture(scope="module")
def ran(grid):
    runs, argv = grid
    assert main(["benchmark", *argv, "--dry-run"]) == 0 and not runs.exists()  # nothing written, nothing loaded
    assert main(["benchmark", *argv]) == 0
    return runs


def test_the_grid_holds_every_registered_method():
    assert METHODS[-2:] == ["zeroshot", "linear-probe"] and "coop-csc" in METHODS
    assert set(list_prompt_learners()) | set(list_adapters()) | {"coop-csc", "zeroshot", "linear-probe"} == \
        set(METHODS) | VIT_ONLY
    assert VIT_ONLY == {"ivlp", "vpt", "maple", "promptsrc"}
    assert {"tip-adapter", "tip-adapter-f", "clip-adapter", "taskres", "clap", "lpplusplus"} <= set(list_adapters())
    assert {"coop", "cocoop", "kgcoop"} <= set(list_prompt_learners())


def test_dry_run_lists_exactly_the_runs_a_real_run_creates(grid, capsys, tmp_path):
    runs, argv = grid
    fresh = tmp_path / "fresh"
    code, out, _ = benchmark(capsys, *[str(fresh) if a == str(runs) else a for a in argv], "--dry-run")
    assert code == 0 and not fresh.exists()
    listed = dry_run_folders(out)
    assert listed == {fresh / "dtd" / "zeroshot"} | {fresh / "dtd" / m / "1shots" / "seed1" for m in METHODS
                                                     if m != "zeroshot"}
    code, _, _ = benchmark(capsys, *[str(fresh) if a == str(runs) else a for a in argv], "--no-report")
    assert code == 0 and finished(fresh) == listed


def test_each_method_runs_with_its_own_resolved_recipe(ran):
    for method in METHODS:
        folder = ran / "dtd" / (method if method == "zeroshot" else f"{method}/1shots/seed1")
        cfg = read(folder)
        if method in ("zeroshot", "linear-probe") or method in list_adapters():
            assert cfg["method"] == method
            if method in list_adapters():  # an adapter records its views; CoOp's --epochs does not reach it
                assert cfg["adapter"]["uses_views"] == get_adapter_class(method).uses_views
            continue
        learner = "coop" if method == "coop-csc" else method
        assert cfg["method"] == learner
        assert cfg["train"]["batch_size"] == method_recipe(learner, 1, "dtd")["batch_size"]
        assert cfg["train"]["epochs"] == 1  # the user's value wins over the recipe
        assert cfg["learner"]["csc"] == (method == "coop-csc")
        if method in BATCH:  # the official numbers
            assert cfg["train"]["batch_size"] == BATCH[method]
            assert (cfg["learner"]["n_ctx"], cfg["learner"]["ctx_init"]) == LEARNER[method]
    assert read(ran / "dtd/kgcoop/1shots/seed1")["learner"]["kg_weight"] == 8.0


def test_dry_run_shows_each_methods_recipe_without_epochs(grid, capsys):
    runs, argv = grid
    argv = [a for i, a in enumerate(argv) if a != "--epochs" and (i == 0 or argv[i - 1] != "--epochs")]
    code, out, _ = benchmark(capsys, *argv, "--dry-run")
    assert code == 0
    lines = {line.split()[3]: line for line in out.splitlines() if line.startswith(("run ", "skip"))}
    for method, batch in BATCH.items():
        assert f"epochs {EPOCHS_1SHOT[method]} batch {batch}" in lines[method]
        assert "fewshot  dtd" in lines[method] and "shots 1  seed 1" in lines[method]
    assert "epochs" not in lines["zeroshot"] and "epochs" not in lines["linear-probe"]


def test_resume_reruns_only_the_unfinished_run(grid, ran, capsys):
    runs, argv = grid
    before = {p: (p / "metrics.json").stat().st_mtime_ns for p in finished(runs)}
    victim = runs / "dtd" / "cocoop" / "1shots" / "seed1"
    (victim / "metrics.json").unlink()
    code, out, _ = benchmark(capsys, *argv, "--no-report")
    assert code == 0 and f"{len(METHODS)} runs: 1 ran, {len(METHODS) - 1} already finished, 0 failed" in out
    after = {p: (p / "metrics.json").stat().st_mtime_ns for p in finished(runs)}
    assert set(after) == set(before) and [p for p in after if after[p] != before[p]] == [victim]


def test_a_settings_file_of_the_old_few_shot_runner_still_resumes(tmp_path):
    """``benchmark.json`` as the few-shot-only runner wrote it (no ``format``; its --n-ctx/--ctx-init/
    --class-token-position defaults always recorded): the same flags resume, other flags are refused."""
    import json

    from vlprompt.benchmark import BenchmarkConfig, check_settings
    from vlprompt.engine.config import TrainConfig
    from vlprompt.errors import ConfigError

    train = {k: v for k, v in TrainConfig(epochs=1, augment="none").to_dict().items()
             if k not in ("num_workers", "eval_batch_size")}
    old = {"vlprompt_version": "0.1.0", "settings": {
        "backbone": "vlp-tiny-rn", "pretrained": "random", "train": train,
        "learner": {"n_ctx": 16, "ctx_init": None, "class_token_position": "end"}},
        "grid": {"datasets": ["dtd"], "shots": [1], "seeds": [1], "methods": ["coop"]}}
    (tmp_path / "benchmark.json").write_text(json.dumps(old))
    same = dict(datasets=("dtd",), shots=(1,), seeds=(1,), methods=("coop",), out=str(tmp_path),
                backbone="vlp-tiny-rn", pretrained="random", train=TrainConfig(epochs=1, augment="none"))
    check_settings(BenchmarkConfig(**same))  # accepted, and rewritten in the current format
    written = json.loads((tmp_path / "benchmark.json").read_text())
    assert written["format"] == 2 and written["grids"]["fewshot"]["methods"] == ["coop"]
    with pytest.raises(ConfigError, match="learner.n_ctx: was None, now 4"):
        check_settings(BenchmarkConfig(**same, learner={"n_ctx": 4, "ctx_init": None}))
    (tmp_path / "benchmark.json").write_text(json.dumps({**old, "settings": {
        **old["settings"], "learner": {"n_ctx": 4, "ctx_init": None, "class_token_position": "end"}}}))
    check_settings(BenchmarkConfig(**same, learner={"n_ctx": 4, "ctx_init": None}))  # old --n-ctx 4 = new --n-ctx 4


def test_split_files_with_the_generic_name_get_their_folder_name():
    """Micro task folders each hold a ``split.json``: two of them in one grid must not share a run folder."""
    from vlprompt.runs.grid import dataset_dirname

    assert dataset_dirname("split:/tasks/pets/split.json") == "pets"
    assert dataset_dirname("split:/tasks/cars/split.json") == "cars"
    assert dataset_dirname("split:/x/split_zhou_OxfordPets.json") == "split_zhou_OxfordPets.json"
    assert dataset_dirname("folder:/data/my data/") == "my_data" and dataset_dirname("dtd") == "dtd"
