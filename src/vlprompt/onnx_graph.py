"""The ONNX graph of an exported prompt: :class:`BakedClassifier` (the image tower and the baked class weights as one
``nn.Module``) and :func:`write_graph`, which writes it with :func:`torch.onnx.export` (dynamo first, TorchScript as
the fallback) and a dynamic batch axis. The check, the sidecar and the atomic install are :mod:`vlprompt.export`'s.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.errors import ArtifactError

_logger = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAME = "probs"
BATCH_AXIS = "batch"
#: The TorchScript exporter's opset when it is the fallback (supported by onnxruntime ≥ 1.12).
TORCHSCRIPT_OPSET = 17


class BakedClassifier(nn.Module):
    """Image tower plus baked class weights: ``float32[B, 3, S, S]`` preprocessed images → ``float32[B, C]``
    softmax probabilities, the computation :meth:`PromptClassifier.predict` runs for a fixed classifier.

    Args:
        backbone: the (frozen, fp32) backbone; only its image tower takes part in the graph.
        class_weights: ``[C, E]`` L2-normalised class text features.
        logit_scale: 0-dim ``exp(logit_scale)`` of the backbone.
    """

    def __init__(self, backbone: nn.Module, class_weights: torch.Tensor, logit_scale: torch.Tensor):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("class_weights", class_weights.detach().float().clone())  # (C, E)
        self.register_buffer("logit_scale", logit_scale.detach().float().clone().reshape(()))

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # noqa: D102
        feats = F.normalize(self.backbone.encode_image(images).float(), dim=-1)  # (B, E)
        logits = self.logit_scale * feats @ self.class_weights.t()  # (B, C), as PromptModel.logits
        return F.softmax(logits, dim=-1)  # (B, C), as PromptClassifier.predict


@contextlib.contextmanager
def _quiet_logger(name: str):
    """Raise logger ``name`` to ERROR for the block (the optimiser's notes are noise to a user), then restore."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _export_graph(model: nn.Module, example: torch.Tensor, path: Path, opset: int | None, exporter: str) -> str:
    """Write ``model`` to ``path`` with a dynamic batch axis; returns the exporter used (``dynamo``/``torchscript``)."""
    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME]}
    if exporter in ("auto", "dynamo"):
        try:
            with _quiet_logger("onnxscript.optimizer"):  # "Skipping constant folding for op Split ...": not ours
                program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset, verbose=False,
                                            **names, dynamic_shapes={INPUT_NAME: {0: torch.export.Dim(BATCH_AXIS)}})
            program.save(str(path))  # weights over 2 GB go to path + ".data" beside it
            return "dynamo"
        except Exception as e:  # noqa: BLE001 -- any exporter failure: try the other exporter, say why
            if exporter == "dynamo":
                raise ArtifactError(f"the dynamo ONNX exporter failed: {type(e).__name__}: {e}") from e
            _logger.warning("the dynamo ONNX exporter failed (%s: %s); falling back to the TorchScript exporter",
                            type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            for leftover in (path, path.with_name(path.name + ".data")):  # a partial write of the failed try
                leftover.unlink(missing_ok=True)
    with warnings.catch_warnings():
        # Chosen deliberately (its deprecation notice is noise here); tracer warnings about shape asserts turned
        # into constants are what the onnxruntime check at two batch sizes is for.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # nn.MultiheadAttention's inference fast path traces to aten::_native_multi_head_attention, which the
        # TorchScript exporter has no ONNX symbol for (any ViT tower: micro-CLIP v2, ViT-B/16); the regular path
        # computes the same attention from ops it can export.
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset or TORCHSCRIPT_OPSET,
                              verbose=False, **names,
                              dynamic_axes={INPUT_NAME: {0: BATCH_AXIS}, OUTPUT_NAME: {0: BATCH_AXIS}})
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
    return "torchscript"


def write_graph(model: nn.Module, size: int, path: Path, opset: int | None, exporter: str) -> tuple[str, int | None]:
    """Write ``model`` (images ``[B, 3, size, size]`` in) to ``path`` and read its header back.

    Returns:
        ``(exporter used, opset of the written graph)``.

    Raises:
        ArtifactError: the exporter failed, or the graph's inputs are not ``[images]``.
    """
    import onnx

    example = torch.zeros(2, 3, size, size)  # batch 2: a batch of 1 would be specialised
    used = _export_graph(model, example, path, opset, exporter)
    proto = onnx.load(str(path), load_external_data=False)
    opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    inputs = [i.name for i in proto.graph.input]
    if inputs != [INPUT_NAME]:
        raise ArtifactError(f"the exported graph has inputs {inputs}, expected ['{INPUT_NAME}'].")
    return used, opset_used


__all__ = ["BATCH_AXIS", "INPUT_NAME", "OUTPUT_NAME", "TORCHSCRIPT_OPSET", "BakedClassifier", "write_graph"]
