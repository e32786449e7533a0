"""Building open_clip models with weights from a tag or a local checkpoint file, with clear errors offline.

Local checkpoint formats (``--pretrained PATH``):

- an OpenAI TorchScript archive (``RN50.pt``…): loaded through TorchScript as open_clip does, then rebuilt as a
  plain module from its state dict (architecture inferred from the weights, QuickGELU as OpenAI trained it);
- an OpenAI or open_clip state dict (``.pt``/``.pth``/``.bin``, optionally wrapped in ``{"state_dict": ...}``
  with ``module.`` prefixes): loaded with ``torch.load(weights_only=True)`` into the named architecture;
- a ``.safetensors`` file: loaded into the named architecture.

Anything else (e.g. a pickle that ``weights_only=True`` refuses) is refused with an explanation.
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

import torch
from torch import nn

from vlprompt.errors import BackboneError, WeightsNotFoundError

_logger = logging.getLogger(__name__)


def _is_torchscript(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        # TorchScript archives carry the serialized code; plain torch.save zips do not.
        return any(n.split("/", 1)[-1].startswith("code/") for n in z.namelist())


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as e:  # safetensors raises its own error types
            raise BackboneError(f"checkpoint '{path}' is not a readable safetensors file: {e}") from e
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BackboneError(
            f"checkpoint '{path}' could not be loaded safely with torch.load(weights_only=True): {e}. vlprompt does not "
            "unpickle arbitrary objects; convert it to a plain state dict or a .safetensors file."
        ) from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise BackboneError(f"checkpoint '{path}' does not hold a state dict (a mapping of names to tensors).")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def load_checkpoint_file(name: str, path: str) -> nn.Module:
    """Build the open_clip model ``name`` with weights from a local file (see module docstring for formats)."""
    import open_clip
    from open_clip.model import build_model_from_openai_state_dict

    if not os.path.isfile(path):
        raise WeightsNotFoundError(f"--pretrained '{path}': no such file.")
    if _is_torchscript(path):
        try:
            jit_model = torch.jit.load(path, map_location="cpu").eval()
        except Exception as e:
            raise BackboneError(f"checkpoint '{path}' looks like a TorchScript archive but failed to load: {e}") from e
        # Attention masks are rebuilt by the model, not weights (some archives carry them as buffers).
        sd = {k: v for k, v in jit_model.state_dict().items() if not k.endswith("attn_mask")}
        model = build_model_from_openai_state_dict(sd, quick_gelu=True, cast_dtype=None)
        return model.float().eval()
    sd = _read_state_dict(path)
    model = open_clip.create_model(name, pretrained=None)
    from open_clip.factory import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict

    sd = convert_state_dict(model, sd)
    if "positional_embedding" in sd and not hasattr(model, "positional_embedding"):
        sd = convert_to_custom_text_state_dict(sd)
    for key in ("input_resolution", "context_length", "vocab_size"):  # OpenAI metadata entries
        sd.pop(key, None)
    if "logit_scale" in sd and sd["logit_scale"].ndim != model.logit_scale.ndim:
        sd["logit_scale"] = sd["logit_scale"].reshape(model.logit_scale.shape)
    hint = (
        "Pass the --backbone the checkpoint was trained with (for OpenAI weights in a plain state dict, use the "
        "'-quickgelu' variant, e.g. RN50-quickgelu)."
    )
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches
        first = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln][:1]
        raise BackboneError(f"checkpoint '{path}' does not match architecture '{name}': {first or e}. {hint}") from e
    if missing or unexpected:
        raise BackboneError(
            f"checkpoint '{path}' does not match architecture '{name}': {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:3]}). {hint}"
        )
    return model.eval()


def _weights_location(name: str, tag: str, cfg: dict, cache_dir: str | None) -> str:
    hub = cfg.get("hf_hub", "")
    url = cfg.get("url", "")
    parts = []
    if hub:
        repo, filename = os.path.split(hub)
        parts.append(
            f"Hugging Face Hub repo '{repo}' file '{filename or 'open_clip_pytorch_model.bin'}' (cached under "
            f"{cache_dir or os.environ.get('HF_HUB_CACHE') or os.path.expanduser('~/.cache/huggingface/hub')})"
        )
    if url:
        parts.append(f"URL {url} (cached under {cache_dir or os.path.expanduser('~/.cache/clip')})")
    return " or ".join(parts) or "an unknown location"


def load_pretrained_tag(name: str, tag: str, cache_dir: str | None = None) -> nn.Module:
    """Build ``name`` with open_clip's pretrained weights ``tag`` (from its cache, downloading if reachable)."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise BackboneError(
            f"--pretrained '{tag}' is neither a file nor a known weights tag for '{name}'. Known tags: "
            f"{', '.join(tags) or 'none (this architecture has no released weights)'}; or pass a local checkpoint path."
        )
    try:
        return open_clip.create_model(name, pretrained=tag, cache_dir=cache_dir).eval()
    except Exception as e:
        where = _weights_location(name, tag, cfg, cache_dir)
        fname = Path(cfg.get("url", "") or cfg.get("hf_hub", "")).name or "open_clip_pytorch_model.bin"
        raise WeightsNotFoundError(
            f"weights for --backbone {name} --pretrained {tag} are not available locally and could not be downloaded "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). open_clip looks for {where}. "
            f"Download that file on a machine with internet access (e.g. '{fname}') and pass it with "
            f"--pretrained /path/to/{fname}, or copy it into that cache."
        ) from e
