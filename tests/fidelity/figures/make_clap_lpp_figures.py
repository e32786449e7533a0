"""Run the OFFICIAL CLAP / ZS-LP and LP++ code on the fixed tensors of ``probe_inputs``; write the figures.

Not part of the test suite and not official code: a driver that imports the official modules from folders outside
this repository (README.md in this folder says how to extract them) and records what they compute.

usage:
  python make_clap_lpp_figures.py clap CLAP_ROOT OUT.json   # CLAP_ROOT: jusiro/CLAP's tree (trainers/, clip/,
                                                            # configs/, datasets/); real Dassl importable
  python make_clap_lpp_figures.py lpp LPP_ROOT OUT.json     # LPP_ROOT: FewShot-CLIP-Strong-Baseline's methods/
"""
import contextlib
import io
import json
import math
import platform
import sys
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import torch
from torch import nn

MODE, ROOT, OUT = sys.argv[1], sys.argv[2], sys.argv[3]
assert MODE in ("clap", "lpp"), MODE
sys.path.insert(0, ROOT)
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # tests/fidelity: probe_inputs
torch.set_num_threads(1)

import probe_inputs as P  # noqa: E402

X = P.probe_inputs()
SEED = 1  # AdapterData's default seed: the batch orders / LP++ bias both sides use
N, V, E, C = X["train"].shape[0], X["views"].shape[0], P.DIM, P.CLASSES


def _l(t):
    return t.detach().double().tolist()


def _cuda_noop():
    """The official code calls .cuda(); everything runs on the CPU here."""
    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self


def batch_orders(epochs):
    """The per-epoch shuffles vlprompt's CLAP draws (torch.randperm on a generator seeded with SEED)."""
    g = torch.Generator().manual_seed(SEED)
    return [torch.randperm(V * N, generator=g) for _ in range(epochs)]


def clap_case(constraint, epochs, batch_size):
    from dassl.config import get_cfg_default
    from dassl.engine.trainer import TrainerBase
    from dassl.optim import build_lr_scheduler, build_optimizer
    from trainers import adapters as A  # the official trainer module
    from yacs.config import CfgNode as CN

    cfg = get_cfg_default()
    cfg.TRAINER.ADAPTER = CN()  # train.py extend_cfg
    cfg.TRAINER.ADAPTER.INIT, cfg.TRAINER.ADAPTER.CONSTRAINT = "ZS", constraint
    cfg.TRAINER.ADAPTER.ENHANCED_BASE, cfg.TRAINER.ADAPTER.PREC = "none", "fp16"
    cfg.merge_from_file(str(Path(ROOT) / "configs/trainers/SGD_lr1e-1_B256_ep300.yaml"))
    cfg.OPTIM.MAX_EPOCH, cfg.DATALOADER.TRAIN_X.BATCH_SIZE = epochs, batch_size
    clip_model = NS(dtype=torch.float32, logit_scale=nn.Parameter(torch.tensor(P.LOGIT_SCALE_LOG)))
    adapter = A.AdapterMethod(cfg, clip_model, X["text_raw"].clone())
    model = A.CustomCLIP.__new__(A.CustomCLIP)  # only forward_features / forward_lp are used
    nn.Module.__init__(model)
    model.logit_scale, model.adapter, model.dtype = clip_model.logit_scale, adapter, torch.float32
    for name, param in model.named_parameters():  # ADAPTER.build_model: freezes CLIP's logit_scale, which the
        if "adapter" not in name:  # adapter shares (AdapterMethod.logit_scale) and hands to the optimiser
            param.requires_grad_(False)
    t = A.ADAPTER.__new__(A.ADAPTER)
    TrainerBase.__init__(t)
    t.cfg, t.device, t.model, t.scaler = cfg, torch.device("cpu"), model, None
    t.optim = build_optimizer(model.adapter, cfg.OPTIM)
    t.sched = build_lr_scheduler(t.optim, cfg.OPTIM)
    t.register_model("adapter", model.adapter, t.optim, t.sched)
    # Dassl's train loader over the N images (data_manager.py: drop_last = is_train and len >= batch_size)
    t.train_loader_x = torch.utils.data.DataLoader(list(range(N)), batch_size=batch_size, drop_last=N >= batch_size)
    t.features_train = X["views"].reshape(V * N, E).clone()  # extract_features: the reps concatenated
    t.labels_train = X["labels"].repeat(V)
    t.features_test, t.labels_test = X["test"].clone(), X["test_labels"].clone()
    with torch.no_grad():
        t.logits_zs = model.forward_lp(t.features_train)  # extract_features: the model's logits at init
    if constraint != "none":
        adapter.device = t.device
        adapter.init_lagrangian_multipliers(t.labels_train, t.logits_zs)
    with torch.no_grad():
        init_logits = model.forward_features(X["test"].clone())
    perms = batch_orders(epochs)
    orders = iter(perms)

    def rand(n):  # np.random.rand(n).argsort() in run_epoch then yields the given permutation
        p = next(orders).numpy()
        r = np.empty(n)
        r[p] = np.arange(n)
        return r

    np.random.rand = rand
    t.start_epoch, t.max_epoch, lrs, summary = 0, epochs, [], {}
    for epoch in range(t.start_epoch, t.max_epoch):  # ADAPTER.train, constraint not "adaptative"
        t.epoch = epoch
        t.before_epoch()
        lrs.append(t.get_current_lr())
        summary = t.run_epoch()
    with torch.no_grad():
        final_logits = model.forward_features(X["test"].clone())
    return {"config": {"constraint": constraint, "epochs": epochs, "batch_size": batch_size,
                       "num_batches": len(t.train_loader_x)},
            "multipliers": _l(adapter.alpha_constraint), "lrs": lrs, "perms_sha256": P.permutations_sha256(perms),
            "init_logits": _l(init_logits), "final_logits": _l(final_logits),
            "final_prototypes": _l(adapter.prototypes), "last_loss": summary.get("loss")}


def run_clap():
    with contextlib.redirect_stdout(io.StringIO()):
        cases = {"clap_recipe": clap_case("l2", 300, 256), "clap_b8_e5": clap_case("l2", 5, 8),
                 "clap_b8_e300": clap_case("l2", 300, 8), "zslp_b8_e5": clap_case("none", 5, 8)}
    return {"source": {"repo": "jusiro/CLAP", "file": "trainers/adapters.py"}, "cases": cases,
            "logit_scale": float(torch.tensor(P.LOGIT_SCALE_LOG).exp())}


def lpp_case(epochs):
    import methods.linear_probe_p2 as LP  # the official LP++ module

    bound = 1.0 / math.sqrt(E)
    bias = torch.empty(C).uniform_(-bound, bound, generator=torch.Generator().manual_seed(SEED))
    made, alphas = [], []

    class Linear(nn.Linear):  # the official classifier, with the bias vlprompt draws
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.bias.data = bias.clone()
            made.append(self)

    def variable(tensor, requires_grad=False):
        v = torch.autograd.Variable(tensor, requires_grad=requires_grad)
        alphas.append(v)
        return v

    orig_linear, LP.Variable, nn.Linear = nn.Linear, variable, Linear
    test = X["test"] / X["test"].norm(dim=-1, keepdim=True)  # pre_load_features normalises
    text_weights = X["text"].t().contiguous()  # clip_classifier: (E, C)
    model = NS(encode_image=lambda images: images.clone(), dtype=torch.float32)
    method = LP.LinearProbe_P2({"train_epoch": epochs, "shots": P.SHOTS, "dataset": "probe", "output_dir": "."})
    loss = None
    try:
        loss, _ = method(train_loader=[(X["views"][0].clone(), X["labels"].clone())],
                         val_loader=[(X["test"].clone(), X["test_labels"].clone())], test_features=test,
                         test_labels=X["test_labels"], text_weights=text_weights, model=model, classnames=None)
    except UnboundLocalError:  # 0 epochs: the official returns loss.item() of its last epoch
        pass
    finally:
        nn.Linear = orig_linear
    clf, alpha = made[0], alphas[0]
    with torch.no_grad():  # the official test logits (linear_probe_p2.py, forward)
        logits = clf(test) + torch.ones(test.shape[0], 1) @ alpha * (test @ text_weights)
    return {"epochs": epochs, "loss": loss, "alpha": _l(alpha[0]), "weight": _l(clf.weight),
            "bias": _l(clf.bias), "test_logits": _l(logits)}


def run_lpp():
    _cuda_noop()
    import methods.linear_probe_p2 as LP
    import methods.utils as U

    one_hot = U.get_one_hot
    U.get_one_hot = lambda y_s, num_classes: one_hot(y_s, num_classes).float()  # fp16 → fp32 (values 0/1)
    feats = X["views"][0] / X["views"][0].norm(dim=-1, keepdim=True)
    text_weights = X["text"].t().contiguous()
    with contextlib.redirect_stdout(io.StringIO()):
        init = {"lr_w": float(LP.calculate_lr_w(feats)), "lr_alpha": float(LP.calculate_lr_alpha(feats, text_weights)),
                "alpha_init": float(LP.calculate_init_alpha(feats, X["labels"], P.SHOTS, text_weights)),
                "centroids": _l(U.compute_centroids(feats[None], X["labels"][None])[0])}
        cases = {f"lpp_e{k}": lpp_case(k) for k in (0, 1, 9, 10, 11, 20, 300)}
    return {"source": {"repo": "FereshteShakeri/FewShot-CLIP-Strong-Baseline", "file": "methods/linear_probe_p2.py"},
            "init": init, "cases": cases}


out = run_clap() if MODE == "clap" else run_lpp()
out = {"inputs_sha256": P.inputs_sha256(), "seed": SEED,
       "environment": {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()},
       **out}
Path(OUT).write_text(json.dumps(out, indent=1) + "\n")
print("wrote", OUT)
