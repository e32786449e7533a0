"""Zero-shot CLIP classifier from hand-crafted templates (and prompt ensembles).

The class weights are computed in :mod:`vlprompt.backbones.text` (prompt methods use them too, and a method must not
depend on evaluation); this module is their evaluation-side name.
"""

from __future__ import annotations

from vlprompt.backbones.text import TEXT_CHUNK, zero_shot_weights

__all__ = ["TEXT_CHUNK", "zero_shot_weights"]
