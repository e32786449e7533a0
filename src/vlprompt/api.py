"""Inference API: load a trained prompt and classify images.

>>> clf = PromptClassifier.load("runs/pets-16shot")          # doctest: +SKIP
>>> pred = clf.predict(["cat.jpg", "dog.jpg"])                 # doctest: +SKIP
>>> pred.labels, pred.probs.shape                              # doctest: +SKIP
(['british_shorthair', 'beagle'], torch.Size([2, 37]))
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from vlprompt.backbones import create_backbone, recorded_pretrained
from vlprompt.backbones.base import Backbone
from vlprompt.engine.checkpoint import load_learner, read_learner_json
from vlprompt.engine.execution import Execution
from vlprompt.engine.model import PromptModel
from vlprompt.errors import ConfigError

_logger = logging.getLogger(__name__)

#: What :meth:`PromptClassifier.preprocess` and ``predict`` take: paths, PIL images, or a preprocessed tensor batch.
ImageInput = str | os.PathLike | Image.Image | Sequence[str | os.PathLike | Image.Image] | torch.Tensor


@dataclass
class Prediction:
    """Result of :meth:`PromptClassifier.predict`.

    Attributes:
        labels: predicted class names, one per image.
        indices: ``LongTensor[B]`` predicted class indices.
        probs: ``[B, C]`` softmax probabilities.
    """

    labels: list[str]
    indices: torch.Tensor
    probs: torch.Tensor


class PromptClassifier:
    """A trained prompt baked into class weights: inference costs the same as zero-shot CLIP.

    Build it with :meth:`load`. The class text features are computed once (``text_features()``); ``predict`` only
    runs the image encoder. A conditional prompt (CoCoOp) cannot be baked: its text features depend on the image,
    so ``predict`` also runs the text encoder, for every image and class (``conditional`` is then ``True``). A
    prompt that puts tokens into the image tower (``prompts_image``: VPT-deep, IVLP, MaPLe, PromptSRC) runs the
    *prompted* image encoder in ``predict``/``logits``; its text side (deep text tokens included) does not depend on
    the image and is baked once as for CoOp.
    """

    def __init__(self, backbone: Backbone, model: PromptModel, meta: dict):
        self.backbone = backbone
        self.model = model
        self.method = meta["method"]
        self.learner_config = meta["config"]
        with torch.no_grad():
            self._text = model.class_text_features()  # (C, E), normalised; None for a conditional prompt

    @classmethod
    def load(
        cls,
        run_dir: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        classnames: list[str] | None = None,
        backbone: Backbone | None = None,
        pretrained: str | None = None,
        execution: Execution | None = None,
    ) -> PromptClassifier:
        """Load the prompt saved in ``run_dir``.

        Args:
            run_dir: a training run folder (holds ``learner.json`` + ``learner.safetensors``), or a feature-space
                adapter's (``adapter.json`` + ``adapter.safetensors``: an :class:`AdapterClassifier` is returned).
            device: where to run.
            classnames: classify among these instead of the trained classes (unified context; an adapter: a subset
                of its classes, or any classes where it defines new ones).
            backbone: an already-built backbone (must be the one the prompt was trained on).
            pretrained: override the recorded weights location (e.g. the checkpoint moved); the weights
                fingerprint is still checked.
            execution: the execution strategy whose ranks share the class prompts' encoding (``vlprompt eval``
                under torchrun); ``None``: :func:`vlprompt.engine.execution.current_execution`.
        """
        from vlprompt.engine.adapter_artifact import is_adapter_run

        if is_adapter_run(run_dir):  # a feature-space adapter (issue 16): the image encoder, then the adapter
            return AdapterClassifier.load_adapter(run_dir, device=device, classnames=classnames, backbone=backbone,
                                                  pretrained=pretrained)
        meta = read_learner_json(run_dir)
        if backbone is None:
            ident = meta["backbone"]
            backbone = create_backbone(ident["name"], pretrained or recorded_pretrained(ident), device=device)
        learner = load_learner(run_dir, backbone, classnames).to(backbone.device)
        return cls(backbone, PromptModel(backbone, learner, execution=execution).eval(), meta)

    @property
    def classnames(self) -> list[str]:
        """Class names, indexed like the logits."""
        return self.model.learner.classnames

    @property
    def logit_scale(self) -> torch.Tensor:
        """``exp(logit_scale)`` of the backbone."""
        return self.backbone.logit_scale

    @property
    def conditional(self) -> bool:
        """Whether the prompt depends on the image (CoCoOp): no baked class weights then."""
        return self._text is None

    @property
    def prompts_image(self) -> bool:
        """Whether the prompt puts learned tokens into the image tower: ``predict`` then runs the prompted image
        encoder, and features of the frozen tower (the feature cache) cannot be used (:meth:`feature_logits`)."""
        return bool(self.model is not None and self.model.learner.prompts_image)

    @property
    def baked_text_features(self) -> torch.Tensor | None:
        """The baked class weights ``[C, E]``, or ``None`` for a conditional prompt."""
        return self._text

    def text_features(self) -> torch.Tensor:
        """The baked, L2-normalised class weights ``[C, E]`` (not available for a conditional prompt)."""
        if self._text is None:
            raise ConfigError(
                f"the {self.method} prompt is conditional: its class text features depend on each image, so there "
                "are no fixed class weights; use logits() or predict() on images instead."
            )
        return self._text

    def preprocess(self, images: ImageInput) -> torch.Tensor:
        """The exact ``float32[B, 3, S, S]`` (CPU) batch that :meth:`predict` and :meth:`logits` feed the model.

        Each image is converted to RGB and passed through the backbone's *test* transform
        (:func:`vlprompt.data.transforms.build_transform` with ``train=False``: resize by ``preprocess.resize_mode``
        with ``preprocess.interpolation``, centre crop to ``S = preprocess.image_size``, scale to [0, 1], normalise
        by ``mean``/``std``). This is the input of an exported ONNX model (:mod:`vlprompt.export`): feed
        ``clf.preprocess(paths).numpy()`` to it to get the probabilities ``predict(paths)`` gives.

        Args:
            images: file paths, PIL images (one or a sequence), or an already preprocessed ``[B, 3, H, W]`` /
                ``[3, H, W]`` tensor, returned unchanged (batched).

        Raises:
            ConfigError: no images, an item of another type, or a tensor of another shape.
            DataError: a file that cannot be read as an image.
        """
        if isinstance(images, torch.Tensor):
            if images.dim() == 3:
                images = images.unsqueeze(0)
            if images.dim() != 4 or images.shape[1] != 3:
                raise ConfigError(f"a tensor batch must be [B, 3, H, W] preprocessed images; got {tuple(images.shape)}.")
            return images
        from vlprompt.data.images import load_image
        from vlprompt.data.transforms import build_transform

        if isinstance(images, (str, os.PathLike, Image.Image)):  # one image, not a sequence of characters
            images = [images]
        tf = build_transform(self.backbone.preprocess, train=False)
        out = []
        for im in images:
            if isinstance(im, (str, Path, os.PathLike)):
                im = load_image(str(im))
            elif not isinstance(im, Image.Image):
                raise ConfigError(f"preprocess() and predict() take PIL images, file paths or a tensor batch; got "
                                  f"{type(im).__name__}.")
            out.append(tf(im.convert("RGB")))  # (3, S, S)
        if not out:
            raise ConfigError("preprocess()/predict() got no images.")
        return torch.stack(out)  # (B, 3, S, S)

    @torch.no_grad()
    def logits(self, images: ImageInput) -> torch.Tensor:
        """``[B, C]`` logits for images (paths, PIL images, or a preprocessed ``[B, 3, H, W]`` tensor): the model
        applied to :meth:`preprocess`'s batch."""
        batch = self.preprocess(images).to(self.backbone.device)  # (B, 3, S, S)
        if self.prompts_image:  # the image tower with the learned vision tokens; the baked text side
            return self.model.predict_logits(self.model.image_features(batch), self._text)
        return self.feature_logits(self.backbone.encode_image(batch))

    @torch.no_grad()
    def feature_logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """``[B, C]`` logits of unnormalised image features ``[B, E]`` (``backbone.encode_image``'s output, e.g. from
        the feature cache): what :meth:`logits` computes after the image encoder.

        Raises:
            ConfigError: the prompt puts tokens into the image tower (:attr:`prompts_image`): features of the
                frozen tower are not its features.
        """
        if self.prompts_image:
            raise ConfigError(
                f"the {self.method} prompt puts learned tokens into the image tower, so its image features come from "
                "the prompted encoder, not from backbone.encode_image or the feature cache; use logits() or "
                "predict() on the images instead.")
        feats = F.normalize(image_features.float(), dim=-1).to(self.backbone.device)  # (B, E)
        return self.model.predict_logits(feats, self._text)

    def predict(self, images: ImageInput, batch_size: int = 64) -> Prediction:
        """Classify images; returns labels, indices and probabilities (softmax of :meth:`logits`, which runs the
        model on :meth:`preprocess`'s batch, ``batch_size`` images at a time)."""
        if isinstance(images, (str, os.PathLike, Image.Image)):
            images = [images]
        elif not isinstance(images, torch.Tensor):
            images = list(images)
        chunks = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
        probs = torch.cat([F.softmax(self.logits(c), dim=-1).cpu() for c in chunks])
        idx = probs.argmax(-1)
        return Prediction([self.classnames[i] for i in idx.tolist()], idx, probs)


class AdapterClassifier(PromptClassifier):
    """A fitted feature-space adapter (:mod:`vlprompt.adapters`) behind the :class:`PromptClassifier` interface:
    ``predict`` runs the image encoder, then the adapter on its (unnormalised) features.

    Built by :meth:`PromptClassifier.load` on an adapter's run folder. There are no fixed class weights in general (a
    cache, a residual MLP): :meth:`text_features` is refused; ``model`` is ``None``.
    """

    def __init__(self, backbone: Backbone, head, meta: dict):
        self.backbone, self.model, self.head = backbone, None, head
        self.method = meta["method"]
        self.learner_config = meta["config"]
        self.record = meta["record"]
        self._text = None

    @classmethod
    def load_adapter(cls, run_dir: str | os.PathLike, *, device: str | torch.device = "cpu",
                     classnames: list[str] | None = None, backbone: Backbone | None = None,
                     pretrained: str | None = None) -> AdapterClassifier:
        """Load the adapter of ``run_dir`` on its recorded backbone (see :meth:`PromptClassifier.load`)."""
        from vlprompt.backbones.text import zero_shot_weights
        from vlprompt.engine.adapter_artifact import AdapterHead, load_adapter, read_adapter_json
        from vlprompt.engine.checkpoint import check_backbone

        meta = read_adapter_json(run_dir)
        if backbone is None:
            ident = meta["backbone"]
            backbone = create_backbone(ident["name"], pretrained or recorded_pretrained(ident), device=device)
        check_backbone(meta, backbone, str(run_dir))

        def text_of(names: list[str]) -> torch.Tensor:  # [C, E] zero-shot classifier, the recorded template
            return zero_shot_weights(backbone, names, [meta["template"]]).float().to(backbone.device)

        adapter = load_adapter(run_dir, text_of(meta["classnames"]), meta)
        return cls(backbone, AdapterHead(adapter, meta["classnames"], classnames, text_of, backbone.device), meta)

    @property
    def classnames(self) -> list[str]:
        """Class names, indexed like the logits."""
        return self.head.classnames

    @property
    def conditional(self) -> bool:
        """``False``: an adapter's logits depend on the image only through its feature."""
        return False

    def text_features(self) -> torch.Tensor:
        """Refused: an adapter is not a set of class weights."""
        raise ConfigError(f"'{self.method}' is a feature-space adapter: its logits are computed from each image "
                          "feature, not a fixed [C, E] class-weight matrix; use logits() or predict() instead.")

    @torch.no_grad()
    def feature_logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """``[B, C]`` logits of unnormalised image features ``[B, E]``: the adapter's."""
        return self.head.logits(image_features)
