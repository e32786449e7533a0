"""Property-based tests of the dataset readers: random (often malformed) split files, CSV files and folder trees
either load completely and consistently, or raise the project's own ``DataError`` — never another exception,
never a silent partial load."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import tempfile
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from vlprompt.data import load_dataset
from vlprompt.data.images import load_image
from vlprompt.errors import DataError, VLPromptError

# VLP_HYPOTHESIS_EXAMPLES raises the example count for a deeper local search (the suite keeps 50).
SETTINGS = settings(max_examples=int(os.environ.get("VLP_HYPOTHESIS_EXAMPLES", "50")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
VALID = ["img/0.png", "img/1.jpg", "img/2.png", "img/sub/3.png", "img/4.png", "img/5.png", "img/6.png", "img/7.png"]
# Each valid image has one label/class name and one CSV split, so that clean inputs never contradict themselves.
LABELED = [(p, i % 3, ["cat", "dog", "bird"][i % 3]) for i, p in enumerate(VALID)]
CSV_SPLIT = ["train", "train", "test", "train", "val", "test", "train", "train"]
BAD = ["img/empty.png", "img/text.png", "img/cut.jpg", "notes.txt"]
TRICKY = ["missing.png", "../outside.png", "/etc/passwd", "", ".", "img/../img/0.png", "img//2.png", "img\\0.png",
          "img/./1.jpg", "~/x.png", "img/0.png\x00", "./img/0.png"]


def _tiny_image(path: str, color: int, fmt: str | None = None) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (6, 6), (color, 255 - color, 60)).save(path, fmt)


@contextmanager
def _workspace():
    """A fresh folder with valid and broken image files, and a file just outside it (for escape attempts)."""
    with tempfile.TemporaryDirectory() as top:
        root = os.path.join(top, "ds")
        for i, rel in enumerate(VALID):
            _tiny_image(os.path.join(root, rel), 40 * i)
        _tiny_image(os.path.join(top, "outside.png"), 7)
        with open(os.path.join(root, "img/empty.png"), "wb"):
            pass
        with open(os.path.join(root, "img/text.png"), "w") as f:
            f.write("not an image")
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, "JPEG")
        with open(os.path.join(root, "img/cut.jpg"), "wb") as f:
            f.write(buf.getvalue()[:200])
        with open(os.path.join(root, "notes.txt"), "w") as f:
            f.write("hello")
        yield root


@contextmanager
def _warnings():
    """Collect WARNING records of the ``vlprompt`` loggers."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("vlprompt")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def _readable(path: str) -> bool:
    try:
        load_image(path)
        return True
    except DataError:
        return False


def _check_consistent(ds, root: str, allow_outside: bool) -> None:
    """Invariants of every successfully loaded dataset."""
    assert len(set(ds.classnames)) == len(ds.classnames) or ds.name != "folder"
    for split in (ds.train, ds.val, ds.test):
        paths = [r.path for r in split]
        assert len(paths) == len(set(paths)), "a path is listed twice in one split"
        for r in split:
            assert 0 <= r.label < len(ds.classnames) and ds.classnames[r.label] == r.classname
            assert os.path.isabs(r.path)
            if not allow_outside:
                assert os.path.commonpath([root, r.path]) == root, f"{r.path} escapes {root}"


def _outcome(load):
    """Run ``load``; return the dataset or ``None`` for a DataError; any other exception fails the test."""
    try:
        ds = load()
    except DataError as e:
        assert str(e)  # a message that names the problem
        event("DataError: " + re.sub(r"'[^']*'|[0-9]+", "_", str(e))[:70])
        return None
    event("loaded")
    return ds


def _weighted(*pairs):
    """One of the strategies, drawn with the given integer weights (most examples should be loadable)."""
    return st.sampled_from([s for w, s in pairs for _ in range(w)]).flatmap(lambda s: s)


# --- split files -----------------------------------------------------------------------------------------------
labels = st.one_of(st.integers(-2, 4), st.sampled_from(["0", "1", " 2", "²", "-1", "x", "", "1.0"]), st.booleans(),
                   st.floats(allow_nan=True), st.none(), st.integers(10**9, 10**15))
names = st.one_of(st.sampled_from(["cat", "dog", "bird", ""]), st.integers(0, 3), st.none())
paths = st.one_of(st.sampled_from(VALID + BAD + TRICKY), st.text(max_size=8), st.integers())
entry = st.one_of(st.tuples(paths, labels, names).map(list), st.lists(paths, max_size=4),
                  st.just("img/0.png"), st.none(), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
# Well-formed entries (label and name agree), so that many examples load; the wild strategies add garbage.
good_entry = st.sampled_from(LABELED).map(list)
json_junk = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5)),
                         lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                         max_leaves=8)
clean_doc = st.fixed_dictionaries(
    {"train": st.lists(good_entry, min_size=1, max_size=6), "test": st.lists(good_entry, min_size=1, max_size=4)},
    optional={"val": st.lists(good_entry, max_size=3), "classnames": st.just(["cat", "dog", "bird"]),
              "template": st.just("a photo of a {}."), "name": st.just("mine")})


@st.composite
def perturbed_doc(draw):
    """A clean document with one entry replaced by something arbitrary (often still valid, e.g. a tricky path)."""
    doc = draw(clean_doc)
    split = draw(st.sampled_from(["train", "test"]))
    i = draw(st.integers(0, len(doc[split]) - 1))
    doc[split][i] = draw(st.one_of(entry, st.tuples(st.sampled_from(TRICKY + BAD), st.integers(0, 2), names).map(list)))
    return doc


wild_doc = st.fixed_dictionaries({}, optional={
    "train": st.one_of(st.lists(entry, max_size=4), json_junk), "val": st.lists(entry, max_size=3),
    "test": st.lists(st.one_of(good_entry, entry), max_size=4),
    "classnames": json_junk, "template": st.one_of(st.just("{} x"), json_junk), "name": json_junk})


split_doc = _weighted((4, clean_doc), (3, perturbed_doc()), (2, wild_doc), (1, json_junk))


@SETTINGS
@given(doc=split_doc, raw=_weighted((5, st.none()), (1, st.binary(max_size=40))), allow_outside=st.booleans(),
       strict=st.booleans())
def test_split_files(doc, raw, allow_outside, strict):
    with _workspace() as root:
        path = os.path.join(root, "split.json")
        with open(path, "wb") as f:
            f.write(raw if raw is not None else json.dumps(doc).encode())
        ds = _outcome(lambda: load_dataset(f"split:{path}", allow_outside_root=allow_outside, strict=strict))
        if ds is None:
            return
        _check_consistent(ds, root, allow_outside)
        # Nothing is dropped silently: each split holds exactly the distinct files its entries name.
        for split, records in (("train", ds.train), ("val", ds.val), ("test", ds.test)):
            listed = {os.path.normpath(os.path.join(root, os.path.expanduser(e[0]))) for e in doc.get(split, [])}
            assert {r.path for r in records} == listed


# --- CSV files -------------------------------------------------------------------------------------------------
good_row = st.sampled_from([(p, name, sp) for (p, _, name), sp in zip(LABELED, CSV_SPLIT)])
wild_row = st.tuples(st.one_of(st.sampled_from(VALID * 3 + BAD + TRICKY), st.text(max_size=6)),
                     st.sampled_from(["cat", "dog", "0", "1", "2", "-1", "²", "", "a,b", 'q"t', "99999999999999"]),
                     st.sampled_from(["train", "test", "val", "TEST", "valid", "", "bogus"]))
csv_rows = _weighted((4, st.lists(good_row, min_size=1, max_size=10)),
                     (3, st.lists(_weighted((5, good_row), (1, wild_row)), min_size=1, max_size=10)),
                     (2, st.lists(wild_row, max_size=6)))
headers = _weighted((6, st.sampled_from([["path", "label", "split"], [" Path ", "LABEL", "Split"]])),
                    (1, st.sampled_from([["path", "label"], ["file", "label"], [], ["path"],
                                         ["path", "label", "split", "extra"]])))


@SETTINGS
@given(header=headers, rows=csv_rows,
       garbage=_weighted((6, st.none()), (1, st.text(max_size=20)), (1, st.binary(max_size=20))),
       allow_outside=st.booleans(), strict=st.booleans())
def test_csv_files(header, rows, garbage, allow_outside, strict):
    with _workspace() as root:
        buf = io.StringIO()
        w = csv.writer(buf)
        if header:
            w.writerow(header)
        for p, lab, sp in rows:
            w.writerow([p, lab, sp][: max(len(header), 2)])
        data = buf.getvalue().encode("utf-8", "surrogatepass")
        if isinstance(garbage, str):
            data += garbage.encode("utf-8", "surrogatepass")
        elif isinstance(garbage, bytes):
            data += garbage
        path = os.path.join(root, "data.csv")
        with open(path, "wb") as f:
            f.write(data)
        with _warnings() as warned:
            ds = _outcome(lambda: load_dataset(f"csv:{path}", allow_outside_root=allow_outside, strict=strict))
        if ds is None:
            return
        _check_consistent(ds, root, allow_outside)
        loaded = {r.path for s in (ds.train, ds.val, ds.test) for r in s}
        assert all(_readable(p) for p in loaded)
        if garbage is None:  # every listed readable image is loaded; anything less was announced in a warning
            listed = {os.path.normpath(os.path.join(root, p)) for p, _, _ in rows}
            if loaded != {p for p in listed if _readable(p)}:
                assert warned, "rows were dropped without a warning"


# --- folder trees ----------------------------------------------------------------------------------------------
fname = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1, max_size=10
                ).filter(lambda s: s not in (".", ".."))
kinds = st.sampled_from(["png", "jpg", "png", "empty", "text", "cut", "txt", "gif16"])
class_dir = st.dictionaries(fname, kinds, max_size=4)
tree = st.one_of(
    st.dictionaries(fname.filter(lambda s: s not in ("train", "val", "test")), class_dir, max_size=4),
    st.dictionaries(st.sampled_from(["train", "val", "test"]), st.dictionaries(fname, class_dir, max_size=3),
                    max_size=3).map(lambda d: {"__splits__": d}),
)


def _write_file(path: str, kind: str, i: int) -> bool:
    """Create one file of ``kind``; return whether it is a readable image with an image extension."""
    base = path + {"png": ".png", "jpg": ".jpg", "empty": ".png", "text": ".jpeg", "cut": ".png", "txt": ".txt",
                   "gif16": ".gif"}[kind]
    if kind in ("png", "jpg", "gif16"):
        img = Image.new("RGB", (5, 5), (i % 256, 9, 9))
        img.save(base, {"png": "PNG", "jpg": "JPEG", "gif16": "GIF"}[kind])
    elif kind == "cut":
        buf = io.BytesIO()
        Image.new("RGB", (40, 40)).save(buf, "PNG")
        with open(base, "wb") as f:
            f.write(buf.getvalue()[:60])
    else:
        with open(base, "w") as f:
            f.write("" if kind == "empty" else "plain text")
    return kind in ("png", "jpg", "gif16")


@SETTINGS
@given(spec=tree, strict=st.booleans())
def test_folder_trees(spec, strict):
    with tempfile.TemporaryDirectory() as top:
        root = os.path.join(top, "ds")
        os.makedirs(root)
        expected, bad_present, i = set(), False, 0
        layout = spec["__splits__"] if "__splits__" in spec else {"": spec}
        for split, classes in layout.items():
            for cls, files in classes.items():
                d = os.path.join(root, split, cls)
                os.makedirs(d, exist_ok=True)
                for name, kind in files.items():
                    i += 1
                    ok = _write_file(os.path.join(d, name), kind, i)
                    hidden = cls.startswith(".") or name.startswith(".")
                    bad_present |= not ok and not hidden
                    if ok and not hidden:
                        expected.add(os.path.join(d, name) + {"png": ".png", "jpg": ".jpg", "gif16": ".gif"}[kind])
        with _warnings() as warned:
            ds = _outcome(lambda: load_dataset(f"folder:{root}", strict=strict))
        if ds is None:
            return
        _check_consistent(ds, root, False)
        loaded = [r.path for s in (ds.train, ds.val, ds.test) for r in s]
        assert len(loaded) == len(set(loaded)), "an image is in two splits"
        assert set(loaded) <= expected
        if set(loaded) != expected or bad_present:  # dropped images or ignored/unreadable files are announced
            assert warned, "files were dropped without a warning"


def test_reader_errors_are_project_errors():
    """DataError is what callers (and the CLI's one-line handler) catch."""
    assert issubclass(DataError, VLPromptError)


@pytest.mark.parametrize("spec", ["csv:", "split:", "folder:", "csv:/nonexistent.csv", "split:/nonexistent.json",
                                  "folder:/nonexistent", "no_such_benchmark"])
def test_missing_or_empty_specs(spec, tmp_path):
    with pytest.raises(DataError):
        load_dataset(spec, str(tmp_path))
