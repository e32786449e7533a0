"""The spec of a run: everything that defines it, recorded in its ``config.json``, frozen.

Library layer (engine): the run functions that take it (:mod:`vlprompt.engine.run`, the linear probe, the grid)
are the application; the spec itself imports only the typed configs. :mod:`vlprompt.engine.run` re-exports
:class:`RunSpec` and :func:`spec_to_dict`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from vlprompt.engine.config import TrainConfig
from vlprompt.errors import ConfigError
from vlprompt.types import ReadOnlyDict, Subsample


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines a run (recorded in ``config.json``).

    Frozen: no run function changes the spec it is given. What a run resolves (the learner's full config, the
    method's recipe, a zero-shot run's templates) goes into a derived copy (:func:`dataclasses.replace`) that the
    run passes down and records; the caller's spec stays as it was. ``learner`` and ``expect`` are held as
    :class:`~vlprompt.types.ReadOnlyDict` deep copies of the mappings given, so they cannot be changed either.
    """

    dataset: str
    out: str
    root: str | None = None
    shots: int | None = 16
    seed: int = 1
    subsample: Subsample = "all"
    backbone: str = "RN50"
    pretrained: str | None = None
    method: str = "coop"
    learner: dict = field(default_factory=ReadOnlyDict)
    train: TrainConfig = field(default_factory=TrainConfig)
    device: str = "auto"
    cache_dir: str | None = None
    classnames_file: str | None = None
    strict: bool = False
    label: str | None = None
    overwrite: bool = False
    resume: bool = False
    allow_outside_root: bool = False
    #: Dassl's ``split_fewshot/shot_K-seed_S.pkl``: train on exactly the official subsets (``--fewshot-file``).
    fewshot_file: str | None = None
    #: Save the resumable training state at most this often (seconds); 0 = after every epoch. A resumed run ends
    #: identical either way; a larger value only means more epochs are redone after a kill. Not part of the recipe.
    state_every_seconds: float = 0.0
    #: Write TensorBoard events into ``out/tensorboard/`` (``--tensorboard``; :mod:`vlprompt.engine.tracking`):
    #: train/* per step, epoch/* per epoch, eval/* at the end. Needs ``pip install 'vlprompt[tensorboard]'``. Not
    #: part of the recipe: a run resumed with or without it computes the same thing.
    tensorboard: bool = False
    # --- re-running a recorded run (issue 17: --config RUN/config.json) ---
    #: What a re-run must find as recorded (few-shot image lists, class names, weight fingerprint), checked before
    #: training by :func:`vlprompt.engine.replay.check_recorded`; ``None``: nothing to check. Not recorded itself.
    expect: dict | None = None
    # --- end re-running ---

    def __post_init__(self) -> None:
        if self.shots is not None and (isinstance(self.shots, bool) or self.shots < 0):
            raise ConfigError(f"--shots must be ≥ 0 (0 = all training images), got {self.shots}.")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"--seed must be in 0..2**32-1 (NumPy's seed range), got {self.seed}.")
        # frozen: the mapping fields become read-only deep copies (object.__setattr__ is how a frozen dataclass
        # sets its own fields while it is being built)
        object.__setattr__(self, "learner", ReadOnlyDict.frozen_copy(self.learner))
        if self.expect is not None:
            object.__setattr__(self, "expect", ReadOnlyDict.frozen_copy(self.expect))


def spec_to_dict(spec: RunSpec) -> dict:
    """JSON-serialisable form of a spec."""
    d = asdict(spec)
    d["train"] = spec.train.to_dict()
    d["learner"] = dict(spec.learner)  # plain dicts: the result is the caller's to change
    d["expect"] = None if spec.expect is None else dict(spec.expect)
    return d


__all__ = ["RunSpec", "spec_to_dict"]
