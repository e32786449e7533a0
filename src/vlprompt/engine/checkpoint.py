"""Saving and loading a learned prompt (``learner.json`` + ``learner.safetensors``) and the training state.

``learner.json`` records what rebuilds the learner (method, config, class names, the dtype each tensor was
learned in) and the backbone identity (name, pretrained tag/path, weights fingerprint, widths); loading checks all
of it and refuses a mismatch. The weights fingerprint is exact and the same in every process and on every machine
(:func:`~vlprompt.backbones.base.weights_fingerprint`); a run folder written by vlprompt 0.1.0 carries the old,
thread-count-dependent fingerprint, which is verified by recomputing it under every plausible thread count
(:func:`~vlprompt.backbones.base.match_legacy_fingerprint`) and can be re-bound with :func:`migrate_learner`. A prompt
learned in fp16 loads into an fp32 learner (and vice versa): tensors are converted to the learner's dtype. The
safetensors header repeats the method, the backbone fingerprint and a hash of the class list, so a
``learner.json`` edited to name another backbone or class list is detected too. Every defect of these files
(invalid JSON, wrong types, missing or extra tensors, wrong shapes, non-float or unrecorded dtypes, NaN values,
truncation) is an :class:`~vlprompt.errors.ArtifactError` naming the file, never an exception from deep inside torch.

The *training state* (see :func:`save_train_state`) is what resuming an interrupted run needs after each epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from vlprompt import __version__
from vlprompt._io import atomic_save_safetensors, atomic_write_json, read_json_object
from vlprompt.backbones.base import Backbone, fingerprint_version, match_legacy_fingerprint
from vlprompt.errors import ArtifactError, VLPromptError
from vlprompt.prompts.base import PromptLearner, create_prompt_learner

_logger = logging.getLogger(__name__)

LEARNER_JSON = "learner.json"
LEARNER_WEIGHTS = "learner.safetensors"
#: Floating dtypes vlprompt learns prompts in (fp32, amp: fp32; fp16: fp16); a 0.1.0 learner.json does not record
#: which, so its tensors may be any of these.
LEARNED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_DTYPES = {str(d).removeprefix("torch."): d for d in LEARNED_DTYPES}


def classnames_digest(classnames: list[str]) -> str:
    """SHA-256 of a class list (order matters), recorded in the weights file to bind it to ``learner.json``."""
    return hashlib.sha256(json.dumps(list(classnames)).encode()).hexdigest()


def _binding(method: str, classnames: list[str], ident: dict) -> dict[str, str]:
    """The safetensors header that binds the weights to what ``learner.json`` says (checked by load_learner)."""
    return {"format": "vlprompt", "method": method, "classnames_sha256": classnames_digest(classnames),
            "backbone_name": str(ident.get("name")), "backbone_fingerprint": str(ident.get("fingerprint"))}


def save_learner(run_dir: str | Path, learner: PromptLearner, backbone: Backbone) -> None:
    """Write ``learner.safetensors`` then ``learner.json`` (atomically) into ``run_dir``.

    The weights are the learner's whole persistent state (:meth:`~vlprompt.prompts.base.PromptLearner.
    trainable_state_dict`): the input-layer context and, for the deep methods, the deeper text and vision tokens and
    coupling layers. ``learner.json`` records ``"prompts_image": true`` for a learner that puts tokens into the image
    tower (absent otherwise)."""
    run_dir = Path(run_dir)
    ident = backbone.identity()
    state = learner.trainable_state_dict()
    atomic_save_safetensors(run_dir / LEARNER_WEIGHTS, state, metadata=_binding(learner.method, learner.classnames,
                                                                                  ident))
    atomic_write_json(
        run_dir / LEARNER_JSON,
        {
            "vlprompt_version": __version__,
            "method": learner.method,
            "config": learner.config_dict(),
            "classnames": learner.classnames,
            # The dtype each tensor was learned in (float16 under --precision fp16); loading converts to the
            # learner's dtype and refuses a file whose tensors are not in these dtypes.
            "dtypes": {k: str(v.dtype).removeprefix("torch.") for k, v in sorted(state.items())},
            "backbone": ident,
            # issue 15: recorded (only when true) so that export/interpret refuse such a run before loading it
            **({"prompts_image": True} if learner.prompts_image else {}),
        },
    )


def read_learner_json(run_dir: str | Path) -> dict:
    """Read and validate ``learner.json`` of a run folder (presence and type of every entry)."""
    path = Path(run_dir) / LEARNER_JSON
    if not path.is_file():
        raise ArtifactError(
            f"'{path}' not found: '{run_dir}' is not a finished vlprompt training run (train one with "
            "`vlprompt train`)."
        )
    meta = read_json_object(path, "the run folder is damaged — retrain it")
    for key in ("method", "config", "classnames", "backbone"):
        if key not in meta:
            raise ArtifactError(f"'{path}' lacks the '{key}' entry; the run folder is damaged — retrain it.")
    names = meta["classnames"]
    problems = []
    if not isinstance(meta["method"], str):
        problems.append("'method' must be a string")
    if not isinstance(meta["config"], dict):
        problems.append("'config' must be an object")
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        problems.append("'classnames' must be a non-empty list of strings")
    elif len(set(names)) != len(names):
        problems.append("'classnames' lists a class twice")
    if not (isinstance(meta["backbone"], dict) and isinstance(meta["backbone"].get("name"), str)):
        problems.append("'backbone' must be an object with a 'name'")
    dtypes = meta.get("dtypes", {})  # absent in 0.1.0 folders
    if not (isinstance(dtypes, dict) and all(isinstance(v, str) and v in _DTYPES for v in dtypes.values())):
        problems.append(f"'dtypes' must map tensor names to one of {', '.join(_DTYPES)}")
    if problems:
        raise ArtifactError(f"'{path}': {'; '.join(problems)}; the run folder is damaged — retrain it.")
    return meta


def check_backbone(meta: dict, backbone: Backbone, where: str) -> None:
    """Refuse to load a prompt into a backbone other than the one it was trained on.

    A 0.1.0 fingerprint (no ``w2:`` prefix) is verified with :func:`verify_legacy_fingerprint`; refused with a
    message that says how to migrate when it cannot be verified.
    """
    want = meta["backbone"]
    have = backbone.identity()
    diffs = [k for k in ("name", "fingerprint", "token_dim", "embed_dim") if want.get(k) != have.get(k)]
    # The activation (QuickGELU vs GELU) is invisible to the weights fingerprint; recorded since issue 12, so
    # compared only when both sides have it (folders of 0.1.0 lack it).
    if want.get("activation") and have.get("activation") and want["activation"] != have["activation"]:
        diffs.append(f"activation ({want['activation']} vs {have['activation']})")
    if diffs and _old_default_microclip(want, have):
        raise ArtifactError(
            f"the prompt in '{where}' was trained on micro-CLIP v1, the default before micro-CLIP v2 (it recorded "
            f"pretrained={want.get('pretrained')}, weights {want.get('fingerprint')}), but the backbone given is "
            f"micro-CLIP {have['pretrained']} (weights {have['fingerprint']}); differing: {', '.join(diffs)}. Load it "
            "with the v1 weights: --backbone microclip --pretrained v1 (create_backbone('microclip', 'v1')), or "
            "without a backbone (it is rebuilt from learner.json)."
        )
    if diffs == ["fingerprint"] and fingerprint_version(want.get("fingerprint")) == 0:
        threads = verify_legacy_fingerprint(want["fingerprint"], backbone)
        if threads is not None:
            _logger.info("'%s': weights verified against its vlprompt 0.1.0 fingerprint %s (it was computed with %d "
                         "torch thread(s)); now %s", where, want["fingerprint"], threads, have["fingerprint"])
            return
        raise ArtifactError(
            f"the prompt in '{where}' was saved by vlprompt {meta.get('vlprompt_version', '0.1.0')} with the old weights "
            f"fingerprint {want['fingerprint']}, which depended on the thread count and CPU of the process that "
            f"computed it; backbone {have['name']} (pretrained={have['pretrained']}) matches it under none of torch "
            f"thread counts 1-{max(64, os.cpu_count() or 1)} here, so these are other weights or the run was "
            "trained on a CPU of another kind. Load it with the --backbone/--pretrained it was trained with, or "
            "retrain it; if you are sure these are its weights, re-bind the folder to them with "
            f"`vlprompt migrate --run {where} --force` (add --pretrained PATH if the weights moved)."
        )
    if diffs:
        raise ArtifactError(
            f"the prompt in '{where}' was trained on backbone {want.get('name')} (pretrained={want.get('pretrained')}, "
            f"weights {want.get('fingerprint')}), but the backbone given is {have['name']} "
            f"(pretrained={have['pretrained']}, weights {have['fingerprint']}); differing: {', '.join(diffs)}. Learned "
            "context vectors only make sense in the embedding space they were trained in: load it with the same "
            "--backbone and --pretrained."
        )


def _old_default_microclip(want: dict, have: dict) -> bool:
    """``want`` recorded micro-CLIP's old default (v1, as ``pretrained`` ``None``/``"shipped"``) and ``have`` is the
    bundled v2: a learner of the old default given the new one (see ``backbones.recorded_pretrained``)."""
    from vlprompt.backbones.microclip import DEFAULT_WEIGHTS, records_old_default

    return (records_old_default(want.get("name"), want.get("pretrained")) and have["name"] == "microclip"
            and have["pretrained"] == DEFAULT_WEIGHTS)


def _as_loaded_model(backbone: Backbone) -> torch.nn.Module:
    """The backbone's model with its weights as loaded (what fingerprints are computed on).

    A backbone built with ``--precision fp16`` has cast its weights after fingerprinting; it is rebuilt on the CPU
    in fp32 from its recorded name and weights location.
    """
    model = getattr(backbone, "model", None)
    if isinstance(model, torch.nn.Module) and backbone.dtype == torch.float32:
        return model
    from vlprompt.backbones import create_backbone

    return create_backbone(backbone.name, backbone.pretrained, device="cpu").model


def verify_legacy_fingerprint(fingerprint: str, backbone: Backbone) -> int | None:
    """The torch thread count under which ``backbone``'s weights give the vlprompt 0.1.0 ``fingerprint``, or ``None``.

    0.1.0 summed each tensor in float64, whose reduction order depends on the number of threads, so the count of the
    process that wrote the run folder is unknown: every count of
    :func:`~vlprompt.backbones.base.legacy_thread_counts` is tried (the caller's thread count is restored after).
    """
    _logger.info("verifying a vlprompt 0.1.0 weights fingerprint %s (tried under 1-%d threads)", fingerprint,
                 max(64, os.cpu_count() or 1))
    return match_legacy_fingerprint(_as_loaded_model(backbone), fingerprint)


def migrate_learner(run_dir: str | Path, backbone: Backbone | None = None, *, pretrained: str | None = None,
                    force: bool = False) -> str:
    """Re-bind a run folder written by vlprompt 0.1.0 to the exact (thread-independent) weights fingerprint.

    Rewrites ``learner.json`` (backbone identity, ``dtypes``, a ``migrated_from`` note) and the binding header of
    ``learner.safetensors`` (same tensors), atomically. Loading such a folder works without this (its fingerprint
    is verified at each load); migrating makes later loads skip that verification.

    Args:
        run_dir: the training run folder.
        backbone: the backbone it was trained on; default: built from ``learner.json`` (and ``pretrained``).
        pretrained: where the weights are now, if they moved.
        force: re-bind even when the old fingerprint cannot be verified (e.g. the run was trained on a CPU of
            another kind). Only for weights you know to be the ones it was trained on.

    Returns:
        The new weights fingerprint.

    Raises:
        ArtifactError: the folder is not a run, is damaged, was trained on another backbone, or (without
            ``force``) its 0.1.0 fingerprint does not match these weights.
    """
    from vlprompt.backbones import create_backbone, recorded_pretrained

    run_dir = Path(run_dir)
    meta = read_learner_json(run_dir)
    want = meta["backbone"]
    if backbone is None:
        backbone = create_backbone(want["name"], pretrained or recorded_pretrained(want), device="cpu")
    have = backbone.identity()
    if want.get("fingerprint") == have["fingerprint"]:
        return have["fingerprint"]
    if fingerprint_version(want.get("fingerprint")) != 0:
        check_backbone(meta, backbone, str(run_dir))  # raises: a current fingerprint of other weights
    if not force:
        check_backbone(meta, backbone, str(run_dir))  # verifies the 0.1.0 fingerprint or raises
    elif any(want.get(k) != have.get(k) for k in ("name", "token_dim", "embed_dim")):
        raise ArtifactError(f"'{run_dir}' was trained on backbone {want.get('name')}, not {have['name']}; "
                            "migrating cannot change the backbone.")
    path = run_dir / LEARNER_WEIGHTS
    state, header = _read_weights(path, torch.device("cpu"))
    _check_binding(path, header, meta)
    meta["dtypes"] = meta.get("dtypes") or {k: str(v.dtype).removeprefix("torch.") for k, v in sorted(state.items())}
    meta["migrated_from"] = {"vlprompt_version": meta.get("vlprompt_version"), "fingerprint": want.get("fingerprint"),
                             "verified": not force, "by": __version__}
    meta["backbone"] = {**want, "fingerprint": have["fingerprint"]}
    atomic_save_safetensors(path, state, metadata=_binding(meta["method"], meta["classnames"], meta["backbone"]))
    atomic_write_json(run_dir / LEARNER_JSON, meta)
    _logger.info("'%s': re-bound from 0.1.0 fingerprint %s to %s", run_dir, want.get("fingerprint"), have["fingerprint"])
    return have["fingerprint"]


def _read_weights(path: Path, device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise ArtifactError(f"'{path}' not found; the run folder is incomplete — retrain it.")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (OSError, SafetensorError, ValueError, RuntimeError) as e:
        raise ArtifactError(f"'{path}' could not be read ({e}); the file is truncated or damaged — retrain it."
                            ) from e


def _check_binding(path: Path, header: dict[str, str], meta: dict) -> None:
    """Compare the weights file's header with ``learner.json`` (files saved before the binding have none)."""
    expected = {"method": meta["method"], "classnames_sha256": classnames_digest(meta["classnames"]),
                "backbone_name": str(meta["backbone"].get("name")),
                "backbone_fingerprint": str(meta["backbone"].get("fingerprint"))}
    wrong = [k for k, v in expected.items() if k in header and header[k] != v]
    if wrong:
        raise ArtifactError(
            f"'{path}' was saved for another {' and '.join(wrong)} than '{LEARNER_JSON}' names; the two files do not "
            "belong together (edited or mixed up) — use the files of one run, or retrain."
        )


def load_learner(run_dir: str | Path, backbone: Backbone, classnames: list[str] | None = None) -> PromptLearner:
    """Rebuild a saved learner on ``backbone`` (for ``classnames``, default: the trained ones) and load its weights."""
    run_dir = Path(run_dir)
    meta = read_learner_json(run_dir)
    check_backbone(meta, backbone, str(run_dir))
    try:
        learner = create_prompt_learner(meta["method"], backbone, meta["classnames"], meta["config"])
    except (VLPromptError, TypeError) as e:
        raise ArtifactError(f"'{run_dir / LEARNER_JSON}' does not describe a valid learner: {e}") from e
    path = run_dir / LEARNER_WEIGHTS
    state, header = _read_weights(path, backbone.device)
    _check_binding(path, header, meta)
    expected = learner.trainable_state_dict()  # what save_learner wrote (a learner may keep training-only state)
    check_state(path, state, expected, meta["method"], len(meta["classnames"]), learned_dtypes=meta.get("dtypes", {}))
    state = _to_learner_dtypes(path, state, expected)
    learner.load_state_dict({**learner.state_dict(), **state})  # training-only buffers keep their fresh values
    if classnames is not None and list(classnames) != learner.classnames:
        learner.set_classnames(backbone, classnames)
    return learner.eval()


def _to_learner_dtypes(path: Path, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
                       ) -> dict[str, torch.Tensor]:  # fmt: skip
    """Convert a saved prompt's tensors to the learner's dtypes (a prompt learned in fp16 used in fp32, or back)."""
    out = {}
    for k, v in state.items():
        want = expected[k].dtype
        if v.dtype != want:
            w = v.to(want)
            if not torch.isfinite(w).all():
                raise ArtifactError(
                    f"'{path}': tensor '{k}' was learned in {v.dtype} and has values beyond the range of {want}; "
                    "load it with a wider --precision (fp32)."
                )
            exact = torch.equal(w.to(v.dtype), v)
            _logger.info("'%s': tensor '%s' learned in %s, converted to the learner's %s (%s)", path, k, v.dtype, want,
                         "exact" if exact else "rounded")
            v = w
        out[k] = v
    return out


def check_state(path: Path, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], method: str,
                num_classes: int = -1, learned_dtypes: dict[str, str] | None = None) -> None:
    """Refuse a state dict whose keys, shapes, dtypes or values do not fit the learner it is loaded into.

    Args:
        path: the file (named in errors).
        state: the tensors read from it.
        expected: the learner's own state dict.
        method: the learner's method (named in errors).
        num_classes: (when known) explains a class-specific context saved for another number of classes.
        learned_dtypes: for a saved prompt, the dtype each tensor was learned in (``learner.json``'s ``dtypes``;
            ``{}`` for a 0.1.0 folder, which did not record them: any of :data:`LEARNED_DTYPES`). The tensors must
            be in those dtypes and are then converted on load. ``None`` (a training state, resumed in the same
            precision): the dtypes must equal the learner's.
    """
    if set(state) != set(expected):
        raise ArtifactError(
            f"'{path}' holds {sorted(state)} but a {method} learner with this config needs {sorted(expected)}; "
            "the file does not belong to this learner.json."
        )
    for k, v in state.items():
        want = expected[k]
        if learned_dtypes is None or not want.is_floating_point():
            dtype_ok, expected_dtype = v.dtype == want.dtype, str(want.dtype)
        elif learned_dtypes:
            recorded = _DTYPES.get(learned_dtypes.get(k, ""))
            dtype_ok = v.dtype == recorded
            expected_dtype = f"{recorded} (the dtype {LEARNER_JSON} records it was learned in)"
        else:
            dtype_ok = v.dtype in LEARNED_DTYPES
            expected_dtype = f"one of {', '.join(map(str, LEARNED_DTYPES))} (the dtypes prompts are learned in)"
        if v.shape != want.shape or not dtype_ok:
            hint = ""
            if num_classes >= 0 and v.dim() == 3 and want.dim() == 3 and v.shape[0] != want.shape[0]:
                hint = (f" (a class-specific context for {v.shape[0]} classes, but learner.json lists {num_classes} "
                        "class names)")
            raise ArtifactError(
                f"'{path}': tensor '{k}' is {tuple(v.shape)} {v.dtype}, expected {tuple(want.shape)} {expected_dtype}"
                f"{hint}; the file is damaged or from another run."
            )
        if v.is_floating_point() and not torch.isfinite(v.float()).all():
            raise ArtifactError(f"'{path}': tensor '{k}' contains NaN or Inf values; the run diverged or the file is "
                                "damaged.")


__all__ = [
    "LEARNED_DTYPES",
    "LEARNER_JSON",
    "LEARNER_WEIGHTS",
    "check_backbone",
    "check_state",
    "classnames_digest",
    "load_learner",
    "migrate_learner",
    "read_learner_json",
    "save_learner",
    "verify_legacy_fingerprint",
]
