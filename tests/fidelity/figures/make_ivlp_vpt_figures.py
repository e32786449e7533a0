"""Run the OFFICIAL IVLP and VPT trainers (``build_model`` + ``forward_backward``) on the deep-prompt fidelity
weights; write the figures.

Not part of the test suite and not official code: a driver that imports ``clip/`` and ``trainers/`` of
``muzairkhattak/multimodal-prompt-learning`` and Dassl's ``dassl/optim/optimizer.py`` from folders outside this
repository (README.md here says how they were extracted). It runs the official code path end to end where it can:

- ``load_clip_to_cpu(cfg)`` of each trainer, for real: ``clip._download`` returns a file holding
  ``deep_prompt_inputs.state_dict()`` (``torch.jit.load`` fails on it, so the state dict is loaded and
  ``clip.build_model(state_dict, design_details)`` builds the model with the trainer's own ``design_details``);
- ``IVLP.build_model`` / ``VPT.build_model`` on a stand-in trainer object (``cfg``, ``dm.dataset.classnames``,
  ``device`` cpu): the official ``CustomCLIP``, the official choice of trainable parameters, and Dassl's real
  ``build_optimizer`` (SGD, momentum 0.9, weight decay 5e-4, ``OPTIM.LR`` read from the trainer's yaml, which is
  recorded, parsed, under ``"yaml"`` for ``tests/recipes/test_ivlp_vpt_recipes.py``). The
  scheduler is not built (``build_lr_scheduler`` returns ``None``): its first epoch is the 1e-5 warm-up, and the
  step recorded here is at the base lr;
- the learned tokens are then overwritten with ``ivlp_vpt_inputs.tokens(case)`` (IVLP's ``ctx``: the official word
  init + the case's offset), and ``forward_backward`` runs one step on the 3 images (``VPT``'s ``.cuda()`` of the
  fixed text features is a no-op here). Logits come from ``CustomCLIP`` in eval mode, before and after.

``*_no_half`` cases run the official ``clip/model.py`` with its six prompt-token ``.half()`` casts replaced by
``.type(x.dtype)`` in memory (as ``make_deep_prompt_figures.py`` does).

usage: python make_ivlp_vpt_figures.py OFFICIAL_ROOT DASSL_ROOT OUT.json
"""
import importlib
import importlib.util
import json
import platform
import sys
import tempfile
import types
from pathlib import Path

import torch
import yaml

ROOT, DASSL, OUT = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, ROOT)
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # tests/fidelity
torch.set_num_threads(1)


def _module(name, path=None, **attrs):
    m = types.ModuleType(name)
    if path is not None:
        m.__path__ = [path]  # a package whose __init__ is not run
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m


class _Registry:
    def register(self):
        return lambda cls: cls


_module("dassl", f"{DASSL}/dassl")
_module("dassl.engine", TRAINER_REGISTRY=_Registry(), TrainerX=object)
_module("dassl.metrics", compute_accuracy=None)
_module("dassl.utils", load_pretrained_weights=None, load_checkpoint=None)
optim_pkg = _module("dassl.optim", f"{DASSL}/dassl/optim", build_lr_scheduler=lambda optim, cfg: None)
optim_pkg.build_optimizer = importlib.import_module("dassl.optim.optimizer").build_optimizer  # Dassl's own

import deep_prompt_inputs as W  # noqa: E402
import ivlp_vpt_inputs as V  # noqa: E402
from clip import clip  # noqa: E402  (official)
from trainers import independentVL, vpt  # noqa: E402  (official)

INP = W.fixed_inputs()
IMAGES, LABELS = INP["images"], INP["labels"]
YAML = {"ivlp": "configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml", "vpt": "configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml"}
WEIGHTS = Path(tempfile.mkdtemp()) / "tiny-vit.pt"
torch.save(W.state_dict(), WEIGHTS)
clip._MODELS["tiny-ViT"] = "file://tiny-vit.pt"
clip._download = lambda url, *a, **k: str(WEIGHTS)
BUILD_AS_IS = clip.build_model


def _build_no_half():
    """The official ``clip/model.py`` with the six prompt-token ``.half()`` casts made ``.type(x.dtype)``."""
    path = Path(ROOT) / "clip" / "model.py"
    src = path.read_text()
    patched = src.replace("permute(1, 0, 2).half()", "permute(1, 0, 2).type(x.dtype)").replace(
        "expand(x.shape[0], -1, -1).half()", "expand(x.shape[0], -1, -1).type(x.dtype)")
    assert src.count(".half()") - patched.count(".half()") == 6, "expected 4 + 2 prompt casts"
    mod = importlib.util.module_from_spec(importlib.util.spec_from_loader("official_model_no_half", loader=None))
    exec(compile(patched, str(path), "exec"), mod.__dict__)
    return mod.build_model


def ns(**kw):
    return types.SimpleNamespace(**kw)


def official_yaml(method):
    """The trainer's official config file, parsed (recorded in the figures: the recipe tests read it)."""
    return yaml.safe_load((Path(ROOT) / YAML[method]).read_text())


def yaml_lr(method):
    """``OPTIM.LR`` of the trainer's official yaml."""
    return float(official_yaml(method)["OPTIM"]["LR"])


def config(method, opts):
    optim = ns(NAME="sgd", LR=yaml_lr(method), WEIGHT_DECAY=5e-4, MOMENTUM=0.9, SGD_DAMPNING=0, SGD_NESTEROV=False,
               RMSPROP_ALPHA=0.99, ADAM_BETA1=0.9, ADAM_BETA2=0.999, STAGED_LR=False, NEW_LAYERS=(), BASE_LR_MULT=0.1)
    trainer = ns(
        IVLP=ns(N_CTX_VISION=opts.get("n_ctx_vision", 0), N_CTX_TEXT=opts.get("n_ctx", 0), CTX_INIT="a photo of a",
                PREC="fp32", PROMPT_DEPTH_VISION=opts.get("depth_vision", 0), PROMPT_DEPTH_TEXT=opts.get("depth_text", 0)),
        VPT=ns(N_CTX_VISION=opts.get("n_ctx_vision", 0), CTX_INIT="a photo of a", PREC="fp32",
               PROMPT_DEPTH_VISION=opts.get("depth_vision", 0)))
    return ns(TRAINER=trainer, INPUT=ns(SIZE=(32, 32)), MODEL=ns(BACKBONE=ns(NAME="tiny-ViT"), INIT_WEIGHTS=""),
              OPTIM=optim)


def run(case):
    method, opts = V.CASES[case]
    module, cls = (independentVL, independentVL.IVLP) if method == "ivlp" else (vpt, vpt.VPT)
    clip.build_model = _build_no_half() if case.endswith("no_half") else BUILD_AS_IS
    fake = ns(cfg=config(method, opts), dm=ns(dataset=ns(classnames=W.CLASSNAMES)), device=torch.device("cpu"),
              register_model=lambda *a, **k: None, batch_idx=0, num_batches=2)
    fake.parse_batch_train = lambda batch: cls.parse_batch_train(fake, batch)
    cls.build_model(fake)
    model = fake.model
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    params = dict(model.named_parameters())
    tok, names = V.tokens(case), V.official_names(case)
    record = {"trainable": trainable, "lr": fake.optim.param_groups[0]["lr"],
              "optimizer": {k: fake.optim.param_groups[0][k] for k in ("momentum", "weight_decay", "dampening",
                                                                          "nesterov")}}
    with torch.no_grad():
        if method == "ivlp":
            record["ctx_init"] = params["prompt_learner.ctx"].tolist()
            params["prompt_learner.ctx"].add_(tok["ctx_delta"])
        else:
            record["fixed_text_features"] = model.embeddings.return_fixed_embeddings().tolist()
        for ours, theirs in names.items():
            if ours != "ctx":
                stack, j = ours.split(".")
                params[theirs].copy_(tok[stack][int(j)])
    torch.Tensor.cuda = lambda self, *a, **k: self  # VPT's CustomCLIP moves its fixed text features to CUDA
    model.eval()
    with torch.no_grad():
        record["logits"] = model(IMAGES).tolist()
    model.train()
    record["loss"] = cls.forward_backward(fake, {"img": IMAGES, "label": LABELS})["loss"]
    record["grads"] = {ours: params[theirs].grad.tolist() for ours, theirs in names.items()}
    record["params_after"] = {ours: params[theirs].detach().tolist() for ours, theirs in names.items()}
    model.eval()
    with torch.no_grad():
        record["logits_after"] = model(IMAGES).tolist()
    return record


out = {
    "source": {"repo": "muzairkhattak/multimodal-prompt-learning", "commit": "69bce21ae8eda80ad6187534b2dce09cf6c59e17",
               "files": ["clip/clip.py", "clip/model.py", "trainers/independentVL.py", "trainers/vpt.py", *YAML.values()],
               "dassl": {"repo": "KaiyangZhou/Dassl.pytorch", "commit": "c61a1b570ac6333bd50fb5ae06aea59002fb20bb",
                         "files": ["dassl/optim/optimizer.py", "dassl/optim/radam.py"]}},
    "torch": torch.__version__, "python": platform.python_version(),
    "weights_sha256": W.tensors_sha256(W.state_dict()), "inputs_sha256": W.tensors_sha256(INP),
    "tokens_sha256": {c: W.tensors_sha256(V.tokens(c)) for c in V.CASES},
    "yaml": {m: official_yaml(m) for m in YAML},
    "cases": {c: run(c) for c in V.CASES},
}
Path(OUT).write_text(json.dumps(out))
print("wrote", OUT)
