"""Micro-CLIP: a stock ``open_clip`` CLIP small enough to pretrain on two CPU cores and ship in the repository.

Two bundled checkpoints (:func:`build_microclip`, ``create_backbone("microclip", pretrained)``):

- ``"v2"`` — the default (``"shipped"``, ``None``), in the wheel (``weights/microclip-v2.safetensors``,
  ``MODEL_CARD_V2.md``): a ViT image tower (8×8 patches of a 64×64 input, width 128, 4 layers) and a 4-layer text
  transformer (:data:`MICROCLIP_V2_CONFIG`), pretrained on world v2 (issue 14).
- ``"v1"`` — the default before v2, in a source checkout only (``weights/microclip.safetensors``, ``MODEL_CARD.md``):
  image tower ModifiedResNet, layers (1, 1, 1, 1), width 16, 64×64 input; text tower width 128, 4 heads, 2 layers
  (:data:`MICROCLIP_CONFIG`). Artifacts that recorded the old default (``pretrained`` ``None``/``"shipped"``) are
  rebuilt with it (:data:`LEGACY_DEFAULT_WEIGHTS`, :func:`vlprompt.backbones.recorded_pretrained`).

Both use the real CLIP BPE vocabulary (49408) and context 77, joint embedding 128; about 8 M parameters, of which
the token table is 6.3 M — but the world's captions use only about a hundred of its rows.

The shipped file is *compact*: it stores every tensor except the token table, plus the token rows that pretraining
trained (``token_embedding.rows`` / ``token_embedding.values``). The other rows were never touched by the optimizer,
so loading regenerates them exactly from the init seed recorded in the file's metadata (see
:func:`init_token_table`, the same on every machine and thread count), and a SHA-256 of the rebuilt table, also
recorded, proves it.

This is the library part of micro-CLIP (the model, as :func:`vlprompt.backbones.create_backbone` builds it); the
synthetic world, pretraining, tasks and demo are the application package :mod:`vlprompt.microclip`, which imports
this module (``vlprompt.microclip.model`` re-exports it) and never the other way round.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vlprompt.errors import ArtifactError, WeightsNotFoundError

logger = logging.getLogger(__name__)

MICROCLIP_IMAGE_SIZE = 64
MICROCLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's normalisation
MICROCLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MICROCLIP_CONFIG: dict = {
    "embed_dim": 128,
    "quick_gelu": False,
    "vision_cfg": {"layers": [1, 1, 1, 1], "width": 16, "image_size": MICROCLIP_IMAGE_SIZE},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 2},
}
#: Micro-CLIP v2 (issue 14): a ViT image tower (class token + 64 patch tokens of 8×8 pixels, width 128, 4 layers,
#: 4 heads) and a 4-layer text transformer, so that prompts can be inserted at several layers of both towers as on
#: real CLIP; GELU (``quick_gelu`` False) as recorded here and in every checkpoint's metadata.
MICROCLIP_V2_CONFIG: dict = {
    "embed_dim": 128,
    "quick_gelu": False,
    "vision_cfg": {"layers": 4, "width": 128, "head_width": 32, "patch_size": 8, "image_size": MICROCLIP_IMAGE_SIZE},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4},
}
TOKEN_INIT_STD = 0.02  # open_clip's token-embedding init
COMPACT_FORMAT = "vlprompt-microclip-compact-v1"
# The shipped file stays next to its model card and the pretraining recipe that wrote it (a data path, no import).
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "microclip" / "weights"
#: micro-CLIP v1 (ResNet image tower, ``weights="v1"``): the default until issue 14. In the repository only: the
#: wheel leaves it out (pyproject ``exclude-package-data``), so an install has just v2.
WEIGHTS_V1 = WEIGHTS_DIR / "microclip.safetensors"
#: micro-CLIP v2 (ViT image tower, ``weights="v2"``): the default (``"shipped"``, ``None``), in the wheel.
SHIPPED_WEIGHTS_V2 = WEIGHTS_DIR / "microclip-v2.safetensors"
#: The default checkpoint, what ``"shipped"`` means: micro-CLIP v2.
SHIPPED_WEIGHTS = SHIPPED_WEIGHTS_V2
#: The bundled checkpoints by name; ``"shipped"`` is the default (v2).
BUNDLED_WEIGHTS: dict[str, Path] = {"v1": WEIGHTS_V1, "v2": SHIPPED_WEIGHTS_V2}
DEFAULT_WEIGHTS = "v2"
#: What an artifact that recorded the old default (``pretrained`` ``None`` or ``"shipped"``, before micro-CLIP v2
#: became the default) was built with (:func:`records_old_default`).
LEGACY_DEFAULT_WEIGHTS = "v1"


def records_old_default(name: object, pretrained: object) -> bool:
    """A recorded backbone ``name``/``pretrained`` (``learner.json``, ``config.json``, ``benchmark.json``) that meant
    micro-CLIP's old default, v1: ``None`` or ``"shipped"`` (new records name the weights, ``"v2"``/``"v1"``)."""
    return name == "microclip" and pretrained in (None, "shipped")


def create_microclip_model(config: dict | None = None) -> torch.nn.Module:
    """A randomly initialised micro-CLIP (``open_clip.model.CLIP``) in train mode; uses the global torch RNG."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    cfg = json.loads(json.dumps(config or MICROCLIP_CONFIG))  # deep copy
    layers = cfg["vision_cfg"]["layers"]  # a list for the ModifiedResNet (v1), an int for the ViT (v2)
    vision = CLIPVisionCfg(**{**cfg["vision_cfg"], "layers": tuple(layers) if isinstance(layers, list) else layers})
    return CLIP(cfg["embed_dim"], vision, CLIPTextCfg(**cfg["text_cfg"]), quick_gelu=cfg.get("quick_gelu", False))


@functools.lru_cache(maxsize=2)
def _token_table_values(seed: int, vocab_size: int, width: int) -> np.ndarray:
    from vlprompt.backbones.torch_normal import torch_normal

    values = torch_normal(vocab_size * width, torch.Generator().manual_seed(seed), 0.0, TOKEN_INIT_STD)
    values.flags.writeable = False  # cached: callers get copies
    return values


def init_token_table(seed: int, vocab_size: int = 49408, width: int = 128) -> torch.Tensor:
    """The token table's initial value ``float32[vocab, width]``: N(0, 0.02²) from a dedicated generator.

    Pretraining starts from this table and never updates rows outside the world's vocabulary, so those rows of
    the trained model are exactly this tensor's rows. It is ``torch.empty(vocab, width).normal_(0, 0.02,
    generator=torch.Generator().manual_seed(seed))`` as torch's AVX2 CPU kernel draws it — the table the shipped
    weights were trained from — computed with exact float32 arithmetic by
    :func:`~vlprompt.backbones.torch_normal.torch_normal`, so it is the same on every machine, whatever torch's own
    kernel for this CPU (``DEFAULT`` on ARM rounds a third of the values differently) and thread count. About 2 s;
    cached per process.
    """
    return torch.from_numpy(_token_table_values(seed, vocab_size, width).copy()).view(vocab_size, width)


def _torch_token_table(seed: int, vocab_size: int, width: int) -> torch.Tensor:
    """torch's own ``normal_`` draw of :func:`init_token_table` (fast; equal to it on x86 with AVX2/AVX512)."""
    g = torch.Generator().manual_seed(seed)
    return torch.empty(vocab_size, width).normal_(0.0, TOKEN_INIT_STD, generator=g)


def _sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def compact_state(model: torch.nn.Module, rows: torch.Tensor, token_seed: int,
                  config: dict | None = None) -> tuple[dict, dict[str, str]]:  # fmt: skip
    """Split a trained model into the compact tensors + metadata written by :func:`save_compact`.

    Args:
        model: trained micro-CLIP.
        rows: ``LongTensor[K]`` the token rows pretraining updated (all others equal ``init_token_table(token_seed)``).
        token_seed: the seed the token table was initialised from.
        config: the model's config (recorded; ``None`` = ``MICROCLIP_CONFIG``).
    """
    state = {k: v for k, v in model.state_dict().items() if k != "token_embedding.weight"}
    table = model.token_embedding.weight.detach()
    rows = torch.as_tensor(rows, dtype=torch.int64).sort().values
    state["token_embedding.rows"] = rows
    state["token_embedding.values"] = table[rows].clone()
    meta = {
        "format": COMPACT_FORMAT,
        "config": json.dumps(config or MICROCLIP_CONFIG, sort_keys=True),
        "token_init_seed": str(token_seed),
        "token_table_sha256": _sha256(table),
    }
    return state, meta


def save_compact(path: str | Path, model: torch.nn.Module, rows: torch.Tensor, token_seed: int,
                 extra_metadata: dict[str, str] | None = None, config: dict | None = None) -> None:  # fmt: skip
    """Atomically write ``model`` (built from ``config``, default v1's) in the compact shipped format."""
    from vlprompt._io import atomic_save_safetensors

    state, meta = compact_state(model, rows, token_seed, config)
    atomic_save_safetensors(path, state, metadata={**(extra_metadata or {}), **meta})


def load_compact_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a compact micro-CLIP file and rebuild the full ``state_dict`` (token table included).

    Raises:
        WeightsNotFoundError: the file does not exist.
        ArtifactError: the file is not a compact micro-CLIP checkpoint.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"micro-CLIP weights file {path} does not exist; pass weights='shipped' (or 'v2') for the bundled "
            "checkpoint, a path to a .safetensors file written by `python -m vlprompt.microclip.pretrain`, or None "
            "for random"
        )
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != COMPACT_FORMAT:
        raise ArtifactError(
            f"{path} is not a micro-CLIP checkpoint (metadata format={meta.get('format')!r}, expected "
            f"{COMPACT_FORMAT!r}); write one with `python -m vlprompt.microclip.pretrain`"
        )
    state = load_file(str(path))
    rows, values = state.pop("token_embedding.rows"), state.pop("token_embedding.values")
    cfg = json.loads(meta["config"])["text_cfg"]
    seed, shape = int(meta["token_init_seed"]), (cfg["vocab_size"], cfg["width"])
    # torch's own draw is fast and, on x86 with AVX2/AVX512, the exact table; the recorded SHA-256 decides, and
    # the exact-everywhere recomputation is used where torch's kernel rounds differently (e.g. ARM).
    for make in (_torch_token_table, init_token_table):
        table = make(seed, *shape)
        table[rows] = values
        if _sha256(table) == meta.get("token_table_sha256"):
            break
    else:
        # Only rows outside the world's vocabulary can differ: the file's table was not drawn as init_token_table
        # draws it (another generator, or a torch whose AVX2 kernel rounded differently when the file was written).
        logger.warning("%s: rebuilt untrained token rows differ from training; trained rows and all other weights "
                       "are exact, but the weights fingerprint differs from the original's", path)  # fmt: skip
    state["token_embedding.weight"] = table
    return state, meta


def resolve_weights(weights: str | Path) -> tuple[str, Path]:
    """``(name to record, file)`` of a micro-CLIP weights argument: ``"shipped"`` → ``("v2", …)`` (the default),
    ``"v1"``/``"v2"`` → the bundled file of that name, anything else → a path (recorded as given).

    Raises:
        WeightsNotFoundError: ``"v1"`` asked for where its file is absent (an installed wheel: only v2 is in it).
    """
    name = DEFAULT_WEIGHTS if str(weights) == "shipped" else str(weights)
    if name not in BUNDLED_WEIGHTS:
        return name, Path(weights)
    path = BUNDLED_WEIGHTS[name]
    if name == "v1" and not path.is_file():
        raise WeightsNotFoundError(
            f"micro-CLIP v1 weights (pretrained='v1') are not in this installation: the vlprompt wheel ships only "
            f"micro-CLIP v2 (the default), and {path} does not exist. v1 was the default before micro-CLIP v2; runs "
            "and learners recorded with it need it. Get `src/vlprompt/microclip/weights/microclip.safetensors` from "
            "a source checkout of vlprompt (or install from one: `pip install -e .`) and pass its path as "
            "--pretrained PATH (create_backbone('microclip', PATH)), or copy it to the path above."
        )
    return name, path


def build_microclip(weights: str | Path | None = "shipped") -> torch.nn.Module:
    """Build micro-CLIP in eval mode with the bundled weights, a given compact safetensors file, or random ones.

    Args:
        weights: ``"shipped"`` (the default checkpoint: micro-CLIP v2), ``"v2"`` (micro-CLIP v2, ViT image tower),
            ``"v1"`` (micro-CLIP v1, ResNet image tower: the default before v2; in a source checkout only, not in
            the wheel), a path to a compact ``.safetensors`` file, or ``None`` for random (v1 architecture)
            initialisation.

    Returns:
        An ``open_clip.model.CLIP`` in eval mode on the CPU.

    Raises:
        WeightsNotFoundError: the file does not exist (for ``"v1"`` in an install: says where to get it).
        ArtifactError: the file is not a micro-CLIP checkpoint or does not match the architecture.
    """
    if weights is None:
        return create_microclip_model().eval()
    _, path = resolve_weights(weights)
    state, meta = load_compact_state(path)
    model = create_microclip_model(json.loads(meta["config"]))  # the architecture the file records (v1 or v2)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ArtifactError(f"{path} does not match the config it records: {e}") from e
    return model.eval()


def images_to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``uint8[N, 64, 64, 3]`` RGB → normalised ``float32[N, 3, 64, 64]`` model input."""
    x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(MICROCLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(MICROCLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def encode_text_truncated(model: torch.nn.Module, ids: torch.Tensor, embed_ids: torch.Tensor | None = None,
                          normalize: bool = False) -> torch.Tensor:  # fmt: skip
    """``model.encode_text`` with the sequence cut after the batch's longest EOS (exact under the causal mask).

    Args:
        model: an open_clip ``CLIP``.
        ids: ``LongTensor[N, 77]`` token ids; EOS (the highest id) marks the pooled position.
        embed_ids: ids fed to ``model.token_embedding`` instead of ``ids`` (pretraining feeds row indices of a
            compact token table); ``None`` uses ``ids``.
        normalize: L2-normalise the features.

    Returns:
        ``[N, E]`` text features.
    """
    eos = ids.argmax(dim=-1)  # [N]
    n = int(eos.max()) + 1  # positions after the longest EOS never influence any pooled feature
    tok = (ids if embed_ids is None else embed_ids)[:, :n]
    x = model.token_embedding(tok) + model.positional_embedding[:n]  # [N, n, D]
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0]), eos]  # [N, D]
    proj = model.text_projection
    x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj  # [N, E]
    return F.normalize(x, dim=-1) if normalize else x


@torch.no_grad()
def encode_images(model: torch.nn.Module, images: np.ndarray, batch_size: int = 512) -> torch.Tensor:
    """L2-normalised image features ``[N, E]`` of ``uint8[N, 64, 64, 3]`` images (model must be in eval mode)."""
    feats = [model.encode_image(images_to_tensor(images[i : i + batch_size]), normalize=True)
             for i in range(0, len(images), batch_size)]  # fmt: skip
    return torch.cat(feats)
