"""Split files in the official CoOp format, path safety, and class-name bookkeeping.

The official ``split_zhou_<Name>.json`` format (``OxfordPets.save_split`` / ``read_split``)::

    {"train": [["<path relative to the image folder>", <0-based label>, "<class name>"], ...],
     "val":   [...],
     "test":  [...]}

Class names in these files are already post-processed (EuroSAT/Caltech renames, Cars year-first, ...), so they
are used as stored. vlprompt also reads two optional keys that the official files do not have: ``"classnames"``
(a list indexed by label, for classes that appear in no split) and ``"template"`` (a zero-shot template).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence

from vlprompt._io import atomic_write_json, file_sha256
from vlprompt.data.images import format_list
from vlprompt.data.records import Sample
from vlprompt.errors import DataError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# Relative paths with ``.``/``..`` segments, doubled or back-slashes go through normalisation and the escape check.
_NEEDS_NORMALISING = re.compile(r"(^|/)\.{1,2}(/|$)|//|\\")


@functools.lru_cache(maxsize=64)
def _abspath(base: str) -> str:
    return os.path.abspath(base)


def resolve_path(base: str, path: str, *, allow_outside_root: bool = False, source: str = "") -> str:
    """Absolute, normalised path of ``path`` relative to ``base``, refusing paths that escape ``base``.

    The check is lexical (``..`` and absolute paths), so a symlinked data folder inside ``base`` is fine.

    Raises:
        DataError: ``path`` points outside ``base`` and ``allow_outside_root`` is false, or contains a NUL.
    """
    if "\0" in path:
        raise DataError(f"path {path!r}{f' in {source}' if source else ''} contains a NUL character; no file can have "
                        "that name")
    if path and path[0] not in "/~" and not _NEEDS_NORMALISING.search(path):
        return f"{_abspath(base)}{os.sep}{path}"  # fast path: a clean relative path cannot escape ``base``
    full = os.path.normpath(os.path.join(base, os.path.expanduser(path)))
    if os.path.abspath(full) == os.path.normpath(os.path.abspath(base)):
        raise DataError(f"path {path!r}{f' in {source}' if source else ''} names the dataset folder itself, not an "
                        "image file")
    if not allow_outside_root:
        base_n = os.path.normpath(os.path.abspath(base))
        if os.path.commonpath([base_n, os.path.abspath(full)]) != base_n:
            where = f" in {source}" if source else ""
            raise DataError(
                f"path {path!r}{where} points outside {base_n!r}; keep image paths inside the dataset folder, "
                "or pass allow_outside_root=True (CLI: --allow-outside-root) if you trust this file"
            )
    return os.path.abspath(full)


def classnames_from_records(groups: Iterable[Sequence[Sample]], source: str, known: Sequence[str] = ()) -> list[str]:
    """Class names indexed by label, checking that labels are 0..N-1 and each has exactly one name.

    Args:
        groups: record lists (e.g. train, val, test).
        source: file or dataset name for error messages.
        known: names already known for labels 0..len(known)-1 (e.g. a split file's ``"classnames"``).

    Raises:
        DataError: a label has two names, is negative, or some label in 0..max is never seen.
    """
    names: dict[int, str] = dict(enumerate(known))
    for records in groups:
        for r in records:
            if r.label < 0:
                raise DataError(f"{source}: negative label {r.label} for {r.path!r}; labels must be 0-based")
            old = names.setdefault(r.label, r.classname)
            if old != r.classname:
                raise DataError(
                    f"{source}: label {r.label} has two class names, {old!r} and {r.classname!r} "
                    f"(e.g. at {r.path!r}); each label needs exactly one name"
                )
    if not names:
        return []
    missing = label_gaps(names)
    if missing:
        raise DataError(
            f"{source}: labels must be 0..N-1 without gaps, but label(s) {missing} never appear; "
            "renumber the labels or list every class in a \"classnames\" entry"
        )
    return [names[i] for i in range(len(names))]


def label_gaps(labels: Iterable[int], limit: int = 10) -> str:
    """The labels missing from ``0..max(labels)`` as ``"3, 4, … and N more"``, or ``""`` when there are none.

    Runs in time proportional to ``len(labels) + limit``, not to ``max(labels)`` (a label of 10**12 in a hostile
    file must not hang the reader).
    """
    present = set(labels)
    top = max(present)
    n_missing = top + 1 - len(present)
    if n_missing <= 0:
        return ""
    shown, i = [], 0
    while len(shown) < min(limit, n_missing):
        if i not in present:
            shown.append(str(i))
        i += 1
    return ", ".join(shown) + (f", … and {n_missing - len(shown)} more" if n_missing > len(shown) else "")


def _parse_entries(raw: object, split: str, path: str, base: str, allow_outside_root: bool) -> list[Sample]:
    if not isinstance(raw, list):
        raise DataError(f"split file {path!r}: {split!r} must be a list of [path, label, classname], got {type(raw)}")
    out = []
    for i, item in enumerate(raw):
        ok = isinstance(item, (list, tuple)) and len(item) == 3
        if ok:
            rel, label, name = item
            ok = isinstance(rel, str) and isinstance(name, str) and not isinstance(label, bool)
            ok = ok and (isinstance(label, int) or (isinstance(label, str) and label.strip().isdecimal()))
        if not ok:
            raise DataError(
                f"split file {path!r}: entry {split}[{i}] = {item!r} is not [relative_path, int_label, classname]"
            )
        full = resolve_path(base, rel, allow_outside_root=allow_outside_root, source=f"split file {path!r}")
        out.append(Sample(full, int(label), name))
    return out


def read_split_file(
    path: str, image_dir: str, *, allow_outside_root: bool = False, strict: bool = False
) -> tuple[list[Sample], list[Sample], list[Sample], dict]:
    """Read an official-format split file.

    Args:
        path: the JSON file.
        image_dir: folder the stored paths are relative to.
        allow_outside_root: accept paths that escape ``image_dir``.
        strict: refuse duplicate paths instead of warning.

    Returns:
        ``(train, val, test, extra)`` where ``extra`` holds ``sha256`` and the optional ``classnames``/``template``.

    Raises:
        DataError: the file is missing, not JSON, or not in the expected format.
    """
    if not os.path.isfile(path):
        raise DataError(f"split file {path!r} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise DataError(f"split file {path!r} is not valid JSON ({e})") from e
    if not isinstance(data, dict) or not any(k in data for k in SPLITS):
        raise DataError(f"split file {path!r} must be a JSON object with keys 'train', 'val', 'test'")
    splits = [_parse_entries(data.get(k, []), k, path, image_dir, allow_outside_root) for k in SPLITS]
    check_duplicates(dict(zip(SPLITS, splits)), source=f"split file {path!r}", strict=strict)
    extra: dict = {"sha256": file_sha256(path)}
    if "classnames" in data:
        names = data["classnames"]
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise DataError(f"split file {path!r}: 'classnames' must be a list of strings indexed by label")
        extra["classnames"] = names
    if "template" in data:
        from vlprompt.data.templates import check_template
        from vlprompt.errors import ConfigError

        try:
            check_template(data["template"], f"split file {path!r}: 'template'")
        except ConfigError as e:
            raise DataError(str(e)) from e
        extra["template"] = data["template"]
    if "name" in data:
        if not (isinstance(data["name"], str) and data["name"].strip()):
            raise DataError(f"split file {path!r}: 'name' must be a non-empty string (the dataset's name in reports)")
        extra["name"] = data["name"].strip()
    return splits[0], splits[1], splits[2], extra


def check_duplicates(splits: dict[str, list[Sample]], source: str, strict: bool = False) -> None:
    """Refuse conflicting duplicates; warn about (or, with ``strict``, refuse) harmless repeats.

    A path listed twice in one split with the same label is dropped to one entry (in place) with a warning. A
    path with two different labels is always an error. A path in two splits (train/test leakage) is a warning,
    an error under ``strict``.
    """
    n = sum(len(records) for records in splits.values())
    if len({r.path for records in splits.values() for r in records}) == n:
        return  # fast path: no path appears twice
    seen: dict[str, tuple[str, int]] = {}  # path -> (first split, label)
    repeats, leaks = [], []
    for split, records in splits.items():
        kept, here = [], set()
        for r in records:
            prev = seen.setdefault(r.path, (split, r.label))
            if prev[1] != r.label:
                raise DataError(f"{source}: {r.path!r} is listed with two labels ({prev[1]} and {r.label})")
            if r.path in here:  # repeated within this split (whether or not it is also in another split)
                repeats.append(r.path)
                continue
            here.add(r.path)
            if prev[0] != split:
                leaks.append(r.path)
            kept.append(r)
        records[:] = kept
    if repeats or leaks:
        msg = []
        if repeats:
            msg.append(f"{len(repeats)} path(s) listed twice in the same split (kept once): {format_list(repeats)}")
        if leaks:
            msg.append(f"{len(leaks)} path(s) appear in more than one split: {format_list(leaks)}")
        if strict:
            raise DataError(f"{source}: duplicate paths (refused under --strict): " + "; ".join(msg))
        logger.warning("%s: %s", source, "; ".join(msg))


def write_split_file(path: str, train: Sequence[Sample], val: Sequence[Sample], test: Sequence[Sample],
                     image_dir: str) -> None:
    """Write records as an official-format split file (paths relative to ``image_dir``)."""

    def rows(records: Sequence[Sample]) -> list:
        return [[os.path.relpath(r.path, image_dir).replace(os.sep, "/"), r.label, r.classname] for r in records]

    atomic_write_json(path, {"train": rows(train), "val": rows(val), "test": rows(test)})
