"""Small value types shared by every layer: a read-only mapping for the dict fields of frozen specs.

Foundation layer (``tests/architecture/test_layering.py``): imports nothing of vlprompt.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn


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


__all__ = ["ReadOnlyDict"]
