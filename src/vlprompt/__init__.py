"""vlprompt: prompt learning (CoOp and friends) for CLIP-like vision-language models."""

__version__ = "0.1.0"
