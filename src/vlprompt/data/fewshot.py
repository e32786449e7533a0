"""Few-shot subsets and the base-to-new class split.

:func:`sample_few_shot_coop` reproduces the official subsets exactly (``Dassl:generate_fewshot_dataset`` as called
by ``CoOp:datasets/*.py``): for the same split file, ``k`` and seed it returns the same images in the same order,
including val = ``min(k, 4)`` shots per class drawn *after* train from the same random stream. It uses its own
``random.Random(seed)``, whose stream equals the global one right after ``random.seed(seed)`` (what Dassl's
``set_random_seed`` does before the datasets are built), so it never touches global state.

:func:`sample_few_shot` is the explicitly seeded sampler for custom data: same per-class draw, but it warns about
(or, with ``strict``, refuses) classes with fewer than ``k`` images instead of silently returning fewer.

Subsets are cheap to redraw (milliseconds), so they are not cached; run configs record the drawn lists.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from dataclasses import replace

from vlprompt.data.images import format_list
from vlprompt.data.records import DatasetSplits, Sample
from vlprompt.errors import ConfigError, DataError
from vlprompt.types import SUBSAMPLES, Subsample

logger = logging.getLogger(__name__)


def _draw(rng: random.Random, records: Sequence[Sample], k: int) -> list[Sample]:
    """Dassl's draw: group by label in first-appearance order; ``rng.sample(items, k)``, or all if fewer."""
    groups: dict[int, list[Sample]] = {}
    for r in records:
        groups.setdefault(r.label, []).append(r)
    out: list[Sample] = []
    for items in groups.values():
        out += rng.sample(items, k) if len(items) >= k else items  # no draw (no RNG use) when too few
    return out


def _short_classes(records: Sequence[Sample], k: int) -> list[str]:
    counts: dict[int, tuple[str, int]] = {}
    for r in records:
        counts[r.label] = (r.classname, counts.get(r.label, (r.classname, 0))[1] + 1)
    return [f"{name} ({n})" for _, (name, n) in sorted(counts.items()) if n < k]


def sample_few_shot_coop(
    train: Sequence[Sample], val: Sequence[Sample], k: int | None, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """The official k-shot train and val subsets.

    Args:
        train: the split's train records, in split-file order.
        val: the split's val records, in split-file order (empty for test-only sets).
        k: shots per class; ``None`` or ``k <= 0`` keeps all data.
        seed: the run seed (``--seed``; 1, 2, 3 in the paper).

    Returns:
        ``(train_k, val_k)``: ``k`` train and ``min(k, 4)`` val images per class (all of a class's images when it
        has fewer), grouped by label in first-appearance order.
    """
    if k is None or k <= 0:
        return list(train), list(val)
    rng = random.Random(seed)
    train_k = _draw(rng, train, k)
    val_k = _draw(rng, val, min(k, 4))  # same stream, continued right after train
    return train_k, val_k


def sample_few_shot(records: Sequence[Sample], k: int | None, seed: int, strict: bool = False) -> list[Sample]:
    """Pure, explicitly seeded ``k`` images per class (for custom data).

    Args:
        records: the records to draw from.
        k: shots per class; ``None`` or ``k <= 0`` keeps all.
        seed: seed of a private ``random.Random``.
        strict: refuse classes with fewer than ``k`` images instead of keeping all of them with a warning.

    Returns:
        The subset, grouped by label in first-appearance order.

    Raises:
        DataError: with ``strict``, when a class has fewer than ``k`` images (the message names them).
    """
    if k is None or k <= 0:
        return list(records)
    short = _short_classes(records, k)
    if short:
        msg = f"{len(short)} class(es) have fewer than {k} images: {format_list(short)}"
        if strict:
            raise DataError(msg + " (refused under --strict; lower --shots or add images)")
        logger.warning(msg + "; all their images are used")
    return _draw(random.Random(seed), records, k)


def apply_few_shot(splits: DatasetSplits, k: int | None, seed: int, strict: bool = False) -> DatasetSplits:
    """Draw the k-shot train/val subsets of ``splits`` with the sampler its reader chose.

    Benchmarks and ``split:`` files (``splits.sampler == "coop"``) use :func:`sample_few_shot_coop`; custom folder
    and CSV data use :func:`sample_few_shot` on train (``k``) and val (``min(k, 4)``). When val is the test set
    (ImageNet), val is left whole, as in the official code. Short classes are warned about in both cases and
    refused under ``strict``. Test is never touched.
    """
    if k is None or k <= 0:
        return splits
    val_is_test = splits.val_is_test
    val = [] if val_is_test else splits.val
    if splits.sampler == "coop":
        for part, kk in ((splits.train, k), (val, min(k, 4))):
            short = _short_classes(part, kk)
            if short:
                msg = f"{splits.name}: {len(short)} class(es) have fewer than {kk} images: {format_list(short)}"
                if strict:
                    raise DataError(msg + " (refused under --strict)")
                logger.warning(msg + "; all their images are used (as in the official code)")
        train_k, val_k = sample_few_shot_coop(splits.train, val, k, seed)
    else:
        train_k = sample_few_shot(splits.train, k, seed, strict)
        val_k = sample_few_shot(val, min(k, 4), seed, strict)
    info = {**splits.info, "shots": k, "fewshot_seed": seed}
    return replace(splits, train=train_k, val=splits.val if val_is_test else val_k, info=info)


def subsample_classes(splits: DatasetSplits, which: Subsample) -> DatasetSplits:
    """The base-to-new class split (``CoOp:datasets/oxford_pets.py::subsample_classes``).

    Labels present in train (all labels for test-only sets) are sorted; ``m = ceil(n / 2)``; ``base`` keeps the
    first ``m``, ``new`` the rest; labels are remapped to ``0..`` and train, val and test are all filtered. Apply it
    *after* few-shot sampling, as the official code does.

    Raises:
        ConfigError: ``which`` is not ``base``, ``new`` or ``all``.
    """
    if which not in SUBSAMPLES:
        raise ConfigError(f"subsample must be 'base', 'new' or 'all', got {which!r}")
    if which == "all":
        return splits
    labels = sorted({r.label for r in splits.train}) if splits.train else list(range(splits.num_classes))
    m = math.ceil(len(labels) / 2)
    selected = labels[:m] if which == "base" else labels[m:]
    relabel = {y: i for i, y in enumerate(selected)}

    def keep(records: Sequence[Sample]) -> list[Sample]:
        return [Sample(r.path, relabel[r.label], r.classname) for r in records if r.label in relabel]

    return replace(
        splits,
        classnames=[splits.classnames[y] for y in selected],
        train=keep(splits.train),
        val=keep(splits.val),
        test=keep(splits.test),
        info={**splits.info, "subsample": which, "subsample_labels": selected},
    )
