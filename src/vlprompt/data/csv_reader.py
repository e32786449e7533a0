"""``csv:PATH`` datasets: columns ``path,label`` and optional ``split`` (rules in :mod:`vlprompt.data.custom`).

Label rules:

- Without ``classnames_file``: when every label is an integer, labels are used as is and must cover ``0..N-1``
  (the names are then the numbers, with a warning); otherwise labels are class names and classes are their sorted
  unique values.
- With ``classnames_file``: the file defines the classes in its order (line *i* / entry *i* is label *i*). Lines
  ``<key> <name>`` (or a JSON object) map CSV labels to readable names when every CSV label is one of the keys;
  otherwise each line is one name (use a JSON object when that is ambiguous). A CSV
  label matches a class by key, by name, or as an integer index. Rows whose label matches nothing are *unknown*:
  skipped with a warning that counts and names them, refused with ``strict``.
"""

from __future__ import annotations

import csv
import logging
import os

from vlprompt.data.custom import finish_custom, parse_class_list
from vlprompt.data.images import format_list
from vlprompt.data.records import DatasetSplits, Sample
from vlprompt.data.splitfile import file_sha256, label_gaps, resolve_path
from vlprompt.errors import DataError

logger = logging.getLogger(__name__)

SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def _is_int(s: str) -> bool:
    return s.removeprefix("-").isdecimal()  # what int() accepts (not e.g. "²")


def read_csv(path: str, *, classnames_file: str | None = None, split_seed: int = 1, strict: bool = False,
             allow_outside_root: bool = False) -> DatasetSplits:
    """Read a CSV dataset (see the module docstring).

    Raises:
        DataError: the file or a required column is missing, a row is malformed, a path escapes the CSV's folder,
            duplicates disagree, or a bad-input rule refuses the data under ``strict``.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise DataError(f"CSV file {path!r} does not exist; csv:PATH needs a file with columns path,label[,split]")
    base = os.path.dirname(path)
    try:
        rows = _read_rows(path, base, allow_outside_root)
    except UnicodeDecodeError as e:
        raise DataError(f"CSV file {path!r} is not UTF-8 text ({e}); save it as UTF-8") from e
    except csv.Error as e:
        raise DataError(f"CSV file {path!r} is malformed ({e})") from e
    if not rows:
        raise DataError(f"CSV file {path!r} has no rows")
    return _build(path, base, rows, classnames_file, split_seed, strict)


def _read_rows(path: str, base: str, allow_outside_root: bool) -> list[tuple[str, str, str, int]]:
    """``(absolute path, label, split, line number)`` per row, checked for shape and path safety."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        cols = {(c or "").strip().lower(): c for c in reader.fieldnames or []}
        if "path" not in cols or "label" not in cols:
            raise DataError(f"CSV file {path!r} needs a header with columns 'path' and 'label' (and optionally "
                            f"'split'); found {reader.fieldnames}")
        rows = []
        for row in reader:
            p, lab = (row.get(cols["path"]) or "").strip(), (row.get(cols["label"]) or "").strip()
            sp = (row.get(cols["split"]) or "").strip().lower() if "split" in cols else "train"
            where = f"CSV file {path!r} line {reader.line_num}"
            if not p or not lab:
                raise DataError(f"{where}: empty path or label")
            if sp not in SPLIT_ALIASES:
                raise DataError(f"{where}: split {sp!r} is not one of train, val, test")
            rows.append((resolve_path(base, p, allow_outside_root=allow_outside_root, source=f"CSV file {path!r}"),
                         lab, SPLIT_ALIASES[sp], reader.line_num))
    return rows


def _label_lookup(path: str, labels: set[str], classnames_file: str | None) -> tuple[list[str], dict[str, int]]:
    """The class names and the label text → class index map (label rules in the module docstring)."""
    if classnames_file:
        classes = parse_class_list(classnames_file, labels)[0]
        lookup = {k: i for i, (k, _) in enumerate(classes)}
        for i, (_, name) in enumerate(classes):
            lookup.setdefault(name, i)
        for s in labels:
            if s not in lookup and _is_int(s) and 0 <= int(s) < len(classes):
                lookup[s] = int(s)
        classnames = [name for _, name in classes]
    elif all(_is_int(s) for s in labels):
        ints = sorted({int(s) for s in labels})
        if ints[0] < 0:
            raise DataError(f"CSV file {path!r}: negative label {ints[0]}; integer labels must be 0..N-1")
        gaps = label_gaps(ints)
        if gaps:
            raise DataError(f"CSV file {path!r}: integer labels must cover 0..{ints[-1]}, but {gaps} "
                            "never appear; renumber them or give the classes with --classnames")
        classnames = [str(i) for i in range(ints[-1] + 1)]
        lookup = {s: int(s) for s in labels}
        logger.warning("CSV file %s has integer labels and no --classnames file: the class names are the numbers "
                       "themselves, which makes zero-shot prompts meaningless", path)
    else:
        classnames = sorted(labels)
        lookup = {s: i for i, s in enumerate(classnames)}
    return classnames, lookup


def _build(path: str, base: str, rows: list[tuple[str, str, str, int]], classnames_file: str | None,
           split_seed: int, strict: bool) -> DatasetSplits:
    """Turn the rows into labelled records and splits (label rules in the module docstring)."""
    classnames, lookup = _label_lookup(path, {r[1] for r in rows}, classnames_file)

    unknown = [r for r in rows if r[1] not in lookup]
    if unknown:
        names = sorted({r[1] for r in unknown})
        msg = (f"CSV file {path!r}: {len(unknown)} row(s) with label(s) not in {classnames_file!r}: "
               f"{format_list(names)}")
        if strict:
            raise DataError(msg + " (refused under --strict)")
        logger.warning(msg + " (skipped)")

    pools: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    seen: dict[str, tuple[int, str, int]] = {}
    repeats = []
    for full, lab, split, line in rows:
        if lab not in lookup:
            continue
        y = lookup[lab]
        if full in seen:
            if seen[full][:2] != (y, split):
                raise DataError(f"CSV file {path!r} line {line}: {full!r} is already listed on line {seen[full][2]} "
                                "with another label or split")
            repeats.append(full)
            continue
        seen[full] = (y, split, line)
        pools[split].append(Sample(full, y, classnames[y]))
    if repeats:
        msg = f"CSV file {path!r}: {len(repeats)} duplicate row(s): {format_list(repeats)}"
        if strict:
            raise DataError(msg + " (refused under --strict)")
        logger.warning(msg + " (kept once)")
    extra = {"csv_sha256": file_sha256(path)}
    if classnames_file:
        extra["classnames_file_sha256"] = file_sha256(classnames_file)
    return finish_custom("csv", base, classnames, pools, split_seed, strict, f"CSV file {path!r}", extra)
