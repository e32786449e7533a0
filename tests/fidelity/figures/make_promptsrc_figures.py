"""Run the OFFICIAL PromptSRC trainer (``muzairkhattak/PromptSRC``) on the PromptSRC fidelity inputs; write figures.

Not part of the test suite and not official code: a driver that executes ``clip/model.py`` and
``trainers/promptsrc.py`` from a folder outside this repository (README.md here says how to extract them), stubs the
``dassl`` imports, builds the official ``PromptSRC`` trainer through its own ``build_model`` (``CustomCLIP``,
``VLPromptLearner`` with its 60-template frozen text features, the name filter that turns gradients on, the GPA
weights) and runs its own ``forward_backward``: the loss terms (recorded by wrapping the module's ``F.l1_loss`` /
``F.kl_div`` / ``F.cross_entropy``), every trained parameter's gradient, the logits at init and after the step; then
four one-batch epochs through ``forward_backward`` again, whose Gaussian prompt aggregation (GPA) is recorded.

Patches (in memory, before execution), each because the official fp32 mode (``PREC fp32``) cannot run otherwise —
the driver first runs the unpatched file and records the error:

- ``load_clip_to_cpu`` (a download) is replaced by ``build_model(<these weights>, design_details)`` of the same
  module, with the official design details; the zero-shot copies are ``.float()``-ed (officially they stay fp16,
  and the fp16 ``ZS_image_encoder`` then refuses the fp32 images);
- ``fixed_embeddings.half().cuda().t()`` becomes ``fixed_embeddings.half().float().cuda().t()`` (variant ``as_is``:
  the fp16 rounding kept; fp32 features @ an fp16 matrix raise) or ``fixed_embeddings.cuda().t()`` (``no_half``);
- ``no_half`` also makes the six prompt-token ``.half()`` casts of ``clip/model.py`` ``.type(x.dtype)`` (as
  ``make_deep_prompt_figures.py``); ``.cuda()`` is a no-op; Dassl's ``build_optimizer`` is ``torch.optim.SGD`` (lr
  ``promptsrc_inputs.LR``, momentum 0.9, weight decay 5e-4: Dassl's defaults) over the parameters left trainable.

usage: python make_promptsrc_figures.py OFFICIAL_ROOT OUT.json
"""
import contextlib
import copy
import importlib.util
import io
import json
import platform
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT, OUT = Path(sys.argv[1]), sys.argv[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # tests/fidelity
torch.set_num_threads(1)
torch.Tensor.cuda = lambda self, *a, **k: self
torch.nn.Module.cuda = lambda self, *a, **k: self
NS = types.SimpleNamespace


def _stub(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    sys.modules[name] = m


class _Registry:
    def register(self):
        return lambda cls: cls


_stub("dassl")
_stub("dassl.engine", TRAINER_REGISTRY=_Registry(), TrainerX=object)
_stub("dassl.utils", load_pretrained_weights=None, load_checkpoint=None)
_stub("dassl.optim", build_optimizer=None, build_lr_scheduler=None)

import promptsrc_inputs as P  # noqa: E402
import trainers  # noqa: E402, F401  (official package, empty __init__)

SD = P.state_dict()
INP = P.fixed_inputs()
J = P.DEPTH
HALF_CASTS = [("permute(1, 0, 2).half()", "permute(1, 0, 2).type(x.dtype)"),
              ("expand(x.shape[0], -1, -1).half()", "expand(x.shape[0], -1, -1).type(x.dtype)")]
TEACHER = "fixed_embeddings.half().cuda().t()"
PATCH = {"as_is": "fixed_embeddings.half().float().cuda().t()", "no_half": "fixed_embeddings.cuda().t()"}


def _exec(name, path, src, package=None):
    spec = importlib.util.spec_from_loader(name, loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = package
    exec(compile(src, str(path), "exec"), mod.__dict__)
    return mod


def load(variant, float_zero_shot=True):
    """The official trainer module (variant ``as_is`` / ``no_half`` / ``unpatched``) with its CLIP loader replaced."""
    msrc = (ROOT / "clip" / "model.py").read_text()
    tsrc = (ROOT / "trainers" / "promptsrc.py").read_text()
    assert tsrc.count(TEACHER) == 1
    if variant == "no_half":
        patched = msrc
        for a, b in HALF_CASTS:
            patched = patched.replace(a, b)
        assert msrc.count(".half()") - patched.count(".half()") == 6
        msrc = patched
    if variant in PATCH:
        tsrc = tsrc.replace(TEACHER, PATCH[variant])
    model_mod = _exec(f"official_model_{variant}", ROOT / "clip" / "model.py", msrc)
    mod = _exec(f"official_promptsrc_{variant}", ROOT / "trainers" / "promptsrc.py", tsrc, package="trainers")

    def load_clip_to_cpu(cfg, zero_shot_model=False):  # the official function, without the download
        c = cfg.TRAINER.PROMPTSRC
        design = {"trainer": "IVLP", "vision_depth": 0, "language_depth": 0, "vision_ctx": 0, "language_ctx": 0}
        if not zero_shot_model:
            design = {"trainer": "IVLP", "vision_depth": c.PROMPT_DEPTH_VISION, "language_depth": c.PROMPT_DEPTH_TEXT,
                      "vision_ctx": c.N_CTX_VISION, "language_ctx": c.N_CTX_TEXT}
        model = model_mod.build_model({k: v.clone() for k, v in SD.items()}, design)  # fp16, as officially
        return model.float() if zero_shot_model and float_zero_shot else model

    mod.load_clip_to_cpu = load_clip_to_cpu
    mod.build_optimizer = lambda model, _: torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=P.LR, momentum=0.9, weight_decay=5e-4)
    mod.build_lr_scheduler = lambda optim, _: None
    return mod


def trainer(mod, epochs=20, mean=15.0, std=1.0):
    """The official ``PromptSRC`` trainer after its own ``build_model`` (PREC fp32), prompts set to the inputs."""
    cfg = NS(TRAINER=NS(PROMPTSRC=NS(N_CTX_VISION=P.N_VISION, N_CTX_TEXT=P.N_TEXT, CTX_INIT=P.CTX_INIT, PREC="fp32",
                                     PROMPT_DEPTH_VISION=J, PROMPT_DEPTH_TEXT=J, TEXT_LOSS_WEIGHT=P.TEXT_LOSS_WEIGHT,
                                     IMAGE_LOSS_WEIGHT=P.IMAGE_LOSS_WEIGHT, GPA_MEAN=mean, GPA_STD=std)),
             INPUT=NS(SIZE=(32, 32)), OPTIM=NS(MAX_EPOCH=epochs), MODEL=NS(BACKBONE=NS(NAME="ViT-B/16"),
                                                                          INIT_WEIGHTS=""))
    tr = mod.PromptSRC.__new__(mod.PromptSRC)
    tr.cfg, tr.device = cfg, torch.device("cpu")
    tr.dm = NS(dataset=NS(classnames=list(P.CLASSNAMES)))
    tr.register_model = lambda *a, **k: None
    tr.update_lr = lambda: None
    with contextlib.redirect_stdout(io.StringIO()):
        tr.build_model()
    m = tr.model
    with torch.no_grad():
        for j in range(1, J):
            m.text_encoder.transformer.resblocks[j].VPT_shallow.copy_(INP["deep_text"][j - 1])
            m.image_encoder.transformer.resblocks[j].VPT_shallow.copy_(INP["vision"][j])
        m.image_encoder.VPT.copy_(INP["vision"][0])
    return tr


def prompts_of(m, grad=False):
    """The official model's prompts (or their gradients) in vlprompt's layout: ctx ``[n_t, D]``, deep_text
    ``[J − 1, n_t, D]``, deep_vision ``[J, n_v, D]``."""
    def get(p):
        return (p.grad if grad else p).detach().clone()
    text_blocks, vision_blocks = m.text_encoder.transformer.resblocks, m.image_encoder.transformer.resblocks
    return {"ctx": get(m.prompt_learner.ctx),
            "deep_text": torch.stack([get(text_blocks[j].VPT_shallow) for j in range(1, J)]),
            "deep_vision": torch.stack([get(m.image_encoder.VPT)] + [get(vision_blocks[j].VPT_shallow)
                                                                      for j in range(1, J)])}


class Recorder:
    """Stands in for the trainer module's ``F``: records what the loss functions return."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        f = getattr(F, name)
        if name not in ("l1_loss", "kl_div", "cross_entropy"):
            return f

        def wrapped(*a, **k):
            out = f(*a, **k)
            self.calls.append((name, out.item()))
            return out
        return wrapped


def logits_of(m):
    m.eval()
    with torch.no_grad():
        out = m(INP["images"])
    m.train()
    return out


def step_case(variant):
    mod = load(variant)
    tr = trainer(mod)
    m = tr.model
    enabled = sorted(n for n, p in m.named_parameters() if p.requires_grad)
    init = prompts_of(m)
    logits0 = logits_of(m)
    with torch.no_grad():
        _, text, fixed, zs_img, img, zs_logits, _ = m(INP["images"], INP["labels"])
    rec = Recorder()
    mod.F = rec
    tr.batch_idx, tr.num_batches = 0, 2  # not the epoch's last batch: no GPA, no lr update
    loss = tr.forward_backward({"img": INP["images"], "label": INP["labels"]})["loss"]
    names = [c[0] for c in rec.calls]
    assert names == ["cross_entropy", "l1_loss", "l1_loss", "kl_div"], names
    n = m.prompt_learner.n_cls * len(P.LABELS)
    grads = {k: v.tolist() for k, v in prompts_of(m, grad=True).items()}
    return {
        "enabled": enabled, "ctx_init": init["ctx"].tolist(), "logits": logits0.tolist(),
        "text": text.tolist(), "fixed_text": fixed.tolist(), "zs_image": zs_img.tolist(), "image": img.tolist(),
        "zs_logits": zs_logits.tolist(),
        "loss": {"ce": rec.calls[0][1], "text_l1": rec.calls[1][1], "image_l1": rec.calls[2][1],
                 "kl": rec.calls[3][1] / n, "total": loss},
        "grads": grads, "logits_after": logits_of(m).tolist(),
    }


def unpatched_error():
    """What the official file does in fp32 mode with the zero-shot copies left fp16, as ``load_clip_to_cpu`` does."""
    tr = trainer(load("unpatched", float_zero_shot=False))
    tr.batch_idx, tr.num_batches = 0, 2
    try:
        tr.forward_backward({"img": INP["images"], "label": INP["labels"]})
    except RuntimeError as e:
        return str(e).splitlines()[0]
    return None


def gpa_case():
    """Four one-batch epochs through the official ``forward_backward`` (GPA at each epoch's last batch, the
    aggregate loaded after the last): the prompts entering each epoch's weighting and the final prompts."""
    epochs, mean, std = P.GPA_FAKE
    mod = load("no_half")
    tr = trainer(mod, epochs, mean, std)
    seen = []
    weighting = tr.state_dict_weighting

    def record(main_dict, weightage, prompt_only=False):
        seen.append((float(weightage), {k: v.clone() for k, v in main_dict.items()}))
        return weighting(main_dict, weightage, prompt_only)

    tr.state_dict_weighting = record
    tr.batch_idx, tr.num_batches = 0, 1
    for _ in range(epochs):
        tr.forward_backward({"img": INP["images"], "label": INP["labels"]})
    states = []
    for _, sd in seen:
        states.append({"ctx": sd["prompt_learner.ctx"],
                       "deep_text": torch.stack([sd[f"text_encoder.transformer.resblocks.{j}.VPT_shallow"]
                                                 for j in range(1, J)]),
                       "deep_vision": torch.stack([sd["image_encoder.VPT"]] + [
                           sd[f"image_encoder.transformer.resblocks.{j}.VPT_shallow"] for j in range(1, J)])})
    final = prompts_of(tr.model)
    frozen = {k: v for k, v in tr.model.state_dict().items() if k.startswith("image_encoder.transformer")}
    drift = max(float((v - SD["visual." + k[len("image_encoder."):]]).abs().max()) for k, v in frozen.items()
                if "VPT" not in k)
    return {"epochs": epochs, "mean": mean, "std": std, "weights": [w for w, _ in seen],
            "states": [{k: v.tolist() for k, v in s.items()} for s in states],
            "final": {k: v.tolist() for k, v in final.items()}, "frozen_weight_drift": drift}


def gauss_weights(epochs, mean, std):
    """The official ``build_model`` lines: ``gauss(a)`` for ``a = 1…N``, divided by their (builtin) ``sum``."""
    tr = mod_as_is.PromptSRC.__new__(mod_as_is.PromptSRC)
    g = tr.get_gauss(mean, std)
    w = np.array([g(a) for a in range(1, epochs + 1)])
    return (w / sum(w)).tolist()


def frozen_drift(epochs, mean, std, dtype):
    """max |Σ_e w_e·W − W| over the tiny CLIP's weights when the official GPA aggregates the whole state dict in
    ``dtype`` (it weights ``model.state_dict()``, frozen weights included)."""
    tr = mod_as_is.PromptSRC.__new__(mod_as_is.PromptSRC)
    ws = gauss_weights(epochs, mean, std)
    sd = {k: v.to(dtype) for k, v in SD.items() if v.is_floating_point()}
    agg = None
    for w in ws:
        weighted = tr.state_dict_weighting(copy.deepcopy(sd), w)
        agg = weighted if agg is None else tr.state_dict_add(weighted, agg)
    return max(float((agg[k].float() - sd[k].float()).abs().max()) for k in sd)


mod_as_is = load("as_is")
out = {
    "source": {"repo": "muzairkhattak/PromptSRC", "commit": "bb95c77b634d63488f2cad81ff4a72d53bdd06d5",
               "files": ["clip/model.py", "trainers/promptsrc.py", "trainers/imagenet_templates.py"]},
    "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
    "weights_sha256": P.tensors_sha256(SD), "inputs_sha256": P.tensors_sha256(INP),
    "templates": list(mod_as_is.IMAGENET_TEMPLATES),
    "n_text": P.N_TEXT, "n_vision": P.N_VISION, "depth": J, "lr": P.LR,
    "unpatched_fp32_error": unpatched_error(),
    "cases": {v: step_case(v) for v in ("as_is", "no_half")},
    "gpa": gpa_case(),
    "gauss": [{"epochs": n, "mean": mu, "std": s, "weights": gauss_weights(n, mu, s)} for n, mu, s in P.GPA_SCHEDULES],
    "frozen_drift_base2new": {d: frozen_drift(20, 15.0, 1.0, getattr(torch, d)) for d in ("float32", "float16")},
}
Path(OUT).write_text(json.dumps(out))
print("wrote", OUT)
