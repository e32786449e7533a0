"""PromptClassifier: the same predictions from file paths, PIL images and a preprocessed tensor batch."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlprompt import PromptClassifier
from vlprompt.cli.main import main
from vlprompt.data.transforms import build_transform
from vlprompt.errors import ConfigError


def test_predict_accepts_paths_pil_and_tensors(image_folder, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--dataset", f"folder:{image_folder}", "--shots", "2", "--epochs", "1", "--n-ctx", "2",
                 "--backbone", "vlp-tiny-rn", "--pretrained", "random", "--device", "cpu", "--cache-dir", "", "--out", str(out)]) == 0
    clf = PromptClassifier.load(out)
    paths = sorted((image_folder / "test" / "blue_jay").glob("*.png"))[:3]
    by_path = clf.predict(paths)
    by_pil = clf.predict([Image.open(p) for p in paths])
    tf = build_transform(clf.backbone.preprocess, train=False)
    by_tensor = clf.predict(torch.stack([tf(Image.open(p).convert("RGB")) for p in paths]))
    assert by_path.labels == by_pil.labels == by_tensor.labels
    assert torch.allclose(by_path.probs, by_tensor.probs) and torch.allclose(by_path.probs.sum(-1), torch.ones(3))
    assert clf.text_features().shape == (3, clf.backbone.embed_dim)
    assert torch.allclose(clf.text_features().norm(dim=-1), torch.ones(3))
    with pytest.raises(ConfigError, match="PIL images, file paths or a tensor"):
        clf.predict([42])
