"""Run the OFFICIAL MaPLe trainer on the MaPLe fidelity weights and inputs; write ``official_maple.json``.

Not part of the test suite and not official code: a driver that imports ``clip/`` and ``trainers/`` of
``muzairkhattak/multimodal-prompt-learning`` (69bce21) and ``dassl/optim/`` of ``KaiyangZhou/Dassl.pytorch``
(c61a1b5) from OFFICIAL_ROOT, a folder outside this repository (README.md here says how to extract them), and runs
the official ``MaPLe.build_model`` (through its own ``load_clip_to_cpu`` and ``clip.build_model(state_dict,
design_details)``, ``PREC fp32``, the trainer's "prompt_learner" gradient filter, Dassl's ``build_optimizer``: SGD
lr 0.0035, momentum 0.9, weight decay 5e-4) and one ``MaPLe.forward_backward`` step on a batch of 4 images.

Stubs and changes, all in memory: ``dassl.engine`` / ``dassl.metrics`` / ``dassl.utils`` (only the names imported,
``register_model`` keeps the model), ``clip._download`` (returns a ``torch.save`` of ``maple_inputs.state_dict()``,
which ``torch.jit.load`` refuses, so ``load_clip_to_cpu`` reads it with ``torch.load`` as for a state dict),
``build_lr_scheduler`` (returns ``None``: the scheduler is only stepped after an epoch's last batch), and
``CustomCLIP`` is preceded by ``torch.manual_seed(INIT_SEED)`` so that the prompt learner's random init is
reproducible. ``PREC fp32`` as written fails at the first forward (``MaPLe.build_model`` calls ``clip_model.float()``
before building the prompt learner, whose ``self.proj.half()`` then meets the fp32 ``ctx``); the error is recorded
and ``prompt_learner.proj.float()`` applied (the fp16-rounded init values are kept). Variants as in
``make_deep_prompt_figures.py``: ``as_is`` and ``no_half`` (the six prompt-token ``.half()`` casts of
``clip/model.py`` made ``.type(x.dtype)``).

usage: python make_maple_figures.py OFFICIAL_ROOT OUT.json
"""
import json
import platform
import sys
import tempfile
import types
from pathlib import Path
from types import SimpleNamespace as NS

import torch

ROOT, OUT = sys.argv[1], sys.argv[2]
sys.path.insert(0, ROOT)
HERE = Path(__file__).resolve().parent
sys.path.insert(1, str(HERE.parent))  # tests/fidelity
sys.path.insert(2, str(HERE))
torch.set_num_threads(1)


def _stub(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    sys.modules[name] = m


class _Registry:
    def register(self):
        return lambda cls: cls


class _TrainerX:
    def register_model(self, name, model, optim, sched):
        self._models, self._optims = {name: model}, {name: optim}


_stub("dassl.engine", TRAINER_REGISTRY=_Registry(), TrainerX=_TrainerX)
_stub("dassl.metrics", compute_accuracy=None)
_stub("dassl.utils", load_pretrained_weights=None, load_checkpoint=None)

import maple_inputs as M  # noqa: E402
from clip import clip  # noqa: E402  (official)
from trainers import maple  # noqa: E402  (official; imports dassl.optim from OFFICIAL_ROOT)


def build_no_half(root: str):
    """The official ``clip/model.py`` with its six prompt-token ``.half()`` casts made ``.type(x.dtype)`` (the
    ``no_half`` patch of ``make_deep_prompt_figures.py``), executed in memory; its ``build_model``."""
    import importlib.util

    path = Path(root) / "clip" / "model.py"
    src = path.read_text()
    patched = src.replace("permute(1, 0, 2).half()", "permute(1, 0, 2).type(x.dtype)").replace(
        "expand(x.shape[0], -1, -1).half()", "expand(x.shape[0], -1, -1).type(x.dtype)")
    assert src.count(".half()") - patched.count(".half()") == 6, "expected 4 + 2 prompt casts"
    mod = importlib.util.module_from_spec(importlib.util.spec_from_loader("official_model_no_half", loader=None))
    exec(compile(patched, str(path), "exec"), mod.__dict__)
    return mod.build_model


SD = M.state_dict()
INP = M.fixed_inputs()
BUILD = {"as_is": clip.build_model, "no_half": build_no_half(ROOT)}
_custom_clip = maple.CustomCLIP


def _seeded_custom_clip(cfg, classnames, clip_model):
    torch.manual_seed(M.INIT_SEED)
    return _custom_clip(cfg, classnames, clip_model)


def config(depth: int) -> NS:
    optim = NS(NAME="sgd", LR=M.LR, WEIGHT_DECAY=5e-4, MOMENTUM=0.9, SGD_DAMPNING=0, SGD_NESTEROV=False,
               RMSPROP_ALPHA=0.99, ADAM_BETA1=0.9, ADAM_BETA2=0.999, STAGED_LR=False, NEW_LAYERS=(), BASE_LR_MULT=0.1)
    maple_cfg = NS(N_CTX=M.N_CTX, CTX_INIT=M.CTX_INIT, PREC="fp32", PROMPT_DEPTH=depth)
    return NS(MODEL=NS(BACKBONE=NS(NAME="ViT-B/16"), INIT_WEIGHTS=""), TRAINER=NS(MAPLE=maple_cfg),
              INPUT=NS(SIZE=(M.ARCH["vision_cfg"]["image_size"],) * 2), OPTIM=optim)


def trainer(depth: int, variant: str, weights: str):
    """The official MaPLe trainer after its own ``build_model``."""
    clip._download = lambda url: weights
    clip.build_model = BUILD[variant]
    maple.CustomCLIP = _seeded_custom_clip
    maple.build_lr_scheduler = lambda optim, cfg: None
    tr = maple.MaPLe.__new__(maple.MaPLe)
    tr.cfg, tr.device = config(depth), torch.device("cpu")
    tr.dm = NS(dataset=NS(classnames=list(M.CLASSNAMES)))
    tr.build_model()
    return tr


def run(depth: int, variant: str, weights: str) -> dict:
    tr = trainer(depth, variant, weights)
    model, learner = tr.model, tr.model.prompt_learner
    trained = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    proj_dtype = str(learner.proj.weight.dtype)
    model.eval()
    try:
        model(INP["images"])
        error = None
    except RuntimeError as e:  # PREC fp32 as written: the fp16 proj meets the fp32 ctx
        error = str(e)
    learner.proj.float()
    init = {n: p.detach().clone() for n, p in learner.named_parameters()}
    projections = list(learner.compound_prompt_projections)
    clones_equal = all(torch.equal(a, b) for p in projections for a, b in zip(p.parameters(), projections[0].parameters()))
    with torch.no_grad():
        logits = model(INP["images"])
    model.train()
    tr.batch_idx, tr.num_batches = 0, 2  # not the epoch's last batch: no scheduler step
    loss = tr.forward_backward({"img": INP["images"], "label": INP["labels"]})["loss"]
    grads = {n: M.summary(p.grad, INP) for n, p in learner.named_parameters()}
    model.eval()
    with torch.no_grad():
        after = model(INP["images"])
    return {
        "depth": depth, "variant": variant, "trained": trained, "proj_dtype_built": proj_dtype,
        "fp32_as_written_error": error, "init_sha256": M.D.tensors_sha256(init),
        "init_names": sorted(init), "deeper_projections_equal_at_init": clones_equal,
        "tokenized_prompts": learner.tokenized_prompts[:, :12].tolist(), "logits": M.rounded(logits), "loss": loss,
        "grads": grads, "logits_after": M.rounded(after),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        weights = str(Path(tmp) / "weights.pt")
        torch.save({k: v.clone() for k, v in SD.items()}, weights)
        cases = {name: run(depth, variant, weights) for name, depth, variant in M.CASES}
    out = {
        "source": {"repo": "muzairkhattak/multimodal-prompt-learning",
                   "commit": "69bce21ae8eda80ad6187534b2dce09cf6c59e17",
                   "files": ["clip/clip.py", "clip/model.py", "trainers/maple.py"],
                   "dassl": {"repo": "KaiyangZhou/Dassl.pytorch", "commit": "c61a1b570ac6333bd50fb5ae06aea59002fb20bb",
                             "files": ["dassl/optim/optimizer.py"]}},
        "torch": torch.__version__, "python": platform.python_version(),
        "weights_sha256": M.D.tensors_sha256(SD), "inputs_sha256": M.D.tensors_sha256(INP),
        "init_seed": M.INIT_SEED, "lr": M.LR, "cases": cases,
    }
    Path(OUT).write_text(json.dumps(out, separators=(",", ":")))
    print("wrote", OUT)


if __name__ == "__main__":
    main()
