"""Pixels of world v2 (:mod:`vlprompt.microclip.world2`): shapes, fill textures, backgrounds and rendering styles.

Reuses world v1's primitives (the eight v1 shape masks, outlines, shifts, stripe indices) and adds four shapes
(hexagon, diamond, ring, pentagon), eight fill textures, a cluttered background, scenes of two objects and the rare
``thermal`` style (a false-colour heat image: colour and texture are lost, the silhouette is blurred — the
specialist domain of the suite, see :mod:`vlprompt.microclip.tasks2`).

Everything is a pure function of its arguments and the image's own ``numpy.random.Generator``; all arrays are
``float32`` in [0, 1] unless said otherwise, shapes ``[64, 64]`` (grey) or ``[64, 64, 3]`` (RGB).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from vlprompt.microclip import world as w1

S = w1.IMAGE_SIZE
_YY, _XX, _SI = w1._YY, w1._XX, w1._STRIPE_INDEX  # [64, 64] pixel rows / columns; stripe coordinates (x, y, x±y)


def shape_alpha(shape: str, cx: float, cy: float, r: float, rot: float) -> np.ndarray:
    """Anti-aliased coverage mask ``[64, 64]`` of one of the 12 v2 shapes (the 8 of v1 and 4 new ones)."""
    if shape not in ("hexagon", "diamond", "ring", "pentagon"):
        return w1._shape_alpha(shape, cx, cy, r, rot)
    n, k = S * w1._SS, w1._SS
    img = Image.new("L", (n, n), 0)
    d = ImageDraw.Draw(img)
    X, Y, R = cx * k, cy * k, r * k
    if shape == "ring":  # a thick annulus
        d.ellipse([X - R, Y - R, X + R, Y + R], fill=255)
        d.ellipse([X - 0.55 * R, Y - 0.55 * R, X + 0.55 * R, Y + 0.55 * R], fill=0)
    else:
        sides = {"hexagon": 6, "pentagon": 5, "diamond": 4}[shape]
        t = np.arange(sides) * 2 * np.pi / sides - np.pi / 2
        ux, uy = np.cos(t), np.sin(t)
        if shape == "diamond":  # a rhombus, taller than wide
            ux, uy = ux * 0.8, uy * 1.15
        c, s = np.cos(rot), np.sin(rot)
        d.polygon([(X + R * (c * x - s * y), Y + R * (s * x + c * y)) for x, y in zip(ux, uy)], fill=255)
    img = img.resize((S, S), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.float32) * (1.0 / 255.0)


def texture_pattern(texture: str, rng: np.random.Generator) -> np.ndarray:
    """Fill pattern ``[64, 64]`` in {0…1}: 1 where the texture's marks are (``solid`` has none)."""
    if texture == "solid":
        return np.zeros((S, S), np.float32)
    if texture == "speckled":
        return (rng.random((S, S)) < 0.22).astype(np.float32)
    p = float(rng.uniform(4.0, 5.5))  # period in pixels: visible in an 8-pixel patch
    ph = float(rng.uniform(0, p))
    if texture == "striped":
        u = _SI[int(rng.integers(4))].astype(np.float32) + ph
        return (np.mod(u, p) < p / 2).astype(np.float32)
    if texture == "dotted":
        dx, dy = np.mod(_XX + ph, p) - p / 2, np.mod(_YY + ph, p) - p / 2
        return np.clip(1.9 - np.sqrt(dx * dx + dy * dy) * 1.6, 0, 1).astype(np.float32)
    if texture == "checkered":
        c = p * 0.75
        return ((np.floor((_XX + ph) / c) + np.floor((_YY + ph) / c)) % 2).astype(np.float32)
    if texture == "grid":
        return ((np.mod(_XX + ph, p) < 1.2) | (np.mod(_YY + ph, p) < 1.2)).astype(np.float32)
    xx, yy = (_XX, _YY) if rng.random() < 0.5 else (_YY, _XX)  # horizontal or vertical waves
    if texture == "wavy":
        u = yy + 1.6 * np.sin(xx * (2 * np.pi / 9.0) + ph)
    else:  # zigzag: a triangle wave
        u = yy + 2.2 * (np.abs(np.mod(xx + ph, 6.0) - 3.0) - 1.5)
    return (np.mod(u + ph, p) < p / 2).astype(np.float32)


def background(kind: str, rng: np.random.Generator) -> np.ndarray:
    """Grey-level background ``[64, 64]``: v1's plain / dark / gradient, or ``cluttered`` (faint random blobs)."""
    if kind != "cluttered":
        return w1._background(kind, rng)
    img = Image.new("L", (S, S), int(rng.uniform(0.5, 0.75) * 255))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(7, 12))):
        x, y = rng.uniform(0, S, 2)
        rx, ry = rng.uniform(2, 6, 2)
        g = int(rng.uniform(0.3, 0.95) * 255)
        if rng.random() < 0.5:
            d.ellipse([x - rx, y - ry, x + rx, y + ry], fill=g)
        else:
            d.rectangle([x - rx, y - ry, x + rx, y + ry], fill=g)
    return np.asarray(img, dtype=np.float32) * (1.0 / 255.0)


@dataclass(frozen=True)
class Obj:
    """One object to draw: mask ``alpha [64, 64]``, colour ``rgb [3]``, texture marks ``pattern [64, 64]``."""

    alpha: np.ndarray
    rgb: np.ndarray
    pattern: np.ndarray
    radius: float
    center: tuple[float, float]


def textured_fill(o: Obj) -> np.ndarray:
    """``[64, 64, 3]`` fill of an object: its colour, with the texture's marks mixed towards a contrasting ink."""
    ink = np.float32(0.95) if float(o.rgb.mean()) < 0.42 else np.float32(0.08)  # light marks on dark colours
    m = (np.float32(0.7) * o.pattern)[..., None]
    return o.rgb[None, None, :] * (1 - m) + ink * m


_THERMAL_STOPS = np.array([[0.02, 0.0, 0.08], [0.35, 0.05, 0.55], [0.85, 0.2, 0.25], [0.98, 0.65, 0.1],
                           [1.0, 0.97, 0.75]], np.float32)  # fmt: skip  black → purple → red → orange → white


def _thermal(objs: list[Obj], rng: np.random.Generator) -> np.ndarray:
    """False-colour heat image: a smooth warm background field plus each object's blurred silhouette."""
    coarse = rng.uniform(0.0, 0.3, (4, 4)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse).resize((S, S), Image.Resampling.BICUBIC), dtype=np.float32)
    heat = field + sum(np.float32(rng.uniform(0.55, 0.75)) * o.alpha for o in objs)
    blur = Image.fromarray(np.clip(heat * 255, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.3))
    h = np.asarray(blur, dtype=np.float32) / 255.0 + rng.standard_normal((S, S)).astype(np.float32) * 0.04
    t = np.clip(h, 0, 1) * (len(_THERMAL_STOPS) - 1)
    i = np.minimum(t.astype(np.int64), len(_THERMAL_STOPS) - 2)
    f = (t - i)[..., None]
    return _THERMAL_STOPS[i] * (1 - f) + _THERMAL_STOPS[i + 1] * f


def compose(objs: list[Obj], bg_kind: str, style: str, rng: np.random.Generator) -> np.ndarray:
    """Draw the objects on a background in one rendering style; returns ``uint8[64, 64, 3]``."""
    if style == "thermal":
        img = _thermal(objs, rng)
        return np.ascontiguousarray((np.clip(img, 0, 1) * 255.0 + 0.5).astype(np.uint8))
    bg = background(bg_kind, rng)  # [64, 64]
    a = np.clip(sum(o.alpha for o in objs), 0, 1)  # [64, 64] union (objects never overlap)
    if style == "sketch":
        # pencil on paper: a faint background, a double outline, the texture's marks in pencil, no colour
        paper = np.float32(0.93 + 0.05 * rng.uniform(-1, 1))
        bg = paper - np.float32(0.35 * rng.uniform(0.6, 1.0)) * (1.0 - bg)
        line = w1._edges(a)
        dy, dx = (int(v) for v in rng.integers(-1, 2, 2))
        marks = sum(o.pattern * o.alpha for o in objs) * np.float32(0.5)
        ink = np.minimum(np.maximum(line, w1._shift(line, dy, dx) * np.float32(0.5)) + marks, 1.0)
        grey = bg * (1 - ink) + np.float32(rng.uniform(0.12, 0.3)) * ink
        img = np.repeat(grey[..., None], 3, axis=2)
    elif style == "cartoon":
        tint = (0.75 + 0.25 * rng.uniform(0, 1, 3)).astype(np.float32)
        img = ((np.float32(0.25) + np.float32(0.75) * bg) * (1 - a))[..., None] * tint
        for o in objs:
            fill = textured_fill(Obj(o.alpha, np.clip((o.rgb - o.rgb.mean()) * 1.4 + o.rgb.mean(), 0, 1),
                                     o.pattern, o.radius, o.center))  # fmt: skip
            img = img + o.alpha[..., None] * fill
        keep = (1 - w1._edges(a))[..., None]
        img = img * keep + np.float32(0.03) * (1 - keep)
    else:  # photo-like (also blurry and noisy): tinted background, soft drop shadow, shaded textured fill
        tint = (1.0 + rng.uniform(-0.06, 0.06, 3)).astype(np.float32)
        ground = bg * (1 - np.float32(0.35) * w1._shift(a, 2, 2)) * (1 - a)
        img = ground[..., None] * tint
        la = rng.uniform(0, 2 * np.pi)
        for o in objs:
            k = 0.18 / max(o.radius, 1.0)
            light = (np.float32(k * np.cos(la)) * (_XX - np.float32(o.center[0]))
                     + np.float32(k * np.sin(la)) * (_YY - np.float32(o.center[1])))  # fmt: skip
            img = img + o.alpha[..., None] * np.clip((1 + light)[..., None] * textured_fill(o), 0, 1)
    out = (np.clip(img, 0, 1) * 255.0 + 0.5).astype(np.uint8)
    if style == "blurry":
        out = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(rng.uniform(1.1, 1.7))))
    elif style == "noisy":
        noise = rng.standard_normal(out.shape, dtype=np.float32) * np.float32(rng.uniform(22, 36))
        out = np.clip(out + noise, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out)
