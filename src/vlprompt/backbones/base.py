"""The narrow backbone protocol every prompt learner talks to (DESIGN.md §3).

A backbone wraps a frozen CLIP-like model and exposes only what prompt learning needs: tokenisation, the token
embedding table, a text encoder that starts from input *embeddings* (so learned context vectors can be spliced in),
EOS pooling driven by the token ids, the image encoder, the logit scale and the preprocessing config.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

# Re-exported here: the preprocessing config lives below both backbones and data (data/transforms.py reads it).
from vlprompt.preprocess import OPENAI_MEAN, OPENAI_STD, PreprocessCfg  # noqa: F401 - re-exported

FINGERPRINT_VERSION = 2
FINGERPRINT_PREFIX = f"w{FINGERPRINT_VERSION}:"  # new fingerprints are "w2:" + 32 hex digits
_LEGACY_LEN = 16  # 0.1.0 fingerprints: 16 hex digits, no prefix


def _canonical_bytes(t: torch.Tensor) -> tuple[str, np.ndarray]:
    """``(kind, bytes)`` of a tensor that depend only on its values: contiguous, on the CPU, little-endian.

    Floating tensors are hashed by value: fp16/bf16/fp32 as fp32 (exact upcasts), fp64 as fp32 when that is exact,
    so the same weights moved to a wider dtype keep their identity (a lossy cast changes the values, hence it).
    """
    t = t.detach()
    if t.is_floating_point():
        if t.dtype == torch.float64:
            narrow = t.float()
            t = narrow if torch.equal(narrow.double(), t) else t
        elif t.dtype != torch.float32:
            t = t.float()
        kind = "float64" if t.dtype == torch.float64 else "float"
    else:
        kind = str(t.dtype).removeprefix("torch.")
    t = t.cpu().contiguous().reshape(-1)  # (numel,)
    raw = t.view(torch.uint8).numpy()  # (numel * itemsize,) in native byte order, no copy
    if sys.byteorder == "big" and t.element_size() > 1:
        raw = np.ascontiguousarray(raw.reshape(-1, t.element_size())[:, ::-1])
    return kind, raw


def weights_fingerprint(model: nn.Module) -> str:
    """Exact identity of a model's weights: ``"w2:"`` + 32 hex digits of a SHA-256 over every state-dict tensor.

    Hashes, in sorted name order, each tensor's name, value kind, shape and bytes (canonical: contiguous CPU copy,
    little-endian, floats by value — see :func:`_canonical_bytes`). No float reduction is involved, so the result
    does not depend on the thread count, the device, the CPU or the machine; it changes when any value changes,
    even by one ulp. Cost: one pass over the bytes (≈0.3 s for the 150 M parameters of ViT-B-16).
    """
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        kind, raw = _canonical_bytes(t)
        h.update(json.dumps([name, kind, list(t.shape)]).encode() + b"\n")
        h.update(raw)  # raw.nbytes follows from kind and shape, so the stream is unambiguous
    return FINGERPRINT_PREFIX + h.hexdigest()[:32]


def fingerprint_version(fingerprint: object) -> int | None:
    """2 for a :func:`weights_fingerprint`, 0 for a vlprompt 0.1.0 one (16 hex digits), ``None`` otherwise."""
    if not isinstance(fingerprint, str):
        return None
    if fingerprint.startswith(FINGERPRINT_PREFIX):
        return FINGERPRINT_VERSION
    if len(fingerprint) == _LEGACY_LEN and all(c in "0123456789abcdef" for c in fingerprint):
        return 0
    return None


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` intra-op threads, restoring the caller's count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _legacy_parts(model: nn.Module) -> Iterator[tuple[bytes, torch.Tensor | None]]:
    """Per tensor of the 0.1.0 fingerprint: its thread-independent bytes and its float64 copy (to sum), in order."""
    for name, t in sorted(model.state_dict().items()):
        flat = t.detach().reshape(-1).float().cpu()
        head = f"{name}:{tuple(t.shape)}:{t.dtype}".encode()
        if flat.numel():
            yield head + flat[:256].numpy().tobytes() + flat[-256:].numpy().tobytes(), flat.double()
        else:
            yield head, None


def legacy_fingerprint_v0(model: nn.Module, threads: int | None = None) -> str:
    """vlprompt 0.1.0's fingerprint, exactly as 0.1.0 computed it with ``threads`` torch threads (default: current).

    It hashes names, shapes, dtypes, the first/last 256 values and a float64 *sum* of each tensor; the sum's
    reduction order depends on the thread count (and the CPU's vector width), so the same weights gave different
    fingerprints in processes with different thread counts. Kept only to verify run folders written by 0.1.0.
    """
    h = hashlib.sha256()
    with _torch_threads(threads or torch.get_num_threads()):
        for part, dbl in _legacy_parts(model):
            h.update(part)
            if dbl is not None:
                h.update(dbl.sum().numpy().tobytes())
    return h.hexdigest()[:_LEGACY_LEN]


def legacy_thread_counts() -> list[int]:
    """Thread counts a 0.1.0 fingerprint is tried under: 1..max(64, CPUs), the likeliest first."""
    cpus = os.cpu_count() or 1
    likely = [torch.get_num_threads(), 1, 2, 4, 8, 16, 32, 64, cpus]
    return list(dict.fromkeys([*likely, *range(1, max(64, cpus) + 1)]))


def _match_legacy(model: nn.Module, fingerprint: str, counts: list[int]) -> int | None:
    hashes = {n: hashlib.sha256() for n in counts}
    with _torch_threads(torch.get_num_threads()):  # restores the caller's count
        for part, dbl in _legacy_parts(model):
            for n in counts:
                hashes[n].update(part)
                if dbl is not None:
                    torch.set_num_threads(n)
                    hashes[n].update(dbl.sum().numpy().tobytes())
    return next((n for n in counts if hashes[n].hexdigest()[:_LEGACY_LEN] == fingerprint), None)


def match_legacy_fingerprint(model: nn.Module, fingerprint: str, thread_counts: list[int] | None = None) -> int | None:
    """The thread count under which ``model``'s 0.1.0 fingerprint equals ``fingerprint``, or ``None`` if none does.

    Same result as trying :func:`legacy_fingerprint_v0` under each count of ``thread_counts`` (default
    :func:`legacy_thread_counts`), but each tensor is converted once and only its sum is redone per count (the rest
    of the hash does not depend on threads). The nine likeliest counts are tried in a first pass.
    """
    counts = list(dict.fromkeys(thread_counts or legacy_thread_counts()))
    first, rest = counts[:9], counts[9:]
    found = _match_legacy(model, fingerprint, first)
    if found is None and rest:
        found = _match_legacy(model, fingerprint, rest)
    return found


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

    def encode_text_embeddings(
        self, embeds: torch.Tensor, ids: torch.Tensor, truncate: bool = True, deep_text: torch.Tensor | None = None,
        prompt_cast: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Run the text tower from input embeddings and pool at the EOS position.

        Args:
            embeds: ``[N, L, D]`` token embeddings (learned context already spliced in).
            ids: ``[N, L]`` the token ids whose EOS positions drive pooling.
            truncate: cut the sequences after the longest EOS before the transformer. Exact under a causal mask
                (the pooled feature depends only on positions ≤ EOS); ignored when the mask is not causal.
                Exact with ``deep_text`` too: its positions ``1…n`` precede every EOS.
            deep_text: ``[J − 1, n, D]`` deep text prompts replacing positions ``1…n`` before blocks ``1…J − 1``
                (:mod:`vlprompt.backbones.deep_prompts`), or ``None``. Refused (``BackboneError``) when deeper than
                the tower, of another width, or reaching a prompt's EOS.
            prompt_cast: dtype the deep tokens pass through after broadcasting (``torch.float16`` reproduces the
                official ``.half()`` of fp32 runs, gradients included), or ``None``.

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
    def encode_image(
        self, images: torch.Tensor, vision_prompts: torch.Tensor | None = None, prompt_cast: torch.dtype | None = None
    ) -> torch.Tensor:
        """``[B, 3, H, W]`` preprocessed images → ``[B, E]`` unnormalised image features.

        ``vision_prompts`` ``[J_v, n_v, D_v]``: deep vision prompts (:mod:`vlprompt.backbones.deep_prompts`);
        refused (``BackboneError``) for a non-ViT tower, deeper than the tower or of another width.
        ``prompt_cast``: as in :meth:`encode_text_embeddings`.
        """
        raise NotImplementedError

    # --- deep prompts: tower sizes read from the model (backbones/deep_prompts.py) ---------------------------
    @property
    def text_layers(self) -> int:
        """Number of text transformer blocks."""
        raise NotImplementedError

    @property
    def text_width(self) -> int:
        """Text transformer width (the width deep text tokens must have)."""
        raise NotImplementedError

    @property
    def vision_prompt_unsupported(self) -> str | None:
        """Why the image tower cannot take vision prompts (e.g. a ResNet), or ``None`` when it can."""
        return "this backbone does not implement vision prompts"

    @property
    def vision_layers(self) -> int | None:
        """Number of image transformer blocks, ``None`` when :attr:`vision_prompt_unsupported`."""
        return None

    @property
    def vision_width(self) -> int | None:
        """Image transformer width (the width deep vision tokens must have), ``None`` when unsupported."""
        return None

    @property
    def vision_heads(self) -> int | None:
        """Attention heads of the image transformer, ``None`` when unsupported."""
        return None

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
