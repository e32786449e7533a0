"""The narrow backbone protocol every prompt learner talks to (DESIGN.md §3).

A backbone wraps a frozen CLIP-like model and exposes only what prompt learning needs: tokenisation, the token
embedding table, a text encoder that starts from input *embeddings* (so learned context vectors can be spliced in),
EOS pooling driven by the token ids, the image encoder, the logit scale and the preprocessing config.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import torch
from torch import nn

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def weights_fingerprint(model: nn.Module) -> str:
    """Short, fast hash of a model's weights: names, shapes, dtypes, sums and the first/last values of each tensor.

    Exact enough to tell two checkpoints (or a random init) apart without hashing hundreds of MB.
    """
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        flat = t.detach().reshape(-1).float().cpu()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        if flat.numel():
            h.update(flat[:256].numpy().tobytes())
            h.update(flat[-256:].numpy().tobytes())
            h.update(flat.double().sum().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class PreprocessCfg:
    """How images must be prepared for a backbone's image tower.

    Attributes:
        image_size: side of the square input, in pixels.
        mean: per-channel normalisation mean (RGB, 0–1 scale).
        std: per-channel normalisation std.
        interpolation: resize interpolation, ``"bicubic"`` for CLIP.
        resize_mode: how the test pipeline fits an image to the square input, as open_clip's pretrained configs
            name it: ``"shortest"`` (shorter side to ``image_size``, then centre crop: CLIP's and Dassl's),
            ``"squash"`` (both sides to ``image_size``, aspect ratio not kept) or ``"longest"`` (longer side to
            ``image_size``, then centre pad with black).
    """

    image_size: int
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


class Backbone(nn.Module):
    """Abstract frozen vision-language backbone.

    Subclasses (one per third-party library) implement the abstract members. All tensors use the layouts below:

    - ``ids``: ``LongTensor[N, L]`` token ids including SOS/EOS and padding, ``L == context_length``.
    - ``embeds``: ``[N, L, D]`` token embeddings (``D == token_dim``), with positional embeddings *not* yet added.
    - text / image features: ``[N, E]`` (``E == embed_dim``), *not* normalised.

    Attributes:
        name: registry name used to build it (e.g. ``"RN50"``, ``"microclip"``).
        pretrained: the pretrained tag or checkpoint path; ``"random"`` for seeded random weights.
        activation: the MLP activation the towers were built with (``"quick_gelu"`` for OpenAI's weights,
            ``"gelu"``, or a transformers ``hidden_act``): the weights fingerprint cannot see it, so it is recorded.
        fingerprint: short hash identifying the exact weights (used in cache keys and artifact checks).
        preprocess: image preprocessing config.
        context_length: text sequence length ``L``.
        token_dim: text transformer width ``D``.
        embed_dim: joint embedding width ``E``.
        causal: whether the text tower uses a causal mask (then positions after EOS never matter).
    """

    name: str
    pretrained: str | None
    activation: str | None = None
    fingerprint: str
    preprocess: PreprocessCfg
    context_length: int
    token_dim: int
    embed_dim: int
    causal: bool

    # Keep the frozen model in eval mode whatever .train() is called with: the official CoOp never switches CLIP
    # to train mode (BatchNorm of ResNet towers uses running statistics; no dropout).
    def train(self, mode: bool = True) -> Backbone:  # noqa: D102
        super().train(False)
        return self

    # --- text side -------------------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Tokenise ``texts`` to ``LongTensor[N, L]`` with SOS/EOS/padding."""
        raise NotImplementedError

    def bpe_tokens(self, text: str) -> list[int]:
        """BPE ids of ``text`` without SOS/EOS (used to check that init words are single tokens)."""
        raise NotImplementedError

    def decode_token(self, token_id: int) -> str:
        """Readable form of one vocabulary entry (for prompt interpretation)."""
        raise NotImplementedError

    @property
    def token_embedding_weight(self) -> torch.Tensor:
        """The ``[vocab, D]`` token embedding table."""
        raise NotImplementedError

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """``[N, L]`` ids → ``[N, L, D]`` token embeddings (no positional embedding)."""
        return nn.functional.embedding(ids, self.token_embedding_weight)

    def eos_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """``[N, L]`` ids → ``LongTensor[N]``: the position whose hidden state is pooled."""
        raise NotImplementedError

    def encode_text_embeddings(self, embeds: torch.Tensor, ids: torch.Tensor, truncate: bool = True) -> torch.Tensor:
        """Run the text tower from input embeddings and pool at the EOS position.

        Args:
            embeds: ``[N, L, D]`` token embeddings (learned context already spliced in).
            ids: ``[N, L]`` the token ids whose EOS positions drive pooling.
            truncate: cut the sequences after the longest EOS before the transformer. Exact under a causal mask
                (the pooled feature depends only on positions ≤ EOS); ignored when the mask is not causal.

        Returns:
            ``[N, E]`` unnormalised text features.
        """
        raise NotImplementedError

    def _pool_and_cut(
        self, embeds: torch.Tensor, ids: torch.Tensor, truncate: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """EOS positions ``[N]`` of ``ids`` and ``embeds`` ``[N, L, D]``, cut after the longest EOS when ``truncate``.

        Exact under the causal mask: the pooled EOS state never attends to later positions.
        """
        eos = self.eos_positions(ids)  # (N,)
        if truncate:
            embeds = embeds[:, : min(embeds.shape[1], int(eos.max().item()) + 1)]  # (N, L', D)
        return embeds, eos

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Encode plain strings with the backbone's own tokenizer: ``[N, E]`` unnormalised."""
        ids = self.tokenize(texts).to(self.device)
        return self.encode_text_embeddings(self.embed_tokens(ids), ids)

    # --- image side ------------------------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` preprocessed images → ``[B, E]`` unnormalised image features."""
        raise NotImplementedError

    @property
    def logit_scale(self) -> torch.Tensor:
        """``exp(logit_scale)`` as a 0-dim fp32 tensor (100 for the OpenAI checkpoints)."""
        raise NotImplementedError

    # --- misc ------------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Device of the backbone's parameters."""
        return self.token_embedding_weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the towers (fp16 in the official ``fp16`` precision mode)."""
        raise NotImplementedError

    def identity(self) -> dict:
        """What a saved prompt records to check it is loaded into the same backbone."""
        return {
            "name": self.name,
            "pretrained": self.pretrained,
            "activation": self.activation,
            "fingerprint": self.fingerprint,
            "token_dim": self.token_dim,
            "embed_dim": self.embed_dim,
        }
