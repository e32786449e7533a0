"""World v2: the richer procedural image–caption world micro-CLIP v2 is pretrained on (issue 14).

An image shows one object (75%) or a scene of two objects (25%) on a background, in one rendering style. Attributes
(``ATTRIBUTES``; every value a CLIP BPE word or two, canonical word first in ``ATTRIBUTE_WORDS``):

==========  ====================================================================================================
shape       v1's circle … arrow, plus hexagon, diamond, ring, pentagon (12)
shade       24 named shades, three per basic colour (crimson, scarlet, maroon = red, …); ``colour`` = shade // 3
texture     the object's fill: solid, striped, dotted, checkered, wavy, zigzag, grid, speckled
size        small, medium, large (scenes: small or medium)
position    left, right, top, bottom, center (scenes: left+right or top+bottom)
background  plain, dark, gradient, cluttered
style       photo 50%, sketch 12%, cartoon 13%, blurry 11%, noisy 11%, thermal 3% (rare, by design)
count       one, two; ``shape2`` is the second object's shape (never equal to ``shape``)
==========  ====================================================================================================

Captions mention a random subset of the facts. Rarity is part of the design, fixed before any model was trained and
never tuned to a score: a caption that names the colour uses the basic colour word 80% of the time and the shade
word 20%; the thermal style is 3% of images; sketches never mention colour; thermal captions never mention colour
or texture (the image has none). Image ``i`` of world ``seed`` is a pure function of ``(seed, i)`` (one
``numpy.random.Generator`` seeded with ``[seed, i, 2]``; the trailing 2 keeps v2's streams apart from v1's).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator, Mapping

import numpy as np

from vlprompt.microclip import render2
from vlprompt.microclip import world as w1

IMAGE_SIZE = w1.IMAGE_SIZE
WorldBatch = w1.WorldBatch
COLOURS = w1.ATTRIBUTES["colour"]
SHADES: dict[str, tuple[str, ...]] = {
    "red": ("crimson", "scarlet", "maroon"), "orange": ("amber", "tangerine", "peach"),
    "yellow": ("gold", "lemon", "mustard"), "green": ("lime", "olive", "emerald"), "blue": ("navy", "azure", "teal"),
    "purple": ("violet", "lavender", "plum"), "pink": ("rose", "coral", "magenta"),
    "brown": ("tan", "chocolate", "beige"),
}  # fmt: skip
_SHADE_RGB = {
    "crimson": (200, 20, 60), "scarlet": (255, 36, 0), "maroon": (128, 0, 0), "amber": (255, 191, 0),
    "tangerine": (242, 133, 0), "peach": (255, 170, 120), "gold": (255, 215, 0), "lemon": (250, 250, 110),
    "mustard": (205, 170, 40), "lime": (150, 230, 40), "olive": (110, 120, 30), "emerald": (20, 160, 100),
    "navy": (20, 30, 120), "azure": (40, 140, 255), "teal": (0, 128, 128), "violet": (140, 60, 220),
    "lavender": (190, 160, 230), "plum": (120, 40, 100), "rose": (255, 80, 140), "coral": (255, 120, 90),
    "magenta": (220, 0, 180), "tan": (210, 180, 140), "chocolate": (110, 55, 20), "beige": (235, 220, 180),
}  # fmt: skip
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": (*w1.ATTRIBUTES["shape"], "hexagon", "diamond", "ring", "pentagon"),
    "shade": tuple(s for c in COLOURS for s in SHADES[c]),
    "texture": ("solid", "striped", "dotted", "checkered", "wavy", "zigzag", "grid", "speckled"),
    "size": w1.ATTRIBUTES["size"],
    "position": w1.ATTRIBUTES["position"],
    "background": ("plain", "dark", "gradient", "cluttered"),
    "style": ("photo", "sketch", "cartoon", "blurry", "noisy", "thermal"),
    "count": ("one", "two"),
    "shape2": (*w1.ATTRIBUTES["shape"], "hexagon", "diamond", "ring", "pentagon"),
}
ATTRIBUTE_NAMES: tuple[str, ...] = tuple(ATTRIBUTES)
#: Attributes a task may fix besides those in ``ATTRIBUTES``: ``colour`` (a basic colour, any of its shades).
DERIVED = {"colour": COLOURS}
STYLE_P = np.array([0.50, 0.12, 0.13, 0.11, 0.11, 0.03])
BACKGROUND_P = np.array([0.3, 0.2, 0.25, 0.25])
P_TWO = 0.25
P_SHADE_WORD = 0.2
ATTRIBUTE_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    a: {v: w1.ATTRIBUTE_WORDS.get(a, {}).get(v, (v,)) for v in vals} for a, vals in ATTRIBUTES.items()
}
_PREFIX = {**w1._STYLE_PREFIX, "thermal": ("a thermal image of", "a thermal image of", "an infrared image of",
                                           "a thermal photo of", "a heat image of")}  # fmt: skip
_SUFFIX = {**w1._STYLE_SUFFIX, "thermal": "in a thermal image"}
_PAIRS = (("left", "right"), ("top", "bottom"))


def sample_values(rng: np.random.Generator, fixed: Mapping[str, int] | None = None) -> dict[str, int]:
    """Draw every attribute (always the same draws, so ``fixed`` changes nothing else), then apply ``fixed``.

    ``fixed`` may name any attribute of ``ATTRIBUTES`` or ``colour`` (keeps the drawn shade's rank in that colour).
    """
    vals = {a: int(rng.choice(len(v), p=p)) if p is not None else int(rng.integers(len(v)))
            for (a, v), p in zip(ATTRIBUTES.items(), (None, None, None, None, None, BACKGROUND_P, STYLE_P, None,
                                                      None))}  # fmt: skip
    vals["count"] = int(rng.random() < P_TWO)
    fixed = dict(fixed or {})
    unknown = set(fixed) - set(ATTRIBUTES) - set(DERIVED)
    if unknown:
        raise ValueError(f"unknown attribute(s) {sorted(unknown)}; expected some of {[*ATTRIBUTES, *DERIVED]}")
    if "colour" in fixed:
        vals["shade"] = 3 * int(fixed.pop("colour")) + vals["shade"] % 3
    vals.update({k: int(v) for k, v in fixed.items()})
    if vals["shape2"] == vals["shape"]:  # the second object is always another shape
        vals["shape2"] = (vals["shape"] + 1 + vals["shape2"] % (len(ATTRIBUTES["shape"]) - 1)) % len(
            ATTRIBUTES["shape"])
    if vals["count"]:
        vals["size"] = min(vals["size"], 1)
    return vals


def _object(shape: int, shade: int, texture: int, size: int, center, rng) -> render2.Obj:
    name = ATTRIBUTES["shape"][shape]
    cx, cy = (c + rng.uniform(-2.0, 2.0) for c in center)
    r = w1._RADII[ATTRIBUTES["size"][size]] * w1._AREA_SCALE.get(name, 1.0) * rng.uniform(0.95, 1.05)
    rot = np.deg2rad(rng.uniform(-12, 12))
    rgb = (np.clip(np.array(_SHADE_RGB[ATTRIBUTES["shade"][shade]]) + rng.uniform(-8, 8, 3), 0, 255) / 255.0)
    pattern = render2.texture_pattern(ATTRIBUTES["texture"][texture], rng)
    return render2.Obj(render2.shape_alpha(name, cx, cy, r, rot), rgb.astype(np.float32), pattern, r, (cx, cy))


def render(v: Mapping[str, int], rng: np.random.Generator) -> np.ndarray:
    """Draw one image with attribute indices ``v`` (jitter from ``rng``): ``uint8[64, 64, 3]``."""
    if v["count"]:
        pos = _PAIRS[int(rng.integers(2))]
        if rng.random() < 0.5:
            pos = pos[::-1]
        shade2, tex2 = int(rng.integers(len(ATTRIBUTES["shade"]))), int(rng.integers(len(ATTRIBUTES["texture"])))
        objs = [_object(v["shape"], v["shade"], v["texture"], v["size"], w1._CENTERS[pos[0]], rng),
                _object(v["shape2"], shade2, tex2, v["size"], w1._CENTERS[pos[1]], rng)]  # fmt: skip
    else:
        objs = [_object(v["shape"], v["shade"], v["texture"], v["size"],
                        w1._CENTERS[ATTRIBUTES["position"][v["position"]]], rng)]  # fmt: skip
    return render2.compose(objs, ATTRIBUTES["background"][v["background"]], ATTRIBUTES["style"][v["style"]], rng)


def _word(attr: str, value: int, rng: np.random.Generator) -> str:
    words = ATTRIBUTE_WORDS[attr][ATTRIBUTES[attr][value]]
    return words[0] if len(words) == 1 or rng.random() < 0.75 else words[1 + rng.integers(len(words) - 1)]


def _noun_phrase(v: Mapping[str, int], style: str, rng, shape_key: str = "shape", size: bool = True) -> str:
    """``"a small crimson striped star"``-like phrase (random subset of adjectives), without the article."""
    named = rng.random() < 0.9
    noun = _word("shape", v[shape_key], rng) if named else ("shape" if rng.random() < 0.7 else "object")
    adjs = []
    if size and rng.random() < 0.4:
        adjs.append(_word("size", v["size"], rng))
    if style not in ("sketch", "thermal") and shape_key == "shape" and rng.random() < 0.5:
        shade = ATTRIBUTES["shade"][v["shade"]]
        adjs.append(shade if rng.random() < P_SHADE_WORD else COLOURS[v["shade"] // 3])
    tex_phrase = ""
    if style != "thermal" and shape_key == "shape" and rng.random() < 0.5:
        t = ATTRIBUTES["texture"][v["texture"]]
        if rng.random() < 0.7:
            adjs.append(t)
        else:
            tex_phrase = f" with a {t} {'texture' if rng.random() < 0.6 else 'pattern'}"
    return " ".join([*adjs, noun]) + tex_phrase


def caption(v: Mapping[str, int], rng: np.random.Generator) -> str:
    """Sample one caption for an image with attribute indices ``v``."""
    style = ATTRIBUTES["style"][v["style"]]
    prefix = _PREFIX[style][rng.integers(len(_PREFIX[style]))]
    if v["count"]:
        first = _noun_phrase(v, style, rng, size=False)
        second = _noun_phrase(v, style, rng, shape_key="shape2", size=False)
        body = f"{w1._article(first)} {first} and {w1._article(second)} {second}"
    else:
        np_ = _noun_phrase(v, style, rng)
        body = f"{w1._article(np_)} {np_}"
        if rng.random() < 0.45:
            opts = w1._POSITION_PHRASES[ATTRIBUTES["position"][v["position"]]]
            body += " " + opts[rng.integers(len(opts))]
    if style != "thermal" and rng.random() < 0.3:
        b = _word("background", v["background"], rng)
        body += f" on {w1._article(b)} {b} background"
    text = " ".join(p for p in (prefix, body) if p)
    if rng.random() < 0.15:
        text += " " + _SUFFIX[style]
    text += "."
    if not v["count"] and rng.random() < 0.3:  # a second sentence ending in a value
        facts = [_word("size", v["size"], rng)]
        if style not in ("sketch", "thermal"):
            facts.append(COLOURS[v["shade"] // 3])
        text += f" it is {' and '.join(facts[: 1 + int(rng.integers(len(facts)))])}."
    return text


#: The head nouns of v2's caption grammar (the word a noun phrase ends on): the shapes, "shape"/"object", the
#: position nouns after "the" ("left", "side", "middle", …), the style nouns ("photo", "sketch", "drawing", …) and
#: "background", "texture", "pattern". Modifiers are not heads even where a tagger would call them nouns ("pencil",
#: "heat", "gradient" in "a gradient background"). The targets of the ``sigmoid-nouns`` caption-word loss (CatLIP
#: trains on a caption's nouns): fixed by the grammar, not chosen by a score.
CAPTION_NOUNS: frozenset[str] = frozenset((
    *ATTRIBUTES["shape"], "shape", "object", "left", "right", "top", "bottom", "center", "middle", "side", "photo",
    "picture", "image", "photograph", "sketch", "drawing", "cartoon", "illustration", "style", "background",
    "texture", "pattern"))  # fmt: skip


#: The object nouns among them: what a caption's object phrase ends on (a shape, or "shape" / "object" when it names
#: none): the classes of the ``softmax-objects`` caption-word loss, parsed from the caption text.
CAPTION_OBJECTS: tuple[str, ...] = (*ATTRIBUTES["shape"], "shape", "object")


def caption_words() -> frozenset[str]:
    """Every word (and the full stop) a v2 caption can contain."""
    phrases = [*w1._FIXED_CAPTION_WORDS, "with", "texture", "pattern", *_SUFFIX.values()]
    phrases += [p for opts in (*_PREFIX.values(), *w1._POSITION_PHRASES.values()) for p in opts]
    phrases += [w for a in ATTRIBUTE_WORDS.values() for words in a.values() for w in words]
    phrases += list(COLOURS)
    return frozenset(w for p in phrases for w in p.split())


def draw(seed: int, index: int, fixed: Mapping[str, int] | None = None) -> tuple[np.ndarray, str, dict[str, int]]:
    """Image ``index`` of world ``seed``: ``(uint8[64, 64, 3], caption, attribute indices)``, pure in its arguments."""
    rng = np.random.default_rng([seed, index, 2])
    vals = sample_values(rng, fixed)
    return render(vals, rng), caption(vals, rng), vals


def generate(seed: int, start: int, count: int, fixed: Mapping[str, int] | None = None) -> WorldBatch:
    """Render images ``start … start+count-1`` of world ``seed``; ``labels`` columns in ``ATTRIBUTE_NAMES`` order."""
    images = np.empty((count, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    labels = np.empty((count, len(ATTRIBUTE_NAMES)), np.int64)
    captions = []
    for j in range(count):
        img, cap, vals = draw(seed, start + j, fixed)
        images[j], labels[j] = img, [vals[a] for a in ATTRIBUTE_NAMES]
        captions.append(cap)
    return WorldBatch(images, captions, labels)


@functools.lru_cache(maxsize=1)
def world_fingerprint() -> str:
    """SHA-256 (16 hex digits) of 48 rendered images and captions: changes whenever v2's rendering does."""
    batch = generate(seed=0, start=0, count=48)
    h = hashlib.sha256(batch.images.tobytes())
    h.update("\n".join(batch.captions).encode())
    return "v2-" + h.hexdigest()[:16]


def iter_batches(seed: int, batch_size: int, start_batch: int = 0, num_batches: int | None = None,
                 processes: int = 1, prefetch: int = 4, fixed: Mapping[str, int] | None = None) -> Iterator[WorldBatch]:  # fmt: skip
    """v1's ordered, multi-process batch stream (:func:`vlprompt.microclip.world.iter_batches`) over v2 images."""
    return w1.iter_batches(seed, batch_size, start_batch, num_batches, processes, prefetch, fixed, generate=generate)
