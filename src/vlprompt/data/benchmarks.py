"""The 11 CoOp benchmarks and the 4 ImageNet variants as one data table.

Most benchmarks differ only in folder names, split file and class-name rules, so each is a row of
:data:`BENCHMARKS` (a :class:`Benchmark`), read by one of five readers in :mod:`vlprompt.data.readers`:

- ``split_json``: the official ``split_zhou_<Name>.json`` (9 datasets);
- ``fgvc_lists``: FGVCAircraft's own ``images_variant_{train,val,test}.txt`` + ``variants.txt``;
- ``imagenet``: ``images/{train,val}/<wnid>/`` + ``classnames.txt`` (test = official val, val = test);
- ``imagenet_v2``: integer folders ``0..999`` named through the line order of ``classnames.txt``;
- ``wnid_folders``: sorted ``<wnid>`` folders named through ``classnames.txt`` (Sketch: 1000; A, R: 200-way).

Layouts, split counts and download sources follow ``CoOp:DATASETS.md`` and ``CoOp:datasets/*.py``.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from vlprompt.errors import DataError

_DATASETS_MD = "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md"

# Class-name renames applied by the official split generators (stored already renamed in the split files).
CALTECH_RENAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}
EUROSAT_RENAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}


def _first_dir(rel: str) -> str:
    return rel.replace("\\", "/").split("/")[0]


def pets_name(rel: str) -> str:
    """OxfordPets: breed from the file name, lower-cased (``Abyssinian_100.jpg`` → ``abyssinian``)."""
    stem = os.path.splitext(os.path.basename(rel))[0]
    return "_".join(stem.split("_")[:-1]).lower()


def sun397_name(rel: str) -> str:
    """SUN397: class path without its first letter, parts reversed (``b/bakery/shop/x.jpg`` → ``shop bakery``)."""
    parts = os.path.dirname(rel.replace("\\", "/")).split("/")[1:]
    return " ".join(parts[::-1])


def ucf101_name(action: str) -> str:
    """UCF101: CamelCase action split on capitals, joined by ``_`` (``ApplyEyeMakeup`` → ``Apply_Eye_Makeup``).

    The midframe folders are already named this way, so for images the name is the folder name.
    """
    return "_".join(re.findall("[A-Z][^A-Z]*", action))


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: where its files are and how they are read.

    Attributes:
        name: vlprompt name (``--dataset``).
        official_name: the official ``DATASET.NAME`` (also accepted as an alias, case-insensitively).
        dataset_dir: folder under ``$DATA``.
        image_dir: image folder inside ``dataset_dir`` that stored paths are relative to (``""``: itself).
        reader: ``split_json`` | ``fgvc_lists`` | ``imagenet`` | ``imagenet_v2`` | ``wnid_folders``.
        split_file: split file inside ``dataset_dir`` (``split_json`` only).
        template: hand-crafted zero-shot template (``CoOp:trainers/zsclip.py`` ``CUSTOM_TEMPLATES``).
        num_classes: official number of classes.
        counts: official train/val/test sizes (``None`` where unknown).
        required: other files/folders that must exist inside ``dataset_dir``.
        source: where the files come from.
        classname_rule: how the official code derives class names.
        name_from_path: that rule as a function of the stored relative path, when it depends only on the path
            (``vlprompt datasets check`` uses it to verify split files); ``None`` otherwise.
        test_only: train/val are empty (the ImageNet variants).
        coop_epochs: the official CoOp ``MAX_EPOCH`` on this benchmark for every shot count, where it is not the
            per-shot-count default (ImageNet: 50, ``CoOp:COOP.md`` runs its ``*_ep50`` configs for every shot count);
            ``None``: by the shot count. The dataset default of the recipe resolver
            (:func:`vlprompt.engine.recipe.coop_epochs`).
    """

    name: str
    official_name: str
    dataset_dir: str
    image_dir: str
    reader: str
    split_file: str | None
    template: str
    num_classes: int
    counts: tuple[int | None, int | None, int | None]
    required: tuple[str, ...]
    source: str
    classname_rule: str
    name_from_path: Callable[[str], str] | None = None
    test_only: bool = False
    coop_epochs: int | None = None


def _split_source(files: str, link: str) -> str:
    return f"{files}; split file from {link} (CoOp {_DATASETS_MD})"


_IMAGENET_NAMES = "classnames.txt from https://drive.google.com/file/d/1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF"
_COPY_NAMES = "copy $DATA/imagenet/classnames.txt into this folder"
_PHOTO = "a photo of a {}."

BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in [
        Benchmark(
            "imagenet", "ImageNet", "imagenet", "images", "imagenet", None, _PHOTO, 1000, (1281167, 50000, 50000),
            ("classnames.txt", "images/train", "images/val"),
            f"ILSVRC2012 train and val (val sorted into <wnid>/ folders) from https://image-net.org into "
            f"imagenet/images/{{train,val}}; {_IMAGENET_NAMES} (CoOp {_DATASETS_MD})",
            "classnames.txt lines '<wnid> <name>'; labels = sorted wnid folders; val = test = official val",
            coop_epochs=50,
        ),
        Benchmark(
            "caltech101", "Caltech101", "caltech-101", "101_ObjectCategories", "split_json",
            "split_zhou_Caltech101.json", _PHOTO, 100, (4128, 1649, 2465), (),
            _split_source("101_ObjectCategories.tar.gz from the Caltech101 site",
                          "https://drive.google.com/file/d/1hyarUivQE36mY6jSomru6Fjd-JzwcCzN"),
            "folder name, airplanes→airplane, Faces→face, Leopards→leopard, Motorbikes→motorbike; "
            "BACKGROUND_Google and Faces_easy ignored",
            lambda rel: CALTECH_RENAMES.get(_first_dir(rel), _first_dir(rel)),
        ),
        Benchmark(
            "oxford_pets", "OxfordPets", "oxford_pets", "images", "split_json", "split_zhou_OxfordPets.json",
            "a photo of a {}, a type of pet.", 37, (2944, 736, 3669), (),
            _split_source("images.tar.gz and annotations.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/pets/",
                          "https://drive.google.com/file/d/1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs"),
            "breed from the file name, lower-cased", pets_name,
        ),
        Benchmark(
            "stanford_cars", "StanfordCars", "stanford_cars", "", "split_json", "split_zhou_StanfordCars.json",
            _PHOTO, 196, (6509, 1635, 8041), (),
            _split_source("cars_train.tgz, cars_test.tgz, car_devkit.tgz, cars_test_annos_withlabels.mat",
                          "https://drive.google.com/file/d/1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT"),
            "cars_meta.mat names with the year moved to the front; paths relative to stanford_cars/",
        ),
        Benchmark(
            "oxford_flowers", "OxfordFlowers", "oxford_flowers", "jpg", "split_json", "split_zhou_OxfordFlowers.json",
            "a photo of a {}, a type of flower.", 102, (4093, 1633, 2463), (),
            _split_source("102flowers.tgz and imagelabels.mat from https://www.robots.ox.ac.uk/~vgg/data/flowers/102/",
                          "https://drive.google.com/file/d/1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT"),
            "cat_to_name.json",
        ),
        Benchmark(
            "food101", "Food101", "food-101", "images", "split_json", "split_zhou_Food101.json",
            "a photo of {}, a type of food.", 101, (50500, 20200, 30300), (),
            _split_source("food-101.tar.gz from https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/",
                          "https://drive.google.com/file/d/1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl"),
            "folder name", _first_dir,
        ),
        Benchmark(
            "fgvc_aircraft", "FGVCAircraft", "fgvc_aircraft", "images", "fgvc_lists", None,
            "a photo of a {}, a type of aircraft.", 100, (3334, 3333, 3333),
            ("variants.txt", "images_variant_train.txt", "images_variant_val.txt", "images_variant_test.txt"),
            "the data/ folder of fgvc-aircraft-2013b.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/ "
            f"renamed to fgvc_aircraft/ (official lists, no split json; CoOp {_DATASETS_MD})",
            "variants.txt lines; label = line index",
        ),
        Benchmark(
            "sun397", "SUN397", "sun397", "SUN397", "split_json", "split_zhou_SUN397.json", _PHOTO, 397,
            (15880, 3970, 19850), (),
            _split_source("SUN397.tar.gz and Partitions.zip from https://vision.princeton.edu/projects/2010/SUN/",
                          "https://drive.google.com/file/d/1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq"),
            "class path without its first letter, parts reversed (b/bakery/shop → 'shop bakery')", sun397_name,
        ),
        Benchmark(
            "dtd", "DescribableTextures", "dtd", "images", "split_json", "split_zhou_DescribableTextures.json",
            "{} texture.", 47, (2820, 1128, 1692), (),
            _split_source("dtd-r1.0.1.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/dtd/",
                          "https://drive.google.com/file/d/1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x"),
            "folder name", _first_dir,
        ),
        Benchmark(
            "eurosat", "EuroSAT", "eurosat", "2750", "split_json", "split_zhou_EuroSAT.json",
            "a centered satellite photo of {}.", 10, (13500, 5400, 8100), (),
            _split_source("EuroSAT.zip (RGB) from http://madm.dfki.de/files/sentinel/EuroSAT.zip",
                          "https://drive.google.com/file/d/1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o"),
            "folder renamed (AnnualCrop→'Annual Crop Land', SeaLake→'Sea or Lake', Highway→'Highway or Road', …)",
            lambda rel: EUROSAT_RENAMES.get(_first_dir(rel), _first_dir(rel)),
        ),
        Benchmark(
            "ucf101", "UCF101", "ucf101", "UCF-101-midframes", "split_json", "split_zhou_UCF101.json",
            "a photo of a person doing {}.", 101, (7639, 1898, 3783), (),
            _split_source("UCF-101-midframes.zip from https://drive.google.com/file/d/10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O",
                          "https://drive.google.com/file/d/1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y"),
            "CamelCase action split on capitals and joined by '_' (= the midframe folder name)", _first_dir,
        ),
        Benchmark(
            "imagenetv2", "ImageNetV2", "imagenetv2", "imagenetv2-matched-frequency-format-val", "imagenet_v2", None,
            _PHOTO, 1000, (None, None, 10000), ("classnames.txt",),
            "imagenetv2-matched-frequency.tar.gz from https://github.com/modestyachts/ImageNetV2; "
            f"{_COPY_NAMES} (CoOp {_DATASETS_MD})",
            "folder i is class i = line i of classnames.txt", test_only=True,
        ),
        Benchmark(
            "imagenet_sketch", "ImageNetSketch", "imagenet-sketch", "images", "wnid_folders", None, _PHOTO, 1000,
            (None, None, 50889), ("classnames.txt",),
            f"https://github.com/HaohanWang/ImageNet-Sketch extracted to imagenet-sketch/images; {_COPY_NAMES} "
            f"(CoOp {_DATASETS_MD})",
            "sorted wnid folders, names from classnames.txt", test_only=True,
        ),
        Benchmark(
            "imagenet_a", "ImageNetA", "imagenet-adversarial", "imagenet-a", "wnid_folders", None, _PHOTO, 200,
            (None, None, 7500), ("classnames.txt",),
            f"https://github.com/hendrycks/natural-adv-examples extracted to imagenet-adversarial/; {_COPY_NAMES} "
            f"(CoOp {_DATASETS_MD})",
            "200-way over the sorted wnid folders, names from classnames.txt", test_only=True,
        ),
        Benchmark(
            "imagenet_r", "ImageNetR", "imagenet-rendition", "imagenet-r", "wnid_folders", None, _PHOTO, 200,
            (None, None, 30000), ("classnames.txt",),
            f"https://github.com/hendrycks/imagenet-r extracted to imagenet-rendition/; {_COPY_NAMES} "
            f"(CoOp {_DATASETS_MD})",
            "200-way over the sorted wnid folders, names from classnames.txt", test_only=True,
        ),
    ]
}

IMAGENET_FAMILY = ("imagenet", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")


def list_datasets() -> list[str]:
    """Names of the built-in benchmarks, in the order of the CoOp paper (ImageNet first, then the variants)."""
    return list(BENCHMARKS)


def benchmark_epochs(dataset: str | None) -> int | None:
    """:attr:`Benchmark.coop_epochs` of the benchmark called ``dataset`` (its ``DatasetSplits.name``); ``None`` for
    another dataset or a benchmark without its own epoch count."""
    b = BENCHMARKS.get(dataset) if dataset is not None else None
    return b.coop_epochs if b is not None else None


def get_benchmark(name: str) -> Benchmark:
    """Look a benchmark up by vlprompt name or official name (case-insensitive; ``-`` = ``_``).

    Raises:
        DataError: unknown name (the message lists close matches and every valid choice).
    """
    key = name.strip().lower().replace("-", "_")
    for b in BENCHMARKS.values():
        if key in (b.name, b.official_name.lower()):
            return b
    close = difflib.get_close_matches(key, list(BENCHMARKS), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise DataError(
        f"unknown dataset {name!r}.{hint} Valid benchmarks: {', '.join(BENCHMARKS)}; for your own data use "
        "folder:PATH, csv:PATH or split:PATH.json"
    )
