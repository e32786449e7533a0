"""Shared steps of every command: resolve the device, load and sample the data, get (cached) features, evaluate."""

from __future__ import annotations

import logging
import os
import random
import resource
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vlprompt.backbones.base import Backbone
from vlprompt.data.records import DatasetSplits, Sample
from vlprompt.engine.execution import Execution, resolve
from vlprompt.engine.model import PromptModel
from vlprompt.errors import ConfigError
from vlprompt.eval.metrics import classification_metrics
from vlprompt.features.cache import FeatureCache, default_cache_dir, records_digest
from vlprompt.features.extract import extract_features as _extract_features
from vlprompt.types import Precision, Subsample

_logger = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA if available else CPU; otherwise validated ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"--device '{device}' is not a valid device (use auto, cpu, cuda, cuda:1, …).") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine; use --device cpu.")
    return dev


def check_precision(precision: Precision, device: torch.device) -> None:
    """``amp`` is GPU autocast; refuse it on the CPU with the alternative."""
    if precision == "amp" and device.type != "cuda":
        raise ConfigError("--precision amp uses CUDA autocast and needs a GPU; on the CPU use --precision fp32.")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class FewShotData:
    """The data of one run after few-shot sampling and class subsampling."""

    splits: DatasetSplits
    train: list[Sample]
    val: list[Sample]


def prepare_data(
    spec: str,
    root: str | None,
    shots: int | None,
    seed: int,
    *,
    subsample: Subsample = "all",
    classnames_file: str | None = None,
    strict: bool = False,
    split_seed: int = 1,
    allow_outside_root: bool = False,
    fewshot_file: str | None = None,
) -> FewShotData:
    """Load ``spec``, draw the few-shot train/val sets and apply the base/new class split.

    Benchmarks and split files use the official Dassl sampler (same images, same order as the official code for
    the same split file, K and seed); folder/CSV data use the pure explicitly seeded sampler. The generated split
    of custom data without a test folder depends on ``split_seed`` only (not on ``seed``), so every seed is tested
    on the same images. When val is the test set (ImageNet), val stays whole, as officially.
    ``allow_outside_root`` accepts CSV/split-file paths that escape the dataset folder (``--allow-outside-root``).
    ``fewshot_file``: take the train/val subsets from Dassl's ``split_fewshot/shot_K-seed_S.pkl`` instead of drawing
    them (:func:`vlprompt.data.dassl_fewshot.apply_dassl_fewshot`; ``shots`` and ``seed`` must match the file).
    """
    from vlprompt.data import load_dataset
    from vlprompt.data.fewshot import apply_few_shot, subsample_classes

    splits = load_dataset(spec, root, classnames_file=classnames_file, split_seed=split_seed, strict=strict,
                          allow_outside_root=allow_outside_root)
    if fewshot_file:
        from vlprompt.data.dassl_fewshot import apply_dassl_fewshot

        splits = apply_dassl_fewshot(splits, fewshot_file, shots if shots and shots > 0 else None, seed)
    else:
        splits = apply_few_shot(splits, shots if shots and shots > 0 else None, seed, strict=strict)
    if subsample != "all":
        splits = subsample_classes(splits, subsample)
    return FewShotData(splits, list(splits.train), list(splits.val))


def relative_paths(records: list[Sample], root: str) -> list[str]:
    """Paths relative to the dataset root (as recorded in run configs)."""
    return [os.path.relpath(r.path, root) for r in records]


def extract_features(backbone: Backbone, records: list[Sample], transform, *, execution: Execution | None = None,
                     **kwargs) -> torch.Tensor:
    """:func:`vlprompt.features.extract.extract_features` (same ``kwargs``), shared by the ranks of ``execution``
    (``None``: :func:`vlprompt.engine.execution.current_execution`).

    Each rank encodes its contiguous shard of ``records`` and every rank gets the gathered ``[N, E]`` in record
    order (one process: its shard is every record). ``transform`` is deterministic (augmented views:
    :func:`cached_views`).
    """
    ex = resolve(execution)
    if ex.world_size == 1 or not records:
        return _extract_features(backbone, records, transform, **kwargs)
    lo, hi = ex.shard_range(len(records))
    return ex.gather_rows(_extract_features(backbone, records[lo:hi], transform, **kwargs), len(records))  # (N, E)


def _feature_key(backbone: Backbone, records: list[Sample], *, transform_fp: str, dataset: str, split: str,
                 root: str, precision: str) -> dict:
    """The cache key of ``records``' features (see :mod:`vlprompt.features.cache`)."""
    return {"backbone": backbone.identity(), "precision": precision, "dataset": dataset, "split": split,
            "records": records_digest(records, root), "num": len(records), "transform": transform_fp}


def cached_features(
    backbone: Backbone,
    records: list[Sample],
    transform_fp: str,
    transform,
    *,
    dataset: str,
    split: str,
    root: str,
    precision: str,
    cache_dir: str | None,
    batch_size: int = 100,
    num_workers: int = 0,
    progress: bool = False,
    execution: Execution | None = None,
) -> torch.Tensor:
    """Unnormalised image features of ``records`` ``[N, E]``, from the on-disk cache when possible.

    ``cache_dir=""`` disables the cache; ``None`` uses :func:`default_cache_dir`. ``execution``: the run's (its ranks
    share the extraction, rank 0 alone reads and writes the cache); ``None``: the current one.
    """
    ex = resolve(execution)

    def compute() -> torch.Tensor:
        return extract_features(
            backbone, records, transform, batch_size=batch_size, num_workers=num_workers, precision=precision,
            progress=progress, desc=f"{split} features", execution=ex,
        )

    if cache_dir == "" or not records:
        return compute()
    key = _feature_key(backbone, records, transform_fp=transform_fp, dataset=dataset, split=split, root=root,
                       precision=precision)
    cache = FeatureCache(cache_dir or default_cache_dir())
    return ex.cached(cache, key, compute)  # over several ranks: rank 0 reads and writes, the others receive


def _encode_views(backbone: Backbone, records: list[Sample], views: list[int], *, aug_seed: int, root: str,
                  transform, desc: str, execution: Execution, **kwargs) -> torch.Tensor:
    """Views ``views`` of ``records`` encoded: ``[len(views), N, E]``. Over several ranks each loads, augments and
    encodes only its shard of the flat (view, image) list (the seeds make a view independent of where it is
    computed) and the shards are gathered in order."""
    from torch.utils.data import Subset

    from vlprompt.features.extract import encode_dataset
    from vlprompt.features.views import SeededViews

    items = SeededViews(records, transform, views, aug_seed=aug_seed, root=root)  # len(views) * N items
    if execution.world_size > 1:
        lo, hi = execution.shard_range(len(items))
        flat = execution.gather_rows(encode_dataset(backbone, Subset(items, range(lo, hi)), desc=desc, **kwargs),
                                     len(items))
    else:
        flat = encode_dataset(backbone, items, desc=desc, **kwargs)  # (len(views) * N, E)
    return flat.reshape(len(views), len(records), -1)


def cached_views(
    backbone: Backbone,
    records: list[Sample],
    *,
    dataset: str,
    split: str,
    root: str,
    num_views: int,
    aug_seed: int,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    flip: bool = True,
    precision: str = "fp32",
    cache_dir: str | None = None,
    batch_size: int = 100,
    num_workers: int = 0,
    progress: bool = False,
    execution: Execution | None = None,
) -> torch.Tensor:
    """``num_views`` augmented views of ``records``: unnormalised fp32 features ``[V, N, E]``, view-major.

    View ``v`` of image ``n`` is a pure function of ``(aug_seed, v, image)`` (:mod:`vlprompt.features.views`) and
    each view is one cache entry (:func:`vlprompt.features.views.view_key`: backbone identity, precision,
    ``dataset``, ``split``, the records, the train transform's fingerprint of ``crop_scale``/``flip``/size, the view
    index and ``aug_seed``). So a request for ``V`` views reuses the first ``V`` of any earlier request on the same
    images, whichever method made it (CoOp's ``cached:K``, Tip-Adapter's cache keys), and encodes only the missing
    ones; a damaged entry is rebuilt (:class:`~vlprompt.features.cache.FeatureCache`). A run's training images are
    ``split="train-fewshot"`` and its ``aug_seed`` is its seed. ``cache_dir=""`` disables the cache, ``None`` is
    :func:`default_cache_dir`. Over the ranks of ``execution`` (``None``: the current one), rank 0 alone reads and
    writes the cache and the encoding is sharded.
    """
    from vlprompt.data.transforms import build_transform, transform_fingerprint
    from vlprompt.features.views import view_key

    tf = build_transform(backbone.preprocess, train=True, flip=flip, crop_scale=crop_scale)
    ex = resolve(execution)
    kw = dict(aug_seed=aug_seed, root=root, transform=tf, desc=f"{split} views", batch_size=batch_size,
              num_workers=num_workers, precision=precision, progress=progress, execution=ex)
    if num_views < 1:
        raise ConfigError(f"num_views={num_views}: augmented views need at least 1 view (--augment cached:K, K ≥ 1).")
    if not records:
        return torch.empty(num_views, 0, backbone.embed_dim)
    if cache_dir == "":
        return _encode_views(backbone, records, list(range(num_views)), **kw)
    base = _feature_key(backbone, records, transform_fp=transform_fingerprint(backbone.preprocess, True, flip,
                        crop_scale), dataset=dataset, split=split, root=root, precision=precision)
    keys = [view_key(base, v, aug_seed) for v in range(num_views)]
    cache = FeatureCache(cache_dir or default_cache_dir())
    found = _read_entries(cache, keys, ex)
    missing = [v for v in range(num_views) if v not in found]
    _logger.info("%s: %d of %d augmented views from the feature cache", split, num_views - len(missing), num_views)
    if missing:
        new = _encode_views(backbone, records, missing, **kw)  # (len(missing), N, E)
        ex.on_main(lambda: [cache.put(keys[v], t) for v, t in zip(missing, new, strict=True)])  # rank 0 writes
        found.update(zip(missing, new, strict=True))
    return torch.stack([found[v] for v in range(num_views)])  # (V, N, E)


def _read_entries(cache: FeatureCache, keys: list[dict], execution: Execution) -> dict[int, torch.Tensor]:
    """``{i: tensor}`` for every valid entry ``keys[i]``, on every rank: rank 0 reads them (a damaged entry is
    absent) and, over several ranks, broadcasts them stacked."""
    found: dict[int, torch.Tensor] = {}

    def lookup() -> list[int]:  # rank 0 (or the only process)
        found.update({i: t for i, key in enumerate(keys) if (t := cache.get(key)) is not None})
        return sorted(found)

    hits = execution.on_main(lookup)
    if execution.world_size > 1 and hits:
        mine = torch.stack([found[i] for i in hits]) if execution.is_main else None  # (H, N, E) on rank 0
        stacked = execution.broadcast_tensor(mine)  # (H, N, E) on every rank
        found = dict(zip(hits, stacked, strict=True))
    return found


def evaluate_features(
    text_features: torch.Tensor, image_features: torch.Tensor, labels: torch.Tensor, logit_scale: torch.Tensor
) -> tuple[dict, torch.Tensor]:
    """Metrics of a classifier given normalised text features ``[C, E]`` and unnormalised image features ``[N, E]``.

    Returns ``(metrics, logits [N, C])``.
    """
    img = F.normalize(image_features.float(), dim=-1).to(text_features.device)
    logits = logit_scale.to(text_features.device) * img @ text_features.float().t()
    metrics = classification_metrics(logits.argmax(-1).cpu(), labels.cpu(), text_features.shape[0])
    return metrics, logits


def evaluate_model(
    model: PromptModel, image_features: torch.Tensor, labels: torch.Tensor, text_features: torch.Tensor | None = None
) -> tuple[dict, torch.Tensor]:
    """Metrics of a prompt model on unnormalised image features ``[N, E]``; works for every learner.

    ``text_features``: the model's ``[C, E]`` class text features if already computed (``None``: computed here
    once, or per image for a conditional learner). Returns ``(metrics, logits [N, C])``.
    """
    img = F.normalize(image_features.float(), dim=-1).to(model.backbone.device)
    logits = model.predict_logits(img, text_features)  # (N, C)
    metrics = classification_metrics(logits.argmax(-1).cpu(), labels.cpu(), logits.shape[1])
    return metrics, logits


def labels_of(records: list[Sample]) -> torch.Tensor:
    """``LongTensor[N]`` of record labels."""
    return torch.tensor([r.label for r in records], dtype=torch.long)


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated on CUDA, else the process's peak resident memory, in MB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB
