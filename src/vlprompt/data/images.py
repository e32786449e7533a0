"""Image loading with defined behaviour for every odd file.

``load_image`` returns an RGB ``PIL.Image`` (what the official code gets from ``Image.open(path).convert("RGB")``)
and turns each way a file can be unusable into a :class:`~vlprompt.errors.DataError` that names the file:

========================  ====================================================================================
file                      behaviour
========================  ====================================================================================
missing / zero bytes      ``DataError`` ("does not exist" / "is empty (0 bytes)")
not an image              ``DataError`` ("is not an image file Pillow can read")
truncated / corrupt       ``DataError`` ("is truncated or corrupt"); the image is fully decoded, so a cut-off
                          JPEG or PNG is caught here and not half-way through training
decompression bomb        ``DataError`` when width x height exceeds ``PIL.Image.MAX_IMAGE_PIXELS``
grayscale, 1-bit, CMYK,   converted to RGB with Pillow's ``convert("RGB")`` (alpha is dropped, as in the
RGBA, LA, palette         official code; a palette with transparency goes through RGBA first)
16-bit / 32-bit integer   scaled to 8 bits (``value / 257`` for 16-bit data) before conversion, instead of
and float grayscale       Pillow's clipping, which would turn most 16-bit images white
========================  ====================================================================================

EXIF orientation is *not* applied, like the official loader.

``check_images`` runs the same checks over a list of records (used by the custom folder/CSV readers): unreadable
files are skipped with one warning that counts and names them, or refused with ``strict=True``.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, UnidentifiedImageError

from vlprompt.data.records import Sample
from vlprompt.errors import DataError

logger = logging.getLogger(__name__)

# How many offending files a warning or error message names before it says "... and N more".
MAX_LISTED = 10


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (see the module docstring for the rules)."""
    if img.mode == "RGB":
        return img.copy()
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)  # [H, W]
        if img.mode == "F" and arr.size and arr.max() <= 1.0:
            arr = arr * 255.0  # float images in [0, 1]
        elif img.mode.startswith("I;16") or (arr.size and arr.max() > 255):
            arr = arr / 257.0  # 16-bit range 0..65535 -> 0..255
        arr8 = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids Pillow's warning about palette transparency given in bytes
    return img.convert("RGB")


def load_image(path: str, *, draft: bool = False) -> Image.Image:
    """Read one image file as RGB.

    Args:
        path: image file.
        draft: let JPEG decode at reduced scale (faster; used only for validity checks, never for training).

    Returns:
        An RGB image, fully decoded and detached from the file.

    Raises:
        DataError: the file is missing, empty, not an image, truncated/corrupt or a decompression bomb.
    """
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise DataError(f"image file {path!r} does not exist or cannot be accessed ({e.strerror or e})") from e
    if size == 0:
        raise DataError(f"image file {path!r} is empty (0 bytes); re-download or remove it")
    try:
        with Image.open(path) as img:
            limit = Image.MAX_IMAGE_PIXELS
            w, h = img.size
            if limit is not None and w * h > limit:
                raise DataError(
                    f"image file {path!r} is {w}x{h} = {w * h} pixels, above Pillow's decompression-bomb limit "
                    f"PIL.Image.MAX_IMAGE_PIXELS = {limit}; resize it or raise that limit if you trust the file"
                )
            if draft and img.format == "JPEG":
                img.draft("RGB", (64, 64))
            img.load()
            return _to_rgb(img)
    except DataError:
        raise
    except Image.DecompressionBombError as e:
        raise DataError(f"image file {path!r} is a decompression bomb ({e})") from e
    except UnidentifiedImageError as e:
        raise DataError(f"file {path!r} is not an image file Pillow can read") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"image file {path!r} is truncated or corrupt ({e})") from e


def _probe(path: str) -> tuple[str | None, str | None]:
    """Return ``(error, original_mode)`` for one file; ``error`` is ``None`` when the file loads."""
    try:
        with Image.open(path) as img:
            mode = img.mode
    except Exception:  # noqa: BLE001 - load_image below gives the precise message
        mode = None
    try:
        load_image(path, draft=True)
    except DataError as e:
        return str(e), mode
    return None, mode


def format_list(items: Sequence[str], limit: int = MAX_LISTED) -> str:
    """``"a, b, c"`` with at most ``limit`` entries and an ``"… and N more"`` tail."""
    shown = ", ".join(items[:limit])
    return shown + (f", … and {len(items) - limit} more" if len(items) > limit else "")


def check_images(records: Sequence[Sample], strict: bool = False, *, workers: int | None = None) -> list[Sample]:
    """Decode every record's image once and drop (or refuse) the unreadable ones.

    Each distinct path is checked once, with a small thread pool (Pillow releases the GIL while decoding).
    Non-RGB images are not a problem (``load_image`` converts them); they are counted in an INFO log line.

    Args:
        records: samples to check.
        strict: raise instead of skipping unreadable files.
        workers: threads to use (default: up to 4).

    Returns:
        The readable records, in their original order.

    Raises:
        DataError: with ``strict=True``, when any file is unreadable (the message counts and names them).
    """
    paths = list(dict.fromkeys(r.path for r in records))
    if not paths:
        return list(records)
    n_workers = workers or min(4, os.cpu_count() or 1)
    if n_workers > 1 and len(paths) > 16:
        with ThreadPoolExecutor(n_workers) as pool:
            results = list(pool.map(_probe, paths))
    else:
        results = [_probe(p) for p in paths]
    bad = {p: err for p, (err, _) in zip(paths, results) if err is not None}
    modes = Counter(mode for err, mode in results if err is None and mode not in (None, "RGB"))
    if modes:
        logger.info(
            "converting %d non-RGB images to RGB (%s)",
            sum(modes.values()),
            ", ".join(f"{m}: {n}" for m, n in sorted(modes.items())),
        )
    if not bad:
        return list(records)
    reasons = [bad[p] for p in bad]
    if strict:
        raise DataError(f"{len(bad)} unreadable image file(s) (refused under --strict): {format_list(reasons)}")
    logger.warning("skipping %d unreadable image file(s): %s", len(bad), format_list(reasons))
    return [r for r in records if r.path not in bad]
