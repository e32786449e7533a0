"""The on-disk feature cache: hits and misses, damaged or mismatched entries detected and rebuilt (never trusted),
atomic writes, and the engine's use of it (test/val features computed once per backbone, split and transform)."""

from __future__ import annotations

import json

import pytest
import torch

from vlprompt.features.cache import FeatureCache

KEY = {"backbone": {"name": "vlp-tiny-rn", "fingerprint": "abc"}, "dataset": "pets", "split": "test",
       "records": "d1", "num": 4, "transform": "t1", "precision": "fp32"}


class Counter:
    """A ``compute`` callable that counts its calls and returns a fresh random tensor each time."""

    def __init__(self, shape=(4, 8)):
        self.calls, self.shape = 0, shape

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        return torch.randn(*self.shape)


def _entry(cache: FeatureCache, key: dict):
    data, meta, _ = cache._paths(key)
    return data, meta


def test_miss_then_hit_and_distinct_keys(tmp_path):
    cache, compute = FeatureCache(tmp_path), Counter()
    first = cache.get_or_compute(KEY, compute)
    again = cache.get_or_compute(KEY, compute)
    assert compute.calls == 1 and torch.equal(first, again)
    for field, value in [("transform", "t2"), ("split", "val"), ("records", "d2"), ("precision", "amp"),
                         ("backbone", {"name": "vlp-tiny-rn", "fingerprint": "other-weights"})]:
        other = cache.get_or_compute({**KEY, field: value}, compute)
        assert not torch.equal(other, first), field
    assert compute.calls == 6
    # Key order does not matter (the key is hashed canonically).
    assert torch.equal(cache.get(dict(reversed(list(KEY.items())))), first)


def _truncate(data, meta):
    data.write_bytes(data.read_bytes()[:-7])


def _flip_byte(data, meta):
    raw = bytearray(data.read_bytes())
    raw[-3] ^= 0xFF  # inside the tensor payload: same size, valid header, wrong values
    data.write_bytes(bytes(raw))


def _garbage_sidecar(data, meta):
    meta.write_text("{not json")


def _other_key_in_sidecar(data, meta):  # e.g. a hash collision or a copied file
    m = json.loads(meta.read_text())
    m["key"]["split"] = "train"
    meta.write_text(json.dumps(m))


def _missing_data(data, meta):
    data.unlink()


def _other_shape(data, meta):
    from safetensors.torch import save_file

    save_file({"features": torch.zeros(2, 8)}, str(data))


def _wrong_tensor_name(data, meta):
    from safetensors.torch import save_file

    save_file({"weights": torch.zeros(4, 8)}, str(data))


@pytest.mark.parametrize("damage", [_truncate, _flip_byte, _garbage_sidecar, _other_key_in_sidecar, _missing_data,
                                    _other_shape, _wrong_tensor_name])
def test_damaged_entries_are_detected_and_rebuilt(tmp_path, damage, caplog):
    cache, compute = FeatureCache(tmp_path), Counter()
    original = cache.get_or_compute(KEY, compute)
    damage(*_entry(cache, KEY))
    assert cache.get(KEY) is None
    assert "invalid" in caplog.text
    rebuilt = cache.get_or_compute(KEY, compute)
    assert compute.calls == 2 and not torch.equal(rebuilt, original)  # recomputed, not read back
    assert torch.equal(cache.get(KEY), rebuilt)  # and stored again, valid


def test_writes_are_atomic_and_sidecar_comes_last(tmp_path, monkeypatch):
    import vlprompt.features.cache as cache_mod

    cache = FeatureCache(tmp_path)
    old = torch.randn(4, 8)
    cache.put(KEY, old)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".safetensors"]  # no temp files left

    # A crash while writing the tensor leaves the previous entry untouched and no temporary file.
    def failing_save(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", failing_save)
    with pytest.raises(OSError):
        cache.put(KEY, torch.randn(4, 8))
    monkeypatch.undo()
    assert torch.equal(cache.get(KEY), old)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".safetensors"]

    # A crash after the new tensor but before its sidecar: the old sidecar does not vouch for the new data.
    def failing_json(path, obj):
        raise OSError("killed")

    monkeypatch.setattr(cache_mod, "atomic_write_json", failing_json)
    with pytest.raises(OSError):
        cache.put(KEY, torch.randn(4, 8))
    assert cache.get(KEY) is None

    # A crash before the first sidecar: no entry at all.
    other = {**KEY, "split": "val"}
    with pytest.raises(OSError):
        cache.put(other, torch.randn(4, 8))
    assert cache.get(other) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_roundtrip_keeps_dtype(tmp_path, dtype):
    cache = FeatureCache(tmp_path)
    t = torch.randn(3, 5).to(dtype)
    cache.put(KEY, t)
    back = cache.get(KEY)
    assert back.dtype == dtype and torch.equal(back, t)


def test_engine_features_computed_once_per_backbone_and_split(tmp_path, image_folder, monkeypatch):
    from vlprompt.backbones import create_backbone
    from vlprompt.data.transforms import build_transform, transform_fingerprint
    from vlprompt.engine import pipeline as P

    records = P.prepare_data(f"folder:{image_folder}", None, None, 1).splits.test
    calls = []
    real = P.extract_features
    monkeypatch.setattr(P, "extract_features", lambda *a, **k: calls.append(k.get("desc")) or real(*a, **k))

    def features(backbone, split="test", cache_dir=str(tmp_path)):
        return P.cached_features(backbone, records, transform_fingerprint(backbone.preprocess, False),
                                 build_transform(backbone.preprocess, train=False), dataset="folder", split=split,
                                 root=str(image_folder), precision="fp32", cache_dir=cache_dir)

    rn = create_backbone("vlp-tiny-rn", "random")
    first = features(rn)
    assert torch.equal(features(rn), first) and len(calls) == 1  # hit
    features(rn, split="val-fewshot")  # another split: miss
    features(create_backbone("vlp-tiny-vit", "random"))  # another backbone: miss
    features(rn, cache_dir="")  # caching disabled: always computed
    assert len(calls) == 4


def test_an_image_rewritten_at_the_same_path_is_not_served_stale(tmp_path, image_folder):
    """Same dataset name, same relative paths and labels, other pixels (a regenerated or edited dataset): the cache
    must encode the new file, not return the old file's features (it did before the key held the file's stat)."""
    import os

    from PIL import Image

    from vlprompt.backbones import create_backbone
    from vlprompt.data.transforms import build_transform, transform_fingerprint
    from vlprompt.engine import pipeline as P

    records = P.prepare_data(f"folder:{image_folder}", None, None, 1).splits.test
    rn = create_backbone("vlp-tiny-rn", "random")

    def features():
        return P.cached_features(rn, records, transform_fingerprint(rn.preprocess, False),
                                 build_transform(rn.preprocess, train=False), dataset="folder", split="test",
                                 root=str(image_folder), precision="fp32", cache_dir=str(tmp_path))

    before = features()
    path = records[0].path
    st = os.stat(path)
    Image.new("RGB", Image.open(path).size, (255, 0, 255)).save(path)  # new pixels at the same path
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # and a later mtime, as an edit leaves
    after = features()
    assert not torch.equal(after[0], before[0])  # the rewritten image was encoded again
    torch.testing.assert_close(after[1:], before[1:])  # the others are the same images
