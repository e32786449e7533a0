"""Compatibility import: the micro-CLIP model moved to :mod:`vlprompt.backbones.microclip` (library code, which
:func:`vlprompt.backbones.create_backbone` builds) so that the backbones never import this application package."""

from __future__ import annotations

from vlprompt.backbones.microclip import (  # noqa: F401 - re-exported
    COMPACT_FORMAT,
    MICROCLIP_CONFIG,
    MICROCLIP_IMAGE_SIZE,
    MICROCLIP_MEAN,
    MICROCLIP_STD,
    SHIPPED_WEIGHTS,
    TOKEN_INIT_STD,
    WEIGHTS_DIR,
    build_microclip,
    compact_state,
    create_microclip_model,
    encode_images,
    encode_text_truncated,
    images_to_tensor,
    init_token_table,
    load_compact_state,
    save_compact,
)
