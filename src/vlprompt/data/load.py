"""``load_dataset``: one entry point for benchmarks, folders, CSV files and split files."""

from __future__ import annotations

import logging
import os
from dataclasses import replace

from vlprompt.data.benchmarks import get_benchmark, list_datasets
from vlprompt.data.csv_reader import read_csv
from vlprompt.data.custom import read_classnames_file, read_folder
from vlprompt.data.readers import check_layout, load_benchmark
from vlprompt.data.records import DatasetSplits, Sample
from vlprompt.data.splitfile import classnames_from_records, file_sha256, read_split_file
from vlprompt.errors import DataError

logger = logging.getLogger(__name__)

CUSTOM_PREFIXES = ("folder:", "csv:", "split:")


def read_split_spec(path: str, *, allow_outside_root: bool = False, strict: bool = False) -> DatasetSplits:
    """Read a generic split file in the official format, paths relative to the JSON file's folder.

    Optional keys ``"classnames"`` (names indexed by label), ``"template"`` and ``"name"`` (the dataset's name in
    run configs and reports; default: the JSON file's folder name) are honoured. Few-shot subsets of
    such data use the official sampler.

    Raises:
        DataError: the file is missing or malformed, a path escapes its folder, or the first image is missing.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise DataError(f"split file {path!r} does not exist; split:PATH needs a JSON file "
                        '{"train": [[relpath, label, classname], ...], "val": [...], "test": [...]}')
    root = os.path.dirname(path)
    train, val, test, extra = read_split_file(path, root, allow_outside_root=allow_outside_root, strict=strict)
    classnames = classnames_from_records([train, val, test], f"split file {path!r}", extra.get("classnames", ()))
    for split, records in (("train", train), ("val", val), ("test", test)):
        if records and not os.path.exists(records[0].path):
            raise DataError(f"split file {path!r}: the first {split} image {records[0].path!r} does not exist; "
                            "paths must be relative to the split file's folder")
    info = {"split_file": os.path.basename(path), "split_sha256": extra["sha256"], "sampler": "coop"}
    # The dataset's name in run configs and reports: the file's "name" key, else its folder's name.
    name = extra.get("name") or os.path.basename(root) or "split"
    return DatasetSplits(name, root, classnames, train, val, test, extra.get("template", "a photo of a {}."), info,
                         val_is_test=False, sampler="coop")


def _rename(splits: DatasetSplits, classnames_file: str) -> DatasetSplits:
    """Give readable names from ``classnames_file`` (keyed by the current names, or one per line in label order)."""
    mapping = read_classnames_file(classnames_file, list(splits.classnames))
    names = [mapping.get(c, c) for c in splits.classnames]

    def re(records: list[Sample]) -> list[Sample]:
        return [Sample(r.path, r.label, names[r.label]) for r in records]

    info = {**splits.info, "classnames_file_sha256": file_sha256(classnames_file)}
    test = re(splits.test)
    val = test if splits.val_is_test else re(splits.val)
    return replace(splits, classnames=names, train=re(splits.train), val=val, test=test, info=info)


def _custom_path(spec: str, prefix: str, root: str | None) -> str:
    """The path of a custom spec (``folder:PATH`` …), relative paths resolved against ``root``."""
    path = os.path.expanduser(spec[len(prefix):])
    if not path:
        raise DataError(f"dataset {spec!r}: give a path after {prefix!r}")
    return os.path.join(root, path) if root and not os.path.isabs(path) else path


def check_dataset(spec: str, root: str | None = None) -> None:
    """Check that the folder or file ``spec`` is read from exists, without reading it: the benchmark's layout
    (:func:`vlprompt.data.readers.check_layout`: data root, dataset and image folders, required files, split file),
    or a custom spec's path. A grid calls it once per dataset before any run starts, so a missing folder is one
    error rather than one per run.

    Raises:
        DataError: what :func:`load_dataset` would raise for the missing folder or file (same message).
    """
    for prefix in CUSTOM_PREFIXES:
        if spec.startswith(prefix):
            if not os.path.exists(_custom_path(spec, prefix, root)):
                load_dataset(spec, root)  # its reader refuses the missing path first, with its own message
                raise DataError(f"dataset {spec!r}: {_custom_path(spec, prefix, root)!r} does not exist")
            return
    check_layout(get_benchmark(spec), root)


def load_dataset(
    spec: str,
    root: str | None = None,
    *,
    classnames_file: str | None = None,
    split_seed: int = 1,
    strict: bool = False,
    allow_outside_root: bool = False,
) -> DatasetSplits:
    """Load a benchmark or custom dataset as train/val/test records.

    Args:
        spec: a benchmark name (:func:`list_datasets`; official names such as ``OxfordPets`` also work),
            ``folder:PATH`` (class sub-folders, optionally under ``train/ val/ test/``), ``csv:PATH`` (columns
            ``path,label[,split]``) or ``split:PATH.json`` (official split format, paths relative to the file).
        root: for benchmarks, the ``$DATA`` folder holding e.g. ``oxford_pets/``; for custom specs, a folder that
            a relative PATH is resolved against (default: the working directory).
        classnames_file: readable class names (see :func:`vlprompt.data.custom.read_classnames_file`).
        split_seed: seed of the stratified split made for custom data without a test split.
        strict: refuse instead of skipping/warning on bad input (unreadable images, empty classes, unknown labels,
            duplicates, classes too small for the generated split).
        allow_outside_root: accept CSV/split-file paths that escape their folder.

    Returns:
        The splits, with absolute image paths. For test-only sets (ImageNet variants) train and val are empty;
        for ImageNet, val is the test set (as in the official code).

    Raises:
        DataError: the dataset cannot be found or read (the message names the path and how to fix it).
    """
    for prefix in CUSTOM_PREFIXES:
        if spec.startswith(prefix):
            path = _custom_path(spec, prefix, root)
            if prefix == "folder:":
                return read_folder(path, classnames_file=classnames_file, split_seed=split_seed, strict=strict)
            if prefix == "csv:":
                return read_csv(path, classnames_file=classnames_file, split_seed=split_seed, strict=strict,
                                allow_outside_root=allow_outside_root)
            splits = read_split_spec(path, allow_outside_root=allow_outside_root, strict=strict)
            return _rename(splits, classnames_file) if classnames_file else splits
    splits = load_benchmark(spec, root, allow_outside_root=allow_outside_root, strict=strict)
    return _rename(splits, classnames_file) if classnames_file else splits


__all__ = ["check_dataset", "list_datasets", "load_dataset", "read_split_spec"]
