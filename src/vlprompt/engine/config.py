"""Typed run configuration (one dataclass per concern, checked at construction)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from vlprompt.errors import ConfigError
from vlprompt.types import AUGMENT_MODES, PRECISIONS, AugmentMode, Precision

AUGMENT_HELP = (
    "online (official: image encoder on freshly augmented images every step), none (no augmentation: train images "
    "through the test transform, features computed once — a different recipe, used by the micro-CLIP demo), or "
    "cached:K (approximation: K augmented views per image encoded once and kept in the feature cache, shared by "
    "every method and re-run on the same images; each epoch draws one view per image)"
)


def parse_augment(value: str) -> tuple[AugmentMode, int]:
    """Parse ``--augment``: returns ``(mode, K)`` with K = 1 for ``none``/``online``."""
    if value != "cached" and value in AUGMENT_MODES:  # the modes without a K
        return value, 1
    m = re.fullmatch(r"cached:(\d+)", value)
    if m and int(m.group(1)) >= 1:
        return "cached", int(m.group(1))
    raise ConfigError(f"--augment '{value}' is invalid; expected {AUGMENT_HELP}.")


#: SGD's base lr where neither the user nor the method's recipe sets one (``OPTIM.LR 0.002`` of the CoOp, CoCoOp
#: and KgCoOp configs).
DEFAULT_LR = 0.002


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; defaults are the official recipe (``docs/recipes.md``, reference §2).

    ``epochs``, ``batch_size`` and ``lr`` differ between methods: ``None`` means "not chosen by the user", and
    :func:`vlprompt.engine.recipe.resolve_train_config` fills them with the method's official values (CoOp: batch 32
    and 50/100/200 epochs by shot count; CoCoOp: batch 1, 10 epochs; KgCoOp: batch 128, 100 epochs; IVLP: batch 4,
    5 epochs, lr 0.0035). Training
    (:func:`vlprompt.engine.run.train_run`) always resolves first, and the resolved values are what ``config.json``
    records. The other defaults are the same for every method.

    Attributes:
        epochs: MAX_EPOCH (``None``: the method's recipe, see :mod:`vlprompt.engine.recipe`).
        batch_size: train batch size (``None``: the method's recipe).
        lr: base learning rate of SGD (``None``: the method's recipe; 0.002, ``OPTIM.LR`` of the CoOp family's
            configs, IVLP 0.0035, VPT-deep 0.0025; :attr:`base_lr` reads it).
        momentum: SGD momentum (0.9, ``Dassl:dassl/config/defaults.py`` ``OPTIM.MOMENTUM``).
        weight_decay: SGD weight decay (5e-4, Dassl's ``OPTIM.WEIGHT_DECAY``, applied to every learned tensor).
        warmup_epochs: epochs at the constant warm-up lr (1, ``OPTIM.WARMUP_EPOCH``).
        warmup_lr: warm-up lr (1e-5, ``OPTIM.WARMUP_CONS_LR``).
        augment: ``online`` | ``none`` | ``cached:K`` (see ``AUGMENT_HELP``).
        flip: random horizontal flip in the train transform.
        crop_scale_min: lower bound of RandomResizedCrop's area scale (0.08).
        precision: ``fp32`` | ``amp`` | ``fp16`` (default ``fp32``: a deliberate deviation from the official ``fp16``,
            whose fp16 context is updated without master weights; ``docs/recipes.md``).
        eval_batch_size: batch size for feature extraction (100).
        num_workers: data-loading worker processes.
        text_chunk: encode the class prompts this many classes at a time, each chunk activation-checkpointed
            during training (exact; bounds the text encoder's activation memory by one chunk at the cost of one
            extra text forward per step); ``None``: all classes at once.
    """

    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    augment: str = "online"
    flip: bool = True
    crop_scale_min: float = 0.08
    precision: Precision = "fp32"
    eval_batch_size: int = 100
    num_workers: int = 0
    text_chunk: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.epochs is not None and self.epochs < 1:
            problems.append(f"--epochs must be ≥ 1, got {self.epochs}")
        if self.batch_size is not None and self.batch_size < 1:
            problems.append(f"--batch-size must be ≥ 1, got {self.batch_size}")
        if self.lr is not None and self.lr <= 0:
            problems.append(f"--lr must be > 0, got {self.lr}")
        if not 0 < self.crop_scale_min <= 1:
            problems.append(f"--crop-scale-min must be in (0, 1], got {self.crop_scale_min}")
        if self.warmup_epochs < 0:
            problems.append(f"--warmup-epochs must be ≥ 0, got {self.warmup_epochs}")
        if self.precision not in PRECISIONS:
            problems.append(f"--precision '{self.precision}' is not one of {', '.join(PRECISIONS)}")
        if self.eval_batch_size < 1:
            problems.append(f"--eval-batch-size must be ≥ 1, got {self.eval_batch_size}")
        if self.num_workers < 0:
            problems.append(f"--workers must be ≥ 0, got {self.num_workers}")
        if self.text_chunk is not None and self.text_chunk < 1:
            problems.append(f"--text-chunk must be ≥ 1 classes, got {self.text_chunk}")
        if problems:
            raise ConfigError("; ".join(problems) + ".")
        parse_augment(self.augment)

    @property
    def base_lr(self) -> float:
        """SGD's base learning rate: ``lr``, or :data:`DEFAULT_LR` where no recipe resolved it (a bare
        ``TrainConfig()`` given to :func:`vlprompt.engine.fit.fit`)."""
        return DEFAULT_LR if self.lr is None else self.lr

    @property
    def resolved(self) -> bool:
        """Whether every method-dependent field is set (see :func:`vlprompt.engine.recipe.resolve_train_config`)."""
        return self.epochs is not None and self.batch_size is not None and self.lr is not None

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return asdict(self)
