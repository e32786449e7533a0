"""A demo folder holds one suite on one micro-CLIP: now that the default is suite v2 on micro-CLIP v2, re-running
`vlprompt demo` into a folder of the old default (suite v1 on v1) is refused instead of skipping its finished
runs — v1 and v2 share task names (``shapes``, ``positions``, …) — and reporting them as v2's."""

from __future__ import annotations

import json

import pytest

from vlprompt.backbones import microclip as mc
from vlprompt.errors import ConfigError, WeightsNotFoundError
from vlprompt.microclip.demo import DEMO_SETTINGS, DemoConfig, check_out, run_demo

OFFICIAL = {"fewshot": "official", "base2new": "official"}


def _old_results(out, **config):
    out.mkdir(parents=True)
    (out / "results.json").write_text(json.dumps({"config": config}))


def test_a_folder_of_the_old_default_demo_is_refused_naming_both(tmp_path):
    out = tmp_path / "demo"
    _old_results(out, suite="v1", weights="shipped", tasks=["shapes"])  # as written while v1 was the default
    with pytest.raises(ConfigError, match=r"holds a demo of suite v1 on micro-CLIP weights v1, not suite v2 on v2.*"
                                          r"--suite v1 --weights v1"):
        run_demo(DemoConfig(out=str(out), task_dir=str(tmp_path / "tasks")), progress=False)  # the new default
    assert not (out / DEMO_SETTINGS).exists() and not (tmp_path / "tasks").exists()  # refused before any work
    check_out(DemoConfig(out=str(out), suite="v1"))  # the same settings resume
    assert json.loads((out / DEMO_SETTINGS).read_text()) == {"suite": "v1", "weights": "v1", "epochs": OFFICIAL}


def test_old_suite_v2_results_ran_on_v2_and_demo_json_decides_after(tmp_path):
    out = tmp_path / "demo"
    _old_results(out, suite="v2", weights="shipped")  # `--suite v2` before the switch already used the v2 weights
    check_out(DemoConfig(out=str(out)))
    assert json.loads((out / DEMO_SETTINGS).read_text()) == {"suite": "v2", "weights": "v2", "epochs": OFFICIAL}
    with pytest.raises(ConfigError, match="suite v2 on micro-CLIP weights v2, not suite v2 on /x.safetensors"):
        check_out(DemoConfig(out=str(out), weights="/x.safetensors"))
    fresh = tmp_path / "fresh"
    check_out(DemoConfig(out=str(fresh), suite="v1"))
    assert json.loads((fresh / DEMO_SETTINGS).read_text()) == {"suite": "v1", "weights": "v1", "epochs": OFFICIAL}


def test_an_interrupted_old_default_demo_is_recognised_by_its_runs(tmp_path):
    out = tmp_path / "demo"
    run = out / "runs" / "shapes" / "zeroshot"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"backbone": {"name": "microclip", "pretrained": None}}))
    with pytest.raises(ConfigError, match="holds a demo of suite v1 on micro-CLIP weights v1"):
        check_out(DemoConfig(out=str(out)))
    check_out(DemoConfig(out=str(out), suite="v1"))


def test_a_folder_of_another_protocol_is_refused_and_an_old_demo_json_reads_as_official_epochs(tmp_path):
    out = tmp_path / "demo"
    check_out(DemoConfig.short(str(out)))  # the CLI's default: 50 epochs, base-to-new with the methods' recipes
    assert json.loads((out / DEMO_SETTINGS).read_text())["epochs"] == {"fewshot": 50, "base2new": "official"}
    check_out(DemoConfig.short(str(out)))  # the same protocol resumes
    with pytest.raises(ConfigError, match=r"trained with epochs \{'fewshot': 50.*protocol paper.*--protocol short"):
        check_out(DemoConfig(out=str(out)))  # --protocol paper would report the 50-epoch runs as official ones
    with pytest.raises(ConfigError, match="protocol quick"):
        check_out(DemoConfig.quick(str(out)))
    (out / DEMO_SETTINGS).write_text(json.dumps({"suite": "v2", "weights": "v2"}))  # written before epochs were:
    with pytest.raises(ConfigError, match="protocol short"):  # the paper's 3-seed, 200-epoch runs of the old default
        check_out(DemoConfig.short(str(out)))
    check_out(DemoConfig(out=str(out)))
    assert json.loads((out / DEMO_SETTINGS).read_text())["epochs"] == OFFICIAL


def test_suite_v1_without_the_v1_file_fails_up_front_saying_where_it_is(tmp_path, monkeypatch):
    monkeypatch.setitem(mc.BUNDLED_WEIGHTS, "v1", tmp_path / "gone.safetensors")  # as in an installed wheel
    with pytest.raises(WeightsNotFoundError, match="not in this installation.*from a source checkout"):
        run_demo(DemoConfig(out=str(tmp_path / "demo"), suite="v1", task_dir=str(tmp_path / "tasks")), progress=False)
    assert not (tmp_path / "demo").exists() and not (tmp_path / "tasks").exists()


def test_cli_defaults_suite_v2_and_quick_runs_in_this_process(monkeypatch):
    from vlprompt.cli import main as cli_main
    from vlprompt.microclip import demo

    seen = []
    monkeypatch.setattr(demo, "run_demo", lambda cfg, progress: seen.append(cfg) or {"seconds": 0.0, "summary": {
        "tasks": {}}})
    assert cli_main.main(["demo", "--quick", "--out", "x"]) == 0
    assert cli_main.main(["demo", "--out", "y"]) == 0
    assert cli_main.main(["demo", "--quick", "--workers", "2", "--suite", "v1", "--out", "z"]) == 0
    assert cli_main.main(["demo", "--protocol", "paper", "--out", "p"]) == 0
    quick, short, v1, paper = seen
    assert (quick.suite, quick.workers, quick.tasks, quick.seeds) == ("v2", 0, ("thermal", "objects"), (1,))
    assert (short.suite, short.protocol, short.seeds, short.epochs, short.base2new, short.base2new_epochs) == (
        "v2", "short", (1,), 50, ("aircraft", "scenes"), False)
    assert short.tasks is None and short.shots == (1, 2, 4, 8, 16) and short.adapters is None and short.domain_shift
    assert short.workers == demo.default_workers()
    assert (paper.protocol, paper.seeds, paper.epochs, paper.base2new) == ("paper", (1, 2, 3), None, None)
    assert (v1.suite, v1.workers, demo.demo_weights(v1)) == ("v1", 2, "v1")
