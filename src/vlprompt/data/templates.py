"""Hand-crafted prompt templates: zero-shot (``CoOp:trainers/zsclip.py``, ``trainers/imagenet_templates.py``).
KgCoOp's guidance prompts belong to the method (:data:`vlprompt.prompts.kgcoop.KGCOOP_TEMPLATES`).

``{}`` is replaced by the class name with ``_`` turned into a space (the caller does that replacement).
"""

from __future__ import annotations

import os

from vlprompt.errors import ConfigError
from vlprompt.template import CUSTOM_TEMPLATES, check_template  # noqa: F401 (re-exported; also used by prompts)

# KgCoOp's own templates are the method's: ``vlprompt.prompts.kgcoop.KGCOOP_TEMPLATES``.

# The 80 templates of OpenAI's ``Prompt_Engineering_for_ImageNet.ipynb``, in the notebook's order.
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

# The 7 templates the official prompt-ensembling baseline (``ZeroshotCLIP2``) uses; all are among the 80.
IMAGENET_TEMPLATES_SELECT: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

TEMPLATE_KINDS = ("dataset", "ensemble7", "ensemble80")


def read_template_file(path: str) -> list[str]:
    """One template per non-empty line; each must contain ``{}``.

    Raises:
        ConfigError: the file is missing, empty, or a line lacks ``{}``.
    """
    if not os.path.isfile(path):
        raise ConfigError(
            f"templates {path!r}: neither one of {', '.join(TEMPLATE_KINDS)} nor an existing file of templates"
        )
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError as e:
        raise ConfigError(f"template file {path!r} is not UTF-8 text ({e})") from e
    if not lines:
        raise ConfigError(f"template file {path!r} is empty; write one template per line, e.g. 'a photo of a {{}}.'")
    for n, line in enumerate(lines, 1):
        check_template(line, f"template file {path!r} line {n}:")
    return lines


def get_templates(kind: str, dataset_template: str, dataset: str | None = None) -> list[str]:
    """The templates of a zero-shot classifier.

    Args:
        kind: ``dataset`` (the dataset's hand-crafted template, the official zero-shot baseline), ``ensemble7``
            (the 7 selected templates plus the dataset's template, except for ImageNet, as the official
            ``ZeroshotCLIP2``), ``ensemble80`` (OpenAI's 80), or a path to a file with one template per line.
        dataset_template: the dataset's template (``DatasetSplits.template``).
        dataset: the dataset name (``DatasetSplits.name``). The official ensemble skips the extra template only
            when the dataset is ``ImageNet`` itself (not its variants); pass the name to get that exactly.
            Without it, the template is appended unless it is already one of the 7.

    Raises:
        ConfigError: unknown kind / unreadable file, or a template without ``{}``.
    """
    check_template(dataset_template)
    if kind == "dataset":
        return [dataset_template]
    if kind == "ensemble7":
        out = list(IMAGENET_TEMPLATES_SELECT)
        if dataset != "imagenet" and dataset_template not in out:
            out.append(dataset_template)
        return out
    if kind == "ensemble80":
        return list(IMAGENET_TEMPLATES)
    return read_template_file(kind)
