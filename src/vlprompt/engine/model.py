"""The prompt model: frozen backbone + prompt learner → class text features and logits.

Text features go through the fastest exact path the backbone and learner allow (DESIGN.md §5):

- EOS truncation (the learner's ``truncate`` option, on by default): classes are grouped by prompt length and each
  group's sequences end at its own longest EOS;
- shared prefix: with unified context and the class at the end, ``[SOS] [V]_1 … [V]_M`` is encoded once per call
  and every class attends to its keys/values (backbones that expose ``encode_text_prefix``);
- class chunking (``text_chunk``): prompts are encoded ``text_chunk`` classes at a time; with autograd each chunk is
  activation-checkpointed (recomputed during backward), so the text encoder's activation memory is that of one
  chunk, not of all classes;
- class sharding: under a :class:`~vlprompt.engine.execution.Torchrun` execution, each rank encodes its slice of the
  classes and the features are gathered with gradient support (:mod:`vlprompt.engine.execution`).

Every path gives the same features as the plain full-length computation, to float tolerance (tests/speed/).

Deep prompts (:meth:`~vlprompt.prompts.base.PromptLearner.deep_prompts`) keep every path: deep text tokens sit at
positions ``1…n`` of every prompt, inside the shared prefix, so they are encoded once per call; a learner that
``prompts_image`` runs the image tower with its vision tokens (:meth:`PromptModel.encode_images`), with autograd in
training. A learner whose text features nothing learned changes (VPT-deep) hands them over once per class list
(:meth:`~vlprompt.prompts.base.PromptLearner.fixed_text_features`): nothing is encoded per step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vlprompt.backbones.base import Backbone
from vlprompt.backbones.deep_prompts import DeepPrompts
from vlprompt.engine.execution import Execution, resolve
from vlprompt.errors import ConfigError
from vlprompt.prompts.base import PromptLearner, TrainingStep

#: The cost of one more text-encoder pass, in token positions: length buckets are merged unless splitting saves
#: more than this (per-call overhead is small next to per-token cost on a CPU, larger on a GPU).
BUCKET_OVERHEAD_TOKENS = {"cpu": 32, "cuda": 1024}
#: Evaluating a conditional learner (CoCoOp), images are taken this many prompts (images × classes) at a time.
CONDITIONAL_PROMPTS_PER_CALL = 4096


def length_buckets(lengths: torch.Tensor, overhead: int) -> list[torch.Tensor]:
    """Group classes by the number of positions they need so that each group is cut after its own longest prompt.

    Minimises ``Σ_groups (size · longest + overhead)`` over groups of consecutive lengths (dynamic programming over
    the distinct lengths). Exact under the causal mask: a prompt's EOS feature does not depend on later positions.

    Args:
        lengths: ``LongTensor[C]`` positions needed per class (EOS index + 1, minus any shared prefix).
        overhead: cost of one more group, in token positions.

    Returns:
        Index tensors, one per group, in increasing length.
    """
    values = lengths.tolist()
    distinct = sorted(set(values))
    cum = [0]
    for v in distinct:
        cum.append(cum[-1] + values.count(v))
    best, cut = [0.0] + [float("inf")] * len(distinct), [0] * (len(distinct) + 1)
    for j in range(1, len(distinct) + 1):  # best[j]: cheapest grouping of the j shortest lengths
        for i in range(j):
            cost = best[i] + (cum[j] - cum[i]) * distinct[j - 1] + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    bounds, j = [], len(distinct)
    while j > 0:
        bounds.append((distinct[cut[j]], distinct[j - 1]))
        j = cut[j]
    return [((lengths >= lo) & (lengths <= hi)).nonzero().flatten() for lo, hi in reversed(bounds)]


class PromptModel(nn.Module):
    """CoOp's ``CustomCLIP`` without the image encoder in the hot path.

    Logits are ``exp(logit_scale) · cos(f(x), w_i)`` where ``w_i`` are the learned prompts' text features.

    Args:
        backbone: frozen backbone.
        learner: prompt learner (the only trainable part).
        shared_prefix: use the exact shared-prefix encoding where the learner and backbone allow it.
        text_chunk: encode the prompts this many classes at a time (``None``: all at once).
        text_checkpoint: with ``text_chunk`` and autograd, recompute each chunk's activations during backward
            instead of keeping them (bounds the text encoder's activation memory by one chunk).
        length_buckets: when truncating, group the classes by prompt length and cut each group after its own
            longest EOS (instead of all classes after the overall longest).
        execution: the run's execution strategy (its ranks share the class prompts); ``None``: the current one
            (:func:`vlprompt.engine.execution.current_execution`, a single process outside a process group).
    """

    def __init__(
        self,
        backbone: Backbone,
        learner: PromptLearner,
        *,
        shared_prefix: bool = True,
        text_chunk: int | None = None,
        text_checkpoint: bool = True,
        length_buckets: bool = True,
        execution: Execution | None = None,
    ):
        super().__init__()
        if text_chunk is not None and text_chunk < 1:
            raise ConfigError(f"--text-chunk must be ≥ 1 classes, got {text_chunk}.")
        self.backbone = backbone
        self.learner = learner
        self.shared_prefix = shared_prefix
        self.text_chunk = text_chunk
        self.text_checkpoint = text_checkpoint
        self.length_buckets = length_buckets
        self.execution = execution

    def text_path(self) -> str:
        """The text-encoding path :meth:`text_features` takes: ``"fixed"`` (the learner's
        :meth:`~vlprompt.prompts.base.PromptLearner.fixed_text_features`, nothing encoded), ``"shared-prefix"`` or
        ``"plain"``."""
        if self.learner.fixed_text_features() is not None:
            return "fixed"
        return "shared-prefix" if self._shared_parts() is not None else "plain"

    def _shared_parts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        if not self.shared_prefix or self.learner.conditional:
            return None
        get_parts = getattr(self.learner, "shared_prefix", None)
        if get_parts is None or getattr(self.backbone, "shared_prefix_unsupported", "absent") is not None:
            return None
        return get_parts()

    def deep_prompts(self) -> DeepPrompts | None:
        """The learner's deep prompts for one step or evaluation (``None`` when it has none)."""
        return self.learner.deep_prompts()

    def _deep_text_kwargs(self, deep: DeepPrompts | None) -> dict:
        """Keyword arguments that hand ``deep``'s text tokens to the backbone's text methods (none without them)."""
        if deep is None or deep.text is None:
            return {}
        return {"deep_text": deep.text, "prompt_cast": self.learner.prompt_cast}

    def encode_prompts(
        self, image_features: torch.Tensor | None = None, deep: DeepPrompts | None | str = "learner"
    ) -> torch.Tensor:
        """Unnormalised class text features ``[C, E]`` (backbone dtype), through the fastest exact path.

        A conditional learner (CoCoOp) gives ``[B, C, E]`` for L2-normalised ``image_features`` ``[B, E]``: its
        ``B × C`` prompts are encoded together (length buckets and ``text_chunk`` apply to prompts, not classes),
        instead of once per image as in the official code.

        ``deep``: the step's deep prompts (so that both towers use one set), ``None`` for none, or ``"learner"``
        (the default) to take them from the learner now.
        """
        fixed = self.learner.fixed_text_features()
        if fixed is not None:  # nothing learned on the text side (VPT-deep): computed once per class list
            return fixed
        deep = self.deep_prompts() if isinstance(deep, str) else deep
        deep_kw = self._deep_text_kwargs(deep)
        # Truncation (and per-length buckets) is exact only under a causal mask.
        truncate = bool(getattr(self.learner.config, "truncate", True)) and bool(getattr(self.backbone, "causal", False))
        parts = self._shared_parts()
        if parts is not None:
            prefix, suffix, ids = parts  # (P, D), (C, S, D), (C, P + S)
            # once per call, with autograd: ctx (and the deep text tokens, positions 1…n) get their gradient here
            kv = self.backbone.encode_text_prefix(prefix, **deep_kw)
            flat = [t for pair in kv for t in pair]

            def run_suffix(suffix_c: torch.Tensor, ids_c: torch.Tensor, *flat_kv: torch.Tensor) -> torch.Tensor:
                kv_c = list(zip(flat_kv[0::2], flat_kv[1::2], strict=True))
                return self.backbone.encode_text_suffix(kv_c, suffix_c, ids_c, truncate=truncate)

            return self._chunked(run_suffix, suffix, ids, flat, buckets=truncate and self.length_buckets,
                                 offset=prefix.shape[0])
        embeds, ids = self.learner(image_features)  # (C, L, D) or, conditional, (B, C, L, D); ids (C, L)

        def run_plain(embeds_c: torch.Tensor, ids_c: torch.Tensor) -> torch.Tensor:
            return self.backbone.encode_text_embeddings(embeds_c, ids_c, truncate=truncate, **deep_kw)

        if embeds.dim() == 4:  # one prompt per (image, class): encode all B·C of them together
            b, c = embeds.shape[:2]
            flat = self._chunked(run_plain, embeds.flatten(0, 1), ids.repeat(b, 1), [],
                                 buckets=truncate and self.length_buckets)  # (B·C, E), image-major
            return flat.view(b, c, -1)  # (B, C, E)
        return self._chunked(run_plain, embeds, ids, [], buckets=truncate and self.length_buckets)

    def _chunked(
        self, fn: Callable[..., torch.Tensor], per_class: torch.Tensor, ids: torch.Tensor, shared: list[torch.Tensor],
        *, buckets: bool, offset: int = 0, shard: bool = True,
    ) -> torch.Tensor:
        """``fn(per_class, ids, *shared)`` per length bucket and per chunk of ``text_chunk`` classes: ``[C, E]`` in
        class order. ``offset``: positions before ``per_class`` (the shared prefix), not counted in lengths.
        Over several ranks (``shard``), each encodes its slice of the classes (:mod:`vlprompt.engine.execution`)."""
        n = per_class.shape[0]
        ex = resolve(self.execution) if shard else None
        if ex is not None and 1 < ex.world_size <= n and not self.learner.conditional:
            lo, hi = ex.shard_range(n)  # this rank's classes; the gather carries gradients back to their prompts
            mine = self._chunked(fn, per_class[lo:hi], ids[lo:hi], shared, buckets=buckets, offset=offset, shard=False)
            return ex.all_gather_rows(mine, n)  # (C_r, E) per rank → (C, E) on every rank
        groups = [None]  # None: all classes, in order
        if buckets:
            lengths = self.backbone.eos_positions(ids) + 1 - offset  # (C,) positions each class really needs
            overhead = BUCKET_OVERHEAD_TOKENS.get(per_class.device.type, BUCKET_OVERHEAD_TOKENS["cpu"])
            found = length_buckets(lengths, overhead)
            groups = found if len(found) > 1 else groups
        chunk = self.text_chunk or n
        # deep text tokens reach fn through its closure: a chunk needs autograd when any learner parameter does
        needs_grad = torch.is_grad_enabled() and (
            any(t.requires_grad for t in (per_class, *shared))
            or any(p.requires_grad for p in self.learner.parameters()))
        outs, order = [], []
        for idx in groups:
            size = n if idx is None else idx.numel()
            for i in range(0, size, chunk):
                sub = slice(i, i + chunk) if idx is None else idx[i : i + chunk]
                args = (per_class[sub], ids[sub], *shared)
                if self.text_checkpoint and needs_grad and chunk < n:
                    # Keeps only the chunk's inputs; its activations are recomputed when backward reaches it.
                    outs.append(checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False))
                else:
                    outs.append(fn(*args))
                order.append(sub)
        out = torch.cat(outs)  # (C, E), grouped order
        if groups[0] is None:
            return out
        perm = torch.cat(order)  # out[j] belongs to class perm[j]
        return out[torch.argsort(perm)]

    def text_features(
        self, image_features: torch.Tensor | None = None, deep: DeepPrompts | None | str = "learner"
    ) -> torch.Tensor:
        """L2-normalised class text features ``[C, E]`` (fp32); ``[B, C, E]`` for a conditional learner
        (``deep``: as in :meth:`encode_prompts`)."""
        return F.normalize(self.encode_prompts(image_features, deep).float(), dim=-1)

    def encode_images(self, images: torch.Tensor, deep: DeepPrompts | None | str = "learner") -> torch.Tensor:
        """L2-normalised image features ``[B, E]`` (fp32) of preprocessed ``images`` ``[B, 3, H, W]``, through the
        image tower with the learner's vision prompts when it has them (with autograd if enabled: this is the
        training path of a learner that ``prompts_image``). ``deep``: as in :meth:`encode_prompts`."""
        deep = self.deep_prompts() if isinstance(deep, str) else deep
        if deep is not None and deep.vision is not None:
            feats = self.backbone.encode_image(images, vision_prompts=deep.vision, prompt_cast=self.learner.prompt_cast)
        else:
            feats = self.backbone.encode_image(images)
        return F.normalize(feats.float(), dim=-1)

    def class_text_features(self) -> torch.Tensor | None:
        """The ``[C, E]`` text features shared by every image (compute once per evaluation), or ``None`` when the
        prompts depend on the image (a conditional learner: see :meth:`predict_logits`)."""
        return None if self.learner.conditional else self.text_features()

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, C]`` logits from L2-normalised image features ``[B, E]`` (text features computed if not given).

        ``text_features`` is ``[C, E]``, or ``[B, C, E]`` per image (conditional learners):
        ``logits[b, c] = scale · img_b · txt_{b, c}``.
        """
        if text_features is None:
            text_features = self.text_features(image_features)
        img = image_features.float()
        if text_features.dim() == 3:
            return self.backbone.logit_scale * torch.einsum("be,bce->bc", img, text_features)
        return self.backbone.logit_scale * img @ text_features.t()

    def training_loss(
        self, image_features: torch.Tensor | None, labels: torch.Tensor, images: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy plus the learner's :meth:`~vlprompt.prompts.base.PromptLearner.training_terms` (if any).

        Args:
            image_features: ``[B, E]`` L2-normalised image features (frozen tower), or ``None`` when the learner
                ``prompts_image`` (then computed here from ``images``, with autograd).
            labels: ``LongTensor[B]``.
            images: the preprocessed images ``[B, 3, H, W]`` of the batch when it holds images (required when the
                learner ``prompts_image``), else ``None``.

        Returns:
            ``(loss, logits [B, C])``.
        """
        deep = self.deep_prompts()  # once per step: both towers get the same tokens, in one graph
        if self.learner.prompts_image:
            if images is None:
                raise ConfigError(f"method '{self.learner.method}' prompts the image tower: it trains on images, not "
                                  "cached image features (pass images=...).")
            image_features = self.encode_images(images, deep)  # (B, E), with autograd
        text = self.text_features(image_features, deep)  # (C, E) or (B, C, E)
        logits = self.logits(image_features, text)  # (B, C)
        loss = F.cross_entropy(logits.float(), labels)
        extra = self.learner.training_terms(TrainingStep(text, image_features, logits, labels, images, self.backbone))
        return (loss if extra is None else loss + extra), logits

    @torch.no_grad()
    def predict_logits(self, image_features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, C]`` logits of L2-normalised image features ``[N, E]``, for evaluation.

        Text features are computed once (or taken from ``text_features``); for a conditional learner they are
        computed per image, ``max(1, CONDITIONAL_PROMPTS_PER_CALL // C)`` images at a time, which bounds memory.
        """
        if text_features is None:
            text_features = self.class_text_features()
        if text_features is not None:
            return self.logits(image_features, text_features)
        step = max(1, CONDITIONAL_PROMPTS_PER_CALL // len(self.learner.classnames))  # images per call
        return torch.cat([self.logits(image_features[i : i + step]) for i in range(0, image_features.shape[0], step)])

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image features ``[B, E]`` (fp32) from preprocessed images, without autograd (with the
        learner's vision prompts when it has them: :meth:`encode_images`)."""
        return self.encode_images(images)
