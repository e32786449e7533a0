"""The preprocessing config of a backbone's image tower: below both :mod:`vlprompt.backbones` (which fills it from
the model's pretrained config) and :mod:`vlprompt.data` (whose transforms read it), so neither imports the other.

Re-exported as ``vlprompt.backbones.base.PreprocessCfg`` (and ``OPENAI_MEAN``/``OPENAI_STD``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

#: OpenAI CLIP's per-channel normalisation (RGB, 0–1 scale).
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


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


__all__ = ["OPENAI_MEAN", "OPENAI_STD", "PreprocessCfg"]
