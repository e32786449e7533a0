"""The one torch ``Dataset``: records + a transform → ``(image, label)``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset

from vlprompt.data.images import load_image
from vlprompt.data.records import Sample


class ImageDataset(Dataset):
    """Images of ``records`` loaded with :func:`vlprompt.data.images.load_image` (RGB) and transformed.

    Args:
        records: the samples, in the order items are returned.
        transform: PIL image → tensor (see :func:`vlprompt.data.transforms.build_transform`); ``None`` returns
            the PIL image.
    """

    def __init__(self, records: Sequence[Sample], transform: Callable | None = None) -> None:
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        r = self.records[index]
        img = load_image(r.path)
        return (self.transform(img) if self.transform is not None else img), r.label
