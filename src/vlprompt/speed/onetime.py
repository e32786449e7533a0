"""One-time costs (image encoding, evaluation text features, image loading) and the end-to-end check (a real
``train_run`` on a generated image folder)."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from vlprompt.speed.common import build_model, classnames, register_quick_configs, setup, sync


def _jpeg_records(folder: Path, n: int, size=(500, 375)) -> list:
    """``n`` photo-sized JPEGs (smooth random colour fields with noise) as records."""
    import numpy as np
    from PIL import Image

    from vlprompt.data.records import Sample

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        low = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
        arr = np.clip(np.asarray(low, dtype=np.int16) + rng.integers(-12, 12, (size[1], size[0], 3)), 0, 255)
        path = folder / f"{i}.jpg"
        Image.fromarray(arr.astype(np.uint8)).save(path, quality=90)
        records.append(Sample(str(path), 0, "x"))
    return records


def measure_onetime(spec: dict) -> dict:
    """Image-encoding throughput, evaluation text features (official vs vlprompt) and image loading, per unit."""
    from vlprompt.data.dataset import ImageDataset
    from vlprompt.data.transforms import build_transform
    from vlprompt.features.extract import autocast_context

    device, backbone = setup(spec)
    size = backbone.preprocess.image_size
    images = torch.randn(spec["eval_batch"], 3, size, size, device=device)
    out = {"kind": "onetime", "backbone": spec["backbone"], "classes": spec["classes"],
           "load_before": os.getloadavg()[0]}
    with torch.no_grad(), autocast_context(device, spec["precision"]):
        backbone.encode_image(images)  # warm-up with the same shape (kernel selection, allocations)
        sync(device)
        t0 = time.perf_counter()
        backbone.encode_image(images)
        sync(device)
        out["encode_per_image_s"] = (time.perf_counter() - t0) / len(images)
        for config in ("official", "prefix"):  # text features for one evaluation
            build_model(backbone, spec, min(10, spec["classes"]), config)[0].text_features()
            model = build_model(backbone, spec, spec["classes"], config)[0]
            sync(device)
            t0 = time.perf_counter()
            model.text_features()
            sync(device)
            out[f"text_eval_{config}_s"] = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        records = _jpeg_records(Path(tmp), 8)
        for name, train in (("train", True), ("test", False)):
            ds = ImageDataset(records, build_transform(backbone.preprocess, train=train))
            ds[0]
            t0 = time.perf_counter()
            for _ in range(3):
                for i in range(len(ds)):
                    ds[i]
            out[f"load_{name}_per_image_s"] = (time.perf_counter() - t0) / (3 * len(ds))
    out["load_after"] = os.getloadavg()[0]
    return out


def make_folder_dataset(root: Path, n_classes: int, per_split: dict[str, int]) -> None:
    """An image folder ``root/<split>/<class>/<i>.jpg`` with ``per_split[split]`` images per class."""
    import shutil

    names = [c.replace("/", "or").replace(" ", "_") for c in classnames(n_classes)]
    pool = _jpeg_records(root / "_pool", 24)
    for split, count in per_split.items():
        for c, name in enumerate(names):
            d = root / split / f"{c:04d}_{name}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                shutil.copyfile(pool[(c * 7 + i) % len(pool)].path, d / f"{i}.jpg")
    shutil.rmtree(root / "_pool")


def measure_e2e(spec: dict) -> dict:
    """A real ``train_run`` (``--augment cached:K``) on a generated folder dataset, timed end to end."""
    from vlprompt.engine.config import TrainConfig
    from vlprompt.engine.run import RunSpec, train_run

    torch.set_num_threads(spec["threads"])
    if spec.get("model_config_dir"):
        register_quick_configs(spec["model_config_dir"])
    n, shots = spec["classes"], spec["shots"]
    per_split = {"train": shots, "val": min(shots, 4), "test": spec["test_per_class"]}
    with tempfile.TemporaryDirectory() as tmp:
        make_folder_dataset(Path(tmp) / "data", n, per_split)
        run = RunSpec(dataset=f"folder:{Path(tmp) / 'data'}", out=str(Path(tmp) / "run"), shots=shots, seed=1,
                      backbone=spec["backbone"], pretrained="random", learner={"n_ctx": spec["n_ctx"]}, device=spec["device"],
                      train=TrainConfig(epochs=spec["epochs"], batch_size=spec["batch"], augment=f"cached:{spec['k']}",
                                        precision=spec["precision"]),
                      cache_dir=str(Path(tmp) / "cache"))
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        metrics = train_run(run)
        wall = time.perf_counter() - t0
    return {"kind": "e2e", "backbone": spec["backbone"], "classes": n, "epochs": spec["epochs"], "k": spec["k"],
            "n_train": n * per_split["train"], "n_val": n * per_split["val"], "n_test": n * per_split["test"],
            "wall_s": wall, "train_s": metrics["train_seconds"], "eval_s": metrics["eval_seconds"],
            "accuracy": metrics["accuracy"], "load_before": load_before, "load_after": os.getloadavg()[0]}
