"""Building open_clip models with weights from a tag or a local checkpoint file, with clear errors offline.

The model built for a set of weights is the one they were trained with (issue 12 §1). open_clip ≥ 3.0 builds an
architecture's own config whatever the tag: ``create_model("RN50", pretrained="openai")`` builds ``nn.GELU``
although OpenAI trained with QuickGELU (it only warns, ``open_clip/factory.py`` "QuickGELU mismatch"). Here:

- a weights **tag** is built as its pretrained config (``open_clip.get_pretrained_cfg``) describes: its
  ``quick_gelu`` is forced onto the architecture, and its ``mean``/``std``/``interpolation``/``resize_mode`` are the
  backbone's preprocessing (read back from the model, where open_clip's ``create_model`` stores them);
- an architecture name ending in ``-quickgelu`` (open_clip's ``RN50-quickgelu``…, or any architecture with that
  suffix) is the explicit choice of QuickGELU.

Local checkpoint formats (``--pretrained PATH``):

- an OpenAI TorchScript archive (``RN50.pt``…): loaded through TorchScript as open_clip does, then rebuilt as a
  plain module from its state dict (architecture inferred from the weights, QuickGELU as OpenAI trained it);
- an OpenAI or open_clip state dict (``.pt``/``.pth``/``.bin``, optionally wrapped in ``{"state_dict": ...}``
  with ``module.`` prefixes): loaded with ``torch.load(weights_only=True)`` into the named architecture;
- a ``.safetensors`` file: loaded into the named architecture.

A state dict does not say which activation it was trained with. What can be known is used: an
``open_clip_config.json`` next to the file (the layout of the ``timm/*`` Hub repos open_clip's tags download from:
its ``model_cfg.quick_gelu``, and its ``preprocess_cfg``), or OpenAI's metadata entries (``input_resolution``,
``context_length``, ``vocab_size``: OpenAI's own model, QuickGELU). Otherwise the architecture's config decides
(GELU for the plain names) and a warning names the ``-quickgelu`` architecture to pass for QuickGELU weights. The
activation built is recorded in the backbone identity (``learner.json``, ``config.json``).

Anything else (e.g. a pickle that ``weights_only=True`` refuses) is refused with an explanation.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from vlprompt.errors import BackboneError, WeightsNotFoundError

_logger = logging.getLogger(__name__)

QUICKGELU_SUFFIX = "-quickgelu"
#: The file open_clip's Hub repos keep next to their weights (``open_clip.constants.HF_CONFIG_NAME``).
OPEN_CLIP_CONFIG = "open_clip_config.json"
#: Entries only OpenAI's own checkpoints carry (open_clip's ``load_state_dict`` drops them from TorchScript).
OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")
_QUICKGELU_WEIGHTS = "OpenAI's weights; open_clip's yfcc15m, cc12m, laion400m and metaclip tags"


def resolve_architecture(name: str) -> tuple[str, bool]:
    """``(open_clip config to build, whether the name asks for QuickGELU)``.

    Names open_clip knows are built from their own config (``RN50-quickgelu`` carries ``quick_gelu: true``). Any
    other known architecture with the ``-quickgelu`` suffix is built from the base config with QuickGELU forced.
    An unknown name is returned unchanged (the caller explains it).
    """
    from open_clip.factory import get_model_config, list_models

    if name in list_models():
        return name, bool((get_model_config(name) or {}).get("quick_gelu", False))
    base = name[: -len(QUICKGELU_SUFFIX)] if name.endswith(QUICKGELU_SUFFIX) else None
    if base and base in list_models():
        return base, True
    return name, False


def is_architecture(name: str) -> bool:
    """Whether ``name`` is an open_clip architecture (or one with the ``-quickgelu`` suffix)."""
    from open_clip.factory import list_models

    return resolve_architecture(name)[0] in list_models()


def activation_kwargs(quick_gelu: bool) -> dict:
    """``open_clip.create_model`` keyword arguments that build exactly this activation (``force_quick_gelu`` only
    turns QuickGELU on; ``quick_gelu=False`` as a model kwarg turns it off for configs that set it)."""
    return {"force_quick_gelu": True} if quick_gelu else {"quick_gelu": False}


class _DropRandomInitWarning(logging.Filter):
    """Drops open_clip's root-logger "Model initialized randomly" line when vlprompt loads weights itself."""

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        return "initialized randomly" not in record.getMessage()


@contextmanager
def quiet_random_init():
    """Silence open_clip's random-init warning (vlprompt says itself whether the weights are random)."""
    root = logging.getLogger()
    filt = _DropRandomInitWarning()
    root.addFilter(filt)
    try:
        yield
    finally:
        root.removeFilter(filt)


def build_random(name: str) -> nn.Module:
    """``name`` with random weights, seeded (seed 0, global RNG untouched): a prompt trained on it can be reloaded."""
    import open_clip

    build, quick_gelu = resolve_architecture(name)
    with torch.random.fork_rng(devices=[]), quiet_random_init():
        torch.manual_seed(0)
        kwargs = {"force_quick_gelu": True} if quick_gelu and build != name else {}
        return open_clip.create_model(build, pretrained=None, **kwargs).eval()


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


def read_sidecar_config(path: str) -> dict | None:
    """The ``open_clip_config.json`` next to a checkpoint file (Hub snapshot layout), or ``None``.

    The directory is that of the path as given, not of its symlink target: in a Hugging Face cache the weights in
    ``snapshots/<rev>/`` link to ``blobs/``, and the config sits next to the link.
    """
    cfg_path = os.path.join(os.path.dirname(os.path.abspath(path)), OPEN_CLIP_CONFIG)
    if not os.path.isfile(cfg_path):
        return None
    try:
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise BackboneError(
            f"'{cfg_path}' (next to checkpoint '{path}') is not readable JSON ({e}); fix or remove it."
        ) from e
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model_cfg"), dict):
        raise BackboneError(
            f"'{cfg_path}' (next to checkpoint '{path}') has no 'model_cfg' object, as open_clip writes it; fix or "
            "remove it."
        )
    return cfg


def checkpoint_activation(path: str, sd: dict[str, torch.Tensor], sidecar: dict | None) -> tuple[bool | None, str]:
    """What a state-dict checkpoint says about its activation: ``(quick_gelu or None if unknown, the evidence)``."""
    if sidecar is not None:
        return bool(sidecar["model_cfg"].get("quick_gelu", False)), f"'{OPEN_CLIP_CONFIG}' next to it"
    if any(k in sd for k in OPENAI_METADATA_KEYS):
        return True, "its OpenAI metadata entries (input_resolution, context_length, vocab_size): OpenAI's model"
    return None, ""


def _gelu_choice(name: str) -> str:
    """What to pass instead of ``name`` (which builds QuickGELU) for GELU weights."""
    if name.endswith(QUICKGELU_SUFFIX):
        return f"Pass --backbone {name.removesuffix(QUICKGELU_SUFFIX)}."
    return f"Architecture '{name}' sets quick_gelu: true in its config; pass one that does not."


def choose_activation(name: str, path: str, known: bool | None, evidence: str) -> bool:
    """Whether to build ``name`` with QuickGELU for the checkpoint ``path`` (see the module docstring)."""
    _, arch_quick_gelu = resolve_architecture(name)
    if known is None:
        if arch_quick_gelu:
            return True
        _logger.warning(
            "checkpoint '%s' does not say which activation its weights were trained with; building %s with GELU as "
            "its config says. If they were trained with QuickGELU (%s), pass --backbone %s%s instead.",
            path, name, _QUICKGELU_WEIGHTS, name, QUICKGELU_SUFFIX,
        )
        return False
    if arch_quick_gelu and not known:
        raise BackboneError(
            f"checkpoint '{path}': {evidence} says its weights were trained with GELU, but --backbone {name} builds "
            f"QuickGELU. {_gelu_choice(name)}"
        )
    if known and not arch_quick_gelu:
        _logger.info("checkpoint '%s': QuickGELU, as %s says", path, evidence)
    return known


def preprocess_overrides(sidecar: dict | None) -> dict:
    """Preprocessing entries (mean, std, interpolation, resize_mode) of an ``open_clip_config.json``."""
    pp = (sidecar or {}).get("preprocess_cfg") or {}
    return {k: pp[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in pp}


def load_checkpoint_file(name: str, path: str) -> tuple[nn.Module, dict]:
    """Build the open_clip model ``name`` with weights from a local file (see module docstring for formats).

    Returns:
        The model in eval mode, and preprocessing overrides read next to the file (``{}`` when none).
    """
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
        return model.float().eval(), {}
    sd = _read_state_dict(path)
    sidecar = read_sidecar_config(path)
    quick_gelu = choose_activation(name, path, *checkpoint_activation(path, sd, sidecar))
    build, _ = resolve_architecture(name)
    with quiet_random_init():
        model = open_clip.create_model(build, pretrained=None, **activation_kwargs(quick_gelu))
    from open_clip.factory import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict

    sd = convert_state_dict(model, sd)
    if "positional_embedding" in sd and not hasattr(model, "positional_embedding"):
        sd = convert_to_custom_text_state_dict(sd)
    for key in OPENAI_METADATA_KEYS:
        sd.pop(key, None)
    if "logit_scale" in sd and sd["logit_scale"].ndim != model.logit_scale.ndim:
        sd["logit_scale"] = sd["logit_scale"].reshape(model.logit_scale.shape)
    hint = "Pass the --backbone the checkpoint was trained with."
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
    return model.eval(), preprocess_overrides(sidecar)


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


def default_tag(name: str) -> str:
    """The paper's weights for ``name`` when ``--pretrained`` is omitted: ``openai`` where the architecture has them.

    Raises:
        BackboneError: the architecture has no ``openai`` weights (its tags are listed; random weights must be asked
            for with ``--pretrained random``).
    """
    import open_clip

    build, _ = resolve_architecture(name)
    tags = open_clip.list_pretrained_tags_by_model(name) or open_clip.list_pretrained_tags_by_model(build)
    if "openai" in tags:
        return "openai"
    raise BackboneError(
        f"--backbone {name}: no --pretrained given, and it has no 'openai' weights to default to. Pass one of its "
        f"weights tags ({', '.join(tags) or 'none: this architecture has no released weights'}), a local checkpoint "
        "path, or --pretrained random to train on seeded random weights on purpose."
    )


def load_pretrained_tag(name: str, tag: str, cache_dir: str | None = None) -> nn.Module:
    """Build ``name`` with open_clip's pretrained weights ``tag`` (from its cache, downloading if reachable), as the
    tag's pretrained config describes: its ``quick_gelu`` forced onto the architecture, its preprocessing stored on
    ``model.visual.preprocess_cfg`` by open_clip."""
    import open_clip

    build, arch_quick_gelu = resolve_architecture(name)
    cfg = open_clip.get_pretrained_cfg(name, tag) or open_clip.get_pretrained_cfg(build, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(name) or open_clip.list_pretrained_tags_by_model(build)
        raise BackboneError(
            f"--pretrained '{tag}' is neither a file nor a known weights tag for '{name}'. Known tags: "
            f"{', '.join(tags) or 'none (this architecture has no released weights)'}; or pass a local checkpoint path."
        )
    quick_gelu = bool(cfg.get("quick_gelu", False))
    if arch_quick_gelu and not quick_gelu:
        raise BackboneError(
            f"--backbone {name} builds QuickGELU, but weights '{tag}' were trained with GELU (open_clip's pretrained "
            f"config). {_gelu_choice(name)}"
        )
    try:
        model = open_clip.create_model(build, pretrained=tag, cache_dir=cache_dir, **activation_kwargs(quick_gelu))
    except Exception as e:
        where = _weights_location(name, tag, cfg, cache_dir)
        fname = Path(cfg.get("url", "") or cfg.get("hf_hub", "")).name or "open_clip_pytorch_model.bin"
        raise WeightsNotFoundError(
            f"weights for --backbone {name} --pretrained {tag} are not available locally and could not be downloaded "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). open_clip looks for {where}. "
            f"Download that file on a machine with internet access (e.g. '{fname}') and pass it with "
            f"--pretrained /path/to/{fname}, or copy it into that cache."
        ) from e
    return model.eval()
