"""Finding and loading Hugging Face transformers ``CLIPModel`` checkpoints for ``--backbone hf:...``, with clear errors.

- ``hf:DIR``: a local directory written by ``CLIPModel.save_pretrained`` or downloaded from the Hub (``config.json``
  plus ``model.safetensors``);
- ``hf:ORG/NAME``: a Hub repo, read from the local Hugging Face cache, and downloaded when the Hub is reachable.

``--pretrained DIR`` with an ``hf:`` backbone says where its files are now (e.g. the snapshot moved); the recorded
name stays the same. The optional ``preprocessor_config.json`` gives the image mean/std/size/interpolation and the
optional ``vocab.json`` is checked against CLIP's BPE vocabulary that vlprompt tokenises with.

transformers is an optional dependency (``pip install vlprompt[hf]``) and is imported only here and in
:mod:`vlprompt.backbones.hf`, when an ``hf:`` backbone is built.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path

from torch import nn

from vlprompt.backbones.base import OPENAI_MEAN, OPENAI_STD, PreprocessCfg
from vlprompt.errors import BackboneError, WeightsNotFoundError

_logger = logging.getLogger(__name__)

#: Prefix of ``--backbone`` names served by the transformers adapter.
HF_PREFIX = "hf:"

# PIL resampling codes as stored in preprocessor_config.json ("resample").
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}
_TRUE = ("1", "true", "yes", "on")


def import_transformers():
    """Import ``transformers``, or explain how to install it."""
    try:
        import transformers
    except ImportError as e:
        raise BackboneError(
            "--backbone hf:... needs the Hugging Face transformers library, which is not installed "
            f"({e}). Install the extra with: pip install 'vlprompt[hf]' (or: pip install transformers)."
        ) from e
    return transformers


def hf_source(name: str, pretrained: str | None) -> str:
    """Where the files of backbone ``name`` (``"hf:..."``) are read from: ``pretrained`` if given, else the name."""
    if not name.startswith(HF_PREFIX) or not name[len(HF_PREFIX) :].strip():
        raise BackboneError(
            f"--backbone '{name}': expected 'hf:ORG/NAME' (a Hugging Face Hub repo) or 'hf:DIR' (a local directory "
            "holding a saved CLIPModel)."
        )
    return os.path.expanduser(pretrained or name[len(HF_PREFIX) :])


def canonical_name(name: str, pretrained: str | None) -> str:
    """``name`` with a local directory made absolute (so a saved prompt can rebuild it from any working directory)."""
    src = hf_source(name, None)
    if pretrained is None and os.path.isdir(src):
        return HF_PREFIX + os.path.abspath(src)
    return name


def _hub_cache() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_CACHE") or getattr(constants, "HF_HUB_CACHE", "~/.cache/huggingface/hub")


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _not_found(name: str, repo: str, err: Exception | None) -> WeightsNotFoundError:
    why = f" ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})" if err is not None else ""
    tail = repo.rstrip("/").rsplit("/", 1)[-1]
    return WeightsNotFoundError(
        f"--backbone {name}: '{repo}' is not a local directory, and the Hugging Face Hub repo '{repo}' is not in the "
        f"local Hugging Face cache ({_hub_cache()}) and could not be downloaded{why}. On a machine with internet "
        f"access run `hf download {repo} --local-dir {tail}` (older huggingface_hub: `huggingface-cli download`), "
        f"copy that folder here and pass --backbone hf:/path/to/{tail} (or keep --backbone {name} and add "
        f"--pretrained /path/to/{tail}); or copy the repo into that cache."
    )


def load_hf_clip(name: str, pretrained: str | None = None) -> tuple[nn.Module, str]:
    """Load the transformers ``CLIPModel`` named by ``name`` (``"hf:..."``), in fp32 and eval mode.

    Args:
        name: ``"hf:ORG/NAME"`` or ``"hf:DIR"``.
        pretrained: a local directory overriding where the files are (optional).

    Returns:
        ``(model, source)``: the model and the directory or repo id it was read from.

    Raises:
        BackboneError: transformers missing, or the checkpoint is not a CLIP model.
        WeightsNotFoundError: neither a local directory nor a cached (or downloadable) Hub repo.
    """
    transformers = import_transformers()
    src = hf_source(name, pretrained)
    if os.path.isdir(src):
        try:
            return _from_pretrained(transformers, name, src, local_files_only=True), src
        except BackboneError:
            raise
        except (OSError, ValueError) as e:
            raise BackboneError(
                f"--backbone {name}: could not load a CLIPModel from directory '{src}' ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}). It must hold config.json and the weights "
                "(model.safetensors), as written by CLIPModel.save_pretrained or downloaded from the Hub."
            ) from e
    if pretrained is not None or os.path.isabs(src) or src.startswith((".", "~")) or src.count("/") > 1:
        raise WeightsNotFoundError(
            f"--backbone {name}{f' --pretrained {pretrained}' if pretrained else ''}: no such directory '{src}'. "
            "Pass a directory holding a saved CLIPModel (config.json and model.safetensors)."
        )
    try:  # the local cache first: no network round trip when the repo is there
        return _from_pretrained(transformers, name, src, local_files_only=True), src
    except BackboneError:
        raise
    except (OSError, ValueError) as e:  # not cached (transformers raises OSError; huggingface_hub some ValueErrors)
        if _offline():
            raise _not_found(name, src, e) from e
    try:
        return _from_pretrained(transformers, name, src, local_files_only=False), src
    except BackboneError:
        raise
    except (OSError, ValueError) as e:
        raise _not_found(name, src, e) from e


def _from_pretrained(transformers, name: str, src: str, local_files_only: bool) -> nn.Module:
    config = transformers.AutoConfig.from_pretrained(src, local_files_only=local_files_only)
    if config.model_type != "clip":
        raise BackboneError(
            f"--backbone {name}: '{src}' holds a '{config.model_type}' model, not a CLIP model (model_type 'clip'). "
            "The hf: adapter drives transformers' CLIPModel (causal text tower pooled at the EOS token), which is "
            "what CoOp needs; SigLIP-style and other towers are not supported."
        )
    try:  # transformers reads a pytorch_model.bin with torch.load(weights_only=True): pickled objects are refused
        model = transformers.CLIPModel.from_pretrained(src, local_files_only=local_files_only)
    except pickle.UnpicklingError as e:
        raise BackboneError(
            f"--backbone {name}: the weights in '{src}' hold pickled objects that torch.load(weights_only=True) "
            f"refuses ({str(e).strip().splitlines()[-1][:200]}); vlprompt does not unpickle arbitrary objects. Use a "
            "model.safetensors (CLIPModel.save_pretrained writes one) or a plain state dict."
        ) from e
    # fp32 whatever dtype the checkpoint was stored in (transformers 5 loads the stored dtype by default).
    return model.float().eval()


def _aux_file(src: str, filename: str) -> str | None:
    """Path of an optional file next to the weights (local directory or Hub cache), or ``None``."""
    if os.path.isdir(src):
        path = os.path.join(src, filename)
        return path if os.path.isfile(path) else None
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(src, filename)
    return path if isinstance(path, str) else None


def read_preprocess(src: str, model: nn.Module) -> PreprocessCfg:
    """Image preprocessing from ``preprocessor_config.json`` when present, else CLIP's (OpenAI mean/std, bicubic).

    The image size is always the model's own ``vision_config.image_size`` (the only size its tower accepts).
    """
    size = int(model.config.vision_config.image_size)
    path = _aux_file(src, "preprocessor_config.json")
    if path is None:
        _logger.info("hf backbone '%s': no preprocessor_config.json; using CLIP's mean/std and bicubic", src)
        return PreprocessCfg(image_size=size)
    cfg = json.loads(Path(path).read_text())
    crop = cfg.get("crop_size")
    crop = crop.get("height") if isinstance(crop, dict) else crop
    if crop is not None and int(crop) != size:
        _logger.warning("hf backbone '%s': processor crop size %s differs from the model's image size %d; using %d",
                        src, crop, size, size)
    resample = cfg.get("resample", 3)
    return PreprocessCfg(
        image_size=size,
        mean=tuple(float(v) for v in cfg.get("image_mean", OPENAI_MEAN)),
        std=tuple(float(v) for v in cfg.get("image_std", OPENAI_STD)),
        interpolation=_RESAMPLE.get(resample, "bicubic") if isinstance(resample, int) else "bicubic",
    )


def check_vocab(src: str, encoder: dict[str, int], name: str) -> None:
    """Refuse a checkpoint whose ``vocab.json`` (if any) is not CLIP's BPE vocabulary ``encoder`` (token → id).

    The special tokens are spelled differently by the two libraries (``<|startoftext|>`` vs ``<start_of_text>``),
    so only the ordinary entries are compared.
    """
    path = _aux_file(src, "vocab.json")
    if path is None:
        return
    vocab = json.loads(Path(path).read_text())
    differ = [t for t, i in encoder.items() if not t.startswith("<") and vocab.get(t) != i]
    if differ or len(vocab) != len(encoder):
        raise BackboneError(
            f"--backbone {name}: its tokenizer vocabulary ({path}, {len(vocab)} entries) is not CLIP's BPE "
            f"vocabulary ({len(encoder)} entries; e.g. {differ[:3]} differ). vlprompt tokenises prompts with CLIP's "
            "BPE, so the token ids would not mean what the model learned."
        )
