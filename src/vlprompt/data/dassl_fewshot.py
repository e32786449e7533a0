"""Dassl's few-shot subset files (``split_fewshot/shot_{K}-seed_{S}.pkl``), read without unpickling anything else.

The official code (``CoOp:datasets/*.py``) draws the K-shot subsets once per seed and stores them with
``pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)`` as ``{"train": [Datum, ...], "val": [Datum, ...]}``
(ImageNet: ``{"train": [...]}`` only, its val being the test set). A ``Datum``
(``Dassl:dassl/data/datasets/base_dataset.py``) is a plain object whose ``__dict__`` holds ``_impath`` (the
*absolute* path on the machine that wrote the file), ``_label``, ``_domain`` and ``_classname``.

**What those files contain.** Pickled by Python 3 at protocol 4 or 5 (Python 2: 2), a Datum is written as the
global ``dassl.data.datasets.base_dataset.Datum`` (``STACK_GLOBAL``/``GLOBAL``), ``EMPTY_TUPLE`` + ``NEWOBJ`` and a
``BUILD`` with its attribute dict; dicts, lists, strings and ints are protocol opcodes, not globals. So that one
global is the only one a genuine file names. (Protocols 0 and 1, which no version of the official code writes, would
also name ``copyreg._reconstructor`` and ``builtins.object``; they are refused.)

**How they are read.** :class:`_RestrictedUnpickler` is Python's documented "Restricting Globals" pattern
(``pickle.Unpickler`` with ``find_class`` overridden): the Datum global resolves to :class:`_DatumStandIn`, a local
class with no methods (Dassl is never imported), and every other global, persistent id or extension code is refused
before anything is built from it. The loaded value is then checked to be exactly that structure (types compared
with ``is``) and converted to :class:`DasslDatum` records. Files over :data:`MAX_FILE_BYTES` are refused unread
(ImageNet's 16-shot file, the largest, is about 2.5 MB).

:func:`apply_dassl_fewshot` maps the stored paths onto the user's dataset (by the part after
``<dataset_dir>/<image_dir>/``), checks labels and class names against the dataset's own records, and returns the
splits with exactly the file's train (and val) images, in the file's order.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import posixpath
import re
from collections import Counter
from dataclasses import dataclass, replace

from vlprompt.data.images import format_list
from vlprompt.data.records import DatasetSplits, Sample
from vlprompt.errors import DataError

logger = logging.getLogger(__name__)

#: The only global a Dassl few-shot file names: ``(module, qualname)`` of Dassl's ``Datum``.
DATUM_GLOBAL = ("dassl.data.datasets.base_dataset", "Datum")
#: Larger files are refused without being read (the largest official file, ImageNet 16 shots, is ~2.5 MB).
MAX_FILE_BYTES = 64 << 20
#: A Datum's attribute dict: name -> type (``int`` excludes ``bool``; types are compared exactly).
DATUM_FIELDS = {"_impath": str, "_label": int, "_domain": int, "_classname": str}
_NAME = re.compile(r"^shot_(\d+)-seed_(\d+)\.pkl$")
_ONLY = ("only Dassl's split_fewshot/shot_K-seed_S.pkl files (dicts of lists of "
         "dassl.data.datasets.base_dataset.Datum) are accepted")


class _DatumStandIn:
    """What ``dassl.data.datasets.base_dataset.Datum`` unpickles to: an empty class whose ``__dict__`` BUILD fills.

    No methods, no ``__setstate__``/``__reduce__``: nothing of the file's runs code, and the result is checked field
    by field before use.
    """


class _RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves Dassl's ``Datum`` to :class:`_DatumStandIn` and refuses every other global."""

    def __init__(self, file: io.BytesIO, source: str) -> None:
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> type:  # noqa: D102 (pickle API)
        if (module, name) == DATUM_GLOBAL:
            return _DatumStandIn
        raise DataError(
            f"few-shot file {self._source!r} refers to the Python global '{module}.{name}', which is refused: "
            f"{_ONLY}; nothing else is ever unpickled. Use the official file, or let vlprompt draw the subset "
            "(drop --fewshot-file)."
        )

    def persistent_load(self, pid: object) -> object:  # noqa: D102 (pickle API)
        raise DataError(f"few-shot file {self._source!r} holds a persistent id, which is refused: {_ONLY}.")


@dataclass(frozen=True)
class DasslDatum:
    """One stored Datum: ``impath`` as written (absolute, on the writer's machine), 0-based ``label``, ``classname``."""

    impath: str
    label: int
    domain: int
    classname: str


@dataclass(frozen=True)
class DasslFewShotFile:
    """A Dassl few-shot file's content.

    Attributes:
        path: absolute path of the file.
        sha256: hex SHA-256 of its bytes.
        train: the stored train subset, in file order.
        val: the stored val subset, or ``None`` when the file has none (ImageNet).
        shots, seed: K and S from a ``shot_K-seed_S.pkl`` file name (``None`` when the file was renamed).
    """

    path: str
    sha256: str
    train: list[DasslDatum]
    val: list[DasslDatum] | None
    shots: int | None
    seed: int | None


def _check_datums(items: object, key: str, source: str) -> list[DasslDatum]:
    """``items`` (the file's ``key`` entry) as records, refusing anything but a list of well-formed Datums."""
    if type(items) is not list:
        raise DataError(f"few-shot file {source!r}: '{key}' is a {type(items).__name__}, expected a list of Datum; "
                        f"{_ONLY}.")
    out = []
    for i, d in enumerate(items):
        if type(d) is not _DatumStandIn:
            raise DataError(f"few-shot file {source!r}: '{key}'[{i}] is a {type(d).__name__}, expected a Datum; "
                            f"{_ONLY}.")
        attrs = vars(d)
        if set(attrs) != set(DATUM_FIELDS) or any(type(attrs[k]) is not t for k, t in DATUM_FIELDS.items()):
            got = ", ".join(f"{k}: {type(v).__name__}" for k, v in attrs.items())
            want = ", ".join(f"{k}: {t.__name__}" for k, t in DATUM_FIELDS.items())
            raise DataError(f"few-shot file {source!r}: '{key}'[{i}] has attributes ({got}), expected a Datum's "
                            f"({want}); {_ONLY}.")
        if attrs["_label"] < 0:
            raise DataError(f"few-shot file {source!r}: '{key}'[{i}] has label {attrs['_label']}; labels are ≥ 0.")
        out.append(DasslDatum(attrs["_impath"], attrs["_label"], attrs["_domain"], attrs["_classname"]))
    return out


def loads_dassl_fewshot(data: bytes, source: str = "<bytes>") -> tuple[list[DasslDatum], list[DasslDatum] | None]:
    """Parse the bytes of a Dassl few-shot file with the restricted unpickler.

    Args:
        data: the file's bytes.
        source: the file name used in error messages.

    Returns:
        ``(train, val)``; ``val`` is ``None`` when the file has no ``"val"`` entry (ImageNet's files).

    Raises:
        DataError: the bytes name any global but Dassl's ``Datum`` (nothing is built from it), are not a complete
            pickle, carry trailing bytes, or do not hold ``{"train": [Datum...], "val": [Datum...]}``.
    """
    buf = io.BytesIO(data)
    try:
        obj = _RestrictedUnpickler(buf, source).load()
    except DataError:
        raise
    except Exception as e:  # truncated or garbage bytes: UnpicklingError, EOFError, ValueError, TypeError, ...
        raise DataError(f"few-shot file {source!r} is not a readable pickle ({type(e).__name__}: {e}); {_ONLY}. "
                        "The file may be truncated: copy it again.") from e
    if buf.tell() != len(data):
        raise DataError(f"few-shot file {source!r} has {len(data) - buf.tell()} bytes after the end of its pickle; "
                        f"{_ONLY}.")
    if type(obj) is not dict or "train" not in obj or not set(obj) <= {"train", "val"}:
        what = f"a dict with keys {sorted(map(repr, obj))}" if type(obj) is dict else f"a {type(obj).__name__}"
        raise DataError(f"few-shot file {source!r} holds {what}, expected {{'train': [...], 'val': [...]}} "
                        f"(ImageNet: 'train' only); {_ONLY}.")
    train = _check_datums(obj["train"], "train", source)
    val = _check_datums(obj["val"], "val", source) if "val" in obj else None
    return train, val


def read_dassl_fewshot(path: str) -> DasslFewShotFile:
    """Read ``split_fewshot/shot_K-seed_S.pkl`` through the restricted unpickler (see the module docstring).

    Raises:
        DataError: the file is missing, too large, or not a genuine Dassl few-shot file.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise DataError(f"--fewshot-file {path!r}: no such file; pass the official "
                        "<dataset>/split_fewshot/shot_K-seed_S.pkl written by CoOp/Dassl.")
    size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
        raise DataError(f"--fewshot-file {path!r} is {size} bytes; Dassl few-shot files are a few MB at most "
                        f"(limit {MAX_FILE_BYTES}); {_ONLY}.")
    with open(path, "rb") as f:
        data = f.read()
    train, val = loads_dassl_fewshot(data, path)
    m = _NAME.match(os.path.basename(path))
    return DasslFewShotFile(path, hashlib.sha256(data).hexdigest(), train, val,
                            int(m.group(1)) if m else None, int(m.group(2)) if m else None)


def _match(
    items: list[DasslDatum], key: str, records: list[Sample], root: str, marker: str, f: DasslFewShotFile, name: str
) -> list[Sample]:
    """The dataset's own records for the file's ``key`` items, in file order; one error for all problems found."""
    # Dataset records by path relative to the image folder, '/'-separated (Dassl joined the same relative paths).
    index = {os.path.relpath(r.path, root).replace(os.sep, "/"): r for r in records}
    out: list[Sample] = []
    foreign, missing, absent, differ = [], [], [], []
    for d in items:
        p = d.impath.replace("\\", "/")  # a file written on Windows
        at = p.rfind(marker)
        if at < 0:
            foreign.append(d.impath)
            continue
        rel = posixpath.normpath(p[at + len(marker):])
        rec = index.get(rel)
        if not os.path.exists(os.path.join(root, rel)):  # split files list images that may not be on disk
            missing.append(rel)
        elif rec is None:
            absent.append(rel)
        elif (rec.label, rec.classname) != (d.label, d.classname):
            differ.append(f"{rel}: file label {d.label} '{d.classname}', dataset label {rec.label} '{rec.classname}'")
        else:
            out.append(rec)
    src = f"--fewshot-file {f.path!r}"
    if foreign:
        raise DataError(f"{src}: {len(foreign)} {key} image path(s) do not contain '{marker}' (e.g. "
                        f"{format_list(foreign)}), so this is not a {name} file; pass the file from "
                        f"<DATA>{marker}../split_fewshot/.")
    if missing:
        raise DataError(f"{src}: {len(missing)} of its {len(items)} {key} images are missing under {root!r}: "
                        f"{format_list(missing)}. The file names images of the full dataset: complete "
                        f"{root!r} (or fix --root) and run `vlprompt datasets check`.")
    if absent:
        raise DataError(f"{src}: {len(absent)} {key} image(s) exist under {root!r} but are not in the dataset's "
                        f"{key} split: {format_list(absent)}. The file was drawn from another split of {name}; use "
                        "the official split file, or drop --fewshot-file.")
    if differ:
        raise DataError(f"{src}: labels or class names of {len(differ)} {key} image(s) disagree with the dataset's: "
                        f"{format_list(differ)}. Use the file written for this dataset's official split.")
    return out


def apply_dassl_fewshot(splits: DatasetSplits, path: str, k: int | None, seed: int) -> DatasetSplits:
    """``splits`` with exactly the train (and val) images of Dassl's few-shot file ``path``.

    Args:
        splits: a CoOp benchmark read by :func:`vlprompt.data.load_dataset` (not yet sampled).
        path: the official ``<dataset>/split_fewshot/shot_K-seed_S.pkl``.
        k: ``--shots``; must equal the file's K (its name, else its largest class count).
        seed: ``--seed``; must equal the file's S when its name gives one (the official run of seed S read it).

    Returns:
        The splits with the file's train/val records (the dataset's own records, in file order); val is left
        whole when it is the test set (ImageNet). ``info`` records ``fewshot_file`` and ``fewshot_file_sha256``.

    Raises:
        DataError: not a benchmark, not a genuine Dassl file, K/S disagree with ``--shots``/``--seed``, an image is
            missing, or labels/class names disagree with the dataset's.
    """
    from vlprompt.data.benchmarks import get_benchmark

    bname = splits.benchmark
    if not bname:
        raise DataError(f"--fewshot-file reads Dassl's split_fewshot files of the CoOp benchmarks; dataset "
                        f"'{splits.name}' is custom data (drop --fewshot-file: its subsets are drawn by --seed).")
    b = get_benchmark(bname)
    if b.test_only:
        raise DataError(f"--fewshot-file: {b.official_name} is a test-only set (no training images); train on "
                        "imagenet with its file and evaluate on this set.")
    f = read_dassl_fewshot(path)
    counts = Counter(d.label for d in f.train)
    file_k = f.shots if f.shots is not None else max(counts.values(), default=0)
    if k is None or k != file_k:
        raise DataError(f"--fewshot-file {f.path!r} holds {file_k}-shot subsets but --shots is {k or 0}; pass "
                        f"--shots {file_k}.")
    if f.seed is not None and f.seed != seed:
        raise DataError(f"--fewshot-file {f.path!r} is the subset of seed {f.seed} but --seed is {seed}; pass "
                        f"--seed {f.seed} (the official run of seed {f.seed} used this file for its init too).")
    val_is_test = splits.val_is_test
    if val_is_test and f.val is not None:
        raise DataError(f"--fewshot-file {f.path!r} has a 'val' list, but {b.official_name}'s files hold only "
                        "'train' (its val is the test set): it is not an ImageNet file.")
    if not val_is_test and f.val is None:
        raise DataError(f"--fewshot-file {f.path!r} has no 'val' list, which {b.official_name}'s files have "
                        "(only ImageNet's lack one): it is not a file of this dataset.")
    marker = "/" + "/".join(p for p in (b.dataset_dir, b.image_dir) if p) + "/"
    train = _match(f.train, "train", splits.train, splits.root, marker, f, b.official_name)
    val = splits.val if val_is_test else _match(f.val or [], "val", splits.val, splits.root, marker, f,
                                                b.official_name)
    logger.info("few-shot subsets from %s (sha256 %s): %d train, %d val images", f.path, f.sha256[:12], len(train),
                0 if val_is_test else len(val))
    info = {**splits.info, "shots": k, "fewshot_seed": seed, "fewshot_file": f.path, "fewshot_file_sha256": f.sha256}
    return replace(splits, train=train, val=val, info=info)


__all__ = ["DasslDatum", "DasslFewShotFile", "apply_dassl_fewshot", "loads_dassl_fewshot", "read_dassl_fewshot"]
