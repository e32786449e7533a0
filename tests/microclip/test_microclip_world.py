"""The procedural world: determinism, process independence, attribute control, caption vocabulary."""

from __future__ import annotations

import numpy as np
import pytest

from vlprompt.microclip import world


def test_same_seed_same_bytes_and_order_independent():
    a = world.generate(seed=7, start=0, count=12)
    b = world.generate(seed=7, start=0, count=12)
    assert a.images.tobytes() == b.images.tobytes()
    assert a.captions == b.captions and np.array_equal(a.labels, b.labels)
    # image i does not depend on which other images were drawn before it
    img5, cap5, _ = world.draw(7, 5)
    assert img5.tobytes() == a.images[5].tobytes() and cap5 == a.captions[5]
    c = world.generate(seed=8, start=0, count=12)
    assert c.images.tobytes() != a.images.tobytes()


def test_batches_identical_for_any_number_of_processes():
    one = list(world.iter_batches(seed=3, batch_size=6, start_batch=2, num_batches=3, processes=1))
    two = list(world.iter_batches(seed=3, batch_size=6, start_batch=2, num_batches=3, processes=2, prefetch=2))
    assert len(one) == len(two) == 3
    for x, y in zip(one, two):
        assert x.images.tobytes() == y.images.tobytes()
        assert x.captions == y.captions and np.array_equal(x.labels, y.labels)
    # batch b holds images b*batch_size ...: resuming at a later batch gives the same stream
    assert one[0].images.tobytes() == world.generate(3, 12, 6).images.tobytes()


def test_fixed_attributes_and_image_format():
    style = world.ATTRIBUTES["style"].index("sketch")
    batch = world.generate(seed=1, start=0, count=20, fixed={"shape": 3, "style": style})
    assert batch.images.shape == (20, 64, 64, 3) and batch.images.dtype == np.uint8
    cols = {a: i for i, a in enumerate(world.ATTRIBUTE_NAMES)}
    assert (batch.labels[:, cols["shape"]] == 3).all() and (batch.labels[:, cols["style"]] == style).all()
    # sketches are grey: no colour information survives
    img = batch.images.astype(int)
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
    # and the caption never names a colour for them
    colours = set(world.ATTRIBUTES["colour"])
    assert not any(colours & set(c.replace(".", " ").split()) for c in batch.captions)
    with pytest.raises(ValueError, match="unknown attribute"):
        world.draw(0, 0, {"texture": 1})


def test_attributes_change_pixels_where_expected():
    # same jitter stream, only position changes -> the shape moves: left half vs right half brightness differs
    red, photo, plain = (world.ATTRIBUTES[a].index(v) for a, v in (("colour", "red"), ("style", "photo"),
                                                                   ("background", "plain")))  # fmt: skip
    fixed = {"colour": red, "style": photo, "background": plain, "size": 2}
    left, _, _ = world.draw(0, 0, {**fixed, "position": world.ATTRIBUTES["position"].index("left")})
    right, _, _ = world.draw(0, 0, {**fixed, "position": world.ATTRIBUTES["position"].index("right")})
    redness = lambda im: im[..., 0].astype(int) - im[..., 1].astype(int)  # noqa: E731
    assert redness(left)[:, :32].mean() > redness(left)[:, 32:].mean() + 20
    assert redness(right)[:, 32:].mean() > redness(right)[:, :32].mean() + 20


def test_caption_vocabulary_is_closed_and_single_token_attribute_words():
    from open_clip.tokenizer import SimpleTokenizer

    words = world.caption_words()
    batch = world.generate(seed=11, start=0, count=400)
    for cap in batch.captions:
        assert cap.endswith(".")
        assert set(cap.replace(".", " . ").split()) <= words, cap
    tok = SimpleTokenizer()
    for attr, values in world.ATTRIBUTES.items():
        for v in values:
            assert len(tok.encode(v)) == 1, (attr, v)
    # some captions are long (a second sentence), which trains later text positions
    assert max(len(tok.encode(c)) for c in batch.captions) + 2 >= 28
