"""Small value types shared by every layer: the closed choices of the specs, written once, and a read-only mapping
for the dict fields of frozen specs.

Each closed choice is one ``Literal`` type; its values (``typing.get_args``) are what the dataclasses check
and what the command line offers (``argparse`` ``choices=``), so a value is spelled in one place. Method names are
open (the prompt-learner registry) and are not a ``Literal``.

Foundation layer (``tests/architecture/test_layering.py``): imports nothing of vlprompt.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any, Literal, NoReturn, get_args

#: Numeric precision of a run (``--precision``): fp32 (default), amp (autocast), fp16 (the official fp16 weights).
Precision = Literal["fp32", "amp", "fp16"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)

#: Base-to-new class split (``--subsample``): every class, the first ``ceil(n/2)`` (base), or the rest (new).
Subsample = Literal["all", "base", "new"]
SUBSAMPLES: tuple[Subsample, ...] = get_args(Subsample)

#: Where the class name goes in a CoOp-style prompt (``--class-token-position``).
ClassTokenPosition = Literal["end", "middle", "front"]
CLASS_TOKEN_POSITIONS: tuple[ClassTokenPosition, ...] = get_args(ClassTokenPosition)

#: The mode of ``--augment`` (the option itself is ``online``, ``none`` or ``cached:K``; see
#: :func:`vlprompt.engine.config.parse_augment`).
AugmentMode = Literal["online", "none", "cached"]
AUGMENT_MODES: tuple[AugmentMode, ...] = get_args(AugmentMode)

#: The few-shot sampler a dataset's reader chose (:attr:`vlprompt.data.records.DatasetSplits.sampler`): ``coop``
#: (Dassl's, for benchmarks and split files: the official images for a split, K and seed) or ``pure`` (explicitly
#: seeded, for folder/CSV data).
Sampler = Literal["coop", "pure"]
SAMPLERS: tuple[Sampler, ...] = get_args(Sampler)


class ReadOnlyDict(dict):
    """A ``dict`` that refuses every in-place change, for the mapping fields of frozen specs (``RunSpec.learner``).

    It is still a ``dict``: it compares equal to one, serialises with :mod:`json`, survives
    :func:`dataclasses.asdict`, :func:`copy.deepcopy` and :mod:`pickle` (a subprocess or a cluster job receives an
    equal one). Only the top level is frozen; a spec deep-copies its mapping when it is built
    (:meth:`frozen_copy`), so no later change to the caller's dict reaches it. Derive a changed one with
    ``ReadOnlyDict({**d, key: value})``.
    """

    __slots__ = ()

    def _refuse(self, *_args: Any, **_kwargs: Any) -> NoReturn:
        raise TypeError("this mapping belongs to a frozen spec and cannot be changed; derive a new spec with "
                        "dataclasses.replace(spec, field={...}) instead.")

    __setitem__ = __delitem__ = __ior__ = _refuse  # type: ignore[assignment]
    clear = pop = popitem = setdefault = update = _refuse  # type: ignore[assignment]

    def __reduce__(self) -> tuple:
        # pickle/copy rebuild through the constructor (dict's default would set the items one by one: refused)
        return (type(self), (dict(self),))

    def __copy__(self) -> ReadOnlyDict:
        return self  # immutable at the top level: a shallow copy may be the same object

    def __deepcopy__(self, memo: dict) -> ReadOnlyDict:
        return type(self)(copy.deepcopy(dict(self), memo))

    @classmethod
    def frozen_copy(cls, value: Mapping | Iterable | None) -> ReadOnlyDict:
        """A deep copy of ``value`` (a mapping, or ``(key, value)`` pairs; ``None``: empty) as a read-only dict."""
        return cls(copy.deepcopy(dict(value or {})))


__all__ = ["AUGMENT_MODES", "CLASS_TOKEN_POSITIONS", "PRECISIONS", "SAMPLERS", "SUBSAMPLES", "AugmentMode",
           "ClassTokenPosition", "Precision", "ReadOnlyDict", "Sampler", "Subsample"]
