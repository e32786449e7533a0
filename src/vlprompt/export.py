"""Export a trained prompt for deployment: one ONNX graph, images in, class probabilities out.

A learned prompt with a fixed classifier (CoOp, KgCoOp: its class text features do not depend on the image) is
baked into class weights ``W [C, E]`` once (:meth:`vlprompt.api.PromptClassifier.text_features`); what remains at
inference is the image tower and one matrix product, exactly :meth:`PromptClassifier.predict`'s computation::

    images [B, 3, S, S] → encode_image → L2-normalise → logit_scale · f @ Wᵀ → softmax → probs [B, C]

:class:`BakedClassifier` is that computation as an ``nn.Module`` (``W`` and ``logit_scale`` are buffers, so they
become constants of the graph); :func:`export_onnx` writes it with :func:`torch.onnx.export` and a dynamic batch
axis, and a JSON sidecar ``FILE.json`` (``model.onnx`` → ``model.onnx.json``, a name that never collides with a
run folder's own files) holding the class names, the input/output names and shapes, the preprocessing (size,
mean, std, interpolation, resize mode and crop: the test transform :meth:`PromptClassifier.preprocess` applies),
the backbone identity, the method, the exporter and opset, the result of the onnxruntime check, and the SHA-256 of
the graph file (binding the two).

Exporter: torch's default, dynamo-based exporter (``torch.export`` + onnxscript) is tried first; if it fails on a
backbone, the TorchScript exporter (``dynamo=False``) is used and the sidecar says so.

Check (``check=True``, the default; onnxruntime is part of the ``onnx`` extra): the written graph is run by
onnxruntime on seeded random input batches of 1 and 3 images and compared with :class:`BakedClassifier` in torch;
a maximum difference above :data:`CHECK_TOLERANCE`, or an output whose batch size is not the input's, refuses the
export (nothing is written). ``check=False`` (``--no-check``) skips it and records ``"check": null``.

Refused, with the reason: a conditional prompt (CoCoOp), whose class weights depend on each image (the text
encoder runs once per image and class: no fixed classifier to bake; exporting the text tower per image would
cost ``B·C`` text-transformer passes per batch and is not offered); a zero-shot or linear-probe run folder, which
holds no prompt that :class:`PromptClassifier` loads (``vlprompt predict`` cannot use them either); a classifier
not on the CPU in fp32 (the graph is traced and checked there).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from vlprompt import __version__
from vlprompt._io import atomic_write_json, file_sha256
from vlprompt.errors import ArtifactError, ConfigError
from vlprompt.onnx_graph import BATCH_AXIS, INPUT_NAME, OUTPUT_NAME, TORCHSCRIPT_OPSET, BakedClassifier, write_graph

_logger = logging.getLogger(__name__)

FORMATS = ("onnx",)
#: Largest |ONNX − torch| probability difference the export check accepts.
CHECK_TOLERANCE = 1e-4
#: Batch sizes the check runs (1 and a size other than the example batch of the export: the axis is dynamic).
CHECK_BATCH_SIZES = (1, 3)
ONNX_INSTALL_HINT = "pip install 'vlprompt[onnx]'"
SIDECAR_SUFFIX = ".json"


def sidecar_path(out: str | os.PathLike) -> Path:
    """Where :func:`export_onnx` writes the JSON description of ``out``: ``out`` + ``.json``."""
    out = Path(out)
    return out.with_name(out.name + SIDECAR_SUFFIX)


def require_onnx(check: bool = True) -> dict[str, str]:
    """Import the optional ONNX packages; returns their versions.

    Args:
        check: also require onnxruntime (for the export check).

    Raises:
        ConfigError: a package of the ``onnx`` extra is missing, naming the install command.
    """
    versions = {}
    for name in ("onnx", "onnxscript", *(("onnxruntime",) if check else ())):
        try:
            module = __import__(name)
        except ImportError as e:
            raise ConfigError(
                f"ONNX export needs the optional package '{name}' ({e}); install the onnx extra: "
                f"{ONNX_INSTALL_HINT}" + ("" if name != "onnxruntime" else " (or skip the check with --no-check)")
                + "."
            ) from None
        versions[name] = str(getattr(module, "__version__", "unknown"))
    return versions


def check_out_path(out: str | os.PathLike) -> Path:
    """Validate ``--out`` before the (slow) export, creating nothing: a file path whose nearest existing folder
    is writable (missing folders are created when the export writes).

    Raises:
        ConfigError: ``out`` is a folder, its sidecar name is a folder, or its folder cannot be created/written.
    """
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out '{out}' is a folder; give the path of the file to write, e.g. '{out / 'model.onnx'}'.")
    if sidecar_path(out).is_dir():
        raise ConfigError(f"--out '{out}': its description '{sidecar_path(out)}' would replace a folder; choose "
                          "another --out.")
    existing = out.parent.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # the nearest folder that exists: where missing ones would be created
    if not existing.is_dir():
        raise ConfigError(f"--out '{out}': cannot create its folder '{out.parent}', because '{existing}' is a file; "
                          "choose a writable location.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out '{out}': the folder '{existing}' is not writable; choose a writable location.")
    return out


def check_run(run_dir: str | os.PathLike) -> dict:
    """Cheap checks of a run folder before loading it: refuse folders that hold no prompt (zero-shot, linear
    probe) with the reason; returns its validated ``learner.json``.

    Raises:
        ArtifactError: not a run folder, a damaged ``learner.json``, or a run without a prompt.
    """
    from vlprompt.engine.checkpoint import read_learner_json

    _refuse_non_prompt_runs(Path(run_dir))
    meta = read_learner_json(run_dir)
    if meta.get("prompts_image"):
        raise ConfigError(_prompted_tower_refusal(meta["method"]))
    return meta


def _prompted_tower_refusal(method: str) -> str:
    """Why a prompt with learned tokens inside the image tower is not exported (issue 15)."""
    return (f"the {method} prompt puts learned tokens inside the image tower (deep vision prompts), so the exported "
            "graph would need the prompted image encoder, which export does not trace (it bakes the class weights "
            "and traces the frozen image tower); serve this prompt with PromptClassifier.predict / `vlprompt "
            "predict`, which run the prompted encoder, or export a CoOp or KgCoOp prompt.")


def _preprocessing(cfg) -> dict:
    """The test transform of :meth:`PromptClassifier.preprocess` in words and numbers (the sidecar's entry)."""
    s, interp = int(cfg.image_size), cfg.interpolation.lower()
    resize = f"resize with PIL Image.resize ({interp})"  # torchvision resizes PIL images with PIL itself
    fit = {
        "shortest": [f"{resize} so the shorter side is {s} and the longer int({s} * longer / shorter)",
                     f"centre-crop {s}x{s}: top = int(round((height - {s}) / 2)), left = int(round((width - {s}) "
                     "/ 2)), Python's round (half to even)"],
        "squash": [f"{resize} to {s}x{s} (aspect ratio not kept)"],
        "longest": [f"{resize} so the longer side is {s}, aspect ratio kept",
                    f"centre-pad to {s}x{s} with black"],
    }[cfg.resize_mode]
    return {
        "image_size": s,
        "mean": [float(x) for x in cfg.mean],
        "std": [float(x) for x in cfg.std],
        "interpolation": interp,
        "resize_mode": cfg.resize_mode,
        "crop": {"shortest": "center", "squash": "none", "longest": "center-pad"}[cfg.resize_mode],
        "steps": ["decode the file and convert to RGB", *fit, "scale pixel values to [0, 1] (divide by 255)",
                  "subtract mean and divide by std, per channel", "lay out as float32 [3, H, W] (channels first)"],
        "reference": "vlprompt.api.PromptClassifier.preprocess (torchvision test transform "
                     "vlprompt.data.transforms.build_transform(train=False))",
    }


def _refuse_non_prompt_runs(run_dir: Path) -> None:
    """A run folder without ``learner.json``: say what it is and why it cannot be exported."""
    if (run_dir / "adapter.json").is_file():  # a feature-space adapter (issue 16)
        raise ArtifactError(
            f"'{run_dir}' is a feature-space adapter run (adapter.json): its logits come from an adapter applied to "
            "each image feature (a cache, a residual MLP or probe), not from fixed class weights, and export "
            "supports learned prompts only; serve it with PromptClassifier.load / `vlprompt predict`, or export a "
            "trained prompt (`vlprompt train --method coop|kgcoop`).")
    if (run_dir / "learner.json").is_file() or not (run_dir / "config.json").is_file():
        return  # a prompt run, or not a run folder at all (read_learner_json says so)
    try:
        method = json.loads((run_dir / "config.json").read_text()).get("method")
    except (OSError, ValueError, AttributeError):
        return
    if method == "zeroshot":
        raise ArtifactError(
            f"'{run_dir}' is a zero-shot run: it records templates and metrics but saves no classifier that "
            "PromptClassifier (or `vlprompt predict`) loads, so there is nothing to export; export a trained "
            "prompt (`vlprompt train --method coop|kgcoop`) instead.")
    if method == "linear-probe":
        raise ArtifactError(
            f"'{run_dir}' is a linear-probe run: its classifier is a logistic regression on unnormalised image "
            "features (probe.safetensors), which PromptClassifier and `vlprompt predict` do not load, and export "
            "supports learned prompts only; export a trained prompt (`vlprompt train --method coop|kgcoop`) instead.")


def load_for_export(run_dir: str | os.PathLike, *, pretrained: str | None = None):
    """Load ``run_dir`` as a :class:`~vlprompt.api.PromptClassifier` on the CPU, refusing run folders that hold no
    prompt (zero-shot, linear probe) with the reason."""
    from vlprompt.api import PromptClassifier

    check_run(run_dir)
    return PromptClassifier.load(run_dir, device="cpu", pretrained=pretrained)


def _check_with_onnxruntime(path: Path, model: nn.Module, size: int) -> dict:
    """Run the written graph with onnxruntime on seeded random batches; compare with ``model`` in torch."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for n in CHECK_BATCH_SIZES:
        x = torch.randn(n, 3, size, size, generator=gen)  # (n, 3, S, S), the scale of normalised images
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})  # (n, C)
        with torch.no_grad():
            want = model(x).numpy()
        if got.shape != want.shape:
            raise ArtifactError(f"the exported graph returned shape {got.shape} for a batch of {n}, expected "
                                f"{want.shape}: the batch axis is not dynamic; nothing was written.")
        worst = max(worst, float(np.abs(got - want).max()))
    if not worst <= CHECK_TOLERANCE:
        raise ArtifactError(f"the exported graph's probabilities differ from vlprompt's by up to {worst:.3g} "
                            f"(> {CHECK_TOLERANCE:g}) under onnxruntime {ort.__version__}; nothing was written.")
    return {"runtime": f"onnxruntime {ort.__version__}", "batch_sizes": list(CHECK_BATCH_SIZES),
            "input": "seeded standard-normal batches", "max_abs_diff": worst, "tolerance": CHECK_TOLERANCE}



def _refuse_unexportable(clf) -> None:
    """Refuse a classifier the graph cannot represent: a conditional prompt, or one not on the CPU in fp32.

    Raises:
        ConfigError: naming the reason and what to do instead.
    """
    if clf.conditional:
        raise ConfigError(
            f"the {clf.method} prompt cannot be exported as a fixed classifier: its class weights depend on each "
            "image (a meta-network turns the image feature into a context shift, and the text encoder then runs "
            "once per image and class), so there are no class weights to bake into the graph. Export a CoOp or "
            "KgCoOp prompt, or serve this one with PromptClassifier.predict / `vlprompt predict`.")
    if clf.prompts_image:
        raise ConfigError(_prompted_tower_refusal(clf.method))
    if clf.backbone.dtype != torch.float32 or clf.backbone.device.type != "cpu":
        # The graph is traced, and checked against onnxruntime's CPU kernels, on the CPU in fp32: a GPU trace would
        # be compared through TF32 convolutions, and fp16 weights would be baked into the graph.
        raise ConfigError(f"export traces the model on the CPU in fp32; this classifier is on "
                          f"{clf.backbone.device} in {str(clf.backbone.dtype).removeprefix('torch.')}. Load it with "
                          "PromptClassifier.load(run) (CPU, fp32 by default).")


def _sidecar(clf, out: Path, exporter: dict, checked: dict | None, source: str | os.PathLike | None) -> dict:
    """The sidecar's content (before ``model_sha256``): what the graph takes, returns and was made from."""
    size = int(clf.backbone.preprocess.image_size)
    return {
        "format": "vlprompt-onnx-classifier",
        "vlprompt_version": __version__,
        "model_file": out.name,
        "method": clf.method,
        "learner": clf.learner_config,
        "classnames": list(clf.classnames),
        "num_classes": len(clf.classnames),
        "input": {"name": INPUT_NAME, "shape": [BATCH_AXIS, 3, size, size], "dtype": "float32",
                  "layout": "NCHW, RGB, preprocessed as 'preprocessing' says"},
        "output": {"name": OUTPUT_NAME, "shape": [BATCH_AXIS, len(clf.classnames)], "dtype": "float32",
                   "meaning": "softmax class probabilities; column c is classnames[c]"},
        "preprocessing": _preprocessing(clf.backbone.preprocess),
        "logit_scale": float(clf.logit_scale),
        "backbone": clf.backbone.identity(),
        "exporter": exporter,
        "check": checked,
        "source_run": str(Path(source).resolve()) if source is not None else None,
    }


def _install(tmp_dir: Path, out: Path, meta: dict) -> None:
    """Move the written files from ``tmp_dir`` beside ``out`` under their final names, then write the sidecar."""
    side = sidecar_path(out)
    # An old sidecar goes first, so an interruption never leaves a new graph beside a stale description; then
    # the weights file (if the graph was saved with external data), then the graph, then the new sidecar.
    side.unlink(missing_ok=True)
    for f in sorted(tmp_dir.iterdir(), key=lambda f: f.name == out.name):
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(f, out.parent / f.name)
    atomic_write_json(side, meta)


def export_onnx(
    clf,
    out: str | os.PathLike,
    *,
    opset: int | None = None,
    exporter: str = "auto",
    check: bool = True,
    source: str | os.PathLike | None = None,
) -> dict:
    """Write ``clf`` (a fixed-classifier :class:`~vlprompt.api.PromptClassifier`) as an ONNX graph and its sidecar.

    The graph: input ``images`` ``float32[batch, 3, S, S]`` (what ``clf.preprocess(...)`` returns), output
    ``probs`` ``float32[batch, C]`` (``clf.predict(...).probs``), class ``c`` = ``clf.classnames[c]``. Both files are
    written atomically (to a temporary folder beside ``out``, then renamed), after the check passed.

    Args:
        clf: the classifier (:meth:`PromptClassifier.load`).
        out: the ``.onnx`` file to write; the sidecar is ``out`` + ``.json``.
        opset: the ONNX opset (default: the exporter's own; recorded in the sidecar).
        exporter: ``"auto"`` (dynamo, falling back to TorchScript), ``"dynamo"`` or ``"torchscript"``.
        check: run the written graph with onnxruntime and refuse it unless it matches (see the module docstring).
        source: the run folder, recorded in the sidecar.

    Returns:
        The sidecar's content.

    Raises:
        ConfigError: a conditional prompt, a backbone not on the CPU in fp32, a bad ``out``/``exporter``, or a missing package of
            the ``onnx`` extra.
        ArtifactError: the export failed or its check did not pass.
    """
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise ConfigError(f"exporter {exporter!r} is not one of auto, dynamo, torchscript.")
    _refuse_unexportable(clf)
    versions = require_onnx(check)
    out = check_out_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    size = int(clf.backbone.preprocess.image_size)
    model = BakedClassifier(clf.backbone, clf.text_features(), clf.logit_scale).eval()
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        graph = tmp_dir / out.name  # the final name: an external-data file, if any, keeps its reference
        used, opset_used = write_graph(model, size, graph, opset, exporter)
        checked = _check_with_onnxruntime(graph, model, size) if check else None
        meta = _sidecar(clf, out, {"name": used, "opset": opset_used, "torch": torch.__version__,
                                   **{k: v for k, v in versions.items() if k != "onnxruntime"}}, checked, source)
        meta["model_sha256"] = file_sha256(graph)  # binds the sidecar to this graph
        _install(tmp_dir, out, meta)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    _logger.info("exported %s (%s exporter, opset %s) and %s", out, used, opset_used, sidecar_path(out))
    return meta


__all__ = ["BakedClassifier", "CHECK_TOLERANCE", "FORMATS", "TORCHSCRIPT_OPSET", "check_out_path", "check_run",
           "export_onnx", "load_for_export", "require_onnx", "sidecar_path"]
