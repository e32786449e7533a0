"""Augmented views in the on-disk feature cache (issue 16): view ``v`` of an image is torchvision's own train
transform under the documented per-(aug seed, view, image) seed, independent of order, batch, worker and thread
count; each view is one cache entry, so a later request for fewer views, another method or a re-run on the same
few-shot images never calls the image encoder for them, and a damaged entry is rebuilt."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torchvision import transforms as T

from vlprompt.data.images import load_image
from vlprompt.errors import ConfigError
from vlprompt.features.views import SeededViews

PREPROCESS_SIZE = 32  # vlp-tiny-vit


def _records(folder: Path):
    from vlprompt.data import load_dataset

    return list(load_dataset(f"folder:{folder}", None).train)


def _backbone(name: str = "vlp-tiny-vit"):
    from vlprompt.backbones import create_backbone

    torch.manual_seed(0)
    return create_backbone(name, "random", device="cpu")


def _count_encoder_rows(backbone) -> list[int]:
    """Wrap ``backbone.encode_image`` so that every call appends its batch size to the returned list."""
    calls: list[int] = []
    real = backbone.encode_image

    def counted(images):
        calls.append(int(images.shape[0]))
        return real(images)

    backbone.encode_image = counted
    return calls


def _views(backbone, records, root, cache_dir, num_views, aug_seed=1, **kw):
    from vlprompt.engine import pipeline as P

    return P.cached_views(backbone, records, dataset="folder", split="train-fewshot", root=str(root),
                          num_views=num_views, aug_seed=aug_seed, cache_dir=str(cache_dir), batch_size=7, **kw)


def test_a_view_is_torchvisions_train_transform_under_the_documented_seed(textured_folder):
    """Pinned against torchvision itself (not our build_transform) and the seed formula of the module docstring;
    the caller's global RNG is left where it was."""
    from vlprompt.data.transforms import build_transform
    from vlprompt.preprocess import OPENAI_MEAN, OPENAI_STD, PreprocessCfg

    records = _records(textured_folder)
    pre = PreprocessCfg(image_size=PREPROCESS_SIZE, mean=OPENAI_MEAN, std=OPENAI_STD, interpolation="bicubic")
    official = T.Compose([T.RandomResizedCrop(PREPROCESS_SIZE, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3),
                                              interpolation=T.InterpolationMode.BICUBIC),
                          T.RandomHorizontalFlip(0.5), T.ToTensor(), T.Normalize(OPENAI_MEAN, OPENAI_STD)])
    ours = SeededViews(records, build_transform(pre, True, crop_scale=(0.5, 1.0)), [0, 3], aug_seed=7,
                       root=str(textured_folder))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    for index in (0, 5, len(records) + 2):  # view 0 of records 0 and 5, view 3 of record 2
        v, n = (0, index) if index < len(records) else (3, index - len(records))
        rel = os.path.relpath(records[n].path, textured_folder).replace(os.sep, "/")
        seed = int.from_bytes(hashlib.sha256(f"vlprompt-view:7:{v}:{rel}".encode()).digest()[:8], "little") >> 1
        got, label = ours[index]
        assert torch.equal(torch.get_rng_state(), before)  # the global generator is restored
        torch.manual_seed(seed)
        assert torch.equal(got, official(load_image(records[n].path))) and label == records[n].label
        torch.set_rng_state(before)


def test_a_view_does_not_depend_on_order_subset_or_the_other_views(textured_folder):
    from vlprompt.data.transforms import build_transform
    from vlprompt.preprocess import PreprocessCfg

    records = _records(textured_folder)
    tf = build_transform(PreprocessCfg(image_size=PREPROCESS_SIZE), True)
    full = SeededViews(records, tf, [0, 1, 2], aug_seed=3, root=str(textured_folder))
    n = len(records)
    other = SeededViews(list(reversed(records))[:5], tf, [2], aug_seed=3, root=str(textured_folder))
    for i in range(5):  # view 2 of the last five records, asked alone, in reverse order, in a smaller list
        assert torch.equal(other[i][0], full[2 * n + (n - 1 - i)][0])
    assert not torch.equal(full[0][0], full[n][0])  # views 0 and 1 of record 0 differ
    reseeded = SeededViews(records, tf, [0], aug_seed=4, root=str(textured_folder))
    assert not torch.equal(reseeded[0][0], full[0][0])  # another augmentation seed, another crop


def test_fewer_views_hit_damaged_views_are_rebuilt_and_workers_agree(textured_folder, tmp_path):
    records, cache = _records(textured_folder), tmp_path / "cache"
    bb = _backbone()
    calls = _count_encoder_rows(bb)
    ten = _views(bb, records, textured_folder, cache, 10)  # (10, N, E), computed
    assert ten.shape == (10, len(records), bb.embed_dim) and sum(calls) == 10 * len(records)
    assert len(list(cache.glob("*.json"))) == 10  # one entry per view
    calls.clear()
    four = _views(bb, records, textured_folder, cache, 4)
    assert calls == [] and torch.equal(four, ten[:4])  # the first 4 of the 10: a pure cache hit

    # damage view 2's tensor (same size, wrong bytes): it is detected by its checksum and re-encoded alone
    entry = next(p for p in cache.glob("*.json") if json.loads(p.read_text())["key"]["view"] == 2)
    data = entry.with_suffix(".safetensors")
    raw = bytearray(data.read_bytes())
    raw[-3] ^= 0xFF
    data.write_bytes(bytes(raw))
    again = _views(bb, records, textured_folder, cache, 4, num_workers=2)  # view 2 rebuilt in 2 loader workers
    assert sum(calls) == len(records)
    torch.testing.assert_close(again, ten[:4], atol=1e-5, rtol=0)
    calls.clear()
    assert torch.equal(_views(bb, records, textured_folder, cache, 4), again) and calls == []  # stored again

    # what keys a view: the augmentation seed and the transform (crop scale, flip) give other entries
    _views(bb, records, textured_folder, cache, 1, aug_seed=2)
    _views(bb, records, textured_folder, cache, 1, crop_scale=(0.5, 1.0))
    _views(bb, records, textured_folder, cache, 1, flip=False)
    assert sum(calls) == 3 * len(records)
    calls.clear()
    uncached = _views(bb, records, textured_folder, "", 2)  # cache disabled: encoded, equal to the cached views
    assert sum(calls) == 2 * len(records)
    torch.testing.assert_close(uncached, ten[:2], atol=1e-5, rtol=0)
    assert _views(bb, [], textured_folder, cache, 3).shape == (3, 0, bb.embed_dim)
    with pytest.raises(ConfigError, match=r"num_views=0: .* K ≥ 1"):
        _views(bb, records, textured_folder, cache, 0)


_CHILD = """
import sys, torch
from safetensors.torch import save_file
sys.path.insert(0, sys.argv[4])
torch.set_num_threads(int(sys.argv[3]))
from conftest import TINY_CONFIGS
import json, os, tempfile, open_clip
d = tempfile.mkdtemp()
for name, cfg in TINY_CONFIGS.items():
    open(os.path.join(d, name + ".json"), "w").write(json.dumps(cfg))
open_clip.add_model_config(d)
from test_cached_views import _backbone, _records, _views
from pathlib import Path
folder = Path(sys.argv[1])
views = _views(_backbone(), _records(folder), folder, "", 3)
save_file({"views": views, "threads": torch.tensor(torch.get_num_threads())}, sys.argv[2])
"""


def test_views_are_the_same_in_a_second_process_with_another_thread_count(textured_folder, tmp_path):
    records = _records(textured_folder)
    here = _views(_backbone(), records, textured_folder, tmp_path / "cache", 3)
    out = tmp_path / "child.safetensors"
    threads = 3 if torch.get_num_threads() != 3 else 1
    tests_dir = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", _CHILD, str(textured_folder), str(out), str(threads), str(tests_dir)],
                   check=True, env=env, timeout=120)
    child = load_file(str(out))
    assert int(child["threads"]) == threads != torch.get_num_threads()
    torch.testing.assert_close(child["views"], here, atol=1e-5, rtol=0)  # same crops; encoder rounding only
    assert (here[0] - here[1]).abs().max() > 1e-3  # and the views differ from each other (the check can fail)


@pytest.fixture
def run_spec(textured_folder, tmp_path):
    from vlprompt.engine.config import TrainConfig
    from vlprompt.engine.run import RunSpec

    def make(name: str, method: str = "coop", seed: int = 1, k: int = 3) -> RunSpec:
        return RunSpec(dataset=f"folder:{textured_folder}", out=str(tmp_path / name), shots=4, seed=seed,
                       backbone="vlp-tiny-vit", pretrained="random", method=method, learner={"n_ctx": 2},
                       device="cpu", cache_dir=str(tmp_path / "cache"),
                       train=TrainConfig(epochs=1, batch_size=4, augment=f"cached:{k}", lr=0.01, warmup_epochs=0))

    return make


def test_a_second_run_on_the_same_images_reads_its_views_from_the_cache(run_spec, tmp_path):
    """CoOp ``cached:3`` encodes 3 views of its 12 training images; KgCoOp on the same seed (same few-shot images,
    aug seed = run seed) then calls the image encoder for nothing at all (views, test and val all cached); CoOp
    ``cached:2`` on seed 2 (other few-shot images, other aug seed) encodes its own 2 views."""
    from vlprompt.engine.run import train_run

    bb = _backbone()
    calls = _count_encoder_rows(bb)
    train_run(run_spec("coop"), backbone=bb)
    fewshot = json.loads((tmp_path / "coop" / "config.json").read_text())["fewshot"]
    n_train, n_val, n_test = len(fewshot["train"]), len(fewshot["val"]), 3 * 4
    assert n_train == 3 * 4 and sum(calls) == 3 * n_train + n_val + n_test  # 3 views, then val and test features
    keys = [json.loads(p.read_text())["key"] for p in (tmp_path / "cache").glob("*.json")]
    assert sorted((k["view"], k["aug_seed"], k["split"]) for k in keys if "view" in k) == [
        (v, 1, "train-fewshot") for v in range(3)]
    calls.clear()
    train_run(run_spec("kgcoop", method="kgcoop"), backbone=bb)
    assert calls == []  # no image encoder call at all
    train_run(run_spec("coop-seed2", seed=2, k=2), backbone=bb)
    other = json.loads((tmp_path / "coop-seed2" / "config.json").read_text())["fewshot"]
    assert other["train"] != fewshot["train"] and other["val"] == fewshot["val"]  # (every val image is used)
    assert sum(calls) == 2 * n_train  # its own 2 views; val and test features are shared
