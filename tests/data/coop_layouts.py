"""Generators of tiny benchmark trees in the official CoOp layouts (a few 4x4 images per class).

Imported by the tests in this folder (pytest puts the folder on ``sys.path``; the module name is unique).
"""

from __future__ import annotations

import json
import os
import random

from PIL import Image

# split_json benchmarks: (dataset_dir, image_dir, split file, [(path pattern, stored class name), ...]).
# Patterns take a unique running number; names are stored already processed, as in the released split files.
SPLIT_JSON_CASES = {
    "caltech101": ("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json",
                   [("accordion/image_{:04d}.jpg", "accordion"), ("airplanes/image_{:04d}.jpg", "airplane"),
                    ("Faces/image_{:04d}.jpg", "face")]),
    "oxford_pets": ("oxford_pets", "images", "split_zhou_OxfordPets.json",
                    [("Abyssinian_{}.jpg", "abyssinian"), ("american_bulldog_{}.jpg", "american_bulldog"),
                     ("yorkshire_terrier_{}.jpg", "yorkshire_terrier")]),
    "stanford_cars": ("stanford_cars", "", "split_zhou_StanfordCars.json",
                      [("cars_train/{:05d}.jpg", "2012 AM General Hummer SUV"),
                       ("cars_train/{:05d}.jpg", "2012 Tesla Model S Sedan"),
                       ("cars_test/{:05d}.jpg", "2007 Volvo XC90 SUV")]),
    "oxford_flowers": ("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json",
                       [("image_{:05d}.jpg", "pink primrose"), ("image_{:05d}.jpg", "hard-leaved pocket orchid"),
                        ("image_{:05d}.jpg", "canterbury bells")]),
    "food101": ("food-101", "images", "split_zhou_Food101.json",
                [("apple_pie/{}.jpg", "apple_pie"), ("baby_back_ribs/{}.jpg", "baby_back_ribs"),
                 ("waffles/{}.jpg", "waffles")]),
    "sun397": ("sun397", "SUN397", "split_zhou_SUN397.json",
               [("a/abbey/sun_{}.jpg", "abbey"), ("b/bakery/shop/sun_{}.jpg", "shop bakery"),
                ("a/apartment_building/outdoor/sun_{}.jpg", "outdoor apartment_building")]),
    "dtd": ("dtd", "images", "split_zhou_DescribableTextures.json",
            [("banded/banded_{:04d}.jpg", "banded"), ("blotchy/blotchy_{:04d}.jpg", "blotchy"),
             ("zigzagged/zigzagged_{:04d}.jpg", "zigzagged")]),
    "eurosat": ("eurosat", "2750", "split_zhou_EuroSAT.json",
                [("AnnualCrop/AnnualCrop_{}.jpg", "Annual Crop Land"), ("Forest/Forest_{}.jpg", "Forest"),
                 ("SeaLake/SeaLake_{}.jpg", "Sea or Lake")]),
    "ucf101": ("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json",
               [("Apply_Eye_Makeup/v_ApplyEyeMakeup_g{:02d}_c01.jpg", "Apply_Eye_Makeup"),
                ("Band_Marching/v_BandMarching_g{:02d}_c01.jpg", "Band_Marching"),
                ("YoYo/v_YoYo_g{:02d}_c01.jpg", "YoYo")]),
}
SPLIT_SIZES = {"train": 4, "val": 2, "test": 3}  # per class
WNIDS = [("n01440764", "tench"), ("n01443537", "goldfish"), ("n01484850", "great white shark"),
         ("n01491361", "tiger shark"), ("n01494475", "hammerhead shark")]


def tiny_image(path, color=(10, 20, 30), mode="RGB", size=(4, 4)):
    """Write a tiny image (format from the extension)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new(mode, size, color).save(path)


def write_split_json(name, root, shuffle_seed=0):
    """Write the tree and split file of a split_json benchmark; return the expected {split: [(rel, label, name)]}."""
    ddir, idir, split_file, classes = SPLIT_JSON_CASES[name]
    image_dir = os.path.join(root, ddir, idir)
    counter = 0
    split = {}
    for s, n in SPLIT_SIZES.items():
        rows = []
        for label, (pattern, cname) in enumerate(classes):
            for _ in range(n):
                counter += 1
                rows.append([pattern.format(counter), label, cname])
        random.Random(shuffle_seed).shuffle(rows)  # the released files are not grouped by class either
        split[s] = rows
        for rel, label, _ in rows:
            tiny_image(os.path.join(image_dir, rel), (label * 60, 0, 0))
    with open(os.path.join(root, ddir, split_file), "w") as f:
        json.dump(split, f, indent=4)
    return split


def write_classnames_txt(path, pairs=WNIDS):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(f"{w} {n}\n" for w, n in pairs)


def write_imagenet(root):
    """imagenet/ with 3 classes; files created in reverse-sorted order (listing must come back sorted)."""
    ddir = os.path.join(root, "imagenet")
    write_classnames_txt(os.path.join(ddir, "classnames.txt"))
    for s, n in (("train", 5), ("val", 2)):
        for wnid, _ in reversed(WNIDS[:3]):
            for i in reversed(range(n)):
                tiny_image(os.path.join(ddir, "images", s, wnid, f"{wnid}_{s}_{i}.JPEG"))
    return ddir


def write_fgvc(root):
    ddir = os.path.join(root, "fgvc_aircraft")
    variants = ["707-320", "727-200", "A300B4"]
    os.makedirs(ddir)
    with open(os.path.join(ddir, "variants.txt"), "w") as f:
        f.write("\n".join(variants) + "\n")
    n = 1000000
    for s in ("train", "val", "test"):
        lines = []
        for v in variants[::-1]:
            for _ in range(2):
                n += 1
                lines.append(f"{n} {v}")
                tiny_image(os.path.join(ddir, "images", f"{n}.jpg"))
        with open(os.path.join(ddir, f"images_variant_{s}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return ddir


def write_variant(root, name):
    """The test-only ImageNet variants; A/R hold a README.txt that must be ignored."""
    if name == "imagenetv2":
        ddir = os.path.join(root, "imagenetv2")
        # V2 needs the full 1000-line classnames.txt (folder i = line i); only folders 0 and 2 hold images.
        pairs = WNIDS + [(f"n9{i:07d}", f"class {i}") for i in range(len(WNIDS), 1000)]
        write_classnames_txt(os.path.join(ddir, "classnames.txt"), pairs)
        idir = os.path.join(ddir, "imagenetv2-matched-frequency-format-val")
        for i in range(1000):
            os.makedirs(os.path.join(idir, str(i)))
        for i in (0, 2):
            for j in range(3):
                tiny_image(os.path.join(idir, str(i), f"{j}abc.jpeg"))
        return ddir
    ddir, sub = {"imagenet_sketch": ("imagenet-sketch", "images"), "imagenet_a": ("imagenet-adversarial", "imagenet-a"),
                 "imagenet_r": ("imagenet-rendition", "imagenet-r")}[name]
    ddir = os.path.join(root, ddir)
    write_classnames_txt(os.path.join(ddir, "classnames.txt"))
    for wnid in ("n01494475", "n01443537", "n01484850"):  # a subset of the 5 classes, created unsorted
        for j in range(2):
            tiny_image(os.path.join(ddir, sub, wnid, f"{j}.jpg"))
    with open(os.path.join(ddir, sub, "README.txt"), "w") as f:
        f.write("readme\n")
    return ddir
