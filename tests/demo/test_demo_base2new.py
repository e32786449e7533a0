"""The demo's base-to-new table on the v2 suite (issue 15): every registered method that runs base-to-new is a row
with base, new, H and the published averages; a deep method whose official depth exceeds micro-CLIP v2's 4 + 4
layers runs with every layer prompted, recorded and stated. Run on a random-weight micro-CLIP v2 written by the test
(the v2 checkpoint is not shipped), with a test-only deep learner at the official IVLP depths (12 and 12)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

import vlprompt.backbones.microclip as mc
from vlprompt.microclip.demo_base2new import PUBLISHED, base2new_lines, base2new_methods, fitting_options
from vlprompt.prompts import base as prompt_base
from vlprompt.prompts.deep import IndependentDeepPrompts, IndependentPromptConfig

DEEP = "test-ivlp12"


@dataclass(frozen=True)
class _FullDepth(IndependentPromptConfig):
    half_tokens: bool = False  # official depths 12/12 (IndependentPromptConfig's defaults)


class _Ivlp12(IndependentDeepPrompts):
    method = DEEP
    config_class = _FullDepth
    display_name = "IVLP-test"


@pytest.fixture
def deep():
    prompt_base.register_prompt_learner(_Ivlp12)
    try:
        yield DEEP
    finally:
        prompt_base._REGISTRY.pop(DEEP, None)


@pytest.fixture(scope="module")
def v2_weights(tmp_path_factory):
    """A random-weight micro-CLIP v2 in the compact format (the architecture the shipped v2 file will have)."""
    from vlprompt.microclip import world2
    from vlprompt.microclip.pretrain import vocabulary_token_ids

    torch.manual_seed(3)
    m = mc.create_microclip_model(mc.MICROCLIP_V2_CONFIG).eval()
    with torch.no_grad():
        m.token_embedding.weight.copy_(mc.init_token_table(0))
    path = tmp_path_factory.mktemp("v2w") / "v2-random.safetensors"
    mc.save_compact(path, m, vocabulary_token_ids(world2), token_seed=0, config=mc.MICROCLIP_V2_CONFIG)
    return path


def test_depths_beyond_the_towers_are_set_to_every_layer(deep):
    assert fitting_options(DEEP, 4, 4) == {"depth_text": 4, "depth_vision": 4}
    assert fitting_options(DEEP, 12, 12) == {} and fitting_options("coop", 4, 4) == {}
    assert fitting_options("zeroshot", 4, 4) == {}


@pytest.mark.slow  # ~40 s on one thread: the aircraft task's images encoded by 5 methods (the prompted one uncached)
def test_v2_base2new_table_lists_every_method_with_the_published_averages(deep, v2_weights, tmp_path):
    from vlprompt.microclip.demo import VARIANTS, DemoConfig, run_demo

    cfg = DemoConfig(out=str(tmp_path / "demo"), tasks=("aircraft",), shots=(1,), seeds=(1,), workers=0,
                     task_dir=str(tmp_path / "tasks"), epochs=1, domain_shift=False, suite="v2",
                     weights=str(v2_weights), base2new=("aircraft",), adapters=())
    results = run_demo(cfg, progress=False)
    methods = set(base2new_methods())  # every registered learner (the deep methods too once merged) + zero-shot
    assert {"coop", "cocoop", "kgcoop", DEEP, "zeroshot"} <= methods
    assert set(results["base2new"]) == set(results["base2new_methods"]) == methods
    about = results["base2new_methods"]
    assert about[DEEP]["options"] == {"depth_text": 4, "depth_vision": 4}
    assert about[DEEP]["layers"] == {"text": 4, "vision": 4}
    assert all(about[m]["options"] == {} for m in ("coop", "cocoop", "kgcoop", "zeroshot"))
    runs = tmp_path / "demo" / "runs" / "aircraft" / "base2new" / "aircraft"
    deep_run = runs / DEEP / "4shots" / "seed1"
    learner = json.loads((deep_run / "learner.json").read_text())
    assert learner["prompts_image"] is True and learner["config"]["depth_vision"] == 4
    cell = results["base2new"][DEEP]["aircraft"]
    assert cell["base"] == json.loads((deep_run / "metrics.json").read_text())["accuracy"]
    assert cell["new"] == json.loads((deep_run / "eval_new" / "metrics.json").read_text())["accuracy"]

    # aircraft is a few-shot task too: its few-shot rows hold its few-shot runs only, not the base-to-new ones
    zs = json.loads((tmp_path / "demo" / "runs" / "aircraft" / "zeroshot" / "metrics.json").read_text())["accuracy"]
    assert results["summary"]["tasks"]["aircraft"]["zero_shot"] == zs
    assert {(r["label"], r["shots"]) for r in results["rows"] if r["dataset"] == "aircraft"} == {
        ("Zero-shot CLIP", None), ("Linear probe", 1), *((v, 1) for v in VARIANTS)}
    report = (tmp_path / "demo" / "report.md").read_text()
    coop = results["base2new"]["coop"]["aircraft"]
    assert (f"| CoOp | official | {coop['base']:.1f} | {coop['new']:.1f} | {coop['H']:.1f} | {coop['H']:.1f} | "
            "82.7 | 63.2 | 71.7 |") in report
    assert "| IVLP-test | depth_text=4, depth_vision=4 |" in report  # not published: dashes
    assert "| — | — | — |" in report.split("| IVLP-test |")[1].splitlines()[0]
    assert "IVLP-test depth_text=4, depth_vision=4" in report and "4 text + 4 vision layers" in report
    assert "Ordering by H here: " in report and "published: " in report


def test_section_rows_and_published_numbers():
    results = {"base2new": {"maple": {"t": {"base": 70.0, "new": 60.0, "H": 64.6}},
                            "coop": {"t": {"base": 80.0, "new": 40.0, "H": 53.3}}},
               "base2new_methods": {"coop": {"name": "CoOp", "options": {}, "published": PUBLISHED["coop"],
                                             "layers": {"text": 4, "vision": 4}},
                                    "maple": {"name": "MaPLe", "options": {"prompt_depth": 4},
                                              "published": PUBLISHED["maple"], "layers": {"text": 4, "vision": 4}}}}
    text = "\n".join(base2new_lines(results))
    assert "| MaPLe | prompt_depth=4 | 70.0 | 60.0 | 64.6 | 64.6 | 82.3 | 75.1 | 78.5 |" in text
    assert "Ordering by H here: MaPLe > CoOp; published: MaPLe > CoOp (the same order)." in text
    assert "MaPLe prompt_depth=4." in text
    assert text.index("| CoOp |") < text.index("| MaPLe |")  # rows in the published table's order
