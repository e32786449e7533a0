"""Your own data without writing a class: ``folder:PATH`` and ``csv:PATH``.

**Folder** (``folder:PATH``): one sub-folder per class (``PATH/<class>/<image>``), or the same under
``PATH/train/``, ``PATH/val/``, ``PATH/test/``. Labels are the sorted class-folder names; names are the folder
names (``_`` is replaced by a space in prompts). Images are found recursively inside each class folder, sorted.

**CSV** (``csv:PATH``): a header with columns ``path,label`` and optionally ``split`` (``train``/``val``/``test``).
Relative paths resolve against the CSV's folder. Labels are class names, or integers ``0..N-1`` (then give
readable names with ``classnames_file``, else the numbers are the names).

**Splits** (both readers): with train, val and test given, they are used as is. With train and test but no val,
20% of each class's train images (``round(0.2 n)``) become val. With no test split at all, a seeded, stratified
50/20/30 train/val/test split is made per class (``round(0.5 n)``, ``round(0.2 n)``, the rest), as the official
split generators do; the ratios and ``split_seed`` are recorded in ``DatasetSplits.info``. Train and val without
test is refused (ambiguous).

**Bad input** (tested): files without an image extension, and files outside class folders, are ignored with a
warning that counts and names them; class folders without images are skipped with a warning (refused with
``strict``); unreadable, truncated, empty or non-image files are skipped with a warning (refused with
``strict``); non-RGB images are converted on load; CSV labels not in ``classnames_file`` are skipped with a
warning (refused with ``strict``); duplicate paths are kept once with a warning (refused with ``strict``), or
refused when their labels or splits disagree; paths escaping the CSV's folder are refused unless
``allow_outside_root``.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import defaultdict

from vlprompt.data.images import check_images, format_list
from vlprompt.data.records import DatasetSplits, Sample
from vlprompt.data.splitfile import SPLITS, file_sha256
from vlprompt.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
SPLIT_RATIOS = (0.5, 0.2, 0.3)  # generated train/val/test split, as the official generators
VAL_FROM_TRAIN = 0.2  # share of train carved out as val when only train and test are given


def parse_class_list(path: str, keys: set[str]) -> tuple[list[tuple[str, str]], bool]:
    """Read a class-names file as ``(key, name)`` entries in file order.

    Accepted forms: a JSON object ``{key: name}`` or list of names; a text file with lines ``<key> <name>`` (the
    ImageNet ``classnames.txt`` form, used when the first words are unique and cover every key in ``keys``) or one
    name per line.

    Returns:
        ``(entries, keyed)``: ``keyed`` tells whether the file maps keys to names; otherwise each entry is
        ``(name, name)`` and names are in label order.

    Raises:
        DataError: the file is missing, not UTF-8, or not valid JSON of the right shape.
    """
    if not os.path.isfile(path):
        raise DataError(f"class-names file {path!r} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise DataError(f"class-names file {path!r} is not UTF-8 text ({e})") from e
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            raise DataError(f"class-names file {path!r} is not valid JSON ({e})") from e
        if isinstance(data, dict):
            return [(str(k), str(v)) for k, v in data.items()], True
        if isinstance(data, list):
            return [(str(v), str(v)) for v in data], False
        raise DataError(f"class-names file {path!r} must hold a JSON object or list")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    pairs = [line.split(None, 1) for line in lines]
    first = [p[0] for p in pairs]
    if pairs and all(len(p) == 2 for p in pairs) and len(set(first)) == len(first) and keys <= set(first):
        return [(p[0], p[1]) for p in pairs], True
    return [(line, line) for line in lines], False


def read_classnames_file(path: str, keys: list[str]) -> dict[str, str]:
    """Readable class names for the class ``keys`` (folder names or CSV labels, in label order).

    See :func:`parse_class_list` for the accepted forms.

    Returns:
        ``key → name``. Keys not covered keep their own name.

    Raises:
        DataError: the file is missing or does not fit the classes.
    """
    entries, keyed = parse_class_list(path, set(keys))
    if keyed:
        return dict(entries)
    names = [name for _, name in entries]
    if keys and len(names) != len(keys):
        raise DataError(
            f"class-names file {path!r} has {len(names)} names for {len(keys)} classes; give one name per line in "
            f"label order, or lines '<key> <name>' whose keys are {format_list(keys, 5)}"
        )
    return dict(zip(keys, names))


def _stratified(pool: list[Sample], ratios: tuple[float, ...], rng: random.Random) -> tuple[list[list[Sample]], list]:
    """Split ``pool`` per class (sorted labels) with ``round(r * n)`` per part; the last part gets the rest."""
    by_label: dict[int, list[Sample]] = defaultdict(list)
    for r in pool:
        by_label[r.label].append(r)
    parts: list[list[Sample]] = [[] for _ in ratios]
    thin = []
    for label in sorted(by_label):
        items = sorted(by_label[label], key=lambda s: s.path)
        rng.shuffle(items)
        sizes = [round(len(items) * r) for r in ratios[:-1]]
        sizes.append(len(items) - sum(sizes))
        if min(sizes) <= 0:
            thin.append(f"{items[0].classname} ({len(items)})")
        start = 0
        for part, n in zip(parts, sizes):
            part += items[start:start + max(n, 0)]
            start += max(n, 0)
    return parts, thin


def assign_splits(pools: dict[str, list[Sample]], split_seed: int, source: str,
                  strict: bool) -> tuple[list[Sample], list[Sample], list[Sample], dict]:
    """Turn the given split pools into train/val/test following the rules in the module docstring."""
    have = {k for k in SPLITS if pools.get(k)}
    rng = random.Random(split_seed)
    if {"train", "val", "test"} <= have or have == {"test"}:
        return pools.get("train", []), pools.get("val", []), pools["test"], {"split": "given"}
    if "test" in have:
        if "train" not in have:
            raise DataError(f"{source}: has val and test data but no train data")
        (train, val), thin = _stratified(pools["train"], (1 - VAL_FROM_TRAIN, VAL_FROM_TRAIN), rng)
        info = {"split": "val_from_train", "split_seed": split_seed, "val_ratio": VAL_FROM_TRAIN}
        test = pools["test"]
    elif "val" in have:
        raise DataError(f"{source}: has train and val data but no test data; add a test split, or drop val to let "
                        "vlprompt make a seeded 50/20/30 split")
    else:
        (train, val, test), thin = _stratified(pools.get("train", []), SPLIT_RATIOS, rng)
        info = {"split": "generated", "split_seed": split_seed, "ratios": list(SPLIT_RATIOS)}
    if thin:
        msg = f"{source}: class(es) too small to give every split at least one image: {format_list(thin)}"
        if strict:
            raise DataError(msg + " (refused under --strict)")
        logger.warning(msg)
    return train, val, test, info


def finish_custom(name: str, root: str, classnames: list[str], pools: dict[str, list[Sample]], split_seed: int,
                  strict: bool, source: str, extra: dict) -> DatasetSplits:
    """Check the images of custom data, assign its splits and wrap everything as :class:`DatasetSplits`."""
    listed = sum(len(pools.get(split, [])) for split in SPLITS)
    for split in SPLITS:
        pools[split] = check_images(pools.get(split, []), strict)
    if listed and not any(pools[split] for split in SPLITS):
        raise DataError(f"{source}: none of the {listed} listed image file(s) could be read (see the warning above)")
    train, val, test, info = assign_splits(pools, split_seed, source, strict)
    return DatasetSplits(name, root, classnames, train, val, test, "a photo of a {}.", {"sampler": "pure", **extra,
                                                                                        **info},
                         val_is_test=False, sampler="pure")


def read_folder(path: str, *, classnames_file: str | None = None, split_seed: int = 1,
                strict: bool = False) -> DatasetSplits:
    """Read an image-folder dataset (see the module docstring).

    Raises:
        DataError: the folder is missing or holds no images, or a bad-input rule refuses the data.
    """
    root = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(root):
        raise DataError(f"image folder {root!r} does not exist; folder:PATH needs PATH/<class>/<image> files")
    top = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    split_dirs = [d for d in top if d in SPLITS]
    layout = split_dirs if split_dirs and set(top) <= set(SPLITS) else None
    dirs = {s: os.path.join(root, s) for s in layout} if layout else {"train": root}
    files: dict[str, dict[str, list[str]]] = {}
    ignored, loose = [], []
    for split, sdir in dirs.items():
        files[split] = {}
        entries = sorted((e.name, e.is_dir()) for e in os.scandir(sdir) if not e.name.startswith("."))
        loose += [os.path.join(sdir, n) for n, is_dir in entries if not is_dir]
        for cls in (n for n, is_dir in entries if is_dir):
            names = []
            for dirpath, subdirs, fnames in os.walk(os.path.join(sdir, cls)):
                subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
                for fn in sorted(fnames):
                    if fn.startswith("."):
                        continue
                    full = os.path.join(dirpath, fn)
                    is_image = os.path.splitext(fn)[1].lower() in IMAGE_EXTENSIONS
                    (names if is_image else ignored).append(full)
            files[split][cls] = names
    classes = sorted({c for per in files.values() for c, n in per.items() if n})
    empty = sorted({os.path.join(dirs[s], c) for s, per in files.items() for c, n in per.items() if not n})
    if loose:
        logger.warning("%s: ignored %d file(s) outside class folders: %s", root, len(loose), format_list(loose))
    if ignored:
        logger.warning("%s: ignored %d file(s) without an image extension: %s", root, len(ignored),
                       format_list(ignored))
    if empty:
        msg = f"{root}: {len(empty)} class folder(s) without images: {format_list(empty)}"
        if strict:
            raise DataError(msg + " (refused under --strict)")
        logger.warning(msg + " (skipped)")
    if not classes:
        raise DataError(f"{root!r} holds no images in class sub-folders (expected {root}/<class>/<image>)")
    names = dict(zip(classes, classes))
    if classnames_file:
        names.update(read_classnames_file(classnames_file, classes))
    label = {c: i for i, c in enumerate(classes)}
    pools = {s: [Sample(f, label[c], names[c]) for c in classes for f in per.get(c, [])] for s, per in files.items()}
    extra = {"classnames_file_sha256": file_sha256(classnames_file)} if classnames_file else {}
    extra["folder_layout"] = "splits" if layout else "classes"
    return finish_custom("folder", root, [names[c] for c in classes], pools, split_seed, strict, root, extra)
