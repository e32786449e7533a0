"""`vlprompt train --text-chunk N` is recorded in the run config and learns exactly what the unchunked run learns."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from vlprompt.cli.main import main


def _train(folder, out, *extra):
    return main(["train", "--dataset", f"folder:{folder}", "--shots", "2", "--epochs", "2", "--n-ctx", "4",
                 "--backbone", "vlp-tiny-vit", "--pretrained", "random", "--device", "cpu", "--augment", "none", "--batch-size", "4",
                 "--out", str(out), "--cache-dir", "", *extra])


def test_text_chunk_is_exact_end_to_end(image_folder, tmp_path):
    assert _train(image_folder, tmp_path / "whole") == 0
    assert _train(image_folder, tmp_path / "chunked", "--text-chunk", "2") == 0
    cfg = json.loads((tmp_path / "chunked" / "config.json").read_text())
    assert cfg["train"]["text_chunk"] == 2
    whole = load_file(str(tmp_path / "whole" / "learner.safetensors"))
    chunked = load_file(str(tmp_path / "chunked" / "learner.safetensors"))
    assert whole.keys() == chunked.keys()
    for k in whole:
        torch.testing.assert_close(chunked[k], whole[k], atol=1e-6, rtol=1e-5)
    m1 = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "chunked" / "metrics.json").read_text())
    assert m1["accuracy"] == m2["accuracy"]


def test_text_chunk_must_be_positive(image_folder, tmp_path, capsys):
    assert _train(image_folder, tmp_path / "bad", "--text-chunk", "0") == 2
    assert "--text-chunk must be ≥ 1" in capsys.readouterr().err
