"""Everything about samples: benchmark and custom readers, few-shot sampling, templates, images, transforms.

Typical use::

    from vlprompt.data import load_dataset, apply_few_shot, subsample_classes

    splits = load_dataset("oxford_pets", root="/data")          # official split_zhou_OxfordPets.json
    splits = apply_few_shot(splits, k=16, seed=1)               # the official 16-shot subset of seed 1
    splits = subsample_classes(splits, "base")                  # base-to-new protocol (after sampling)

``vlprompt.data.dataset`` and ``vlprompt.data.transforms`` (torch/torchvision) are imported on demand.
"""

from vlprompt.data.benchmarks import BENCHMARKS, IMAGENET_FAMILY, Benchmark, get_benchmark, list_datasets
from vlprompt.data.fewshot import apply_few_shot, sample_few_shot, sample_few_shot_coop, subsample_classes
from vlprompt.data.images import check_images, load_image
from vlprompt.data.load import check_dataset, load_dataset
from vlprompt.data.records import DatasetSplits, Sample
from vlprompt.data.templates import (
    CUSTOM_TEMPLATES,
    IMAGENET_TEMPLATES,
    IMAGENET_TEMPLATES_SELECT,
    get_templates,
)

__all__ = [
    "BENCHMARKS",
    "CUSTOM_TEMPLATES",
    "IMAGENET_FAMILY",
    "IMAGENET_TEMPLATES",
    "IMAGENET_TEMPLATES_SELECT",
    "Benchmark",
    "DatasetSplits",
    "Sample",
    "apply_few_shot",
    "check_dataset",
    "check_images",
    "get_benchmark",
    "get_templates",
    "list_datasets",
    "load_dataset",
    "load_image",
    "sample_few_shot",
    "sample_few_shot_coop",
    "subsample_classes",
]
