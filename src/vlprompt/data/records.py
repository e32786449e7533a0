"""Sample records and split containers: *what samples exist*, independent of how images are loaded."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sample:
    """One labelled image.

    Attributes:
        path: absolute path of the image file.
        label: 0-based class index.
        classname: readable class name (already post-processed, ``_`` kept; prompts replace it by a space).
    """

    path: str
    label: int
    classname: str


@dataclass
class DatasetSplits:
    """A dataset's train/val/test records and metadata.

    Attributes:
        name: dataset name (benchmark name, or ``folder``/``csv``/``split`` for custom data).
        root: directory that image paths are relative to in run configs.
        classnames: class names indexed by label.
        train, val, test: records. ``val`` may be empty.
        template: the dataset's hand-crafted zero-shot template, e.g. ``"a photo of a {}."``.
        info: extra provenance recorded in run configs (split file hash, generated split seed, …).
    """

    name: str
    root: str
    classnames: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    template: str = "a photo of a {}."
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classnames)
