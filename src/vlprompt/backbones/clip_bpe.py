"""CLIP's byte-pair-encoding tokenizer behind the backbone protocol's text methods, shared by every adapter.

OpenAI CLIP, open_clip's CLIP-style models and Hugging Face ``CLIPModel`` checkpoints all use one BPE vocabulary:
49408 entries, start-of-text 49406, end-of-text 49407 (the largest id, which argmax pooling relies on). vlprompt
tokenises with open_clip's ``SimpleTokenizer`` for all of them, so a prompt learner sees the same ids, placeholder
tokens and EOS handling whatever library the model comes from.
"""

from __future__ import annotations

import torch

from vlprompt.errors import BackboneError

#: Size of CLIP's BPE vocabulary, and its start/end-of-text ids.
CLIP_VOCAB_SIZE = 49408
SOT_ID = 49406
EOT_ID = 49407


def clip_bpe_tokenizer():
    """A fresh ``open_clip.tokenizer.SimpleTokenizer`` (CLIP's BPE; loads its vocabulary file, so call it lazily)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


class ClipBpeTextMixin:
    """``tokenize`` / ``bpe_tokens`` / ``decode_token`` of the backbone protocol, on a ``SimpleTokenizer``.

    The host class sets ``tokenizer`` (a ``SimpleTokenizer``), ``context_length`` and ``name``.
    """

    tokenizer: object
    context_length: int
    name: str

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Tokenise ``texts`` to ``LongTensor[N, L]`` (SOT, BPE ids, EOT, zero padding); refuses over-long prompts."""
        too_long = [t for t in texts if len(self.bpe_tokens(t)) + 2 > self.context_length]
        if too_long:
            raise BackboneError(
                f"prompt too long for backbone '{self.name}' (context length {self.context_length} tokens): "
                f"{too_long[0]!r}; shorten the class name or use fewer context tokens (--n-ctx)."
            )
        return self.tokenizer(texts, context_length=self.context_length)

    def bpe_tokens(self, text: str) -> list[int]:
        """BPE ids of ``text`` without SOT/EOT."""
        return self.tokenizer.encode(text)

    def decode_token(self, token_id: int) -> str:
        """Readable form of one vocabulary entry (``</w>`` marks a word end)."""
        return self.tokenizer.decoder[int(token_id)]
