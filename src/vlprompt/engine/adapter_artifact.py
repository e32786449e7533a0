"""A fitted feature-space adapter as files (``adapter.safetensors`` + ``adapter.json``) and as a classifier.

``adapter.safetensors`` is the adapter's ``state_dict()`` (its parameters and persistent buffers: a residual, a probe,
Tip-Adapter's cache keys and values), its header binding it to the method, the class list and the backbone weights
(as ``learner.safetensors`` is, :mod:`vlprompt.engine.checkpoint`). ``adapter.json`` records what rebuilds it: the
method and its config, what :meth:`~vlprompt.adapters.FeatureAdapter.fit` recorded (chosen hyper-parameters, search
traces), the class names, the backbone identity, the feature dimension, the tensor shapes, the logit scale and the
zero-shot template its text classifier was computed with. Loading recomputes that classifier from the backbone
(which must be the recorded one), calls :meth:`~vlprompt.adapters.FeatureAdapter.prepare` with the recorded shapes
and loads the tensors; every defect of the files is an :class:`~vlprompt.errors.ArtifactError` naming the file.

:class:`AdapterHead` binds a loaded adapter to the classes it is asked to classify among: the fitted ones, a subset of
them (the logits' columns of those classes: a cache or a per-class residual has nothing for other classes), or — only
for an adapter with ``new_classes`` — any class names, through their zero-shot text features.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from vlprompt import __version__
from vlprompt._io import atomic_save_safetensors, atomic_write_json, read_json_object
from vlprompt.adapters import FeatureAdapter, create_adapter
from vlprompt.engine.checkpoint import classnames_digest
from vlprompt.errors import ArtifactError, ConfigError, VLPromptError

ADAPTER_JSON = "adapter.json"
ADAPTER_WEIGHTS = "adapter.safetensors"
#: Entries every ``adapter.json`` has.
REQUIRED = ("method", "config", "record", "classnames", "backbone", "feature_dim", "shapes", "logit_scale", "template")


def _binding(method: str, classnames: list[str], ident: dict) -> dict[str, str]:
    """The safetensors header binding the tensors to what ``adapter.json`` says (checked on load)."""
    return {"format": "vlprompt-adapter", "method": method, "classnames_sha256": classnames_digest(classnames),
            "backbone_name": str(ident.get("name")), "backbone_fingerprint": str(ident.get("fingerprint"))}


def save_adapter(run_dir: str | Path, adapter: FeatureAdapter, classnames: list[str], backbone_identity: dict, *,
                 feature_dim: int, logit_scale: float, template: str, extra: dict | None = None) -> None:
    """Write ``adapter.safetensors`` (the ``state_dict``, on the CPU) then ``adapter.json``, atomically.

    Args:
        run_dir: the run folder.
        adapter: the fitted adapter.
        classnames: the ``C`` classes it was fitted on, indexed like its logits.
        backbone_identity: :meth:`~vlprompt.backbones.base.Backbone.identity` of the backbone of the features.
        feature_dim: ``E``.
        logit_scale: CLIP's ``exp(logit_scale)`` the adapter was fitted with.
        template: the zero-shot template of its text classifier (``{}`` for the class name).
        extra: more JSON entries (e.g. the selection split).
    """
    run_dir = Path(run_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in adapter.state_dict().items()}
    atomic_save_safetensors(run_dir / ADAPTER_WEIGHTS, state,
                            metadata=_binding(adapter.method, classnames, backbone_identity))
    atomic_write_json(run_dir / ADAPTER_JSON, {
        "vlprompt_version": __version__, "method": adapter.method, "config": adapter.config_dict(),
        "record": adapter.record, "classnames": list(classnames), "backbone": backbone_identity,
        "feature_dim": int(feature_dim), "shapes": {k: list(v.shape) for k, v in state.items()},
        "dtypes": {k: str(v.dtype).removeprefix("torch.") for k, v in state.items()},
        "logit_scale": float(logit_scale), "template": template,
        "features": "unnormalised image embedding, test transform", **(extra or {})})


def is_adapter_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a fitted adapter (``adapter.json``)."""
    return (Path(run_dir) / ADAPTER_JSON).is_file()


def read_adapter_json(run_dir: str | Path) -> dict:
    """Read and validate ``adapter.json`` of a run folder (presence and type of every entry)."""
    path = Path(run_dir) / ADAPTER_JSON
    if not path.is_file():
        raise ArtifactError(f"'{path}' not found: '{run_dir}' holds no fitted adapter (fit one with "
                            "`vlprompt train --method ADAPTER`).")
    meta = read_json_object(path, "the run folder is damaged — fit it again")
    missing = [k for k in REQUIRED if k not in meta]
    problems = [f"lacks {', '.join(repr(k) for k in missing)}"] if missing else []
    if not missing:
        names = meta["classnames"]
        if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
            problems.append("'classnames' must be a non-empty list of strings")
        if not (isinstance(meta["shapes"], dict) and all(isinstance(s, list) for s in meta["shapes"].values())):
            problems.append("'shapes' must map tensor names to shapes")
        if not (isinstance(meta["config"], dict) and isinstance(meta["backbone"], dict)):
            problems.append("'config' and 'backbone' must be objects")
        if not (isinstance(meta["feature_dim"], int) and isinstance(meta["template"], str)):
            problems.append("'feature_dim' must be an integer and 'template' a string")
    if problems:
        raise ArtifactError(f"'{path}': {'; '.join(problems)}; the run folder is damaged — fit it again.")
    return meta


def _read_state(path: Path, meta: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """The tensors of ``adapter.safetensors``, checked against its header and ``adapter.json``'s shapes."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise ArtifactError(f"'{path}' not found; the run folder is incomplete — fit it again.")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            state, header = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (OSError, SafetensorError, ValueError, RuntimeError) as e:
        raise ArtifactError(f"'{path}' could not be read ({e}); the file is truncated or damaged — fit it again.") from e
    want = _binding(meta["method"], meta["classnames"], meta["backbone"])
    wrong = [k for k in ("method", "classnames_sha256", "backbone_fingerprint") if header.get(k) != want[k]]
    if wrong:
        raise ArtifactError(f"'{path}' was saved for another {' and '.join(wrong)} than '{ADAPTER_JSON}' names; the "
                            "two files do not belong together — use the files of one run, or fit it again.")
    shapes = {k: list(v.shape) for k, v in state.items()}
    if shapes != meta["shapes"]:
        raise ArtifactError(f"'{path}' holds tensors {shapes}, but '{ADAPTER_JSON}' records {meta['shapes']}; the "
                            "run folder is damaged — fit it again.")
    return state


def load_adapter(run_dir: str | Path, text: torch.Tensor, meta: dict | None = None) -> FeatureAdapter:
    """Rebuild the adapter of ``run_dir`` and load its tensors (on ``text``'s device).

    Args:
        run_dir: a run folder written by :func:`vlprompt.runs.adapter_run.adapter_run`.
        text: ``[C, E]`` L2-normalised zero-shot classifier of the *fitted* classes (the recorded template on the
            recorded backbone: :func:`vlprompt.backbones.text.zero_shot_weights`).
        meta: ``adapter.json`` already read (``None``: read here).
    """
    run_dir = Path(run_dir)
    meta = meta or read_adapter_json(run_dir)
    try:
        adapter = create_adapter(meta["method"], meta["config"])
    except (VLPromptError, TypeError) as e:
        raise ArtifactError(f"'{run_dir / ADAPTER_JSON}' does not describe an adapter this vlprompt has: {e}") from e
    adapter.prepare(len(meta["classnames"]), meta["feature_dim"], text, meta["logit_scale"], meta["shapes"])
    state = _read_state(run_dir / ADAPTER_WEIGHTS, meta, text.device)
    expected = adapter.state_dict()
    if set(state) != set(expected):
        raise ArtifactError(f"'{run_dir / ADAPTER_WEIGHTS}' holds tensors {sorted(state)}; method '{meta['method']}' "
                            f"expects {sorted(expected)} — fit it again.")
    adapter.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    adapter.record = dict(meta["record"])
    return adapter.to(text.device).eval()


class AdapterHead:
    """A loaded adapter classifying among ``classnames``: logits ``[B, C']`` of unnormalised image features.

    Args:
        adapter: the loaded adapter.
        fitted: the classes it was fitted on (``adapter.json``).
        classnames: the classes to classify among (``None``: the fitted ones).
        text_of: zero-shot text features ``[C', E]`` of class names (used for other classes, ``new_classes`` only).
        device: where the adapter's tensors are (features are moved there).

    Raises:
        ConfigError: classes it was not fitted on, for an adapter without ``new_classes``.
    """

    def __init__(self, adapter: FeatureAdapter, fitted: list[str], classnames: list[str] | None = None,
                 text_of: Callable[[list[str]], torch.Tensor] | None = None, device: torch.device | str = "cpu"):
        self.adapter, self.fitted, self.device = adapter, list(fitted), torch.device(device)
        self.classnames = list(classnames) if classnames is not None else list(fitted)
        self._text: torch.Tensor | None = None  # [C', E]: other classes through their text (new_classes)
        self._columns: torch.Tensor | None = None  # LongTensor[C']: a subset of the fitted classes
        if self.classnames == self.fitted:
            return
        if adapter.new_classes and text_of is not None:
            self._text = text_of(self.classnames)
            return
        missing = [c for c in self.classnames if c not in self.fitted]
        if missing:
            raise ConfigError(
                f"method '{adapter.method}' cannot classify classes it was not fitted on ({len(missing)} of "
                f"{len(self.classnames)}, e.g. {', '.join(missing[:3])}): its {type(adapter).__name__} holds "
                "something per fitted class only (new_classes=False). Evaluate it on data with the fitted classes "
                "or a subset of them, or use an adapter that defines new classes.")
        self._columns = torch.tensor([self.fitted.index(c) for c in self.classnames])

    @torch.no_grad()
    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """``[B, C']`` logits of unnormalised image features ``[B, E]`` (the encoder's output, test transform)."""
        out = self.adapter(image_features.float().to(self.device), self._text)  # [B, C] or [B, C']
        return out if self._columns is None else out[:, self._columns.to(out.device)]


__all__ = ["ADAPTER_JSON", "ADAPTER_WEIGHTS", "AdapterHead", "is_adapter_run", "load_adapter", "read_adapter_json",
           "save_adapter"]
