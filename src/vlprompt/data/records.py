"""Sample records and split containers: *what samples exist*, independent of how images are loaded."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlprompt.types import SAMPLERS, Sampler


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


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset's train/val/test records and metadata; frozen: a step that changes them (few-shot sampling, class
    subsampling, renaming) derives new splits with :func:`dataclasses.replace`.

    Attributes:
        name: dataset name (benchmark name, or ``folder``/``csv``/``split`` for custom data).
        root: directory that image paths are relative to in run configs.
        classnames: class names indexed by label.
        train, val, test: records. ``val`` may be empty.
        template: the dataset's hand-crafted zero-shot template, e.g. ``"a photo of a {}."``.
        info: provenance recorded in run configs (split file hash, generated split seed, …). Nothing branches on
            it: what the engine and the samplers act on are the typed fields below (``info`` also records
            ``val_is_test``/``sampler``/``benchmark`` as before, so ``config.json`` keeps its form).
        val_is_test: the val split *is* the test split (ImageNet, as officially: ``imagenet.py`` passes
            ``val=test``): few-shot sampling leaves it whole, it is not evaluated as a separate val set, and the
            linear probe draws its selection set from it.
        sampler: the few-shot sampler the reader chose (:data:`vlprompt.types.Sampler`): ``coop`` (Dassl's, for
            benchmarks and ``split:`` files) or ``pure`` (explicitly seeded, folder/CSV data).
        benchmark: the registered benchmark these splits were read as (``imagenet``, ``dtd``, …); ``None`` for
            custom data.

    The typed fields left ``None`` are taken from ``info`` (a ``DatasetSplits`` built only with the ``info`` keys
    behaves as before); given both, they must agree.
    """

    name: str
    root: str
    classnames: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    template: str = "a photo of a {}."
    info: dict = field(default_factory=dict)
    val_is_test: bool | None = None
    sampler: Sampler | None = None
    benchmark: str | None = None

    def __post_init__(self) -> None:
        recorded = {"val_is_test": bool(self.info.get("val_is_test", False)),
                    "sampler": self.info.get("sampler", "pure"), "benchmark": self.info.get("benchmark") or None}
        for name, value in recorded.items():
            if getattr(self, name) is None:  # filled once at construction (frozen afterwards)
                object.__setattr__(self, name, value)
            elif name in self.info and getattr(self, name) != value:
                raise ValueError(f"DatasetSplits({self.name!r}): {name}={getattr(self, name)!r} but info records "
                                 f"{self.info[name]!r}; give one value (a reader bug).")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"DatasetSplits({self.name!r}): sampler {self.sampler!r} is not one of "
                             f"{', '.join(SAMPLERS)}.")

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classnames)
