"""Write ``official_adapters.json``: the OFFICIAL CLIP-Adapter and TaskRes trainers run on fixed cached features.

Not part of the test suite (vlprompt's driver; the official code is read from OFFICIAL_DIR, never stored here)::

    python tests/fidelity/figures/make_adapter_figures.py OFFICIAL_DIR tests/fidelity/figures/official_adapters.json

OFFICIAL_DIR holds, unmodified: ``clip_adapter.py`` (gaopengcuhk/CLIP-Adapter 08d07f8), ``taskres.py``
(geekyutao/TaskRes 5195359 ``trainers/taskres.py``) and ``dassl/`` (KaiyangZhou/Dassl.pytorch c61a1b5:
``optim/{__init__,optimizer,lr_scheduler,radam}.py``, ``engine/trainer.py``, ``metrics/accuracy.py``). A temporary
package tree is built from them: Dassl's optimiser and scheduler modules as they are (one line adapted to torch ≥ 2.7,
which dropped ``LRScheduler``'s ``verbose`` argument), a ``TrainerX`` made of the methods of Dassl's ``TrainerBase``
that one training step uses (extracted by ``ast`` from ``engine/trainer.py``), ``compute_accuracy`` from
``metrics/accuracy.py``, and stubs for what is not on this path (``clip.tokenize``: a prompt → id; the CLIP:
identity image encoder, raw text features looked up by prompt; TaskRes's base features: the given raw text).
"""

from __future__ import annotations

import ast
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace as NS

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import adapter_inputs as AI  # noqa: E402

X = AI.adapter_inputs()
CLASSNAMES = ["cat", "dog", "car", "tree"]
NEW_NAMES = ["bus", "bird", "lamp"]
TRAINER_METHODS = ("__init__", "register_model", "get_model_names", "model_zero_grad", "model_backward",
                   "model_update", "model_backward_and_update", "update_lr", "detect_anomaly")
STUB_CLIP = '''import torch
PROMPTS = []
class Ids(torch.Tensor):
    def to(self, *args, **kwargs):  # prompts.to("cuda"): a no-op on this CPU run
        return self
def tokenize(text):
    if text not in PROMPTS:
        PROMPTS.append(text)
    return torch.tensor([[PROMPTS.index(text)]]).as_subclass(Ids)
'''


def build_tree(official: Path, root: Path) -> None:
    """The importable package tree (official modules + stubs) under ``root``."""
    shutil.copytree(official / "dassl" / "optim", root / "dassl" / "optim")
    sched = root / "dassl" / "optim" / "lr_scheduler.py"
    sched.write_text(sched.read_text().replace("super().__init__(optimizer, last_epoch, verbose)",
                                               "super().__init__(optimizer, last_epoch)"))
    (root / "dassl" / "__init__.py").write_text("")
    src = (official / "dassl" / "engine" / "trainer.py").read_text()
    base = next(n for n in ast.parse(src).body if isinstance(n, ast.ClassDef) and n.name == "TrainerBase")
    methods = ["    " + ast.get_source_segment(src, f) for f in base.body
               if isinstance(f, ast.FunctionDef) and f.name in TRAINER_METHODS]
    (root / "dassl" / "engine").mkdir()
    (root / "dassl" / "engine" / "__init__.py").write_text(
        "import torch\nfrom collections import OrderedDict\nfrom dassl.utils import tolist_if_not\n"
        "class _Registry:\n    def register(self):\n        return lambda cls: cls\nTRAINER_REGISTRY = _Registry()\n"
        "class TrainerX:\n" + "\n".join(methods) + "\n")
    (root / "dassl" / "metrics.py").write_text((official / "dassl" / "metrics" / "accuracy.py").read_text())
    (root / "dassl" / "utils.py").write_text(
        "def tolist_if_not(x):\n    return x if isinstance(x, list) else [x]\n"
        "def load_pretrained_weights(*a, **k):\n    raise NotImplementedError\n"
        "def load_checkpoint(*a, **k):\n    raise NotImplementedError\n")
    (root / "clip").mkdir()
    (root / "clip" / "__init__.py").write_text("")
    (root / "clip" / "clip.py").write_text(STUB_CLIP)
    (root / "clip" / "simple_tokenizer.py").write_text("class SimpleTokenizer:\n    pass\n")
    (root / "trainers").mkdir()
    (root / "trainers" / "__init__.py").write_text("")
    (root / "trainers" / "imagenet_templates.py").write_text("IMAGENET_TEMPLATES = []\nIMAGENET_TEMPLATES_SELECT = []\n")
    shutil.copy(official / "clip_adapter.py", root / "official_clip_adapter.py")
    shutil.copy(official / "taskres.py", root / "official_taskres.py")


def optim_cfg(name: str, lr: float, epochs: int) -> NS:
    """Dassl's ``OPTIM`` defaults (``dassl/config/defaults.py``) with the trainers' cosine + constant warm-up."""
    return NS(NAME=name, LR=lr, WEIGHT_DECAY=5e-4, MOMENTUM=0.9, SGD_DAMPNING=0, SGD_NESTEROV=False,
              RMSPROP_ALPHA=0.99, ADAM_BETA1=0.9, ADAM_BETA2=0.999, STAGED_LR=False, NEW_LAYERS=(), BASE_LR_MULT=0.1,
              LR_SCHEDULER="cosine", STEPSIZE=(-1,), GAMMA=0.1, MAX_EPOCH=epochs, WARMUP_EPOCH=1,
              WARMUP_TYPE="constant", WARMUP_CONS_LR=1e-5, WARMUP_MIN_LR=1e-5, WARMUP_RECOUNT=True)


class StubCLIP(nn.Module):
    """Identity image encoder (the 'images' are cached features); raw text features looked up by prompt."""

    def __init__(self, table: dict[str, torch.Tensor]):
        super().__init__()
        self.visual = nn.Identity()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(100.0)))
        self.dtype = torch.float32
        self.table = table
        # read by TaskRes's TextEncoder.__init__ (never run: the base features are given)
        self.transformer, self.ln_final = nn.Identity(), nn.Identity()
        self.positional_embedding, self.text_projection = torch.zeros(1), torch.zeros(1)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        from clip import clip
        return torch.stack([self.table[clip.PROMPTS[i]] for i in ids[:, 0].tolist()])


class Feats(Dataset):
    def __init__(self, feats: torch.Tensor, labels: torch.Tensor):
        self.f, self.y = feats, labels

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"img": self.f[i], "label": self.y[i]}


class FixedOrder(Sampler):
    def __init__(self, order: list[int]):
        self.order = order

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def orders(n: int, epochs: int, seed: int) -> list[list[int]]:
    """The batch order both sides use: one ``torch.randperm`` per epoch from a generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randperm(n, generator=g).tolist() for _ in range(epochs)]


def run_epochs(tr, feats_of_epoch, bs: int, order_list: list[list[int]]):
    """Dassl's ``TrainerX.run_epoch`` loop: ``build_data_loader``'s DataLoader (``drop_last = len ≥ batch``), the
    official ``forward_backward`` per batch (it calls ``update_lr`` after the last one); mean batch loss."""
    labels = X["labels"]
    losses, lrs, batches = [], [], []
    for epoch, order in enumerate(order_list):
        loader = DataLoader(Feats(feats_of_epoch(epoch), labels), batch_size=bs, sampler=FixedOrder(order),
                            drop_last=len(labels) >= bs)
        tr.num_batches = len(loader)
        lrs.append(next(iter(tr._optims.values())).param_groups[0]["lr"])
        batches.append(list(loader.batch_sampler))
        ep = [tr.forward_backward(batch)["loss"] for tr.batch_idx, batch in enumerate(loader)]
        losses.append(sum(ep) / len(ep))
    return {"orders": order_list, "batches": batches, "epoch_losses": losses, "epoch_lrs": lrs}


def r(t: torch.Tensor):
    t = t.detach()
    return [round(float(v), 7) for v in t.flatten().tolist()] if t.dim() <= 1 else [r(row) for row in t]


def trainer(cls, cfg, model, name: str, module: nn.Module):
    """The official trainer object with the state its ``build_model`` would leave (model, optim, sched)."""
    from dassl.optim import build_lr_scheduler, build_optimizer
    tr = cls.__new__(cls)
    super(cls, tr).__init__()  # Dassl's TrainerBase.__init__ (the extracted one)
    tr.cfg, tr.model, tr.device = cfg, model, torch.device("cpu")
    optim = build_optimizer(module, cfg.OPTIM)
    tr.register_model(name, module, optim, build_lr_scheduler(optim, cfg.OPTIM))
    return tr


def clip_adapter_case(seed: int, lr: float, epochs: int, bs: int) -> dict:
    import official_clip_adapter as CA
    from clip import clip
    clip.PROMPTS.clear()
    table = {f"a photo of a {c}.": X["text_raw"][i] for i, c in enumerate(CLASSNAMES)}
    table.update({f"a photo of a {c}.": X["new_text_raw"][i] for i, c in enumerate(NEW_NAMES)})
    cfg = NS(DATASET=NS(NAME="ImageNet"), MODEL=NS(BACKBONE=NS(NAME="RN50"), INIT_WEIGHTS=""),
             OPTIM=optim_cfg("sgd", lr, epochs))
    clip_model = StubCLIP(table)
    torch.manual_seed(seed)  # the Adapter's two nn.Linear inits are the only draws in CustomCLIP.__init__
    model = CA.CustomCLIP(cfg, CLASSNAMES, clip_model)
    for name, p in model.named_parameters():  # as CLIP_Adapter.build_model
        if "adapter" not in name:
            p.requires_grad_(False)
    tr = trainer(CA.CLIP_Adapter, cfg, model, "clip_adapter", model.adapter)
    new_encoder = CA.TextEncoder(cfg, NEW_NAMES, clip_model)

    def state() -> dict:
        with torch.no_grad():
            logits = model(X["test"])
            saved, model.text_encoder = model.text_encoder, new_encoder
            new = model(X["test"])
            model.text_encoder = saved
        fc0, fc2 = model.adapter.fc[0].weight, model.adapter.fc[2].weight
        return {"logits": r(logits), "new_class_logits": r(new), "fc0_norm": float(fc0.detach().norm()),
                "fc2_norm": float(fc2.detach().norm()), "fc0_first8": r(fc0.flatten()[:8]),
                "fc2_first8": r(fc2.flatten()[:8])}

    out = {"config": {"seed": seed, "lr": lr, "epochs": epochs, "batch_size": bs, "optimizer": "sgd",
                      "views": AI.NUM_VIEWS, "classnames": CLASSNAMES, "new_classnames": NEW_NAMES},
           "logit_scale": float(model.logit_scale.exp()), "init": state()}
    out.update(run_epochs(tr, lambda e: X["views"][e % AI.NUM_VIEWS], bs, orders(len(X["labels"]), epochs, seed)))
    out["final"] = state()
    return out


def taskres_case(seed: int, lr: float, epochs: int, bs: int, alpha: float, use_views: bool) -> dict:
    import official_taskres as TR
    cfg = NS(DATASET=NS(NAME="ImageNet"), MODEL=NS(BACKBONE=NS(NAME="RN50"), INIT_WEIGHTS=""),
             OPTIM=optim_cfg("adam", lr, epochs),
             TRAINER=NS(TaskRes=NS(RESIDUAL_SCALE=alpha, ENHANCED_BASE="none", PREC="fp32")))
    TR._get_base_text_features = lambda cfg, classnames, clip_model, text_encoder: X["text_raw"].clone()
    model = TR.CustomCLIP(cfg, CLASSNAMES, StubCLIP({}))
    for name, p in model.named_parameters():  # as TaskRes.build_model
        if "prompt_learner" not in name:
            p.requires_grad_(False)
    model = model.float()
    tr = trainer(TR.TaskRes, cfg, model, "prompt_learner", model.prompt_learner)
    res = model.prompt_learner.text_feature_residuals

    def logits():
        with torch.no_grad():
            return r(model(X["test"]))

    out = {"config": {"seed": seed, "lr": lr, "epochs": epochs, "batch_size": bs, "optimizer": "adam",
                      "alpha": alpha, "views": AI.NUM_VIEWS if use_views else 0},
           "logit_scale": float(model.logit_scale.exp()),
           "init": {"logits": logits(), "residual_norm": float(res.detach().norm()),
                    "base_norms": r(model.prompt_learner.base_text_features.norm(dim=-1))}}
    feats = (lambda e: X["views"][e % AI.NUM_VIEWS]) if use_views else (lambda e: X["train"])
    out.update(run_epochs(tr, feats, bs, orders(len(X["labels"]), epochs, seed)))
    out["final"] = {"logits": logits(), "residual_norm": float(res.detach().norm()),
                    "residual_first8": r(res.flatten()[:8]), "residual_row_norms": r(res.norm(dim=-1))}
    return out


def dassl_lr_trace(max_epoch: int, lr: float) -> dict:
    """The lr of every epoch under Dassl's cosine + constant warm-up, stepped once per epoch."""
    from dassl.optim import build_lr_scheduler, build_optimizer
    cfg = optim_cfg("sgd", lr, max_epoch)
    opt = build_optimizer([nn.Parameter(torch.zeros(1))], cfg)
    sched = build_lr_scheduler(opt, cfg)
    trace = []
    for _ in range(max_epoch):
        trace.append(opt.param_groups[0]["lr"])
        sched.step()
    return {"max_epoch": max_epoch, "lr": lr, "warmup_epochs": 1, "warmup_lr": 1e-5, "epoch_lrs": trace}


def main(official: Path, out: Path) -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        build_tree(official, Path(tmp))
        sys.path.insert(0, tmp)
        fig = {"inputs_sha256": AI.inputs_sha256(), "torch": torch.__version__, "cases": {
            "clip_adapter": clip_adapter_case(seed=0, lr=0.002, epochs=4, bs=5),
            "clip_adapter_lr": clip_adapter_case(seed=3, lr=0.05, epochs=3, bs=4),
            "taskres_views": taskres_case(seed=0, lr=2e-3, epochs=5, bs=32, alpha=0.5, use_views=True),
            "taskres_b4": taskres_case(seed=1, lr=2e-3, epochs=3, bs=4, alpha=1.0, use_views=False),
        }, "dassl_lr": [dassl_lr_trace(200, 0.002), dassl_lr_trace(100, 2e-3), dassl_lr_trace(10, 2e-4)]}
    out.write_text(json.dumps(fig, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
