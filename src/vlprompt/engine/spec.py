"""The spec of a run: everything that defines it, recorded in its ``config.json``, frozen and typed by concern.

Library layer (engine): the run functions that take it (:mod:`vlprompt.engine.run`, the linear probe, the grid)
are the application; the spec itself imports only the typed configs. :mod:`vlprompt.engine.run` re-exports
:class:`RunSpec` and :func:`spec_to_dict`.

**Structure (issue 13).** A :class:`RunSpec` is five frozen parts, one per concern, plus what a re-run must find:

=================  ====================  ============================================================================
attribute          type                  fields
=================  ====================  ============================================================================
``spec.data``      :class:`DataSpec`     dataset, root, shots, seed, subsample, classnames_file, strict,
                                         allow_outside_root, fewshot_file — which images, drawn how
``spec.model``     :class:`BackboneSpec` backbone, pretrained, device, cache_dir — which encoder, where it runs, where
                                         its features are cached (the cache is keyed by the backbone's identity)
``spec.approach``  :class:`MethodSpec`   method, learner, label — what is learned on top of the encoder
``spec.train``     :class:`TrainConfig`  the optimisation recipe (:mod:`vlprompt.engine.config`)
``spec.output``    :class:`OutputSpec`   out, overwrite, resume, state_every_seconds, tensorboard — the run folder
``spec.expect``    ``dict | None``       what a re-run must find as recorded (issue 17), not recorded itself
=================  ====================  ============================================================================

Why these cuts: each part is consumed by one layer of the run — the data pipeline reads only ``data``, backbone
creation and the feature cache only ``model``, the learner factory only ``approach``, the loop only ``train``, the
run-folder code only ``output`` — so a callee can be handed the one part it needs, and a part can be validated on
its own (``shots``/``seed`` in :class:`DataSpec`, the learner's deep read-only copy in :class:`MethodSpec`).
``seed`` sits with the data because it is first of all the few-shot draw (Dassl's ``shot_K-seed_S``); the run also
seeds the learner's initialisation with it. ``device`` and ``cache_dir`` sit with the backbone: both say where the
encoder's work happens and is kept, and neither changes what is learned. The attribute names are not the natural
``backbone``/``method``: those are, and stay, the flat string fields every caller already reads.

**The flat view stays the public surface.** ``config.json`` (:func:`spec_to_dict`) and every caller use the flat
names: ``RunSpec(dataset=..., out=..., shots=2, method="cocoop")`` builds the parts; ``spec.dataset``,
``spec.shots``, ``spec.method``, … are read-only properties of them; and :func:`dataclasses.replace` accepts flat
names (``replace(spec, out=..., shots=2)``): it passes the current parts plus the changes to the constructor, and a
flat keyword overrides its field inside the part it belongs to. Parts can be given too
(``RunSpec(data=DataSpec("dtd"), out=...)``), with flat keywords applied on top.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from vlprompt.engine.config import TrainConfig
from vlprompt.errors import ConfigError
from vlprompt.types import ReadOnlyDict, Subsample


@dataclass(frozen=True)
class DataSpec:
    """Which images a run uses and how they are drawn (``--dataset``, ``--root``, ``--shots``, ``--seed``, …).

    Attributes:
        dataset: a registered name (``dtd``) or a custom source (``folder:DIR``, ``csv:FILE``, ``split:FILE``).
        root: the folder the dataset's files are under (``None``: the dataset's own default).
        shots: training images per class (``None`` or 0: all).
        seed: the few-shot draw (and the learner's initialisation), 0..2**32-1.
        subsample: ``all`` | ``base`` | ``new`` classes (base-to-new protocol).
        classnames_file: a file overriding the class names.
        strict: refuse unreadable/duplicate entries instead of skipping them with a warning.
        allow_outside_root: accept listed files outside ``root``.
        fewshot_file: Dassl's ``split_fewshot/shot_K-seed_S.pkl``: train on exactly the official subsets
            (``--fewshot-file``).
    """

    dataset: str
    root: str | None = None
    shots: int | None = 16
    seed: int = 1
    subsample: Subsample = "all"
    classnames_file: str | None = None
    strict: bool = False
    allow_outside_root: bool = False
    fewshot_file: str | None = None

    def __post_init__(self) -> None:
        if self.shots is not None and (isinstance(self.shots, bool) or self.shots < 0):
            raise ConfigError(f"--shots must be ≥ 0 (0 = all training images), got {self.shots}.")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"--seed must be in 0..2**32-1 (NumPy's seed range), got {self.seed}.")


@dataclass(frozen=True)
class BackboneSpec:
    """Which encoder a run starts from and where its work happens and is kept.

    Attributes:
        backbone: an open_clip name (``RN50``), ``hf:DIR``, ``microclip``, or a registered test model.
        pretrained: the weights tag or file (``None``: the backbone's default).
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps``.
        cache_dir: the feature cache (``None``: the default folder; ``""``: no cache).
    """

    backbone: str = "RN50"
    pretrained: str | None = None
    device: str = "auto"
    cache_dir: str | None = None


@dataclass(frozen=True)
class MethodSpec:
    """What is learned on top of the encoder.

    Attributes:
        method: a registered prompt learner or adapter (``coop``, ``cocoop``, ``tip-adapter``, …), ``zeroshot``,
            ``linear-probe``.
        learner: the method's options (held as a :class:`~vlprompt.types.ReadOnlyDict` deep copy).
        label: the name reports group the run under (``None``: derived from the method and its options).
    """

    method: str = "coop"
    learner: dict = field(default_factory=ReadOnlyDict)
    label: str | None = None

    def __post_init__(self) -> None:
        # frozen: the mapping becomes a read-only deep copy (object.__setattr__ is how a frozen dataclass sets its
        # own fields while it is being built)
        object.__setattr__(self, "learner", ReadOnlyDict.frozen_copy(self.learner))


@dataclass(frozen=True)
class OutputSpec:
    """The run folder and how it is written. None of these is part of the recipe: a run resumed with other values
    computes the same thing.

    Attributes:
        out: the run folder.
        overwrite: replace a finished run in ``out``.
        resume: keep a finished run of the same configuration (and continue an unfinished one, as always).
        state_every_seconds: save the resumable training state at most this often (seconds); 0 = after every epoch.
            A resumed run ends identical either way; a larger value only means more epochs are redone after a kill.
        tensorboard: write TensorBoard events into ``out/tensorboard/`` (``--tensorboard``;
            :mod:`vlprompt.runs.tracking`): train/* per step, epoch/* per epoch, eval/* at the end. Needs
            ``pip install 'vlprompt[tensorboard]'``.
    """

    out: str
    overwrite: bool = False
    resume: bool = False
    state_every_seconds: float = 0.0
    tensorboard: bool = False


#: The flat field names in ``config.json``'s order (the order of the flat ``RunSpec`` before issue 13), each with
#: the part that holds it (``None``: a field of ``RunSpec`` itself).
FLAT_FIELDS: dict[str, str | None] = {
    "dataset": "data", "out": "output", "root": "data", "shots": "data", "seed": "data", "subsample": "data",
    "backbone": "model", "pretrained": "model", "method": "approach", "learner": "approach", "train": None,
    "device": "model", "cache_dir": "model", "classnames_file": "data", "strict": "data", "label": "approach",
    "overwrite": "output", "resume": "output", "allow_outside_root": "data", "fewshot_file": "data",
    "state_every_seconds": "output", "tensorboard": "output", "expect": None,
}  # fmt: skip
_PART_TYPES: dict[str, type] = {"data": DataSpec, "model": BackboneSpec, "approach": MethodSpec, "output": OutputSpec}


def _flat_property(part: str, name: str) -> property:
    def get(self: RunSpec) -> Any:
        return getattr(getattr(self, part), name)

    get.__doc__ = f"``spec.{part}.{name}`` (read-only; derive a changed spec with ``dataclasses.replace``)."
    return property(get)


@dataclass(frozen=True, init=False)
class RunSpec:
    """Everything that defines a run (recorded in ``config.json``): five frozen parts (see the module docstring).

    Frozen: no run function changes the spec it is given. What a run resolves (the learner's full config, the
    method's recipe, a zero-shot run's templates) goes into a derived copy (:func:`dataclasses.replace`) that the
    run passes down and records; the caller's spec stays as it was. ``learner`` and ``expect`` are held as
    :class:`~vlprompt.types.ReadOnlyDict` deep copies of the mappings given, so they cannot be changed either.

    Build it with the flat keywords of ``config.json`` (``RunSpec(dataset="dtd", out="runs/x", shots=4)``; the
    defaults are those of the parts), with parts (``data=DataSpec(...)``), or both: a flat keyword overrides its
    field in the given part. ``dataset`` and ``out`` are required unless ``data``/``output`` are given.
    """

    data: DataSpec
    model: BackboneSpec
    approach: MethodSpec
    train: TrainConfig
    output: OutputSpec
    #: What a re-run must find as recorded (few-shot image lists, class names, weight fingerprint), checked before
    #: training by :func:`vlprompt.runs.replay.check_recorded`; ``None``: nothing to check. Not recorded itself.
    expect: dict | None

    def __init__(self, dataset: str | None = None, out: str | None = None, *, data: DataSpec | None = None,
                 model: BackboneSpec | None = None, approach: MethodSpec | None = None,
                 train: TrainConfig | None = None, output: OutputSpec | None = None, expect: dict | None = None,
                 **flat: Any) -> None:
        unknown = sorted(set(flat) - set(FLAT_FIELDS))
        if unknown:
            raise TypeError(f"RunSpec() got unexpected keyword argument(s) {unknown}; the fields are "
                            f"{list(FLAT_FIELDS)} and the parts {list(_PART_TYPES)}.")
        if dataset is not None:
            flat["dataset"] = dataset
        if out is not None:
            flat["out"] = out
        given = {"data": data, "model": model, "approach": approach, "output": output}
        for part, cls in _PART_TYPES.items():
            own = {name: flat[name] for name in flat if FLAT_FIELDS[name] == part}
            base = given[part]
            if base is None:
                required = [f.name for f in fields(cls) if f.name in ("dataset", "out") and f.name not in own]
                if required:
                    raise TypeError(f"RunSpec() missing required argument: '{required[0]}'")
                value = cls(**own)
            else:
                value = replace(base, **own) if own else base
            object.__setattr__(self, part, value)
        object.__setattr__(self, "train", TrainConfig() if train is None else train)
        object.__setattr__(self, "expect", None if expect is None else ReadOnlyDict.frozen_copy(expect))

    if TYPE_CHECKING:  # the flat read-only view, for type checkers: the properties are set below the class
        dataset: str
        out: str
        root: str | None
        shots: int | None
        seed: int
        subsample: Subsample
        backbone: str
        pretrained: str | None
        method: str
        learner: dict
        device: str
        cache_dir: str | None
        classnames_file: str | None
        strict: bool
        label: str | None
        overwrite: bool
        resume: bool
        allow_outside_root: bool
        fewshot_file: str | None
        state_every_seconds: float
        tensorboard: bool


# spec.dataset, spec.out, spec.shots, …: read-only properties of the parts (a frozen dataclass refuses to set any
# attribute, so ``spec.shots = 2`` raises FrozenInstanceError as before)
for _name, _part in FLAT_FIELDS.items():
    if _part is not None:
        setattr(RunSpec, _name, _flat_property(_part, _name))
del _name, _part


def spec_to_dict(spec: RunSpec) -> dict:
    """JSON-serialisable form of a spec: the flat fields, in ``config.json``'s order (unchanged by issue 13)."""
    d: dict[str, Any] = {}
    for name, part in FLAT_FIELDS.items():
        d[name] = getattr(spec, name) if part is None else getattr(getattr(spec, part), name)
    d["train"] = spec.train.to_dict()
    d["learner"] = dict(spec.learner)  # plain dicts: the result is the caller's to change
    d["expect"] = None if spec.expect is None else dict(spec.expect)
    return d


__all__ = ["FLAT_FIELDS", "BackboneSpec", "DataSpec", "MethodSpec", "OutputSpec", "RunSpec", "spec_to_dict"]
