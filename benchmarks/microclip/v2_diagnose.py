"""Cheap diagnostics of why micro-CLIP v2 (ViT) does not learn shape on world v2 (see ``V2_DIAGNOSIS.md``).

Usage (``PYTHONPATH=src``):

- ``python benchmarks/microclip/v2_diagnose.py captions`` — how often a caption names the shape.
- ``python benchmarks/microclip/v2_diagnose.py probe [--run DIR]`` — linear probes (shape, position, texture,
  colour) on raw pixels, on a random-init v2 image tower and on a pretraining checkpoint's image features.
  ``--model-file F`` probes a kept snapshot ``F`` of the run's ``ckpt/model-<step>.safetensors`` instead.
- ``python benchmarks/microclip/v2_diagnose.py export --run DIR [--model-file F] --to OUT`` — a compact file of that
  checkpoint, for ``python -m vlprompt.microclip.acceptance2 --weights OUT``.
- ``python benchmarks/microclip/v2_diagnose.py difficulty --weights OUT`` — i2t accuracy and loss of a model on
  i.i.d. vs grouped batches (``pretrain --groups``).
- ``python benchmarks/microclip/v2_diagnose.py supervised --arch vit8 --lr 1e-3 --steps 300`` — the image tower
  alone trained to classify shape (one-object images), to tell the architecture/optimiser apart from the
  contrastive objective.
- ``python benchmarks/microclip/v2_diagnose.py overfit --arch vit8`` — can the tower memorise one fixed batch?
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from vlprompt.backbones.microclip import MICROCLIP_CONFIG, MICROCLIP_V2_CONFIG, create_microclip_model, images_to_tensor
from vlprompt.microclip import world, world2

ONE = {"count": 0}  # one-object images: "shape" is unambiguous
COL = {a: i for i, a in enumerate(world2.ATTRIBUTE_NAMES)}


def captions(n: int = 5000) -> dict:
    """Fraction of captions naming the (first) object's shape by one of its words."""
    b = world2.generate(seed=0, start=0, count=n)
    shapes = world2.ATTRIBUTES["shape"]
    hit = [any(f" {w}" in f" {c[:-1]} ".replace(".", " ") for w in world2.ATTRIBUTE_WORDS["shape"][shapes[lab[0]]])
           for c, lab in zip(b.captions, b.labels)]  # fmt: skip
    pos = [any(p in c for p in ("left", "right", "top", "bottom", "center", "middle")) for c in b.captions]
    words = [len(c.split()) for c in b.captions]
    return {"n": n, "shape_named": float(np.mean(hit)), "position_word": float(np.mean(pos)),
            "mean_words": float(np.mean(words)), "examples": b.captions[:8]}  # fmt: skip


def _probe(xtr: torch.Tensor, ytr: np.ndarray, xte: torch.Tensor, yte: np.ndarray, iters: int = 200) -> float:
    """Test accuracy of an L2-regularised multinomial logistic regression (L-BFGS) on standardised features."""
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    ytr_t = torch.as_tensor(ytr)
    k = int(max(ytr.max(), yte.max())) + 1
    w = torch.zeros(xtr.shape[1], k, requires_grad=True)
    b = torch.zeros(k, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xtr @ w + b, ytr_t) + 1e-3 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((xte @ w + b).argmax(1).numpy() == yte).mean())


@torch.no_grad()
def _features(model: torch.nn.Module, images: np.ndarray) -> torch.Tensor:
    return torch.cat([model.encode_image(images_to_tensor(images[i : i + 500])) for i in range(0, len(images), 500)])


def probe(run: str | None, n_train: int, n_test: int, model_file: str | None = None, baselines: bool = True) -> dict:
    """Linear-probe accuracies on one-object images (world seeds 5 / 6) for several feature extractors.

    ``run``: a pretraining folder (its latest checkpoint, or ``model_file``: a kept ``model-<step>.safetensors``
    snapshot of that run's training-form weights); ``baselines=False`` skips the raw-pixel and random-init rows."""
    tr, te = world2.generate(5, 0, n_train, ONE), world2.generate(6, 0, n_test, ONE)
    pix = lambda b: F.avg_pool2d(images_to_tensor(b.images), 4).flatten(1)  # noqa: E731  [N, 3·16·16]
    extractors = {}
    if baselines:
        extractors["pixels_16x16"] = (pix(tr), pix(te))
        torch.manual_seed(0)
        rnd = create_microclip_model(MICROCLIP_V2_CONFIG).eval()
        extractors["vit_random_init"] = (_features(rnd, tr.images), _features(rnd, te.images))
    if run:
        from vlprompt.microclip.pretrain_export import model_from_checkpoint

        m = model_from_checkpoint(run, model_file)
        extractors["checkpoint"] = (_features(m, tr.images), _features(m, te.images))
        # the training path (train mode) and the evaluation path (eval mode) must see the same features
        m2 = copy.deepcopy(m).train()
        x = images_to_tensor(te.images[:64])
        with torch.no_grad():
            extractors["_train_vs_eval_max_abs_diff"] = float((m2.encode_image(x) - m.encode_image(x)).abs().max())
    out = {}
    for name, feats in extractors.items():
        if name.startswith("_"):
            out[name] = feats
            continue
        out[name] = {a: round(_probe(feats[0], tr.labels[:, COL[a]], feats[1], te.labels[:, COL[a]]), 3)
                     for a in ("shape", "position", "texture", "shade", "style")}  # fmt: skip
        out[name]["dims"] = int(feats[0].shape[1])
    return out


@torch.no_grad()
def batch_difficulty(weights: str, groups: tuple[tuple[int, ...], ...] = ((), (16,), (8,), (32, 4)),
                     n_batches: int = 4) -> dict:  # fmt: skip
    """Image-to-text accuracy and InfoNCE loss of a compact model on batches of 128 of world seed 9: i.i.d. (``()``)
    and grouped (``vlprompt.microclip.batches2``) — how much harder grouped batches are for a given model."""
    from open_clip import tokenize

    from vlprompt.backbones.microclip import build_microclip
    from vlprompt.microclip.batches2 import generate_grouped

    m, out = build_microclip(weights).eval(), {}
    for sizes in groups:
        accs, losses = [], []
        for s in range(0, 128 * n_batches, 128):
            b = generate_grouped(9, s, 128, sizes=sizes) if sizes else world2.generate(9, s, 128)
            img = m.encode_image(images_to_tensor(b.images), normalize=True)  # [128, E]
            logits = m.logit_scale.exp() * img @ m.encode_text(tokenize(b.captions), normalize=True).t()  # [128, 128]
            t = torch.arange(128)
            accs.append(float((logits.argmax(1) == t).float().mean()))
            losses.append(float(0.5 * (F.cross_entropy(logits, t) + F.cross_entropy(logits.t(), t))))
        out[",".join(map(str, sizes)) or "iid"] = {"i2t_acc": round(np.mean(accs), 3), "loss": round(np.mean(losses), 3)}
    return out


def _tower(arch: str, pool: str, vision: dict | None = None) -> torch.nn.Module:
    if arch == "resnet":
        return create_microclip_model(MICROCLIP_CONFIG).visual
    cfg = json.loads(json.dumps(MICROCLIP_V2_CONFIG))
    cfg["vision_cfg"]["patch_size"] = {"vit8": 8, "vit4": 4}[arch]
    if pool != "tok":
        cfg["vision_cfg"]["pool_type"] = pool  # open_clip: "tok" (class token) or "avg" (mean of patch tokens)
    cfg["vision_cfg"].update(vision or {})  # other stock open_clip ViT settings, e.g. {"pos_embed_type": "sin_cos_2d"}
    return create_microclip_model(cfg).visual


def supervised(arch: str, pool: str, lr: float, warmup: int, steps: int, clip: float, batch: int,
               version: int = 2, extra_fixed: dict | None = None, vision: dict | None = None) -> dict:  # fmt: skip
    """Train the image tower + a linear head on shape (one-object images of world seed 0); test on seed 1.

    ``version=1`` uses world v1's images (8 shapes, no textures, clutter or scenes) instead of world v2's;
    ``extra_fixed`` (v2 only, a diagnostic, not a world change) fixes more attributes, e.g. solid plain photos;
    ``vision`` overrides the ViT's ``vision_cfg`` entries (e.g. ``{"patch_size": 4, "width": 64}``).
    """
    wm, fixed = (world2, {**ONE, **(extra_fixed or {})}) if version == 2 else (world, None)
    torch.manual_seed(0)
    tower = _tower(arch, pool, vision).train()
    head = torch.nn.Linear(128, len(wm.ATTRIBUTES["shape"]))
    params = list(tower.parameters()) + list(head.parameters())
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98), eps=1e-6)  # fmt: skip
    test = wm.generate(1, 0, 1000, fixed)
    xte, yte = images_to_tensor(test.images), test.labels[:, 0]  # column 0 is "shape" in both worlds
    log, t0 = [], time.perf_counter()
    for step, b in enumerate(wm.iter_batches(0, batch, num_batches=steps, fixed=fixed)):
        cur = lr * (step + 1) / warmup if step < warmup else 0.5 * lr * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = cur
        loss = F.cross_entropy(head(tower(images_to_tensor(b.images))), torch.as_tensor(b.labels[:, 0]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        if (step + 1) % min(50, max(1, steps // 4)) == 0 or step + 1 == steps:
            tower.eval()
            with torch.no_grad():
                acc = float((head(tower(xte)).argmax(1).numpy() == yte).mean())
            tower.train()
            log.append({"step": step + 1, "loss": round(loss.item(), 3), "test_shape_acc": round(acc, 3),
                        "seconds": round(time.perf_counter() - t0, 1)})  # fmt: skip
            print(json.dumps(log[-1]), flush=True)
    return {"world": version, "fixed": fixed, "arch": arch, "pool": pool, "lr": lr, "warmup": warmup, "clip": clip,
            "batch": batch, "log": log}  # fmt: skip


#: ``--target`` → caption-word loss form (:data:`vlprompt.microclip.caption_words.FORMS`)
_WORD_TARGETS = {"words": "sigmoid", "words-idf": "softmax-idf", "nouns": "sigmoid-nouns", "objects": "softmax-objects",
                 "objects-sigmoid": "sigmoid-objects"}


def supervised_words(lr: float, warmup: int, steps: int, clip: float, batch: int, form: str = "sigmoid") -> dict:
    """The supervised proxy with the caption-word loss as its only target (no InfoNCE, no shape label): the ViT
    tower + :class:`vlprompt.microclip.caption_words.CaptionWordHead` on one-object images' captions (world seed
    0); shape accuracy on seed 1 read off the head's logits of the 12 shape names' first BPE tokens."""
    from open_clip import tokenize

    from vlprompt.microclip import caption_words as cw
    from vlprompt.microclip.pretrain import vocabulary_token_ids

    rows = vocabulary_token_ids(world2)
    remap = torch.zeros(49408, dtype=torch.int64)
    remap[rows] = torch.arange(len(rows))
    shape_rows = remap[torch.tensor([ids[0] for ids in cw.word_token_ids(world2.ATTRIBUTES["shape"])])]  # [12]
    label = form
    if form == "sigmoid-objects":  # a proxy-only ablation: the sigmoid loss masked to the object rows alone
        weights, form = cw.object_mask(world2, rows), "sigmoid"  # word_loss("sigmoid", mask): the masked sigmoid
    else:
        weights = cw.row_weights(form, world2, 0, rows, lambda ids: remap[ids])  # IDF, noun/object mask or None
    torch.manual_seed(0)
    tower, head = _tower("vit8", "tok").train(), cw.CaptionWordHead(128, len(rows))
    params = list(tower.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.1},
                             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98), eps=1e-6)  # fmt: skip
    test = world2.generate(1, 0, 1000, ONE)
    xte, yte = images_to_tensor(test.images), test.labels[:, COL["shape"]]
    log, t0 = [], time.perf_counter()
    for step, b in enumerate(world2.iter_batches(0, batch, num_batches=steps, fixed=ONE)):
        for g in opt.param_groups:
            g["lr"] = lr * (step + 1) / warmup if step < warmup else 0.5 * lr * (1 + math.cos(math.pi * step / steps))
        ids = tokenize(b.captions)  # [B, 77]
        t = cw.caption_word_targets(ids, remap[ids], len(rows))  # [B, K]
        x = tower(images_to_tensor(b.images))  # [B, 128]
        loss = cw.word_loss(form, head, x, t, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        if (step + 1) % 50 == 0 or step + 1 == steps:
            tower.eval()
            with torch.no_grad():
                acc = float((head(tower(xte))[:, shape_rows].argmax(1).numpy() == yte).mean())
            tower.train()
            log.append({"step": step + 1, "loss": round(loss.item(), 3), "test_shape_acc": round(acc, 3),
                        "seconds": round(time.perf_counter() - t0, 1)})  # fmt: skip
            print(json.dumps(log[-1]), flush=True)
    return {"target": f"caption words ({label})", "lr": lr, "warmup": warmup, "clip": clip, "batch": batch, "log": log}


def overfit(arch: str, lr: float, steps: int = 60) -> list[dict]:
    """Sanity check: can the tower + a linear head memorise one fixed batch of 128 one-object v2 images?"""
    torch.manual_seed(0)
    tower, head = _tower(arch, "tok").train(), torch.nn.Linear(128, len(world2.ATTRIBUTES["shape"]))
    b = world2.generate(0, 0, 128, ONE)
    x, y = images_to_tensor(b.images), torch.as_tensor(b.labels[:, COL["shape"]])
    opt = torch.optim.AdamW([*tower.parameters(), *head.parameters()], lr=lr, betas=(0.9, 0.98), eps=1e-6,
                            weight_decay=0.0)  # fmt: skip
    log = []
    for s in range(steps):
        logits = head(tower(x))
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        if s % 10 == 0 or s == steps - 1:
            grads = {n: round(p.grad.norm().item(), 3) for n, p in tower.named_parameters() if p.grad is not None
                     and n in ("conv1.weight", "class_embedding", "positional_embedding", "proj")}  # fmt: skip
            log.append({"step": s, "loss": round(loss.item(), 3), "train_acc": float((logits.argmax(1) == y).float()
                        .mean()), "grad_norms": grads})  # fmt: skip
        opt.step()
    return log


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("captions", "probe", "export", "difficulty", "supervised", "overfit"))
    p.add_argument("--run", default=None, help="a pretraining --out folder (probe)")
    p.add_argument("--model-file", default=None, help="probe/export: a kept model-<step>.safetensors of --run")
    p.add_argument("--no-baselines", action="store_true", help="probe: only the checkpoint's features")
    p.add_argument("--weights", default=None, help="difficulty: a compact micro-CLIP v2 file")
    p.add_argument("--to", default=None, help="export: the compact .safetensors file to write")
    p.add_argument("--n-train", type=int, default=3000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--arch", default="vit8", choices=("vit8", "vit4", "resnet"))
    p.add_argument("--pool", default="tok", choices=("tok", "avg"))
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--clip", type=float, default=0.0)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--world", type=int, default=2, choices=(1, 2), help="supervised: world v1 or v2 images")
    p.add_argument("--fixed", default="{}", help='supervised, v2: JSON of attribute indices, e.g. {"texture": 0}')
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--vision-cfg", default="{}", help='supervised: JSON of ViT vision_cfg overrides')
    p.add_argument("--target", default="shape", choices=("shape", *_WORD_TARGETS),
                   help="supervised: the shape label, or the caption-word loss (sigmoid / softmax-IDF / nouns / object nouns) alone")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.what == "captions":
        res = captions()
    elif a.what == "probe":
        res = {"model_file": a.model_file, **probe(a.run, a.n_train, a.n_test, a.model_file, not a.no_baselines)}
    elif a.what == "export":
        from vlprompt.microclip.pretrain_export import export_checkpoint

        res = {"exported": str(export_checkpoint(a.run, a.to, a.model_file))}
    elif a.what == "difficulty":
        res = batch_difficulty(a.weights)
    elif a.what == "overfit":
        res = overfit(a.arch, a.lr)
    elif a.target != "shape":
        res = supervised_words(a.lr, a.warmup, a.steps, a.clip, a.batch, _WORD_TARGETS[a.target])
    else:
        res = supervised(a.arch, a.pool, a.lr, a.warmup, a.steps, a.clip, a.batch, a.world, json.loads(a.fixed),
                         json.loads(a.vision_cfg))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
