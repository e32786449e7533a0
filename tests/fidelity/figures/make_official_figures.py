"""Run the OFFICIAL CoOp / CoCoOp / KgCoOp model code on the fidelity weights and inputs; write the figures.

Not part of the test suite and not official code: a driver that imports the official ``clip/`` and ``trainers/``
from a folder outside this repository (README.md in this folder says how to extract them), stubs the ``dassl``
imports those modules make at import time, and records what the official classes compute.

usage: python make_official_figures.py coop|kgcoop OFFICIAL_ROOT OUT.json
  coop:   OFFICIAL_ROOT holds KaiyangZhou/CoOp's clip/ and trainers/ (coop.py, cocoop.py)
  kgcoop: OFFICIAL_ROOT holds htyao89/KgCoOp's KgCoOp/clip/ and KgCoOp/trainers/kgcoop.py
"""
import json
import os
import platform
import re
import sys
import types
from pathlib import Path
from types import SimpleNamespace as NS

import torch
import torch.nn.functional as F

MODE, ROOT, OUT = sys.argv[1], sys.argv[2], sys.argv[3]
assert MODE in ("coop", "kgcoop"), MODE
sys.path.insert(0, ROOT)
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # tests/fidelity: official_weights
torch.set_num_threads(1)


# ---- dassl stubs: only the names the trainer modules import at module level ----
def _stub(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m


class _Registry:
    def register(self):
        return lambda cls: cls


_stub("dassl")
_stub("dassl.engine", TRAINER_REGISTRY=_Registry(), TrainerX=object)
_stub("dassl.metrics", compute_accuracy=None)
_stub("dassl.utils", load_pretrained_weights=None, load_checkpoint=None)
_stub("dassl.optim", build_optimizer=None, build_lr_scheduler=None)

import official_weights as W  # noqa: E402  (the test suite's generator: same tensors on both sides)
from clip import clip  # noqa: E402  (the official copy of OpenAI's CLIP, from OFFICIAL_ROOT)

SD = W.openai_state_dict()
INP = W.fixed_inputs()
NAMES = W.CLASSNAMES


def official_clip():
    """As the trainers' build_model: load_clip_to_cpu (= clip.build_model(state_dict)) then .float() for fp32."""
    model = clip.build_model({k: v.clone() for k, v in SD.items()})
    return model.float()


def cfg(n_ctx=16, ctx_init="", csc=False, pos="end", dataset="DescribableTextures"):
    coop = NS(N_CTX=n_ctx, CTX_INIT=ctx_init, CSC=csc, CLASS_TOKEN_POSITION=pos, PREC="fp32", W=8.0)
    cocoop = NS(N_CTX=n_ctx, CTX_INIT=ctx_init, PREC="fp32")
    return NS(TRAINER=NS(COOP=coop, COCOOP=cocoop), INPUT=NS(SIZE=(32, 32)),
              DATASET=NS(NAME=dataset), MODEL=NS(BACKBONE=NS(NAME="ViT-B/16"), INIT_WEIGHTS=""))


def r(t, nd=8):
    """Rounded nested list (floats to nd significant digits)."""
    t = t.detach().double().cpu()
    if t.dim() == 0:
        return float(f"{t.item():.{nd}g}")
    return [r(x, nd) for x in t]


def freeze_except(model, key):
    for name, p in model.named_parameters():
        if key not in name:
            p.requires_grad_(False)


def text_figures(tf):
    """Unnormalised text features (C, E): first 8 coordinates and norms."""
    return {"text_features_first8": r(tf[:, :8]), "text_feature_norms": r(tf.norm(dim=-1))}


SOURCES = {"coop": {"repo": "KaiyangZhou/CoOp", "commit": "ff61507c790454bce7c5052c3ac39e60772f1f89",
                    "files": ["clip/model.py", "clip/clip.py", "clip/simple_tokenizer.py",
                              "clip/bpe_simple_vocab_16e6.txt.gz", "trainers/coop.py", "trainers/cocoop.py"]},
           "kgcoop": {"repo": "htyao89/KgCoOp", "commit": "c43ccc32c8739f64b165cfa205fcc6c0f5bb5b17",
                      "files": ["KgCoOp/clip/model.py", "KgCoOp/clip/clip.py", "KgCoOp/clip/simple_tokenizer.py",
                                "KgCoOp/clip/bpe_simple_vocab_16e6.txt.gz", "KgCoOp/trainers/kgcoop.py"]}}
out = {"source": SOURCES[MODE], "produced_by": "tests/fidelity/figures/README.md", "mode": MODE, "torch": torch.__version__, "python": platform.python_version(),
       "weights_sha256": W.tensors_sha256(SD), "inputs_sha256": W.tensors_sha256(INP),
       "classnames": NAMES, "labels": INP["labels"].tolist(), "cases": {}}

if MODE == "coop":
    import trainers.cocoop as cocoop
    import trainers.coop as coop

    clip_model = official_clip()
    with torch.no_grad():
        raw_img = clip_model.visual(INP["images"])  # (B, E) unnormalised
    out["image_feature_norms"] = r(raw_img.norm(dim=-1))
    out["image_features_first8"] = r(raw_img[:, :8])

    cases = {
        "uc_end_m4": dict(n_ctx=4, pos="end", ctx="ctx_m4"),
        "uc_middle_m5": dict(n_ctx=5, pos="middle", ctx="ctx_m5"),
        "uc_front_m5": dict(n_ctx=5, pos="front", ctx="ctx_m5"),
        "uc_end_m5": dict(n_ctx=5, pos="end", ctx="ctx_m5"),
        "csc_end_m4": dict(n_ctx=4, pos="end", csc=True, ctx="ctx_csc"),
        "csc_middle_m4": dict(n_ctx=4, pos="middle", csc=True, ctx="ctx_csc"),
        "init_end": dict(n_ctx=16, pos="end", ctx_init="a photo of a", ctx=None),
        "init_middle": dict(n_ctx=16, pos="middle", ctx_init="a photo of a", ctx=None),
        # CSC with word init: the official init branch ignores CSC (one shared (M, D) context)
        "init_csc_end": dict(n_ctx=16, pos="end", ctx_init="a photo of a", csc=True, ctx=None),
    }
    for name, c in cases.items():
        torch.manual_seed(0)
        model = coop.CustomCLIP(cfg(c["n_ctx"], c.get("ctx_init", ""), c.get("csc", False), c["pos"]), NAMES,
                                clip_model)
        freeze_except(model, "prompt_learner")
        pl = model.prompt_learner
        fig = {"config": {k: v for k, v in c.items() if k != "ctx"}, "ctx_input": c["ctx"], "n_ctx": pl.n_ctx,
               "ctx_shape": list(pl.ctx.shape),
               "name_lens": pl.name_lens, "eot_positions": model.tokenized_prompts.argmax(-1).tolist()}
        if c["ctx"] is not None:
            with torch.no_grad():
                pl.ctx.copy_(INP[c["ctx"]])
        else:  # word init: the official init vectors are the token embeddings of the words
            ids = clip.tokenize("a photo of a")[0, 1:5]
            fig["init_token_ids"] = ids.tolist()
            fig["init_equals_token_embedding"] = bool(torch.equal(pl.ctx.detach(), clip_model.token_embedding.weight[ids]))
            fig["ctx_init_first8"] = r(pl.ctx[:, :8])
            with torch.no_grad():  # the init prompt is the hand prompt "a photo of a {name}."
                hand = clip_model.encode_text(clip.tokenize([f"a photo of a {n.replace('_', ' ')}." for n in NAMES]))
        prompts = pl()  # (C, 77, D)
        n_pos = int(model.tokenized_prompts.argmax(-1).max()) + 1  # up to the longest EOT
        fig["prompt_embedding_sums"] = r(prompts[:, :n_pos].sum(-1))  # (C, n_pos): the layout, per position
        tf = model.text_encoder(prompts, model.tokenized_prompts)
        fig.update(text_figures(tf))
        if c["ctx"] is None:
            fig["max_abs_diff_vs_hand_prompt_features"] = float((tf - hand).abs().max())
        logits = model(INP["images"])  # CustomCLIP.forward: (B, C)
        loss = F.cross_entropy(logits, INP["labels"])
        loss.backward()
        g = pl.ctx.grad
        fig["trainable"] = [n for n, p in model.named_parameters() if p.requires_grad]
        fig.update({"logits": r(logits), "ce_loss": r(loss), "ctx_grad_norm": r(g.norm()),
                    "ctx_grad_first8": r(g.reshape(-1, g.shape[-1])[:, :8])})
        out["cases"][name] = fig
        print(name, "loss", float(loss), "gnorm", float(g.norm()))

    # ---- CoCoOp: vit_b16_c4_ep10_batch1_ctxv1 settings (M=4 from "a photo of a"), fp32 ----
    for name, ctx_init, n_ctx in [("cocoop_init", "a photo of a", 4), ("cocoop_random_m4", "", 4)]:
        torch.manual_seed(0)
        model = cocoop.CustomCLIP(cfg(n_ctx, ctx_init), NAMES, clip_model)
        freeze_except(model, "prompt_learner")
        pl = model.prompt_learner
        with torch.no_grad():
            if not ctx_init:
                pl.ctx.copy_(INP["ctx_m4"])
            for k in ("linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias"):
                dict(pl.meta_net.named_parameters())[k].copy_(INP["meta." + k])
        fig = {"ctx_init": ctx_init, "n_ctx": pl.n_ctx,
               "meta_net": [str(m) for m in pl.meta_net],
               "ctx_first8": r(pl.ctx[:, :8])}
        # What the meta-net is fed: CustomCLIP.forward's L2-normalised image features (captured by a hook).
        seen = {}

        def record(module, args, output, seen=seen):
            seen.update(inp=args[0].detach(), out=output.detach())

        hook = pl.meta_net.register_forward_hook(record)
        pl.eval()
        with torch.no_grad():
            logits = model(INP["images"])  # eval: (B, C)
        hook.remove()
        fig["meta_net_input_norms"] = r(seen["inp"].norm(dim=-1))
        fig["meta_net_input_first8"] = r(seen["inp"][:, :8])
        fig["meta_net_output_first8"] = r(seen["out"][:, :8])
        fig["meta_net_output_norms"] = r(seen["out"].norm(dim=-1))
        fig["logits"] = r(logits)
        pl.train()
        loss = model(INP["images"], INP["labels"])  # train mode: F.cross_entropy(logits, label)
        loss.backward()
        fig["ce_loss"] = r(loss)
        fig["trainable"] = [n for n, p in model.named_parameters() if p.requires_grad]
        fig["grad_norms"] = {n: r(p.grad.norm()) for n, p in pl.named_parameters()}
        fig["ctx_grad_first8"] = r(pl.ctx.grad[:, :8])
        out["cases"][name] = fig
        print(name, "loss", float(loss))

if MODE == "kgcoop":
    import trainers.kgcoop as kg

    dataset = "DescribableTextures"
    template = kg.CUSTOM_TEMPLATES[dataset]

    def run(hand_copy_fp16: bool):
        # kgcoop.PromptLearner calls load_clip_to_cpu(cfg) again for the hand-crafted features and moves that copy
        # and the prompts to CUDA: stubbed to the same weights on the CPU (fp16 as load_clip_to_cpu returns it, or
        # .float()), Tensor/Module .cuda made no-ops while the learner is built.
        kg.load_clip_to_cpu = lambda cfg_: (clip.build_model({k: v.clone() for k, v in SD.items()})
                                            if hand_copy_fp16 else official_clip())
        saved_t, saved_m = torch.Tensor.cuda, torch.nn.Module.cuda
        torch.Tensor.cuda = lambda self, *a, **k: self
        torch.nn.Module.cuda = lambda self, *a, **k: self
        try:
            torch.manual_seed(0)
            model = kg.CustomCLIP(cfg(4, "a photo of a", dataset=dataset), NAMES, official_clip())
        finally:
            torch.Tensor.cuda, torch.nn.Module.cuda = saved_t, saved_m
        for n, p in model.named_parameters():  # KgCoOp.build_model: only names containing "ctx" train
            if "ctx" not in n:
                p.requires_grad_(False)
        pl = model.prompt_learner
        ids = clip.tokenize("a photo of a")[0, 1:5]
        with torch.no_grad():
            init_ok = bool(torch.equal(pl.ctx, official_clip().token_embedding.weight[ids]))
            pl.ctx.add_(INP["ctx_delta"])
        logits, score = model(INP["images"])
        loss = F.cross_entropy(logits, INP["labels"]) + 8.0 * score  # forward_backward, W = 8
        loss.backward()
        hand = pl.text_features
        fig = {"template": template, "hand_prompts": [template.format(n.replace("_", " ")) for n in NAMES],
               "hand_features_dtype": str(hand.dtype), "init_equals_token_embedding": init_ok,
               "hand_features_first8": r(hand[:, :8].float()), "logits": r(logits), "score": r(score, 10),
               "ce_loss": r(F.cross_entropy(logits, INP["labels"])), "loss_lambda8": r(loss),
               "ctx_grad_norm": r(pl.ctx.grad.norm()), "ctx_grad_first8": r(pl.ctx.grad[:, :8]),
               "trainable": [n for n, p in model.named_parameters() if p.requires_grad]}
        with torch.no_grad():
            tf = model.text_encoder(pl(), model.tokenized_prompts)
        fig.update(text_figures(tf))
        return fig

    out["cases"]["kgcoop_fp32_hand"] = run(False)
    out["cases"]["kgcoop_official_fp16_hand"] = run(True)
    for k, v in out["cases"].items():
        print(k, v["score"], v["loss_lambda8"], v["hand_features_dtype"])

text = json.dumps(out, indent=1)
text = re.sub(r"\[\s*([-+0-9.eE,\s]+?)\s*\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
with open(OUT, "w") as f:
    f.write(text + "\n")
print("wrote", OUT, os.path.getsize(OUT))
