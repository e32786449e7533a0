"""Run the OFFICIAL IVLP and MaPLe blocks on the deep-prompt fidelity weights and inputs; write the figures.

Not part of the test suite and not official code: a driver that imports ``clip/`` and ``trainers/`` of
``muzairkhattak/multimodal-prompt-learning`` from a folder outside this repository (README.md here says how to
extract them), stubs the ``dassl`` imports, and records what the official modules compute, at the learned tokens of
``deep_prompt_inputs.fixed_inputs()`` and after one SGD step on the cross-entropy of the official ``CustomCLIP``
logits.

Two variants: ``as_is`` (the official ``clip/model.py`` unchanged: its ``.half()`` casts of the replacing tokens
round them, and their per-row gradients, to fp16 even in fp32 runs) and ``no_half`` (the same file with exactly
those six ``.half()`` calls, ``…permute(1, 0, 2).half()`` and ``…expand(x.shape[0], -1, -1).half()``, replaced by
``.type(x.dtype)`` in memory before it is executed: the fp32 computation without that rounding).

usage: python make_deep_prompt_figures.py OFFICIAL_ROOT OUT.json
"""
import importlib.util
import json
import platform
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT, OUT = sys.argv[1], sys.argv[2]
sys.path.insert(0, ROOT)
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # tests/fidelity
torch.set_num_threads(1)


def _stub(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    sys.modules[name] = m


class _Registry:
    def register(self):
        return lambda cls: cls


_stub("dassl")
_stub("dassl.engine", TRAINER_REGISTRY=_Registry(), TrainerX=object)
_stub("dassl.metrics", compute_accuracy=None)
_stub("dassl.utils", load_pretrained_weights=None, load_checkpoint=None)
_stub("dassl.optim", build_optimizer=None, build_lr_scheduler=None)

import deep_prompt_inputs as W  # noqa: E402
from clip import clip  # noqa: E402  (official)
from clip.model import build_model as build_as_is  # noqa: E402  (official)
from trainers import independentVL, maple  # noqa: E402  (official TextEncoder classes)

SD = W.state_dict()
INP = W.fixed_inputs()
N, J = W.N_CTX, W.DEPTH


def _build_no_half():
    """The official ``clip/model.py`` with the six prompt-token ``.half()`` casts made ``.type(x.dtype)``."""
    path = Path(ROOT) / "clip" / "model.py"
    src = path.read_text()
    patched = src.replace("permute(1, 0, 2).half()", "permute(1, 0, 2).type(x.dtype)").replace(
        "expand(x.shape[0], -1, -1).half()", "expand(x.shape[0], -1, -1).type(x.dtype)")
    assert src.count(".half()") - patched.count(".half()") == 6, "expected 4 + 2 prompt casts"
    spec = importlib.util.spec_from_loader("official_model_no_half", loader=None)
    mod = importlib.util.module_from_spec(spec)
    exec(compile(patched, str(path), "exec"), mod.__dict__)
    return mod.build_model


BUILD = {"as_is": build_as_is, "no_half": _build_no_half()}
IDS = torch.cat([clip.tokenize(" ".join(["X"] * N) + " " + c.replace("_", " ") + ".") for c in W.CLASSNAMES])


def official(trainer, variant):
    """The official CLIP for ``trainer`` (its design_details), the learned tokens as leaves, and a forward."""
    if trainer == "IVLP":
        design = {"trainer": "IVLP", "vision_depth": J, "language_depth": J, "vision_ctx": N, "language_ctx": N}
    else:
        design = {"trainer": "MaPLe", "vision_depth": 0, "language_depth": 0, "vision_ctx": 0, "language_ctx": 0,
                  "maple_length": N}
    model = BUILD[variant]({k: v.clone() for k, v in SD.items()}, design).float()  # PREC fp32, as the trainers
    model.requires_grad_(False)
    ctx = torch.nn.Parameter(INP["ctx"].clone())
    deep_text = [torch.nn.Parameter(t.clone()) for t in INP["deep_text"]]
    vision = [torch.nn.Parameter(t.clone()) for t in INP["vision"]]
    if trainer == "IVLP":  # the tokens live in the blocks, as the official VLPromptLearner/VPT_shallow do
        for j in range(1, J):
            model.transformer.resblocks[j].VPT_shallow = deep_text[j - 1]
            model.visual.transformer.resblocks[j].VPT_shallow = vision[j]
        model.visual.VPT = vision[0]
        text_encoder = independentVL.TextEncoder(model)
    else:
        text_encoder = maple.TextEncoder(model)
    with torch.no_grad():
        embedding = model.token_embedding(IDS)

    def forward():
        prompts = torch.cat([embedding[:, :1], ctx.unsqueeze(0).expand(len(IDS), -1, -1), embedding[:, 1 + N:]], 1)
        if trainer == "IVLP":
            text = text_encoder(prompts, IDS)
            image = model.visual(INP["images"])
        else:
            text = text_encoder(prompts, IDS, deep_text)
            image = model.visual(INP["images"], vision[0], vision[1:])
        tn, im = F.normalize(text, dim=-1), F.normalize(image, dim=-1)
        return text, image, model.logit_scale.exp() * im @ tn.t()

    return [ctx, *deep_text, *vision], forward


def run(trainer, variant):
    params, forward = official(trainer, variant)
    text, image, logits = forward()
    loss = F.cross_entropy(logits, INP["labels"])
    loss.backward()
    grads = [p.grad.clone() for p in params]
    with torch.no_grad():
        for p in params:
            p -= W.LR * p.grad
        text2, image2, logits2 = forward()
    names = ["ctx", *[f"deep_text.{j}" for j in range(J - 1)], *[f"vision.{j}" for j in range(J)]]
    return {
        "text": text.tolist(), "image": image.tolist(), "logits": logits.tolist(), "loss": loss.item(),
        "grads": {n: g.tolist() for n, g in zip(names, grads)},
        "text_after": text2.tolist(), "image_after": image2.tolist(), "logits_after": logits2.tolist(),
    }


out = {
    "source": {"repo": "muzairkhattak/multimodal-prompt-learning", "commit": "69bce21ae8eda80ad6187534b2dce09cf6c59e17",
               "files": ["clip/model.py", "trainers/independentVL.py", "trainers/maple.py"]},
    "torch": torch.__version__, "python": platform.python_version(),
    "weights_sha256": W.tensors_sha256(SD), "inputs_sha256": W.tensors_sha256(INP),
    "ids": IDS.tolist(), "n_ctx": N, "depth": J, "lr": W.LR,
    "cases": {f"{t.lower()}_{v}": run(t, v) for v in BUILD for t in ("IVLP", "MaPLe")},
}
Path(OUT).write_text(json.dumps(out))
print("wrote", OUT)
