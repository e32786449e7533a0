"""Readers for the benchmark layouts in :data:`vlprompt.data.benchmarks.BENCHMARKS`.

Differences from the official code, on purpose:

- **Sorted listings.** ImageNet and the ImageNet variants list the files of each class folder in *sorted* order.
  The official code uses ``os.listdir`` order, which depends on the filesystem, so its ImageNet few-shot subsets
  are not portable across machines; with sorted listings the same seed gives the same subset everywhere (but not
  necessarily the official one on a given machine).
- **No generated splits.** When a split file is missing, the official code silently generates a new random split
  (different from the released one). vlprompt raises an error saying where to download the released file.
- **No files written** into the dataset folder (no ``split_fewshot/`` pickles, no ``preprocessed.pkl``).
- **No stat per record.** Only the first record of each split is checked to exist (to catch a wrong ``--root``);
  ``vlprompt datasets check`` checks them all.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Sequence

from vlprompt.data.benchmarks import Benchmark, get_benchmark
from vlprompt.data.records import DatasetSplits, Sample
from vlprompt.data.splitfile import classnames_from_records, file_sha256, read_split_file
from vlprompt.errors import DataError


def _missing(b: Benchmark, what: str, path: str) -> DataError:
    return DataError(
        f"{b.official_name}: expected {what} {path!r}, which does not exist. Lay out $DATA/{b.dataset_dir}/ as the "
        f"official CoOp instructions say: {b.source}"
    )


def listdir_sorted(path: str, *, dirs: bool) -> list[str]:
    """Sorted non-hidden entries of ``path`` that are directories (``dirs=True``) or files (``dirs=False``)."""
    with os.scandir(path) as it:
        return sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir() == dirs)


def read_classnames_txt(path: str) -> OrderedDict[str, str]:
    """``classnames.txt`` (lines ``<folder> <class name>``) as an ordered ``folder → name`` mapping."""
    out: OrderedDict[str, str] = OrderedDict()
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.strip().split(" ")
            if parts and parts[0]:
                out[parts[0]] = " ".join(parts[1:])
    return out


def _listing_sha256(groups: Sequence[Sequence[Sample]], root: str) -> str:
    """Content hash of a directory listing (relative paths and labels), identifying splits not read from a file."""
    h = hashlib.sha256()
    for records in groups:
        for r in records:
            h.update(f"{os.path.relpath(r.path, root)}\t{r.label}\n".encode())
        h.update(b"--\n")
    return h.hexdigest()


def _read_class_folders(image_dir: str, folders: Sequence[str], names: Sequence[str]) -> list[Sample]:
    items = []
    for label, (folder, name) in enumerate(zip(folders, names)):
        class_dir = os.path.join(image_dir, folder)
        items += [Sample(os.path.join(class_dir, f), label, name) for f in listdir_sorted(class_dir, dirs=False)]
    return items


def _names_for(b: Benchmark, folders: Sequence[str], classnames: dict[str, str], txt: str) -> list[str]:
    unknown = [f for f in folders if f not in classnames]
    if unknown:
        raise DataError(
            f"{b.official_name}: class folder(s) {', '.join(unknown[:5])} are not listed in {txt!r}; "
            "use ImageNet's classnames.txt (lines '<wnid> <name>')"
        )
    return [classnames[f] for f in folders]


def _read_imagenet(b: Benchmark, ddir: str, image_dir: str) -> tuple[list, list, list, dict]:
    txt = os.path.join(ddir, "classnames.txt")
    classnames = read_classnames_txt(txt)
    splits: dict[str, tuple[list[str], list[str], list[Sample]]] = {}
    for split in ("train", "val"):
        sdir = os.path.join(image_dir, split)
        folders = listdir_sorted(sdir, dirs=True)
        if not folders:
            raise DataError(
                f"{b.official_name}: {sdir!r} has no class folders; it must contain one folder per class "
                "(n01440764/, ...). The ILSVRC2012 val images come flat and must be sorted into class folders."
            )
        names = _names_for(b, folders, classnames, txt)
        splits[split] = (folders, names, _read_class_folders(sdir, folders, names))
    if splits["train"][0] != splits["val"][0]:
        raise DataError(f"{b.official_name}: images/train and images/val have different class folders")
    train, test = splits["train"][2], splits["val"][2]
    # Official: the val split *is* the test split (imagenet.py passes val=test); evaluate the last-epoch model.
    info = {"listing": "sorted", "val_is_test": True, "classnames_sha256": file_sha256(txt)}
    return train, test, test, {**info, "classnames": splits["train"][1]}


def _read_imagenet_v2(b: Benchmark, ddir: str, image_dir: str) -> tuple[list, list, list, dict]:
    txt = os.path.join(ddir, "classnames.txt")
    names = list(read_classnames_txt(txt).values())
    if len(names) != b.num_classes:
        raise DataError(f"{b.official_name}: {txt!r} has {len(names)} classes, expected ImageNet's {b.num_classes}")
    folders = [str(i) for i in range(b.num_classes)]
    absent = [f for f in folders if not os.path.isdir(os.path.join(image_dir, f))]
    if absent:
        raise _missing(b, f"{len(absent)} class folder(s) such as", os.path.join(image_dir, absent[0]))
    test = _read_class_folders(image_dir, folders, names)
    return [], [], test, {"listing": "sorted", "classnames_sha256": file_sha256(txt), "classnames": names}


def _read_wnid_folders(b: Benchmark, ddir: str, image_dir: str) -> tuple[list, list, list, dict]:
    txt = os.path.join(ddir, "classnames.txt")
    folders = listdir_sorted(image_dir, dirs=True)
    names = _names_for(b, folders, read_classnames_txt(txt), txt)
    test = _read_class_folders(image_dir, folders, names)
    return [], [], test, {"listing": "sorted", "classnames_sha256": file_sha256(txt), "classnames": names}


def _read_fgvc(b: Benchmark, ddir: str, image_dir: str) -> tuple[list, list, list, dict]:
    with open(os.path.join(ddir, "variants.txt"), encoding="utf-8") as f:
        variants = [line.strip() for line in f if line.strip()]
    label_of = {v: i for i, v in enumerate(variants)}
    out, digests = [], []
    for split in ("train", "val", "test"):
        path = os.path.join(ddir, f"images_variant_{split}.txt")
        items = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                parts = line.strip().split(" ")
                if not parts[0]:
                    continue
                name = " ".join(parts[1:])
                if name not in label_of:
                    raise DataError(f"{path!r} line {n}: variant {name!r} is not in variants.txt")
                items.append(Sample(os.path.join(image_dir, parts[0] + ".jpg"), label_of[name], name))
        out.append(items)
        digests.append(file_sha256(path))
    return out[0], out[1], out[2], {"classnames": variants, "list_sha256": digests}


def _read_split_json(b: Benchmark, ddir: str, image_dir: str, allow_outside_root: bool,
                     strict: bool) -> tuple[list, list, list, dict]:
    path = os.path.join(ddir, b.split_file)
    if not os.path.isfile(path):
        raise _missing(b, "split file", path)
    train, val, test, extra = read_split_file(path, image_dir, allow_outside_root=allow_outside_root, strict=strict)
    return train, val, test, {"split_file": b.split_file, "split_sha256": extra["sha256"]}


def check_layout(b: Benchmark, root: str | None) -> tuple[str, str, str]:
    """Check that ``root`` holds ``b``'s folders and required files, without listing or reading any of them.

    Cheap enough to run once per dataset before a grid starts (:func:`vlprompt.data.load.check_dataset`).

    Returns:
        ``(root, dataset folder, image folder)``, absolute.

    Raises:
        DataError: ``root`` is not given or missing, or a folder or file of the layout is missing (the message
            names it and where to get it).
    """
    if not root:
        raise DataError(f"{b.official_name}: a data root is required (--root DIR, the folder that holds "
                        f"{b.dataset_dir}/)")
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise DataError(f"data root {root!r} does not exist; pass the folder that holds {b.dataset_dir}/ as --root")
    ddir = os.path.join(root, b.dataset_dir)
    if not os.path.isdir(ddir):
        raise _missing(b, "dataset folder", ddir)
    image_dir = os.path.join(ddir, b.image_dir) if b.image_dir else ddir
    if not os.path.isdir(image_dir):
        raise _missing(b, "image folder", image_dir)
    for req in (*b.required, *((b.split_file,) if b.reader == "split_json" else ())):
        if not os.path.exists(os.path.join(ddir, req)):
            raise _missing(b, "split file" if req == b.split_file else "file" if "." in req else "folder",
                           os.path.join(ddir, req))
    return root, ddir, image_dir


def load_benchmark(name: str, root: str | None, *, allow_outside_root: bool = False, strict: bool = False,
                   check_first: bool = True) -> DatasetSplits:
    """Read a benchmark from ``root`` (the ``$DATA`` folder) in its official layout.

    Args:
        name: benchmark name (see :func:`vlprompt.data.list_datasets`) or its official name.
        root: folder containing e.g. ``oxford_pets/``.
        allow_outside_root: accept split-file paths that escape the image folder.
        strict: refuse duplicate paths in split files.
        check_first: check that the first image of each split exists (to catch a wrong ``root`` early).

    Returns:
        The splits with absolute paths; ``root`` is the folder the official split paths are relative to.

    Raises:
        DataError: a folder or file of the layout is missing (the message says where to get it), or a file is
            not in the official format.
    """
    b = get_benchmark(name)
    root, ddir, image_dir = check_layout(b, root)
    if b.reader == "split_json":
        train, val, test, info = _read_split_json(b, ddir, image_dir, allow_outside_root, strict)
    else:
        reader = {"imagenet": _read_imagenet, "imagenet_v2": _read_imagenet_v2,
                  "wnid_folders": _read_wnid_folders, "fgvc_lists": _read_fgvc}[b.reader]
        train, val, test, info = reader(b, ddir, image_dir)
        info.setdefault("split_sha256", _listing_sha256([train, [] if info.get("val_is_test") else val, test],
                                                        image_dir))
    known = info.pop("classnames", ())
    classnames = classnames_from_records([train, val, test], b.official_name, known)
    for split, records in (("train", train), ("val", val), ("test", test)):
        if check_first and records and not os.path.exists(records[0].path):
            raise DataError(
                f"{b.official_name}: the first {split} image {records[0].path!r} does not exist; is --root the "
                f"folder that holds {b.dataset_dir}/? Run `vlprompt datasets check {b.name} --root {root}` to list "
                "all missing files"
            )
    info = {"benchmark": b.name, "official_name": b.official_name, "dataset_dir": b.dataset_dir,
            "sampler": "coop", **info}
    return DatasetSplits(b.name, image_dir, classnames, train, val, test, b.template, info,
                         val_is_test=bool(info.get("val_is_test")), sampler="coop", benchmark=b.name)
