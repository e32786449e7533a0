"""No silent random weights (issue 12 §3): omitting ``--pretrained`` means the paper's weights (``openai``) or a
refusal that lists the tags; random weights are an explicit ``--pretrained random``, shown in the command's output,
recorded in ``config.json`` and marked in every report row."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
import torch

from vlprompt.backbones import create_backbone, recorded_pretrained
from vlprompt.errors import BackboneError, WeightsNotFoundError
from vlprompt.reports.results import read_run

# The CLI in a child process with the tiny test backbones registered (argv[1]: their config folder).
CHILD = r"""
import sys, open_clip
open_clip.add_model_config(sys.argv[1])
from vlprompt.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def test_no_tag_for_an_architecture_without_openai_weights_is_refused():
    with pytest.raises(BackboneError, match="no 'openai' weights.*laion400m_e32.*--pretrained random"):
        create_backbone("ViT-B-16-plus-240")  # LAION weights only
    with pytest.raises(BackboneError, match="none: this architecture has no released weights.*--pretrained random"):
        create_backbone("vlp-tiny-rn")


def test_default_is_openai_and_offline_it_fails_with_the_clear_message(tmp_path, monkeypatch):
    from hub_cache import offline_hub

    offline_hub(monkeypatch, tmp_path / "hub")
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="--pretrained openai are not available locally.*resnet50_clip.openai"):
        create_backbone("RN50")


def test_random_is_explicit_seeded_warned_and_recorded(caplog):
    with caplog.at_level(logging.WARNING, logger="vlprompt"):
        a = create_backbone("vlp-tiny-rn", "random")
    assert "RANDOM weights" in caplog.text
    b = create_backbone("vlp-tiny-rn", "random")
    assert a.identity()["pretrained"] == "random"
    for (k, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(x, y), k  # seed 0, whatever the global RNG did before
    mc_random, mc_again = create_backbone("microclip", "random"), create_backbone("microclip", "random")
    assert mc_random.identity()["pretrained"] == "random"
    assert mc_random.fingerprint == mc_again.fingerprint != create_backbone("microclip").fingerprint
    # vlprompt 0.1.0 recorded None for random open_clip weights: rebuilt as random, not as the new default
    assert recorded_pretrained({"name": "RN50", "pretrained": None}) == "random"
    # micro-CLIP records from before v2 became the default recorded None for v1: rebuilt as v1 (new ones say "v2")
    assert recorded_pretrained({"name": "microclip", "pretrained": None}) == "v1"
    assert recorded_pretrained({"name": "microclip", "pretrained": "v2"}) == "v2"
    assert recorded_pretrained({"name": "RN50", "pretrained": "openai"}) == "openai"


def test_cli_refuses_without_pretrained_and_marks_random_runs(tiny_model_configs, image_folder, tmp_path):
    base = ["train", "--dataset", f"folder:{image_folder}", "--shots", "2", "--epochs", "1", "--n-ctx", "2",
            "--backbone", "vlp-tiny-rn", "--device", "cpu", "--cache-dir", ""]

    def run(*argv):
        return subprocess.run([sys.executable, "-c", CHILD, str(tiny_model_configs), *argv],
                              capture_output=True, text=True, timeout=300)

    refused = run(*base, "--out", str(tmp_path / "none"))
    assert refused.returncode != 0
    assert "--pretrained random" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "none" / "config.json").exists()

    out = tmp_path / "runs" / "rand"
    ok = run(*base, "--pretrained", "random", "--out", str(out))
    assert ok.returncode == 0, ok.stderr
    assert "RANDOM weights" in ok.stderr  # in the command's own output
    assert json.loads((out / "config.json").read_text())["backbone"]["pretrained"] == "random"
    assert read_run(out).backbone == "vlp-tiny-rn (random weights)"
    report = run("report", str(tmp_path / "runs"), "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    assert "vlp-tiny-rn (random weights)" in (tmp_path / "report" / "results.md").read_text()
    assert "vlp-tiny-rn (random weights)" in (tmp_path / "report" / "results.csv").read_text()
