"""load_image / check_images, transforms, the Dataset, and templates."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from vlprompt.backbones.base import PreprocessCfg
from vlprompt.data import (
    CUSTOM_TEMPLATES,
    IMAGENET_TEMPLATES,
    IMAGENET_TEMPLATES_SELECT,
    Sample,
    check_images,
    get_templates,
    load_image,
)
from vlprompt.data.dataset import ImageDataset
from vlprompt.data.transforms import build_transform, transform_fingerprint
from vlprompt.errors import ConfigError, DataError


@pytest.mark.parametrize(
    ("mode", "value", "rgb"),
    [
        ("L", 100, (100, 100, 100)),
        ("1", 1, (255, 255, 255)),
        ("RGBA", (10, 20, 30, 0), (10, 20, 30)),  # alpha dropped, as Image.convert("RGB") in the official code
        ("LA", (70, 255), (70, 70, 70)),
        ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
        ("I;16", 65535, (255, 255, 255)),
        ("I;16", 257 * 40, (40, 40, 40)),  # scaled, not clipped
        ("I", 300 * 257, (255, 255, 255)),
        ("F", 0.5, (128, 128, 128)),
    ],
)
def test_load_image_converts_modes(tmp_path, mode, value, rgb):
    path = str(tmp_path / ("x.tif" if mode in ("I;16", "I", "F", "CMYK", "LA") else "x.png"))
    Image.new(mode, (4, 4), value).save(path)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (4, 4)
    assert img.getpixel((0, 0)) == rgb


def test_load_image_palette_with_transparency(tmp_path):
    img = Image.new("P", (4, 4), 0)
    img.putpalette([200, 10, 10] + [0, 0, 0] * 255)
    img.info["transparency"] = 0
    path = str(tmp_path / "p.png")
    img.save(path, transparency=0)
    assert load_image(path).getpixel((1, 1)) == (200, 10, 10)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_load_image_bad_files(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="nope.png' does not exist"):
        load_image(str(tmp_path / "nope.png"))
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"zero.png' is empty \(0 bytes\)"):
        load_image(str(tmp_path / "zero.png"))
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(DataError, match="text.jpg' is not an image file"):
        load_image(str(tmp_path / "text.jpg"))
    arr = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    for ext in ("jpg", "png"):
        Image.fromarray(arr).save(tmp_path / f"full.{ext}")
        data = (tmp_path / f"full.{ext}").read_bytes()
        (tmp_path / f"cut.{ext}").write_bytes(data[: len(data) // 2])
        with pytest.raises(DataError, match=f"cut.{ext}' is truncated or corrupt"):
            load_image(str(tmp_path / f"cut.{ext}"))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DataError, match="decompression-bomb limit"):  # between 1x and 2x the limit: Pillow warns
        Image.new("RGB", (40, 40)).save(tmp_path / "warn.png")
        load_image(str(tmp_path / "warn.png"))
    with pytest.raises(DataError, match="bomb"):  # above 2x: Pillow raises
        load_image(str(tmp_path / "full.png"))


def test_check_images_counts_names_and_strict(tmp_path, caplog):
    good = []
    for i in range(20):
        Image.new("L" if i % 2 else "RGB", (4, 4)).save(tmp_path / f"{i}.png")
        good.append(Sample(str(tmp_path / f"{i}.png"), 0, "a"))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")
    (tmp_path / "empty.jpg").write_bytes(b"")
    bad = [Sample(str(tmp_path / "bad.png"), 1, "b"), Sample(str(tmp_path / "empty.jpg"), 1, "b")]
    records = good[:10] + bad + good[10:]
    with caplog.at_level(logging.INFO):
        kept = check_images(records)
    assert kept == good
    assert "skipping 2 unreadable image file(s)" in caplog.text and "bad.png" in caplog.text
    assert "converting 10 non-RGB images to RGB (L: 10)" in caplog.text
    with pytest.raises(DataError, match=r"2 unreadable image file\(s\) \(refused under --strict\).*empty.jpg"):
        check_images(records, strict=True)


def test_transforms_follow_the_official_recipe():
    pre = PreprocessCfg(image_size=16)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 40, 3), dtype=np.uint8))
    test_t = build_transform(pre, train=False)
    names = [type(t).__name__ for t in test_t.transforms]
    assert names == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    assert test_t.transforms[0].size == 16 and test_t.transforms[0].interpolation.value == "bicubic"
    x = test_t(img)
    assert x.shape == (3, 16, 16) and torch.equal(x, test_t(img))  # deterministic
    train_t = build_transform(pre, train=True, crop_scale=(0.5, 1.0))
    assert [type(t).__name__ for t in train_t.transforms] == [
        "RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    rrc = train_t.transforms[0]
    assert rrc.scale == (0.5, 1.0) and rrc.ratio == pytest.approx((3 / 4, 4 / 3))
    assert train_t(img).shape == (3, 16, 16)
    assert "RandomHorizontalFlip" not in [type(t).__name__ for t in build_transform(pre, True, flip=False).transforms]
    with pytest.raises(ConfigError, match="crop_scale"):
        build_transform(pre, True, crop_scale=(0.0, 1.0))
    with pytest.raises(ConfigError, match="interpolation"):
        build_transform(PreprocessCfg(16, interpolation="cubic"), False)


def test_transform_fingerprint():
    pre = PreprocessCfg(image_size=224)
    fp = transform_fingerprint(pre, train=False)
    assert len(fp) == 16 and fp == transform_fingerprint(PreprocessCfg(image_size=224), False, flip=False)
    assert fp != transform_fingerprint(PreprocessCfg(image_size=288), False)
    assert fp != transform_fingerprint(PreprocessCfg(224, mean=(0.5, 0.5, 0.5)), False)
    assert fp != transform_fingerprint(pre, True)
    assert transform_fingerprint(pre, True) != transform_fingerprint(pre, True, flip=False)
    assert transform_fingerprint(pre, True) != transform_fingerprint(pre, True, crop_scale=(0.5, 1.0))


def test_image_dataset(tmp_path):
    Image.new("L", (8, 6), 50).save(tmp_path / "a.png")
    ds = ImageDataset([Sample(str(tmp_path / "a.png"), 3, "x")], build_transform(PreprocessCfg(4), train=False))
    x, y = ds[0]
    assert len(ds) == 1 and y == 3 and x.shape == (3, 4, 4) and x.dtype == torch.float32
    img, _ = ImageDataset(ds.records)[0]
    assert img.mode == "RGB"


def test_templates():
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    assert list(IMAGENET_TEMPLATES) == [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
    assert len(IMAGENET_TEMPLATES) == 80 and len(IMAGENET_TEMPLATES_SELECT) == 7
    assert set(IMAGENET_TEMPLATES_SELECT) <= set(IMAGENET_TEMPLATES)
    assert CUSTOM_TEMPLATES["dtd"] == "{} texture." and CUSTOM_TEMPLATES["eurosat"] == "a centered satellite photo of {}."
    pets = CUSTOM_TEMPLATES["oxford_pets"]
    assert get_templates("dataset", pets) == [pets]
    assert get_templates("ensemble7", pets, "oxford_pets") == [*IMAGENET_TEMPLATES_SELECT, pets]
    # The official ZeroshotCLIP2 adds the dataset template except for ImageNet itself (its variants get 8).
    assert get_templates("ensemble7", "a photo of a {}.", "imagenet") == list(IMAGENET_TEMPLATES_SELECT)
    assert len(get_templates("ensemble7", "a photo of a {}.", "imagenet_a")) == 8
    assert get_templates("ensemble80", pets) == list(IMAGENET_TEMPLATES)
    get_templates("ensemble7", pets).append("x")
    assert len(IMAGENET_TEMPLATES_SELECT) == 7  # no shared mutable state (the official class-list quirk)


def test_template_file(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("a photo of a {}.\n\n  a sketch of {}.  \n")
    assert get_templates(str(f), "x {}") == ["a photo of a {}.", "a sketch of {}."]
    f.write_text("a photo of a {}.\nno placeholder\n")
    with pytest.raises(ConfigError, match="line 2: 'no placeholder' has no"):
        get_templates(str(f), "x {}")
    with pytest.raises(ConfigError, match="neither one of dataset, ensemble7, ensemble80"):
        get_templates("ensemble9", "x {}")
