"""Hostile and exotic image files: each either loads as an RGB image or is a DataError naming the file."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vlprompt.data.images import check_images, load_image
from vlprompt.data.records import Sample
from vlprompt.errors import DataError

RNG = np.random.default_rng(0)
PIXELS = RNG.integers(0, 255, (16, 16, 3), dtype=np.uint8)


def _png_header_only(width: int, height: int) -> bytes:
    """A syntactically valid PNG that claims ``width x height`` pixels but holds almost no data (a bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _encoded(kind: str) -> tuple[str, bytes]:
    buf = io.BytesIO()
    img = Image.fromarray(PIXELS)
    if kind == "png16":
        Image.fromarray(PIXELS[..., 0].astype(np.uint16) * 257).save(buf, "PNG")
        return ".png", buf.getvalue()
    if kind == "cmyk-jpeg":
        img.convert("CMYK").save(buf, "JPEG")
        return ".jpg", buf.getvalue()
    if kind == "cmyk-tiff":
        img.convert("CMYK").save(buf, "TIFF")
        return ".tif", buf.getvalue()
    if kind == "animated-gif":
        frames = [Image.fromarray(np.roll(PIXELS, i, axis=0)) for i in range(4)]
        frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
        return ".gif", buf.getvalue()
    if kind == "animated-webp":
        frames = [Image.fromarray(np.roll(PIXELS, i, axis=1)) for i in range(3)]
        frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
        return ".webp", buf.getvalue()
    if kind == "float-tiff":
        Image.fromarray(PIXELS[..., 0].astype(np.float32) / 255.0, mode="F").save(buf, "TIFF")
        return ".tif", buf.getvalue()
    if kind == "la-png":
        img.convert("LA").save(buf, "PNG")
        return ".png", buf.getvalue()
    if kind == "1bit-bmp":
        img.convert("1").save(buf, "BMP")
        return ".bmp", buf.getvalue()
    fmt = {"png": "PNG", "jpeg": "JPEG", "bmp": "BMP", "ppm": "PPM", "webp": "WEBP", "tiff": "TIFF"}[kind]
    img.save(buf, fmt)
    return "." + kind, buf.getvalue()


EXOTIC = ["png16", "cmyk-jpeg", "cmyk-tiff", "animated-gif", "animated-webp", "float-tiff", "la-png", "1bit-bmp"]


@pytest.mark.parametrize("kind", EXOTIC)
def test_exotic_images_load_as_rgb(tmp_path, kind):
    ext, data = _encoded(kind)
    path = tmp_path / f"x{ext}"
    path.write_bytes(data)
    img = load_image(str(path))
    assert img.mode == "RGB" and img.size == (16, 16)
    arr = np.asarray(img)
    if kind == "png16":  # scaled to 8 bits (not clipped to white)
        assert np.array_equal(arr[..., 0], PIXELS[..., 0]) and not (arr == 255).all()
    if kind == "animated-gif":  # the first frame
        with Image.open(path) as im:
            first = np.asarray(im.convert("RGB"))
        assert np.array_equal(arr, first)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("zero.png", b"", r"is empty \(0 bytes\)"),
        ("text.jpg", b"just some text, no pixels", "not an image file"),
        ("html.png", b"<html><body>404 Not Found</body></html>", "not an image file"),
        ("bomb.png", _png_header_only(100_000, 100_000), "decompression.bomb"),
        ("wide.png", _png_header_only(2**31 - 1, 1), "decompression.bomb"),
        ("cut.png", _encoded("png")[1][:60], "truncated or corrupt"),
        ("cut.jpeg", _encoded("jpeg")[1][:300], "truncated or corrupt"),
        ("cut.gif", _encoded("animated-gif")[1][:40], "truncated or corrupt|not an image"),
        ("cut.webp", _encoded("webp")[1][:30], "truncated or corrupt|not an image"),
    ],
)
def test_broken_images_are_data_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as e:
        load_image(str(path))
    assert name in str(e.value)


def test_a_folder_or_missing_file_named_like_an_image(tmp_path):
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(DataError, match="dir.png"):
        load_image(str(tmp_path / "dir.png"))
    with pytest.raises(DataError, match="does not exist"):
        load_image(str(tmp_path / "nope.png"))
    os.symlink(tmp_path / "loop.png", tmp_path / "loop.png")
    with pytest.raises(DataError, match="loop.png"):
        load_image(str(tmp_path / "loop.png"))


def test_check_images_skips_hostile_files_with_one_warning_or_refuses(tmp_path, caplog):
    good = tmp_path / "good.png"
    Image.fromarray(PIXELS).save(good)
    (tmp_path / "bomb.png").write_bytes(_png_header_only(50_000, 50_000))
    (tmp_path / "zero.jpg").write_bytes(b"")
    records = [Sample(str(tmp_path / n), 0, "a") for n in ("good.png", "bomb.png", "zero.jpg")]
    assert check_images(records) == records[:1]
    assert "skipping 2 unreadable image file(s)" in caplog.text and "bomb.png" in caplog.text
    with pytest.raises(DataError, match="refused under --strict"):
        check_images(records, strict=True)


SEEDS = {kind: _encoded(kind) for kind in ["png", "jpeg", "bmp", "tiff", "webp", "ppm", "animated-gif", "png16",
                                            "cmyk-jpeg"]}


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about corrupt TIFF tags / EXIF while decoding
@settings(max_examples=int(os.environ.get("VLP_HYPOTHESIS_EXAMPLES", "50")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(sorted(SEEDS)), cut=st.floats(0, 1),
       flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=8))
def test_mutated_image_bytes_load_or_raise_data_error(tmp_path, kind, cut, flips):
    """Random truncations and byte flips of valid files of every format: RGB image or DataError, nothing else."""
    ext, data = SEEDS[kind]
    data = bytearray(data[: max(1, int(len(data) * cut))] if cut < 0.9 else data)
    for pos, value in flips:
        data[int(pos * (len(data) - 1))] = value
    path = tmp_path / f"m{ext}"
    path.write_bytes(bytes(data))
    try:
        img = load_image(str(path))
    except DataError as e:
        assert path.name in str(e)
        return
    assert img.mode == "RGB" and min(img.size) >= 1
