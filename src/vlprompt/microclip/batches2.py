"""Grouped pretraining batches over world v2: groups of images that share shade, style and background (issue 14).

Why: in an i.i.d. batch of 128 world-v2 pairs, shade, style and background alone already tell most captions apart,
so the contrastive loss puts little pressure on shape, position and texture, which the ViT micro-CLIP is slow to
learn (``V2_DIAGNOSIS.md``). In a grouped batch, each run of ``group_size`` consecutive images shares the *group
leader's* shade, style and background, so that within a group only shape, texture, size, position (and the second
object of a scene) tell the captions apart; across groups colour and style still do.

What it is — a sampler over the world's parameters, not a change to the world: image ``i``'s group leader is image
``L = group_size·⌊i/group_size⌋`` of the same world, drawn by :func:`vlprompt.microclip.world2.draw` exactly as the
i.i.d. stream draws it. Image ``i`` is ``world2.draw(seed, i, fixed=leader's shade/style/background)``: its own
draws for every other attribute and for all rendering jitter and caption choices (``world2.sample_values`` always
makes the same draws, then applies ``fixed``). Hence every image's marginal distribution is the world's (the shared
values are world draws, with the world's rates: thermal 3%, shade words 20%, …); only the joint distribution inside
a batch changes. Leaders are images of the i.i.d. stream themselves.

Pure in ``(seed, i, group_size)``: a stream resumes at any batch and its bytes do not depend on the number of
rendering processes (:func:`vlprompt.microclip.world.iter_batches` reassembles batches in index order).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping

import numpy as np

from vlprompt.errors import ConfigError
from vlprompt.microclip import world as w1
from vlprompt.microclip import world2

#: The attributes a group shares (the leader's values): those that tell most i.i.d. captions apart.
SHARED: tuple[str, ...] = ("shade", "style", "background")


def generate_grouped(seed: int, start: int, count: int, fixed: Mapping[str, int] | None = None, *,
                     group_size: int) -> world2.WorldBatch:  # fmt: skip
    """Images ``start … start+count-1`` of the grouped stream of world ``seed`` (``world2.generate``'s layout).

    Args:
        seed: world seed.
        start: first image index (need not be a group boundary).
        count: number of images.
        fixed: attribute overrides applied to every image (leaders included), over the shared values.
        group_size: images per group (1: the i.i.d. world stream, bit-identical to ``world2.generate``).

    Returns:
        A :class:`~vlprompt.microclip.world.WorldBatch` (``uint8[count, 64, 64, 3]``, captions, labels in
        ``world2.ATTRIBUTE_NAMES`` order).
    """
    if group_size < 1:
        raise ConfigError(f"group_size={group_size!r}: expected an integer ≥ 1 (1 = the i.i.d. world stream)")
    images = np.empty((count, world2.IMAGE_SIZE, world2.IMAGE_SIZE, 3), np.uint8)
    labels = np.empty((count, len(world2.ATTRIBUTE_NAMES)), np.int64)
    captions: list[str] = []
    leader_index, shared = -1, {}
    for j in range(count):
        i = start + j
        lead = group_size * (i // group_size)
        if lead != leader_index:  # a new group: draw its leader as the i.i.d. stream does
            leader_index, drawn = lead, world2.draw(seed, lead, fixed)
            shared = {a: drawn[2][a] for a in SHARED}
        img, cap, vals = drawn if i == lead else world2.draw(seed, i, {**shared, **(fixed or {})})
        images[j], labels[j] = img, [vals[a] for a in world2.ATTRIBUTE_NAMES]
        captions.append(cap)
    return world2.WorldBatch(images, captions, labels)


def iter_grouped_batches(seed: int, batch_size: int, group_size: int, start_batch: int = 0,
                         num_batches: int | None = None, processes: int = 1,
                         prefetch: int = 4) -> Iterator[world2.WorldBatch]:  # fmt: skip
    """Batch ``b`` holds grouped-stream images ``b·batch_size …`` (:func:`vlprompt.microclip.world.iter_batches`).

    ``batch_size`` must be a multiple of ``group_size`` so that no group straddles two batches.
    """
    if group_size < 1 or batch_size % group_size:
        raise ConfigError(f"group_size={group_size!r} with batch_size={batch_size!r}: expected a group size ≥ 1 that "
                         "divides the batch size")  # fmt: skip
    generate = functools.partial(generate_grouped, group_size=group_size)  # picklable for the spawn pool
    return w1.iter_batches(seed, batch_size, start_batch, num_batches, processes, prefetch, None, generate=generate)
