"""Augmented views of training images, each a pure function of (augmentation seed, view index, image).

A *view* is one pass of the train transform (``RandomResizedCrop`` → optional ``RandomHorizontalFlip`` →
``ToTensor`` → ``Normalize``, :func:`vlprompt.data.transforms.build_transform`) over every training image.
View ``v`` of image ``n`` draws its randomness from a CPU generator seeded with

    ``view_seed(aug_seed, v, image) = int.from_bytes(sha256(f"vlprompt-view:{aug_seed}:{v}:{image}")[:8], "little") >> 1``

where ``image`` is the image's path relative to the dataset root (``/``-separated). The transform is torchvision's
own, run with the global CPU generator forked and reseeded (:func:`torch.random.fork_rng`), so the global RNG of
the caller is left exactly as it was and the view does **not** depend on which batch, worker, rank or position in
the list the image had, nor on how many views were asked for: a run asking for 4 views gets the first 4 of a
10-view run, and every method that augments the same few-shot images with the same ``aug_seed`` sees the same crops.

The seed is keyed by the image's relative path rather than its position, so the same image keeps its views in
every subset (e.g. the 8-shot and 16-shot samples) and after reordering.

The on-disk entries of views (one per view) are keyed by :func:`view_key`: the base feature key (backbone
identity, precision, dataset, split, records digest, count, transform fingerprint) plus the view index, the
augmentation seed and :data:`VIEW_RULE`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset

from vlprompt.data.images import load_image
from vlprompt.data.records import Sample

#: Version of the seeding rule above: bump it when the rule changes, so cached views keyed by it miss.
VIEW_RULE = 1


def image_id(record: Sample, root: str | None) -> str:
    """The identity of a record's image in :func:`view_seed`: its path relative to ``root``, ``/``-separated."""
    path = os.path.relpath(record.path, root) if root else record.path
    return path.replace(os.sep, "/")


def view_seed(aug_seed: int, view: int, image: str) -> int:
    """The 63-bit seed of view ``view`` of ``image`` (see the module docstring for the formula)."""
    digest = hashlib.sha256(f"vlprompt-view:{int(aug_seed)}:{int(view)}:{image}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seeded_apply(transform: Callable, img, seed: int) -> torch.Tensor:
    """``transform(img)`` with the global CPU generator reseeded to ``seed`` and restored afterwards.

    torchvision's random transforms draw from the global CPU generator only (``torch.rand``/``randint``/
    ``empty().uniform_``), so this is a pure function of ``(transform, img, seed)``. CUDA generators are untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return transform(img)


class SeededViews(Dataset):
    """Views ``views`` of ``records`` as one flat dataset, view-major: item ``i`` is view ``views[i // N]`` of record
    ``i % N`` (``N = len(records)``), as ``(image [3, H, W], label)``.

    Args:
        records: the training images, in order.
        transform: the random train transform (PIL image → tensor).
        views: the view indices to produce (e.g. the ones missing from the cache).
        aug_seed: the augmentation seed.
        root: the dataset root the image identities are relative to.
    """

    def __init__(self, records: Sequence[Sample], transform: Callable, views: Sequence[int], *, aug_seed: int,
                 root: str | None) -> None:
        self.records, self.transform, self.views = list(records), transform, [int(v) for v in views]
        self.aug_seed = int(aug_seed)
        self.ids = [image_id(r, root) for r in self.records]

    def __len__(self) -> int:
        return len(self.views) * len(self.records)

    def seed_of(self, index: int) -> int:
        """The :func:`view_seed` of flat item ``index``."""
        v, n = divmod(index, len(self.records))
        return view_seed(self.aug_seed, self.views[v], self.ids[n])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        r = self.records[index % len(self.records)]
        return seeded_apply(self.transform, load_image(r.path), self.seed_of(index)), r.label


def view_key(base: dict, view: int, aug_seed: int) -> dict:
    """The cache key of view ``view``: the base feature key (see :mod:`vlprompt.features.cache`) of the records under
    the train transform's fingerprint, plus the view index, the augmentation seed and :data:`VIEW_RULE`."""
    return {**base, "view": int(view), "aug_seed": int(aug_seed), "view_rule": VIEW_RULE}


__all__ = ["VIEW_RULE", "SeededViews", "image_id", "seeded_apply", "view_key", "view_seed"]
