"""Grouped pretraining batches over world v2: groups of images that share shade, style and background (issue 14).

Why: in an i.i.d. batch of 128 world-v2 pairs, shade, style and background alone already tell most captions apart,
so the contrastive loss puts little pressure on shape, position and texture, which the ViT micro-CLIP is slow to
learn (``V2_DIAGNOSIS.md``). In a grouped batch with sizes ``(g, s)``, each run of ``g`` consecutive images shares
its *group leader's* shade, style and background, and each run of ``s`` inside it also its *sub-group leader's*
shape (:data:`LEVELS`): within a group mainly the shape tells captions apart, within a sub-group only texture, size
and position (and a scene's second object); across groups colour and style still do.

What it is — a sampler over the world's parameters, not a change to the world: the level-``k`` leader of image ``i``
is image ``size_k·⌊i/size_k⌋`` of the same world; image ``i`` is ``world2.draw(seed, i, fixed=the values its
leaders share)``, with its own draws for every other attribute and for all rendering jitter and caption choices
(``world2.sample_values`` always makes the same draws, then applies ``fixed``). A group leader is the i.i.d.
stream's own image. Hence every image's marginal distribution is the world's (each shared value is a world draw,
with the world's rates: thermal 3%, shade words 20%, …); only the joint distribution inside a batch changes.

Pure in ``(seed, i, sizes)``: a stream resumes at any batch and its bytes do not depend on the number of
rendering processes (:func:`vlprompt.microclip.world.iter_batches` reassembles batches in index order).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping

import numpy as np

from vlprompt.errors import ConfigError
from vlprompt.microclip import world as w1
from vlprompt.microclip import world2

#: The attributes shared at each grouping level (the level's leader's values): level 0 holds those that tell most
#: i.i.d. captions apart; level 1 (sub-groups inside a group) adds the shape, so that only texture, size and
#: position tell a sub-group's captions apart.
LEVELS: tuple[tuple[str, ...], ...] = (("shade", "style", "background"), ("shape",))


def check_sizes(sizes: tuple[int, ...], batch_size: int | None = None) -> None:
    """Raise :class:`~vlprompt.errors.ConfigError` unless ``sizes`` (images per group at each level) is valid:
    at most ``len(LEVELS)`` sizes ≥ 1, each dividing the one before (and ``batch_size``, if given)."""
    outer = (batch_size,) if batch_size else ()
    chain = (*outer, *sizes)
    if not (0 < len(sizes) <= len(LEVELS)) or min(sizes) < 1 or any(a % b for a, b in zip(chain, chain[1:])):
        raise ConfigError(f"group sizes {tuple(sizes)!r} (batch size {batch_size}): expected 1–{len(LEVELS)} sizes ≥ 1, "
                          "each one dividing the batch size and the size before it, e.g. (32, 4)")  # fmt: skip


def generate_grouped(seed: int, start: int, count: int, fixed: Mapping[str, int] | None = None, *,
                     sizes: tuple[int, ...]) -> world2.WorldBatch:  # fmt: skip
    """Images ``start … start+count-1`` of the grouped stream of world ``seed`` (``world2.generate``'s layout).

    Args:
        seed: world seed.
        start: first image index (need not be a group boundary).
        count: number of images.
        fixed: attribute overrides applied to every image (leaders included), over the shared values.
        sizes: images per group at each level of :data:`LEVELS`, e.g. ``(32, 4)``: groups of 32 share shade, style
            and background, sub-groups of 4 inside them also the shape. ``(1,)`` is the i.i.d. world stream.

    Returns:
        A :class:`~vlprompt.microclip.world.WorldBatch` (``uint8[count, 64, 64, 3]``, captions, labels in
        ``world2.ATTRIBUTE_NAMES`` order).
    """
    check_sizes(sizes)
    draws: dict[int, tuple] = {}  # image index -> world2.draw result, for leaders and the images asked for

    def get(i: int) -> tuple:
        if i not in draws:
            shared = dict(fixed or {})
            for size, attrs in zip(sizes, LEVELS):
                lead = size * (i // size)
                if lead == i:  # i leads this level and every finer one: its own draws from here on
                    break
                shared.update({a: get(lead)[2][a] for a in attrs})
            draws[i] = world2.draw(seed, i, shared)
        return draws[i]

    images = np.empty((count, world2.IMAGE_SIZE, world2.IMAGE_SIZE, 3), np.uint8)
    labels = np.empty((count, len(world2.ATTRIBUTE_NAMES)), np.int64)
    captions: list[str] = []
    for j in range(count):
        img, cap, vals = get(start + j)
        images[j], labels[j] = img, [vals[a] for a in world2.ATTRIBUTE_NAMES]
        captions.append(cap)
    return world2.WorldBatch(images, captions, labels)


def iter_grouped_batches(seed: int, batch_size: int, sizes: tuple[int, ...], start_batch: int = 0,
                         num_batches: int | None = None, processes: int = 1,
                         prefetch: int = 4) -> Iterator[world2.WorldBatch]:  # fmt: skip
    """Batch ``b`` holds grouped-stream images ``b·batch_size …`` (:func:`vlprompt.microclip.world.iter_batches`);
    the group sizes must divide ``batch_size`` (no group straddles two batches)."""
    check_sizes(sizes, batch_size)
    generate = functools.partial(generate_grouped, sizes=tuple(sizes))  # picklable for the spawn pool
    return w1.iter_batches(seed, batch_size, start_batch, num_batches, processes, prefetch, None, generate=generate)
