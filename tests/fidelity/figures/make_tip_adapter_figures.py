"""Run the OFFICIAL Tip-Adapter functions on ``tip_adapter_inputs.tip_inputs()``; write the figures JSON.

Not part of the test suite and not official code: a driver that loads ``utils.py`` and the two functions
``run_tip_adapter`` / ``run_tip_adapter_F`` of ``main.py`` from a folder outside this repository holding
``gaopengcuhk/Tip-Adapter`` (README.md in this folder says how), feeds them cached features through a stand-in CLIP
whose ``encode_image`` is the identity, and records what they compute. Scratch-only adaptations, none in the
method's arithmetic: ``.cuda()`` is the identity (CPU); ``utils.py`` imports ``clip`` (used only by
``clip_classifier``, not called) — a stub module; ``cls_acc``'s ``float(<1-element array>)``, refused by NumPy 2.x,
reads element ``[0]``.

usage: python make_tip_adapter_figures.py OFFICIAL_ROOT OUT.json
"""
import ast
import contextlib
import io
import json
import re
import shutil
import sys
import tempfile
import types
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT, OUT = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/fidelity: tip_adapter_inputs
import tip_adapter_inputs as TI  # noqa: E402

# CPU only: .cuda() is the identity (the official code calls it on tensors and on the adapter module).
torch.Tensor.cuda = lambda self, *a, **k: self
nn.Module.cuda = lambda self, *a, **k: self
sys.modules["clip"] = types.ModuleType("clip")  # utils.py: `import clip` (only clip_classifier uses it)


def _load_official():
    """``utils`` (the module) and ``M``: main.py's run_tip_adapter and run_tip_adapter_F over utils' names (as its
    ``from utils import *``), both verbatim but for the NumPy line."""
    src = (ROOT / "utils.py").read_text()
    old = "acc = float(correct[: topk].reshape(-1).float().sum(0, keepdim=True).cpu().numpy())"
    assert src.count(old) == 1
    src = src.replace(old, old[:-1] + "[0])")
    utils = types.ModuleType("utils")
    exec(compile(src, str(ROOT / "utils.py"), "exec"), utils.__dict__)
    sys.modules["utils"] = utils
    main_src = (ROOT / "main.py").read_text()
    main = types.ModuleType("official_main")
    main.__dict__.update({k: v for k, v in utils.__dict__.items() if not k.startswith("__")})
    for node in ast.parse(main_src).body:
        if isinstance(node, ast.FunctionDef) and node.name in ("run_tip_adapter", "run_tip_adapter_F"):
            exec(compile(ast.Module([node], []), str(ROOT / "main.py"), "exec"), main.__dict__)
    return utils, main


U, M = _load_official()
SCRATCH = Path(tempfile.mkdtemp(prefix="tip-official-"))
COMMIT = sys.argv[3] if len(sys.argv) > 3 else "d0e2d6f8c5feb8b6ce937b757810761f7155d4d5"
torch.set_num_threads(1)
INP = TI.tip_inputs()


class FakeClip:
    """encode_image = identity on 'images' that are already image features (a copy: the caller divides in place)."""

    def __init__(self, dtype):
        self.dtype = dtype

    def encode_image(self, x):
        return x.clone()


class PassLoader:
    """Pass k over the training set yields view k (the official cache loader re-augments on every pass; shuffle
    False, batch 256)."""

    def __init__(self, views, labels, bs=256):
        self.views, self.labels, self.bs, self.k = views, labels, bs, 0

    def __len__(self):
        return -(-self.labels.shape[0] // self.bs)

    def __iter__(self):
        v = self.views[self.k % self.views.shape[0]]
        self.k += 1
        for s in range(0, self.labels.shape[0], self.bs):
            yield v[s:s + self.bs], self.labels[s:s + self.bs]


class FeatLoader:
    def __init__(self, feats, labels, bs=64):
        self.f, self.l, self.bs = feats, labels, bs

    def __iter__(self):
        for s in range(0, self.l.shape[0], self.bs):
            yield self.f[s:s + self.bs], self.l[s:s + self.bs]

    def __len__(self):
        return -(-self.l.shape[0] // self.bs)


class ShuffleLoader:
    """train_loader_F with a fixed batch order: epoch e draws torch.randperm(N, generator=g) from one
    torch.Generator seeded with `seed` and takes the features of view e mod V (drop_last False)."""

    def __init__(self, views, labels, bs, seed):
        self.views, self.labels, self.bs = views, labels, bs
        self.g = torch.Generator().manual_seed(seed)
        self.e = 0
        self.orders = []

    def __len__(self):
        return -(-self.labels.shape[0] // self.bs)

    def __iter__(self):
        perm = torch.randperm(self.labels.shape[0], generator=self.g)
        self.orders.append(perm.tolist())
        v = self.views[self.e % self.views.shape[0]]
        self.e += 1
        for s in range(0, perm.shape[0], self.bs):
            idx = perm[s:s + self.bs]
            yield v[idx], self.labels[idx]


def recorder():
    calls = []
    real = U.cls_acc

    def rec(output, target, topk=1):
        acc = real(output, target, topk)
        calls.append((output.detach().clone(), target.clone(), acc))
        return acc
    return calls, rec


def full(t):
    return [[round(float(x), 8) for x in row] for row in t.float()]


def cfg_for(name, case, **over):
    base = {"imagenet": dict(search_scale=[7, 3], init_beta=1, init_alpha=1.17, train_epoch=20),
            "dtd": dict(search_scale=[13, 13], init_beta=1, init_alpha=2, train_epoch=20)}[name]
    cfg = dict(load_cache=False, load_pre_feat=False, search_hp=True, search_step=[200, 20], lr=0.001,
               augment_epoch=10, shots=TI.SHOTS, dataset=name, **base)
    cfg.update(over)
    d = SCRATCH / case  # the official functions torch.save their cache and best keys here
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    cfg["cache_dir"] = str(d)
    return cfg


def build(cfg, dtype):
    clip = FakeClip(dtype)

    def cast(t):
        return t.to(dtype)
    keys, values = U.build_cache_model(cfg, clip, PassLoader(cast(INP["views"]), INP["train_labels"]))
    val_f, val_l = U.pre_load_features(cfg, "val", clip, FeatLoader(cast(INP["val"]), INP["val_labels"]))
    test_f, test_l = U.pre_load_features(cfg, "test", clip, FeatLoader(cast(INP["test"]), INP["test_labels"]))
    clip_weights = cast(INP["text"]).t().contiguous()  # clip_classifier's layout: torch.stack(..., dim=1) → [E, C]
    return clip, keys, values, val_f, val_l, test_f, test_l, clip_weights


def search_trace(stdout):
    return [[float(a), float(b), float(c)] for a, b, c in
            re.findall(r"New best setting, beta: ([\d.]+), alpha: ([\d.]+); accuracy: ([\d.]+)", stdout)]


def tip_case(name, dtype):
    cfg = cfg_for(name, f"tip_{name}_{dtype}")
    clip, keys, values, val_f, val_l, test_f, test_l, w = build(cfg, dtype)
    values_official_dtype = str(values.dtype)
    if dtype == torch.float32:
        values = values.float()  # .half() one-hot is exact; fp32 @ fp16 is refused on the CPU
    calls, rec = recorder()
    chosen = []
    real_search = U.search_hp

    def search(*a, **k):
        out = real_search(*a, **k)
        chosen.append(out)
        return out
    M.cls_acc, M.search_hp = rec, search
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        M.run_tip_adapter(cfg, keys, values, val_f, val_l, test_f, test_l, w)
    with contextlib.redirect_stdout(io.StringIO()) as buf2:
        on_test = real_search(cfg, keys, values, test_f, test_l, w)  # what main_imagenet.py does (its #11)
    (zs_val, _, acc_zs_val), (tip_val_init, _, acc_val_init), (zs_test, _, acc_zs_test), (tip_test, _, acc_test) = calls
    beta, alpha = chosen[0]
    return {
        "config": {k: cfg[k] for k in ("search_scale", "search_step", "init_beta", "init_alpha", "augment_epoch")},
        "dtype": str(dtype), "values_dtype_official": values_official_dtype,
        "cache_keys_shape_official": list(keys.shape),
        "cache_keys": full(keys.t()),  # [N, E]
        "cache_values_argmax": values.float().argmax(1).tolist(),
        "val_zero_shot_logits": full(zs_val), "val_init_logits": full(tip_val_init),
        "val_zero_shot_acc": acc_zs_val, "val_init_acc": acc_val_init,
        "best_beta": beta, "best_alpha": alpha, "search_trace": search_trace(buf.getvalue()),
        "best_on_test": list(on_test), "search_trace_on_test": search_trace(buf2.getvalue()),
        "test_zero_shot_logits": full(zs_test), "test_logits": full(tip_test),
        "test_zero_shot_acc": acc_zs_test, "test_acc": acc_test,
    }


def tipf_case(name, dtype, bs=256, **over):
    case = f"tipf_{name}_{dtype}_b{bs}"
    cfg = cfg_for(name, case, **over)
    clip, keys, values, val_f, val_l, test_f, test_l, w = build(cfg, dtype)
    if dtype == torch.float32:
        values = values.float()
    loader = ShuffleLoader(INP["views"].to(dtype), INP["train_labels"], bs, seed=1)
    calls, rec = recorder()
    chosen = []
    real_search = U.search_hp

    def search(*a, **k):
        out = real_search(*a, **k)
        chosen.append(out)
        return out
    M.cls_acc, M.search_hp = rec, search
    buf = io.StringIO()
    torch.manual_seed(1)  # main.py seeds the global RNG (nn.Linear's init draws from it; then replaced)
    with contextlib.redirect_stdout(buf):
        # epoch selection on the val split: val is passed where the official function takes its test features
        M.run_tip_adapter_F(cfg, keys, values, val_f, val_l, val_f, val_l, w, clip, loader)
    out = buf.getvalue()
    best_epoch = int(re.search(r"at epoch: (\d+)", out).group(1))
    steps = len(loader)
    per_epoch = steps + 1  # train batches, then one eval
    train_calls, eval_accs = [], []
    for e in range(cfg["train_epoch"]):
        block = calls[e * per_epoch:(e + 1) * per_epoch]
        train_calls += block[:steps]
        eval_accs.append(block[steps][2])
    losses = [float(F.cross_entropy(o.float(), t)) for o, t, _ in train_calls]  # the official loss.item() per step
    weight = torch.load(Path(cfg["cache_dir"]) / f"best_F_{cfg['shots']}shots.pt").detach()
    adapter = nn.Linear(weight.shape[1], weight.shape[0], bias=False).to(dtype)
    adapter.weight = nn.Parameter(weight)
    beta, alpha = chosen[0]
    with torch.no_grad():  # main.py run_tip_adapter_F's final block, on the test features
        affinity = adapter(test_f)
        cache_logits = ((-1) * (beta - beta * affinity)).exp() @ values
        clip_logits = 100. * test_f @ w
        tip_logits = clip_logits + cache_logits * alpha
    return {
        "config": {k: cfg[k] for k in ("search_scale", "search_step", "init_beta", "init_alpha", "lr",
                                       "train_epoch")},
        "batch_size": bs, "dtype": str(dtype), "steps_per_epoch": steps, "batch_orders": loader.orders,
        "first_step_logits": full(train_calls[0][0]), "last_step_logits": full(train_calls[-1][0]),
        "losses": [round(x, 7) for x in losses],
        "val_acc_per_epoch": eval_accs, "best_epoch": best_epoch,
        "trained_keys": full(weight),  # [N, E] = adapter.weight at the best epoch
        "best_beta": beta, "best_alpha": alpha, "search_trace": search_trace(out),
        "test_logits": full(tip_logits),
    }


if __name__ == "__main__":
    figures = {
        "source": {"repo": "gaopengcuhk/Tip-Adapter", "commit": COMMIT,
                   "files": ["utils.py", "main.py"],
                   "functions": ["utils.build_cache_model", "utils.pre_load_features", "utils.search_hp",
                                 "utils.cls_acc", "main.run_tip_adapter", "main.run_tip_adapter_F"]},
        "torch": torch.__version__,
        "inputs_sha256": TI.tensors_sha256(TI.tip_inputs()),
        "cases": {
            "tip_imagenet_fp32": tip_case("imagenet", torch.float32),
            "tip_dtd_fp32": tip_case("dtd", torch.float32),
            "tip_imagenet_fp16": tip_case("imagenet", torch.float16),
            "tipf_imagenet_fp32": tipf_case("imagenet", torch.float32),
            "tipf_dtd_fp32_b6": tipf_case("dtd", torch.float32, bs=6, train_epoch=5, lr=0.01),
        },
    }
    shutil.rmtree(SCRATCH, ignore_errors=True)
    OUT.write_text(json.dumps(figures, indent=1) + "\n")
    for k, c in figures["cases"].items():
        print(k, c.get("best_beta"), c.get("best_alpha"), c.get("best_on_test"), c.get("best_epoch"),
              c.get("val_init_acc"), c.get("test_acc"), c.get("val_acc_per_epoch"), c.get("losses", [])[:3])
