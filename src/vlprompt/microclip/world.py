"""The procedural image–caption world that micro-CLIP is pretrained on (DESIGN.md §6).

Every image shows one shape on a background, drawn in one rendering style. Six attributes define it:

==========  ==================================================================================
attribute   values (the canonical word for each value is a single CLIP BPE token)
==========  ==================================================================================
shape       circle, square, triangle, star, cross, heart, moon, arrow
colour      red, orange, yellow, green, blue, purple, pink, brown
size        small, medium, large
position    left, right, top, bottom, center
background  plain, dark, gradient, striped, dotted
style       photo, sketch, cartoon, blurry, noisy
==========  ==================================================================================

(``ATTRIBUTES`` holds this table; ``ATTRIBUTE_WORDS`` lists every word a caption may use for a value, canonical
word first.) Images are 64×64 RGB ``uint8``. Image ``i`` of world ``seed`` is a pure function of ``(seed, i)``:
its attributes, jitter, pixels and caption all come from one ``numpy.random.Generator`` seeded with
``[seed, i]`` (no global RNG), so a batch is byte-identical whichever process renders it. Captions are sampled
from varied phrasings that mention a random subset of the attributes ("a pencil sketch of a cross on the left.",
"a photo of a small orange heart on a gradient background."); sketches never mention colour (they have none).

A single process renders roughly 2–3 thousand images per second; :func:`iter_batches` spreads batches over
worker processes and yields them in order.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

IMAGE_SIZE = 64

# attribute -> canonical value words, in label order. Every word is one CLIP BPE token (tested).
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": ("circle", "square", "triangle", "star", "cross", "heart", "moon", "arrow"),
    "colour": ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown"),
    "size": ("small", "medium", "large"),
    "position": ("left", "right", "top", "bottom", "center"),
    "background": ("plain", "dark", "gradient", "striped", "dotted"),
    "style": ("photo", "sketch", "cartoon", "blurry", "noisy"),
}
ATTRIBUTE_NAMES: tuple[str, ...] = tuple(ATTRIBUTES)

# Synonyms a caption may use instead of the canonical word (canonical word is used most of the time).
_SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "size": {"small": ("tiny",), "large": ("big",)},
    "position": {"center": ("middle",)},
}
ATTRIBUTE_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    a: {v: (v, *_SYNONYMS.get(a, {}).get(v, ())) for v in vals} for a, vals in ATTRIBUTES.items()
}

# Caption openings per style; "" means no style phrase ("a red circle on the left.").
_STYLE_PREFIX: dict[str, tuple[str, ...]] = {
    "photo": ("a photo of", "a photo of", "a picture of", "an image of", "a photograph of", ""),
    "sketch": ("a sketch of", "a sketch of", "a pencil sketch of", "a drawing of", "a pencil drawing of"),
    "cartoon": ("a cartoon of", "a cartoon of", "a cartoon drawing of", "a colorful cartoon of", "an illustration of"),
    "blurry": ("a blurry photo of", "a blurry photo of", "a blurry picture of", "a blurred image of"),
    "noisy": ("a noisy photo of", "a noisy photo of", "a noisy picture of", "a noisy image of"),
}
_STYLE_SUFFIX: dict[str, str] = {
    "photo": "in a photo",
    "sketch": "drawn as a pencil sketch",
    "cartoon": "drawn in a cartoon style",
    "blurry": "in a blurry photo",
    "noisy": "in a noisy photo",
}
_POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("on the left", "on the left", "on the left side", "at the left"),
    "right": ("on the right", "on the right", "on the right side", "at the right"),
    "top": ("on the top", "on the top", "at the top", "near the top"),
    "bottom": ("on the bottom", "on the bottom", "at the bottom", "near the bottom"),
    "center": ("on the center", "in the center", "in the center", "in the middle"),
}
_VOWEL_START = ("a", "e", "i", "o", "u")

# Rendering parameters (64-px units).
_CENTERS = {"left": (18, 32), "right": (46, 32), "top": (32, 18), "bottom": (32, 46), "center": (32, 32)}
_RADII = {"small": 7.5, "medium": 11.5, "large": 16.5}
# Per-shape scale: the square root of the factor that would give all shapes the same area. Within one size, area
# still differs a little by shape (a cue that helps shape learning start), but areas no longer overlap across sizes.
_AREA_SCALE = {"circle": 0.905, "square": 0.93, "triangle": 1.125, "star": 1.12, "cross": 1.0, "heart": 1.005,
               "moon": 1.07, "arrow": 1.125}  # fmt: skip
_RGB = {
    "red": (220, 40, 40), "orange": (245, 140, 30), "yellow": (240, 220, 40), "green": (50, 170, 60),
    "blue": (40, 80, 220), "purple": (140, 50, 190), "pink": (245, 130, 190), "brown": (130, 80, 40),
}  # fmt: skip
_SS = 2  # supersampling factor for anti-aliased masks


@dataclass(frozen=True)
class WorldBatch:
    """A batch of rendered images.

    Attributes:
        images: ``uint8[N, 64, 64, 3]`` RGB pixels.
        captions: ``N`` caption strings.
        labels: ``int64[N, 6]`` attribute value indices, columns in ``ATTRIBUTE_NAMES`` order.
    """

    images: np.ndarray
    captions: list[str]
    labels: np.ndarray


def _article(word: str) -> str:
    return "an" if word.startswith(_VOWEL_START) else "a"


def _shape_polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]] | None:
    """Vertices (supersampled pixel coords) of polygonal shapes; ``None`` for shapes drawn from ellipses."""
    if shape == "square":
        pts = [(-0.82, -0.82), (0.82, -0.82), (0.82, 0.82), (-0.82, 0.82)]
    elif shape == "triangle":
        a = np.deg2rad([-90, 30, 150])
        pts = list(zip(np.cos(a), np.sin(a) + 0.15))
    elif shape == "star":
        a = np.deg2rad(np.arange(10) * 36 - 90)
        rr = np.where(np.arange(10) % 2 == 0, 1.05, 0.42)
        pts = list(zip(rr * np.cos(a), rr * np.sin(a) + 0.08))
    elif shape == "cross":
        w = 0.3
        pts = [
            (-w, -1),
            (w, -1),
            (w, -w),
            (1, -w),
            (1, w),
            (w, w),
            (w, 1),
            (-w, 1),
            (-w, w),
            (-1, w),
            (-1, -w),
            (-w, -w),
        ]
    elif shape == "heart":
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        x, y = 16 * np.sin(t) ** 3, -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        pts = list(zip(x / 16.5, (y + 2.5) / 16.5))
    elif shape == "arrow":
        pts = [(-1, -0.28), (0.15, -0.28), (0.15, -0.7), (1, 0), (0.15, 0.7), (0.15, 0.28), (-1, 0.28)]
    else:
        return None
    c, s = np.cos(rot), np.sin(rot)
    k = _SS * r
    return [((cx + k * (c * x - s * y)), (cy + k * (s * x + c * y))) for x, y in pts]


def _shape_alpha(shape: str, cx: float, cy: float, r: float, rot: float) -> np.ndarray:
    """Anti-aliased coverage mask ``float32[64, 64]`` in [0, 1]."""
    n = IMAGE_SIZE * _SS
    img = Image.new("L", (n, n), 0)
    d = ImageDraw.Draw(img)
    X, Y, R = cx * _SS, cy * _SS, r * _SS
    poly = _shape_polygon(shape, X, Y, r, rot)
    if poly is not None:
        d.polygon(poly, fill=255)
    elif shape == "circle":
        d.ellipse([X - R, Y - R, X + R, Y + R], fill=255)
    elif shape == "moon":  # crescent: a disc minus an offset disc
        d.ellipse([X - R, Y - R, X + R, Y + R], fill=255)
        ox, oy = X + 0.55 * R * np.cos(rot), Y - 0.35 * R + 0.3 * R * np.sin(rot)
        d.ellipse([ox - 0.85 * R, oy - 0.85 * R, ox + 0.85 * R, oy + 0.85 * R], fill=0)
    img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.float32) * (1.0 / 255.0)


_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)
_AX = np.arange(IMAGE_SIZE, dtype=np.float32)
# stripe coordinate u = x, y, x+y or x-y as an integer index into a 1-D lookup table (cheaper than 2-D modulo)
_STRIPE_INDEX = (
    _XX.astype(np.int64),
    _YY.astype(np.int64),
    (_XX + _YY).astype(np.int64),
    (_XX - _YY + 63).astype(np.int64),
)


def _background(kind: str, rng: np.random.Generator) -> np.ndarray:
    """Grey-level background ``float32[64, 64]`` in [0, 1] (tinted later)."""
    if kind == "plain":
        return np.full((IMAGE_SIZE, IMAGE_SIZE), rng.uniform(0.62, 0.85), np.float32)
    if kind == "dark":
        return np.full((IMAGE_SIZE, IMAGE_SIZE), rng.uniform(0.06, 0.2), np.float32)
    if kind == "gradient":
        a = rng.uniform(0, 2 * np.pi)
        t = (np.float32(np.cos(a) / 45) * (_XX - 31.5) + np.float32(np.sin(a) / 45) * (_YY - 31.5)) + 0.5
        lo, hi = rng.uniform(0.05, 0.25), rng.uniform(0.8, 0.98)
        return np.float32(lo) + np.float32(hi - lo) * np.clip(t, 0, 1)
    if kind == "striped":
        k = int(rng.integers(4))  # orientation: vertical, horizontal, or one of the diagonals
        period, phase = rng.uniform(6, 9), rng.uniform(0, 10)
        u = np.arange(2 * IMAGE_SIZE, dtype=np.float64) * (np.sqrt(0.5) if k >= 2 else 1.0) + phase
        # moderate contrast: a visible texture that does not drown the shape's edges
        base, c = rng.uniform(0.45, 0.75), rng.uniform(0.15, 0.25)
        table = np.where(np.mod(u, period) < period / 2, base + c / 2, base - c / 2).astype(np.float32)
        return table[_STRIPE_INDEX[k]]
    # dotted: a lattice of dark dots on a light ground (separable distance field)
    period = rng.uniform(7, 9)
    ox, oy = rng.uniform(0, period, 2)
    dx = (np.mod(_AX + ox, period) - period / 2).astype(np.float32)
    dy = (np.mod(_AX + oy, period) - period / 2).astype(np.float32)
    dot = np.clip(2.2 - np.sqrt(dy[:, None] ** 2 + dx[None, :] ** 2), 0, 1)
    ground = rng.uniform(0.55, 0.85)
    ink = ground - rng.uniform(0.2, 0.3)
    return np.float32(ground) + np.float32(ink - ground) * dot


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``a`` translated by (dy, dx) pixels with zeros shifted in (|dy|, |dx| < 64)."""
    out = np.zeros_like(a)
    h, w = a.shape[:2]
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = a[
        max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def _edges(alpha: np.ndarray) -> np.ndarray:
    """Outline of a coverage mask: 3×3 dilation minus 3×3 erosion (separable), in [0, 1]."""
    p = np.pad(alpha, 1, mode="edge")
    hmax = np.maximum(np.maximum(p[:, :-2], p[:, 1:-1]), p[:, 2:])
    hmin = np.minimum(np.minimum(p[:, :-2], p[:, 1:-1]), p[:, 2:])
    hi = np.maximum(np.maximum(hmax[:-2], hmax[1:-1]), hmax[2:])
    lo = np.minimum(np.minimum(hmin[:-2], hmin[1:-1]), hmin[2:])
    return hi - lo


def render(values: Mapping[str, int], rng: np.random.Generator) -> np.ndarray:
    """Draw one image with the given attribute value indices, jitter drawn from ``rng``.

    Args:
        values: attribute name -> value index for all six attributes.
        rng: the image's own generator.

    Returns:
        ``uint8[64, 64, 3]`` RGB image.
    """
    shape, colour = ATTRIBUTES["shape"][values["shape"]], ATTRIBUTES["colour"][values["colour"]]
    size, position = ATTRIBUTES["size"][values["size"]], ATTRIBUTES["position"][values["position"]]
    bg_kind, style = ATTRIBUTES["background"][values["background"]], ATTRIBUTES["style"][values["style"]]
    cx, cy = (c + rng.uniform(-2.0, 2.0) for c in _CENTERS[position])
    r = _RADII[size] * _AREA_SCALE[shape] * rng.uniform(0.95, 1.05)
    rot = np.deg2rad(rng.uniform(-12, 12))
    a = _shape_alpha(shape, cx, cy, r, rot)  # [64, 64] coverage
    fg = (np.clip(np.array(_RGB[colour]) + rng.uniform(-14, 14, 3), 0, 255) / 255.0).astype(np.float32)  # [3]
    bg = _background(bg_kind, rng)  # [64, 64] grey level
    a3 = a[..., None]  # [64, 64, 1]

    if style == "sketch":
        # pencil on paper: a faint version of the background, a double outline and diagonal hatching, no colour
        paper = np.float32(0.93 + 0.05 * rng.uniform(-1, 1))
        bg = paper - np.float32(0.35 * rng.uniform(0.6, 1.0)) * (1.0 - bg)
        line = _edges(a)
        dy, dx = (int(v) for v in rng.integers(-1, 2, 2))
        line2 = _shift(line, dy, dx) * np.float32(0.5)
        hatch_idx = _STRIPE_INDEX[2 if rng.random() < 0.5 else 3] + int(rng.integers(5))
        hatch = (hatch_idx % 5 < 1).astype(np.float32) * np.float32(0.35) * a
        ink = np.minimum(np.maximum(line, line2) + hatch, 1.0)
        pencil = np.float32(rng.uniform(0.12, 0.3))
        grey = bg * (1 - ink) + pencil * ink
        img = np.repeat(grey[..., None], 3, axis=2)
    elif style == "cartoon":
        # flat saturated fill, thick black outline, pastel-tinted background
        tint = (0.75 + 0.25 * rng.uniform(0, 1, 3)).astype(np.float32)
        fill = np.clip((fg - fg.mean()) * 1.4 + fg.mean(), 0, 1)
        keep = (1 - _edges(a))[..., None]  # outline drawn in (near) black
        img = ((np.float32(0.25) + np.float32(0.75) * bg) * (1 - a))[..., None] * tint + a3 * fill
        img = img * keep + np.float32(0.03) * (1 - keep)
    else:
        # photo-like: slightly tinted background, soft drop shadow, shaded fill
        tint = (1.0 + rng.uniform(-0.06, 0.06, 3)).astype(np.float32)
        la = rng.uniform(0, 2 * np.pi)
        k = 0.18 / max(r, 1.0)
        light = np.float32(k * np.cos(la)) * (_XX - np.float32(cx)) + np.float32(k * np.sin(la)) * (
            _YY - np.float32(cy)
        )
        ground = bg * (1 - np.float32(0.35) * _shift(a, 2, 2)) * (1 - a)  # [64, 64]
        img = ground[..., None] * tint + a3 * np.clip((1 + light)[..., None] * fg, 0, 1)
    out = (np.clip(img, 0, 1) * 255.0 + 0.5).astype(np.uint8)
    if style == "blurry":
        out = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(rng.uniform(1.1, 1.7))))
    elif style == "noisy":
        noise = rng.standard_normal(out.shape, dtype=np.float32) * np.float32(rng.uniform(22, 36))
        out = np.clip(out + noise, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out)


def caption(values: Mapping[str, int], rng: np.random.Generator) -> str:
    """Sample one caption for an image with the given attribute values (a random subset is mentioned)."""
    style = ATTRIBUTES["style"][values["style"]]

    def word(attr: str) -> str:
        words = ATTRIBUTE_WORDS[attr][ATTRIBUTES[attr][values[attr]]]
        return words[0] if len(words) == 1 or rng.random() < 0.75 else words[1 + rng.integers(len(words) - 1)]

    named = rng.random() < 0.9
    noun = word("shape") if named else ("shape" if rng.random() < 0.7 else "object")
    adjs = []
    if rng.random() < 0.5:
        adjs.append(word("size"))
    if style != "sketch" and rng.random() < 0.5:
        adjs.append(word("colour"))
    np_words = [*adjs, noun]
    phrase = f"{_article(np_words[0])} {' '.join(np_words)}"
    tail = []
    if rng.random() < 0.5:
        options = _POSITION_PHRASES[ATTRIBUTES["position"][values["position"]]]
        tail.append(options[rng.integers(len(options))])
    if rng.random() < 0.3:
        tail.append(f"on {_article(b := word('background'))} {b} background")
    if len(tail) == 2 and rng.random() < 0.5:
        tail.reverse()
    prefix = _STYLE_PREFIX[style][rng.integers(len(_STYLE_PREFIX[style]))]
    text = " ".join(p for p in (prefix, phrase, *tail) if p)
    if rng.random() < 0.15:  # a style clause at the end instead of (or as well as) the opening
        text += " " + _STYLE_SUFFIX[style]
    text += "."
    if rng.random() < 0.35:  # a second sentence: trains later text positions and sentences ending in a value
        pos_options = _POSITION_PHRASES[ATTRIBUTES["position"][values["position"]]]
        facts = [word("size"), pos_options[rng.integers(len(pos_options))]]
        if style != "sketch":
            facts.append(word("colour"))
        rng.shuffle(facts)
        k = 1 if rng.random() < 0.6 else 1 + rng.integers(len(facts))
        subject = f"the {noun}" if named else "it"
        text += f" {subject} is {' and '.join(facts[:k])}."
    return text


_FIXED_CAPTION_WORDS = ("a", "an", "the", "shape", "object", "on", "background", "it", "is", "and", ".")


def caption_words() -> frozenset[str]:
    """Every word (and the full stop) a caption can contain; prompts built from these use only trained tokens."""
    phrases = [*_FIXED_CAPTION_WORDS, *_STYLE_SUFFIX.values()]
    phrases += [p for opts in (*_STYLE_PREFIX.values(), *_POSITION_PHRASES.values()) for p in opts]
    phrases += [w for per_attr in ATTRIBUTE_WORDS.values() for words in per_attr.values() for w in words]
    return frozenset(w for p in phrases for w in p.split())


def sample_values(rng: np.random.Generator, fixed: Mapping[str, int] | None = None) -> dict[str, int]:
    """Draw all six attribute indices uniformly (always consuming the same draws), then apply ``fixed``."""
    vals = {a: int(rng.integers(len(v))) for a, v in ATTRIBUTES.items()}
    if fixed:
        unknown = set(fixed) - set(ATTRIBUTES)
        if unknown:
            raise ValueError(f"unknown attribute(s) {sorted(unknown)}; expected some of {list(ATTRIBUTE_NAMES)}")
        vals.update({k: int(v) for k, v in fixed.items()})
    return vals


def draw(seed: int, index: int, fixed: Mapping[str, int] | None = None) -> tuple[np.ndarray, str, dict[str, int]]:
    """Image ``index`` of world ``seed``: a pure function of ``(seed, index, fixed)``.

    Args:
        seed: world seed (non-negative).
        index: image index (non-negative).
        fixed: optional attribute -> value index overrides (e.g. ``{"style": 1}`` for sketches).

    Returns:
        ``(image uint8[64, 64, 3], caption, attribute values)``.
    """
    rng = np.random.default_rng([seed, index])
    vals = sample_values(rng, fixed)
    return render(vals, rng), caption(vals, rng), vals


def generate(seed: int, start: int, count: int, fixed: Mapping[str, int] | None = None) -> WorldBatch:
    """Render images ``start .. start+count-1`` of world ``seed`` in this process."""
    images = np.empty((count, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    labels = np.empty((count, len(ATTRIBUTE_NAMES)), np.int64)
    captions = []
    for j in range(count):
        img, cap, vals = draw(seed, start + j, fixed)
        images[j] = img
        captions.append(cap)
        labels[j] = [vals[a] for a in ATTRIBUTE_NAMES]
    return WorldBatch(images, captions, labels)


@functools.lru_cache(maxsize=1)
def world_fingerprint() -> str:
    """SHA-256 (16 hex digits) of a few rendered images and captions: changes whenever the rendering does.

    Caches of written images (e.g. :func:`vlprompt.microclip.tasks.write_task`) record it, so they are rebuilt
    after any change to the world.
    """
    import hashlib

    batch = generate(seed=0, start=0, count=32)
    h = hashlib.sha256(batch.images.tobytes())
    h.update("\n".join(batch.captions).encode())
    return h.hexdigest()[:16]


def _concat(parts: list[WorldBatch]) -> WorldBatch:
    return WorldBatch(np.concatenate([p.images for p in parts]), [c for p in parts for c in p.captions],
                      np.concatenate([p.labels for p in parts]))  # fmt: skip


def iter_batches(
    seed: int, batch_size: int, start_batch: int = 0, num_batches: int | None = None, processes: int = 1,
    prefetch: int = 4, fixed: Mapping[str, int] | None = None, generate: Callable = generate,
) -> Iterator[WorldBatch]:  # fmt: skip
    """Yield consecutive batches ``b = start_batch, start_batch+1, …`` (images ``b·batch_size …``), in order.

    The bytes do not depend on ``processes``: each image is a pure function of ``(seed, index)`` and results are
    reassembled in index order. With ``processes > 1`` a spawn-context pool renders up to ``prefetch`` batches
    ahead (bounded memory), each batch split into ``processes`` chunks.

    Args:
        seed: world seed.
        batch_size: images per batch.
        start_batch: first batch index (for resuming).
        num_batches: how many batches; ``None`` for an endless stream.
        processes: rendering processes (1 renders in the calling process).
        prefetch: batches rendered ahead when ``processes > 1``.
        fixed: attribute overrides passed to :func:`draw`.
        generate: the batch renderer (world v2 passes its own :func:`vlprompt.microclip.world2.generate`).
    """
    stop = None if num_batches is None else start_batch + num_batches
    if processes <= 1:
        b = start_batch
        while stop is None or b < stop:
            yield generate(seed, b * batch_size, batch_size, fixed)
            b += 1
        return
    chunk = -(-batch_size // processes)
    bounds = [(o, min(chunk, batch_size - o)) for o in range(0, batch_size, chunk)]
    with mp.get_context("spawn").Pool(processes) as pool:
        pending: deque = deque()
        nxt = start_batch

        def submit() -> None:
            nonlocal nxt
            parts = [pool.apply_async(generate, (seed, nxt * batch_size + o, n, fixed)) for o, n in bounds]
            pending.append(parts)
            nxt += 1

        while (stop is None or nxt < stop) and len(pending) < max(prefetch, 1):
            submit()
        while pending:
            parts = pending.popleft()
            if stop is None or nxt < stop:
                submit()
            yield _concat([p.get() for p in parts])
