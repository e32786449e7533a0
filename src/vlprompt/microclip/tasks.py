"""Micro benchmark tasks: the procedural world written out as real image folders + split files.

Like the paper's 11 datasets, the suite has tasks of different character, each with its own hand-written
zero-shot template:

- the prompt's style is off: ``sketch_shapes``, ``blurry_shapes`` (the photo prompt on other renderings);
- the prompt fits: ``positions``, ``colours``, ``shapes``; an approximate prompt: ``sizes``;
- a fine-grained combination: ``colour_shapes`` (3 colours × 3 shapes);
- a domain-shift pair: train on ``shapes`` (photos), evaluate on ``shapes_sketch``, ``shapes_cartoon``,
  ``shapes_blurry`` and ``shapes_noisy`` (same classes, same photo train/val images, other styles in test).

:func:`write_task` writes ``<cache_dir>/<name>/images/<class>/<idx>.png`` and ``<cache_dir>/<name>/split.json`` in
the official ``split_zhou`` format ``{"train": [[relpath, label, classname], ...], "val": [...], "test": [...]}``
(paths relative to the JSON's folder), plus ``manifest.json`` with a content hash. Every image is a pure function
of ``(task, seed, split, class, index)``, so the files are identical on every machine.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from vlprompt._io import atomic_write_json
from vlprompt.errors import ConfigError
from vlprompt.microclip import world

logger = logging.getLogger(__name__)

TASKS_FORMAT = 1  # bump when the folder layout changes (rendering changes are caught by world_fingerprint())
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class TaskSpec:
    """One micro benchmark task.

    Attributes:
        attributes: attribute(s) whose values define a class (several → combination classes like "red circle").
        values: per attribute, the canonical words used (``None`` = all of that attribute's values).
        styles: rendering style(s) of train/val images (drawn uniformly when several).
        test_styles: style(s) of test images (``None`` = ``styles``); differs for domain-shift targets.
        template: the task's hand-written zero-shot prompt, ``{}`` = class name.
        n_train, n_val, n_test: images per class in each split.
        character: what the task is meant to show.
        shift_source: for a domain-shift target, the task whose learned prompt is evaluated on it.
    """

    attributes: tuple[str, ...]
    values: tuple[tuple[str, ...] | None, ...]
    styles: tuple[str, ...]
    template: str
    character: str
    test_styles: tuple[str, ...] | None = None
    n_train: int = 32
    n_val: int = 8
    n_test: int = 40
    shift_source: str | None = None

    @property
    def classnames(self) -> list[str]:
        """Class names, label order: the attribute words joined by a space (e.g. ``"red circle"``)."""
        return [" ".join(c) for c in self.class_values()]

    def class_values(self) -> list[tuple[str, ...]]:
        """Per class, the canonical word of each attribute in ``attributes`` order."""
        pools = [v if v is not None else world.ATTRIBUTES[a] for a, v in zip(self.attributes, self.values)]
        return list(itertools.product(*pools))


def _spec(attrs: str, styles: str, template: str, character: str, values=None, **kw) -> TaskSpec:
    a = tuple(attrs.split("+"))
    return TaskSpec(a, tuple(values or (None,) * len(a)), tuple(styles.split("+")), template, character, **kw)


_SHIFT_STYLES = ("sketch", "cartoon", "blurry", "noisy")
TASKS: dict[str, TaskSpec] = {
    "sketch_shapes": _spec("shape", "sketch", "a photo of a {}.", "style mismatch: the photo prompt on sketches"),
    "blurry_shapes": _spec("shape", "blurry", "a photo of a {}.", "style mismatch: the photo prompt on blurry images"),
    "shapes": _spec("shape", "photo", "a photo of a {}.", "the prompt fits; domain-shift source"),
    "positions": _spec("position", "photo", "a photo of a {}.", "the prompt fits"),
    "colours": _spec("colour", "photo", "a photo of a {}.", "the prompt fits"),
    "sizes": _spec("size", "photo+cartoon", "a photo of a {} shape.", "an approximate prompt for sizes"),
    "colour_shapes": _spec(
        "colour+shape", "photo", "a photo of a {}.", "fine-grained combination of two attributes",
        values=(("red", "orange", "pink"), ("circle", "square", "heart")),
    ),
    **{
        f"shapes_{s}": _spec("shape", "photo", "a photo of a {}.", f"domain-shift target: photo → {s}",
                             test_styles=(s,), shift_source="shapes")
        for s in _SHIFT_STYLES
    },
}  # fmt: skip
FEWSHOT_TASKS: tuple[str, ...] = tuple(n for n, t in TASKS.items() if t.shift_source is None)
DOMAIN_SHIFT: dict[str, tuple[str, ...]] = {"shapes": tuple(f"shapes_{s}" for s in _SHIFT_STYLES)}


def default_cache_dir() -> Path:
    """``$VLPROMPT_CACHE`` if set, else ``~/.cache/vlprompt/microclip_tasks``."""
    env = os.environ.get("VLPROMPT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vlprompt" / "microclip_tasks"


def _world_seed(name: str, seed: int, split: str) -> int:
    # A stable per-(task, seed, split) world, never the pretraining world (seed 0): crc32 is stable across runs.
    return 1_000_003 + zlib.crc32(f"{name}/{seed}/{split}".encode()) * 7


def _manifest_expected(name: str, spec: TaskSpec, seed: int) -> dict:
    return {"format": TASKS_FORMAT, "world": world.world_fingerprint(), "task": name, "seed": seed,
            "spec": json.loads(json.dumps(asdict(spec)))}  # fmt: skip


def _content_hash(root: Path, split: dict) -> str:
    h = hashlib.sha256()
    for part in SPLITS:
        for rel, label, cname in split[part]:
            h.update(f"{part}\0{rel}\0{label}\0{cname}\0".encode())
            h.update(hashlib.sha256((root / rel).read_bytes()).digest())
    return h.hexdigest()


def _is_complete(root: Path, expected: dict) -> bool:
    try:
        manifest = json.loads((root / "manifest.json").read_text())
        split = json.loads((root / "split.json").read_text())
        if {k: manifest.get(k) for k in expected} != expected:
            return False
        return manifest.get("content_sha256") == _content_hash(root, split)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def write_cached(root: Path, expected: dict, render_into: Callable[[Path], dict], extra: dict) -> Path:
    """Reuse task folder ``root`` if its manifest matches ``expected`` and its content hash checks out, else render
    it (``render_into(tmp)`` writes the images and returns the split dict) into a temporary sibling and swap it in.

    Shared by world v1's and v2's tasks (:mod:`vlprompt.microclip.tasks2`). Returns ``root / "split.json"``.
    """
    if _is_complete(root, expected):
        return root / "split.json"
    cache, name = root.parent, root.name
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=cache))
    tmp.chmod(0o755)
    try:
        split = render_into(tmp)
        atomic_write_json(tmp / "split.json", split)
        atomic_write_json(tmp / "manifest.json", {**expected, **extra, "content_sha256": _content_hash(tmp, split)})
        if root.exists():  # stale or incomplete: move aside, then swap in the new folder
            trash = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=cache))
            os.replace(root, trash / name)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote micro task %s (%d images) to %s", name, sum(len(split[p]) for p in SPLITS), root)
    return root / "split.json"


def _write_into(tmp: Path, name: str, spec: TaskSpec, seed: int) -> dict:
    style_idx = {s: world.ATTRIBUTES["style"].index(s) for s in world.ATTRIBUTES["style"]}
    split: dict[str, list] = {p: [] for p in SPLITS}
    counts = {"train": spec.n_train, "val": spec.n_val, "test": spec.n_test}
    for label, (cname, cvals) in enumerate(zip(spec.classnames, spec.class_values())):
        folder = cname.replace(" ", "_")
        (tmp / "images" / folder).mkdir(parents=True, exist_ok=True)
        fixed = {a: world.ATTRIBUTES[a].index(v) for a, v in zip(spec.attributes, cvals)}
        idx = 0
        for part in SPLITS:
            styles = spec.test_styles if (part == "test" and spec.test_styles) else spec.styles
            # a domain-shift target shares its source's train/val images; its test images are its own
            wseed = _world_seed(name if part == "test" else (spec.shift_source or name), seed, part)
            for j in range(counts[part]):
                k = label * 1_000_000 + j  # image index within this (task, seed, split) world
                style = styles[j % len(styles)]
                image, _, _ = world.draw(wseed, k, {**fixed, "style": style_idx[style]})
                rel = f"images/{folder}/{idx:04d}.png"
                Image.fromarray(image).save(tmp / rel, format="PNG", compress_level=1)
                split[part].append([rel, label, cname])
                idx += 1
    return split


def write_task(name: str, cache_dir: str | Path | None = None, seed: int = 0) -> Path:
    """Write task ``name`` under ``cache_dir`` (reused if already complete) and return its ``split.json`` path.

    Idempotent and atomic: an existing folder is reused when its ``manifest.json`` matches the spec and seed and
    the content hash over ``split.json`` entries and image bytes checks out; otherwise the task is rendered into a
    temporary sibling folder and renamed into place.

    Args:
        name: a key of :data:`TASKS`.
        cache_dir: parent folder (default :func:`default_cache_dir`).
        seed: task seed (different seeds draw different images).

    Returns:
        Path of ``<cache_dir>/<name>/split.json``.

    Raises:
        ConfigError: unknown task name.
    """
    if name not in TASKS:
        raise ConfigError(f"unknown micro task {name!r}; choose one of {sorted(TASKS)}")
    spec = TASKS[name]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    extra = {"template": spec.template, "classnames": spec.classnames}
    return write_cached(cache / name, _manifest_expected(name, spec, seed),
                        lambda tmp: _write_into(tmp, name, spec, seed), extra)  # fmt: skip
