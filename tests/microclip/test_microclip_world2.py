"""World v2: pinned rendering (the checkpoint and the task caches are keyed to it), attribute control, captions."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest

from vlprompt.microclip import world2

#: The renderer's fingerprint when micro-CLIP v2 was pretrained. A change to the rendering or the captions changes
#: it: then the task caches are rebuilt (they record it) and the checkpoint must be retrained with the new world.
PINNED_FINGERPRINT = "v2-516ff334c5a34093"


def test_rendering_is_pinned_and_pure():
    assert world2.world_fingerprint() == PINNED_FINGERPRINT
    img, cap, vals = world2.draw(3, 7)
    assert hashlib.sha256(img.tobytes()).hexdigest()[:16] == "8d9ce6d171c0c14a"
    assert cap == "a photograph of a checkered ring in the middle on a plain background. it is large."
    assert vals == {"shape": 10, "shade": 10, "texture": 3, "size": 2, "position": 4, "background": 0, "style": 0,
                    "count": 0, "shape2": 2}
    batch = world2.generate(3, 5, 4)  # image i does not depend on the images drawn before it
    assert batch.images[2].tobytes() == img.tobytes() and batch.captions[2] == cap


def test_batches_identical_in_worker_processes():
    one = list(world2.iter_batches(seed=4, batch_size=4, start_batch=1, num_batches=2, processes=1))
    two = list(world2.iter_batches(seed=4, batch_size=4, start_batch=1, num_batches=2, processes=2, prefetch=1))
    assert [b.images.tobytes() for b in one] == [b.images.tobytes() for b in two]
    assert one[0].captions == world2.generate(4, 4, 4).captions


def test_fixed_attributes_colour_and_scenes():
    cols = {a: i for i, a in enumerate(world2.ATTRIBUTE_NAMES)}
    b = world2.generate(1, 0, 30, fixed={"colour": 2, "shape": 4, "count": 0})
    assert set(b.labels[:, cols["shade"]] // 3) == {2} and len(set(b.labels[:, cols["shade"]])) > 1
    assert (b.labels[:, cols["shape"]] == 4).all()
    s = world2.generate(1, 0, 30, fixed={"count": 1, "shape": 0, "shape2": 0})  # the second shape never repeats
    assert (s.labels[:, cols["shape2"]] != 0).all() and (s.labels[:, cols["size"]] <= 1).all()
    assert all(" and " in c for c in s.captions)
    with pytest.raises(ValueError, match="unknown attribute"):
        world2.generate(1, 0, 1, fixed={"hue": 1})


def test_captions_respect_what_each_style_shows():
    colour_words = set(world2.COLOURS) | set(world2.ATTRIBUTES["shade"])
    for style, banned in (("sketch", colour_words), ("thermal", colour_words | set(world2.ATTRIBUTES["texture"]))):
        b = world2.generate(2, 0, 200, fixed={"style": world2.ATTRIBUTES["style"].index(style)})
        words = {w for c in b.captions for w in re.findall(r"[a-z]+", c)}
        assert not words & banned, (style, words & banned)
        assert words <= world2.caption_words()
        if style == "sketch":  # no colour left in the pixels either
            assert np.array_equal(b.images[..., 0], b.images[..., 1])


def test_world_rates_are_the_documented_ones():
    b = world2.generate(9, 0, 3000)
    cols = {a: i for i, a in enumerate(world2.ATTRIBUTE_NAMES)}
    thermal = np.mean(b.labels[:, cols["style"]] == world2.ATTRIBUTES["style"].index("thermal"))
    two = np.mean(b.labels[:, cols["count"]] == 1)
    assert 0.02 < thermal < 0.04 and 0.22 < two < 0.28
    shade_words = set(world2.ATTRIBUTES["shade"])
    named = [c for c in b.captions if set(re.findall(r"[a-z]+", c)) & (shade_words | set(world2.COLOURS))]
    rate = np.mean([bool(set(re.findall(r"[a-z]+", c)) & shade_words) for c in named])
    assert 0.15 < rate < 0.25  # a shade word is a fifth of colour mentions: fine-grained names are rare
