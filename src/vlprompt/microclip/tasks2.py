"""The v2 micro task suite (issue 14): 11 few-shot tasks on world v2, each mirroring the character of one of
CoOp's 11 datasets, and four shifted test sets of the ImageNet-like task for domain generalization.

Headroom comes from task design, never from weakening the model: names that are rare in the pretraining captions
(shade words are 20% of colour mentions), a specialist domain (``thermal``: 3% of images, its classes named by
technical shape terms that no caption uses, as EuroSAT's imagery and land-use terms are rare in CLIP's captions),
near-identical classes, templates that fit the captions only roughly, compositions of several objects. Each
:class:`TaskSpec2` records the CoOp dataset it mirrors, its character, why its zero-shot accuracy is what it is, and
whether the official augmentation (random resized crop, scale 0.08–1, and horizontal flip) keeps its labels: on
these 64×64 images about a quarter of the official crops keep less than half of the object (:data:`AUGMENT_NOTE`),
and crops rescale and move objects (size and position labels), so the demo trains every task through the test
transform (``augment="none"``); flipping alone would be harmless except for ``positions`` (left ↔ right), where
``flip_ok`` is False.

Tasks are written as in v1 (:func:`vlprompt.microclip.tasks.write_cached`: ``split_zhou`` files, manifest keyed by
:func:`vlprompt.microclip.world2.world_fingerprint`), under ``<cache>/v2/<name>``. Image ``j`` of class ``c`` in
split ``p`` is ``world2.draw(seed(task, seed, p), c·10⁶ + j, fixed)``: identical on every machine.
"""

from __future__ import annotations

import itertools
import json
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from vlprompt.errors import ConfigError
from vlprompt.microclip import tasks as tasks_v1
from vlprompt.microclip import world2

TASKS_FORMAT = 2
AUGMENT_NOTE = ("the official random resized crop (scale 0.08-1, ratio 3/4-4/3) keeps less than half of the object "
                "in 21% (small), 23% (medium) and 28% (large objects) of crops (simulated, 20,000 crops each over the "
                "five positions), and it rescales and moves what it keeps, which destroys size and position labels "
                "outright; so every v2 task trains through the test transform")  # fmt: skip
_SHAPES8 = world2.ATTRIBUTES["shape"][:8]
#: The specialist's names of the thermal task's shapes: standard technical (botanical, heraldic, geometric) shape
#: adjectives, fixed before the task was measured; none of their BPE tokens occurs in world v2's captions.
_TECHNICAL = {"circle": "orbicular", "square": "quadrate", "triangle": "deltoid", "star": "stellate",
              "cross": "cruciform", "heart": "cordate", "moon": "lunate", "arrow": "sagittate",
              "hexagon": "sexangular", "ring": "annular"}
_THERMAL_SHAPES = (*_SHAPES8, "hexagon", "ring")
_ONE, _TWO = (("count", ("one",)),), (("count", ("two",)),)


@dataclass(frozen=True)
class TaskSpec2:
    """One v2 task.

    Attributes:
        mirrors: the CoOp dataset whose character the task mirrors.
        classes: ``((attribute, values), …)``: classes are the product of the value lists (names joined by a space),
            or, with ``pairs``, unordered pairs of one list's values (``"circle and star"``: a two-object scene).
        fixed: ``((attribute, values), …)`` set on every image; several values are cycled image by image.
        test_fixed: overrides for test images only (a shifted test set).
        template: the hand-written zero-shot prompt, ``{}`` = class name.
        character: what the task is meant to show.
        zero_shot: why its zero-shot accuracy is what it is.
        flip_ok: whether a horizontal flip keeps the labels (training uses the test transform anyway).
        shift_source: for a shifted test set (test images only: ``n_train = n_val = 0``), the task whose learned prompt
            is evaluated on it.
        names: class names in label order, where the task's vocabulary is not the world's attribute words (the
            specialist task: technical terms that the pretraining captions never use); empty: the attribute words.
    """

    mirrors: str
    classes: tuple[tuple[str, tuple[str, ...]], ...]
    template: str
    character: str
    zero_shot: str
    fixed: tuple[tuple[str, tuple[str, ...]], ...] = _ONE + (("style", ("photo",)),)
    test_fixed: tuple[tuple[str, tuple[str, ...]], ...] = ()
    pairs: bool = False
    flip_ok: bool = True
    n_train: int = 32
    n_val: int = 8
    n_test: int = 40
    shift_source: str | None = None
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.names and len(self.names) != len(self.class_values()):
            raise ValueError(f"task names: {len(self.names)} names for {len(self.class_values())} classes")

    def class_values(self) -> list[dict[str, str]]:
        """Per class, attribute → value word (label order)."""
        if self.pairs:
            (attr, vals), = self.classes
            return [{attr: a, f"{attr}2": b, "count": "two"} for a, b in itertools.combinations(vals, 2)]
        return [dict(zip([a for a, _ in self.classes], combo)) for combo in itertools.product(*(v for _, v in
                                                                                              self.classes))]

    @property
    def classnames(self) -> list[str]:
        """Class names: :attr:`names` if given, else attribute words joined by a space (``"striped star"``), pairs
        by ``and``."""
        if self.names:
            return list(self.names)
        if self.pairs:
            attr = self.classes[0][0]
            return [f"{c[attr]} and {c[attr + '2']}" for c in self.class_values()]
        return [" ".join(c.values()) for c in self.class_values()]


def _index(attr: str, word: str) -> int:
    return world2.DERIVED[attr].index(word) if attr in world2.DERIVED else world2.ATTRIBUTES[attr].index(word)


def _t(*pairs) -> tuple:
    return tuple((a, tuple(v.split())) for a, v in pairs)


_OBJECTS = dict(mirrors="ImageNet", classes=_t(("texture", " ".join(world2.ATTRIBUTES["texture"])),
                                               ("shape", " ".join(_SHAPES8))), template="a photo of a {}.")  # fmt: skip
#: A shifted test set of ``objects``: test images only, as ImageNet-Sketch, -R, -A and V2 are test sets (a prompt
#: learned on the source's few-shot images is evaluated on them).
_SHIFTED = dict(shift_source="objects", n_train=0, n_val=0)
_OBJ_CHAR = "generic objects, many classes (64 = 8 textures × 8 shapes); domain-generalization source"
TASKS: dict[str, TaskSpec2] = {
    "objects": TaskSpec2(**_OBJECTS, character=_OBJ_CHAR, n_test=25, zero_shot=(
        "both words are common in captions, but a caption names the texture only half the time and a class is the "
        "conjunction of two facts among 64")),
    "shapes": TaskSpec2("Caltech101", _t(("shape", " ".join(world2.ATTRIBUTES["shape"]))), "a photo of a {}.",
                        "generic objects, few classes (12 shapes), photos and cartoons",
                        "shape words are in 90% of captions: the prompt fits, zero-shot is high",
                        fixed=_ONE + _t(("style", "photo cartoon"))),
    "colour_shapes": TaskSpec2("OxfordPets", _t(("colour", " ".join(world2.COLOURS)), ("shape", "circle square "
                               "star heart")), "a photo of a {}.", "fine-grained, familiar names (32 colour × shape)",
                               "both words are common; shades vary within a colour"),
    "size_shapes": TaskSpec2("StanfordCars", _t(("size", "small medium large"), ("shape", " ".join(_SHAPES8))),
                             "a photo of a {}.", "fine-grained: 24 size × shape classes; sizes differ by degree",
                             "size words are relative (in 40% of captions) and sizes overlap with shape areas"),
    "shades": TaskSpec2("Flowers102", _t(("shade", " ".join(world2.ATTRIBUTES["shade"]))), "a photo of a {} shape.",
                        "fine-grained: 24 near-identical shades, three per basic colour",
                        "a shade word is only 20% of colour mentions, and shades of one colour look alike"),
    "aircraft": TaskSpec2("FGVCAircraft", _t(("shade", "crimson scarlet maroon rose coral magenta"),
                          ("shape", "circle hexagon pentagon ring")), "a photo of a {}.",
                          "very fine-grained: 24 classes of red/pink shades × round shapes",
                          "rare shade words on near-identical round outlines: the lowest zero-shot of the photo tasks"),
    "colours": TaskSpec2("Food101", _t(("colour", " ".join(world2.COLOURS))), "a photo of a {} object.",
                         "familiar names on cluttered backgrounds (8 basic colours)",
                         "colour words are common; the template's noun 'object' is rare in captions",
                         fixed=_ONE + _t(("style", "photo"), ("background", "cluttered"))),
    "textures": TaskSpec2("DTD", _t(("texture", " ".join(world2.ATTRIBUTES["texture"]))), "a {} texture.",
                          "textures named by texture words (8), photos, cartoons and sketches",
                          "texture words are in half the captions, mostly as adjectives; 'texture' itself is rarer",
                          fixed=_ONE + _t(("style", "photo cartoon sketch"))),
    "scenes": TaskSpec2("SUN397", _t(("shape", " ".join(_SHAPES8))), "a photo of a {}.",
                        "scenes of two objects: 28 unordered pairs of shapes", (
                            "two-object captions are 25% of pretraining; a class needs both objects, and the "
                            "class name 'circle and star' drops the article the captions use"),
                        fixed=_t(("style", "photo")), pairs=True),
    "thermal": TaskSpec2("EuroSAT", _t(("shape", " ".join(_THERMAL_SHAPES))), "a thermal image of a {} shape.",
                         "a specialist domain: rare images (10 shapes in false-colour thermal images) named in a "
                         "specialist's vocabulary (the technical shape terms: orbicular, quadrate, deltoid, …)", (
                             "thermal images are 3% of pretraining and the technical terms never occur in its captions "
                             "(their tokens were never trained), as satellite photos and land-use terms are rare in "
                             "CLIP's: the prompt names the classes in words the model cannot read"),
                         fixed=_ONE + _t(("style", "thermal")), names=tuple(_TECHNICAL[s] for s in _THERMAL_SHAPES)),
    "positions": TaskSpec2("UCF101", _t(("position", " ".join(world2.ATTRIBUTES["position"]))),
                           "a photo of a shape on the {}.", "spatial layout (5 positions): flips swap left and right",
                           "position phrases are in 45% of single-object captions", flip_ok=False),
    "objects_sketch": TaskSpec2(**_OBJECTS, character="ImageNet-Sketch: the source classes as pencil sketches",
                                zero_shot="sketches are 12% of pretraining and have no colour", n_test=25,
                                test_fixed=_t(("style", "sketch")), **_SHIFTED),
    "objects_cartoon": TaskSpec2(**_OBJECTS, character="ImageNet-R: the source classes as cartoons",
                                 zero_shot="cartoons are 13% of pretraining", n_test=25,
                                 test_fixed=_t(("style", "cartoon")), **_SHIFTED),
    "objects_hard": TaskSpec2(**_OBJECTS, character="ImageNet-A: small objects on cluttered backgrounds",
                              zero_shot="small objects show few texture periods among distractors", n_test=25,
                              test_fixed=_t(("size", "small"), ("background", "cluttered")), **_SHIFTED),
    "objects_v2": TaskSpec2(**_OBJECTS, character="ImageNetV2: re-sampled, backgrounds dark or gradient only",
                            zero_shot="the same classes, a slightly different nuisance distribution", n_test=25,
                            test_fixed=_t(("background", "dark gradient")), **_SHIFTED),
}  # fmt: skip
FEWSHOT_TASKS: tuple[str, ...] = tuple(n for n, t in TASKS.items() if t.shift_source is None)
DOMAIN_SHIFT: dict[str, tuple[str, ...]] = {"objects": tuple(n for n, t in TASKS.items() if t.shift_source)}
#: Tasks with at least 20 classes: the base-to-new protocol's suite.
BASE2NEW_TASKS: tuple[str, ...] = tuple(n for n in FEWSHOT_TASKS if len(TASKS[n].classnames) >= 20)


def _world_seed(name: str, seed: int, split: str) -> int:
    return 2_000_003 + zlib.crc32(f"v2/{name}/{seed}/{split}".encode()) * 7


def _expected(name: str, spec: TaskSpec2, seed: int) -> dict:
    return {"format": TASKS_FORMAT, "world": world2.world_fingerprint(), "task": name, "seed": seed,
            "spec": json.loads(json.dumps(asdict(spec)))}  # fmt: skip


def class_images(name: str, label: int, part: str, count: int, seed: int = 0):
    """Images ``0 … count-1`` of class ``label`` in split ``part`` of task ``name``: ``uint8[count, 64, 64, 3]``.

    Exactly the pixels :func:`write_task` saves (PNG is lossless), so in-memory checks (the acceptance table) see
    the task's own images.
    """
    import numpy as np

    spec = TASKS[name]
    cvals = spec.class_values()[label]
    extra = dict(spec.fixed) | (dict(spec.test_fixed) if part == "test" else {})
    # a shifted test set's train/val images, where it has any, are its source's; its test images are its own
    wseed = _world_seed(name if part == "test" else (spec.shift_source or name), seed, part)
    out = np.empty((count, world2.IMAGE_SIZE, world2.IMAGE_SIZE, 3), np.uint8)
    for j in range(count):
        fixed = {a: _index(a, vals[j % len(vals)]) for a, vals in extra.items()}
        fixed |= {a: _index(a, w) for a, w in cvals.items()}
        out[j] = world2.draw(wseed, label * 1_000_000 + j, fixed)[0]
    return out


def _write_into(tmp: Path, name: str, spec: TaskSpec2, seed: int) -> dict:
    # the split file also carries the task's template and class names (read by vlprompt's split: loader)
    split: dict = {p: [] for p in tasks_v1.SPLITS} | {"template": spec.template, "classnames": spec.classnames}
    counts = {"train": spec.n_train, "val": spec.n_val, "test": spec.n_test}
    for label, cname in enumerate(spec.classnames):
        folder = cname.replace(" ", "_")
        (tmp / "images" / folder).mkdir(parents=True, exist_ok=True)
        idx = 0
        for part in tasks_v1.SPLITS:
            for image in class_images(name, label, part, counts[part], seed):
                rel = f"images/{folder}/{idx:04d}.png"
                Image.fromarray(image).save(tmp / rel, format="PNG", compress_level=1)
                split[part].append([rel, label, cname])
                idx += 1
    return split


def write_task(name: str, cache_dir: str | Path | None = None, seed: int = 0) -> Path:
    """Write v2 task ``name`` under ``<cache_dir>/v2/`` (reused when complete) and return its ``split.json``.

    Raises:
        ConfigError: unknown task name.
    """
    if name not in TASKS:
        raise ConfigError(f"unknown v2 micro task {name!r}; choose one of {sorted(TASKS)}")
    spec = TASKS[name]
    cache = Path(cache_dir) if cache_dir is not None else tasks_v1.default_cache_dir()
    extra = {"template": spec.template, "classnames": spec.classnames}
    return tasks_v1.write_cached(cache / "v2" / name, _expected(name, spec, seed),
                                 lambda tmp: _write_into(tmp, name, spec, seed), extra)  # fmt: skip
