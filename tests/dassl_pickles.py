"""Writing files the way the official code writes ``split_fewshot/shot_K-seed_S.pkl``, for tests.

``OfficialDatum`` carries the same module and qualified name as Dassl's ``Datum``
(``dassl.data.datasets.base_dataset.Datum``) and the same four private attributes, so ``pickle.dumps`` emits the
same opcodes and global as ``CoOp:datasets/*.py``'s ``pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)``.
The stand-in module is registered in ``sys.modules`` only while pickling (pickle checks that the global resolves to
the class being written). Dassl itself is not installed or imported.

Imported by tests under ``tests/`` (the folder of the root ``conftest.py`` is on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import types

DATUM_MODULE = "dassl.data.datasets.base_dataset"


class OfficialDatum:
    """Same state as Dassl's ``Datum(impath, label, domain, classname)``."""

    def __init__(self, impath: str = "", label: int = 0, domain: int = 0, classname: str = "") -> None:
        self._impath = impath
        self._label = label
        self._domain = domain
        self._classname = classname


OfficialDatum.__module__ = DATUM_MODULE
OfficialDatum.__qualname__ = OfficialDatum.__name__ = "Datum"


@contextlib.contextmanager
def dassl_modules():
    """``dassl.data.datasets.base_dataset.Datum`` importable (= :class:`OfficialDatum`) inside the block."""
    names = ["dassl", "dassl.data", "dassl.data.datasets", DATUM_MODULE]
    saved = {n: sys.modules.get(n) for n in names}
    for n in names:
        sys.modules[n] = types.ModuleType(n)
    sys.modules[DATUM_MODULE].Datum = OfficialDatum
    try:
        yield
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


def dumps_official(data: object, protocol: int = pickle.HIGHEST_PROTOCOL) -> bytes:
    """``pickle.dumps(data, protocol)`` with Dassl's Datum global resolvable (the official writer's call)."""
    with dassl_modules():
        return pickle.dumps(data, protocol=protocol)


def write_official(path, train: list, val: list | None, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
    """Write ``{"train": train, "val": val}`` (``val=None``: ``{"train": train}``, ImageNet) as the official code."""
    data = {"train": train} if val is None else {"train": train, "val": val}
    with open(path, "wb") as f:
        f.write(dumps_official(data, protocol))
