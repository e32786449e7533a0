"""Pretrain micro-CLIP on the procedural world: ``python -m vlprompt.microclip.pretrain --out DIR``.

Recipe (from the feasibility study, issue 4): symmetric InfoNCE with a learnable logit scale (init ln(1/0.07),
clamped to ln 100), AdamW lr 2e-3, betas (0.9, 0.98), eps 1e-6, weight decay 0.1 on ≥2-D weights only, batch 128,
100 linear warmup steps then cosine to 0, 2100 steps, no flips (they would break left/right), EOS-truncated text
encoding. Batch ``b`` holds world images ``b·128 … b·128+127``, so the data stream needs no RNG state.

Only the token rows of the world's vocabulary are optimised (a compact ``[K, 128]`` table during training); the
other 49 k rows keep their seeded init exactly, which is what lets the shipped file store just the trained rows.

``--threads 1`` is bit-reproducible on one software stack (deterministic algorithms, one intra-op thread); more
threads are faster but not bit-reproducible. Training resumes from the latest checkpoint in ``--out``
(safetensors + JSON, written atomically every ``--checkpoint-every`` steps).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from vlprompt._io import append_jsonl, atomic_save_safetensors, atomic_write_json
from vlprompt.backbones.microclip import (
    MICROCLIP_CONFIG,
    MICROCLIP_V2_CONFIG,
    build_microclip,
    create_microclip_model,
    encode_text_truncated,
    images_to_tensor,
    init_token_table,
    save_compact,
)
from vlprompt.errors import ArtifactError, ConfigError
from vlprompt.microclip import caption_words as cw
from vlprompt.microclip import world, world2
from vlprompt.microclip.batches2 import check_sizes, iter_grouped_batches

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainConfig:
    """Micro-CLIP pretraining settings (defaults: the shipped checkpoint's recipe).

    Attributes:
        steps: optimiser steps.
        batch_size: image–caption pairs per step.
        lr: peak learning rate.
        warmup: linear warmup steps (then cosine to 0).
        weight_decay: AdamW decoupled weight decay on ≥2-D weights.
        betas: AdamW betas.
        eps: AdamW epsilon.
        seed: model init seed (also the token-table init seed).
        world_seed: seed of the training world (evaluation uses other seeds).
        threads: torch intra-op threads; 1 turns on deterministic, bit-reproducible training.
        workers: image-rendering processes (any number gives identical data).
        checkpoint_every: steps between checkpoints.
        log_every: steps between lines in ``log.jsonl``.
        text_buckets: captions are encoded in this many length buckets (speed only; exact).
        version: 1 = the ResNet micro-CLIP on world v1; 2 = micro-CLIP v2 (ViT, ``MICROCLIP_V2_CONFIG``) on world v2
            (:mod:`vlprompt.microclip.world2`).
        clip_grad: ``> 0``: clip the CLIP's gradient norm (not the word head's) to this per step (``0``: off).
        word_loss: ``> 0``: add this times the caption-word loss (:mod:`vlprompt.microclip.caption_words`).
        word_form: its form (:data:`vlprompt.microclip.caption_words.FORMS`): ``"sigmoid"``, ``"softmax-idf"`` (SuperClass),
            ``"sigmoid-nouns"`` (CatLIP: head nouns), ``"softmax-objects"`` (the object noun as a class) or a sum.
        object_weight: the object term's weight inside a ``"…+objects"`` form (relative to the other term).
        groups: ``()`` = i.i.d. world batches; version 2 only: group sizes, e.g. ``(32, 4)`` = groups of 32 images
            sharing shade, style and background, sub-groups of 4 also sharing the shape
            (:func:`vlprompt.microclip.batches2.generate_grouped`).
    """

    steps: int = 2100
    batch_size: int = 128
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    seed: int = 0
    world_seed: int = 0
    threads: int = 2
    workers: int = 1
    checkpoint_every: int = 200
    log_every: int = 25
    text_buckets: int = 4
    version: int = 1
    groups: tuple[int, ...] = ()
    clip_grad: float = 0.0
    word_loss: float = 0.0
    word_form: str = "sigmoid"
    object_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2 or self.threads < 1 or self.workers < 1 or self.object_weight < 0:
            raise ConfigError(f"invalid PretrainConfig {self}: steps, threads, workers ≥ 1, batch_size ≥ 2, object_weight ≥ 0")
        if self.version not in (1, 2):
            raise ConfigError(f"PretrainConfig.version={self.version!r}: expected 1 (v1 world/model) or 2 (v2)")
        if self.groups and self.version != 2:
            raise ConfigError(f"PretrainConfig.groups={self.groups!r}: grouped batches are for version 2, not 1")
        if self.groups:
            check_sizes(self.groups, self.batch_size)
        if self.word_form not in cw.FORMS:
            raise ConfigError(f"PretrainConfig.word_form={self.word_form!r}: expected one of {cw.FORMS}")
        if self.word_form not in ("sigmoid", "softmax-idf") and self.version != 2:
            raise ConfigError(f"PretrainConfig.word_form={self.word_form!r} needs version 2 (world v2 lists its nouns)")

    @property
    def world(self):
        """The world module this recipe trains on."""
        return world2 if self.version == 2 else world

    @property
    def model_config(self) -> dict:
        """The micro-CLIP architecture this recipe trains."""
        return MICROCLIP_V2_CONFIG if self.version == 2 else MICROCLIP_CONFIG


#: The v2 recipe (issue 14): ViT micro-CLIP on world v2. A ViT trained from scratch wants a lower peak learning rate
#: and a longer warm-up than the ResNet. One thread: bit-reproducible, and on a loaded machine faster than two.
V2_RECIPE = {"version": 2, "steps": 3000, "lr": 1e-3, "warmup": 100, "workers": 1, "threads": 1, "checkpoint_every": 50,
             "clip_grad": 1.0, "word_loss": 10.0, "word_form": "sigmoid+objects"}  # fmt: skip  MODEL_CARD_V2.md


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Learning rate for 0-based ``step``: linear warmup to ``cfg.lr`` then cosine decay to 0."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * t))


def vocabulary_token_ids(world_module=world) -> torch.Tensor:
    """Sorted ``LongTensor[K]``: SOS, EOS and every BPE id of the world's caption words (the trained rows)."""
    tok = cw.clip_tokenizer()
    ids = {tok.sot_token_id, tok.eot_token_id, *(t for word in cw.word_token_ids(world_module.caption_words()) for t in word)}
    return torch.tensor(sorted(ids), dtype=torch.int64)


def _check_checkpoint(out: Path, cfg: PretrainConfig) -> dict:
    """The checkpoint info in ``out`` (``{}`` if none); raises if it was made with other (result-changing) settings."""
    meta_path = out / "checkpoint.json"
    if not meta_path.is_file():
        return {}
    info = json.loads(meta_path.read_text())
    saved = {k: tuple(v) if isinstance(v, list) else v for k, v in info["config"].items()}
    saved = {"version": 1, "groups": (), "clip_grad": 0.0, "word_loss": 0.0, "word_form": "sigmoid", "object_weight": 1.0, **saved}  # fields added later: older checkpoints had these
    speed_only = ("threads", "workers", "checkpoint_every", "log_every", "text_buckets")
    diff = {
        k: (saved.get(k), v) for k, v in dataclasses.asdict(cfg).items() if k not in speed_only and saved.get(k) != v
    }
    if diff:
        raise ArtifactError(f"{meta_path}: checkpoint was made with different settings {diff} (saved, now); "
                            "use the same settings or a new --out folder")  # fmt: skip
    return info


class Trainer:
    """Model in training form (compact token table), optimizer, and their checkpointing."""

    def __init__(self, cfg: PretrainConfig) -> None:
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.model = create_microclip_model(cfg.model_config).train()
        self.rows = vocabulary_token_ids(cfg.world)  # [K]
        table = init_token_table(cfg.seed)
        # [K, 128] compact table; token id -> row index via `remap` (ids outside the vocabulary only occur as
        # padding after EOS, which the causal mask makes irrelevant, so they map to row 0)
        self.model.token_embedding = torch.nn.Embedding.from_pretrained(table[self.rows].clone(), freeze=False)
        self.remap = torch.zeros(table.shape[0], dtype=torch.int64)
        self.remap[self.rows] = torch.arange(len(self.rows))
        # pretraining-only head (never exported); its parameters go last so that runs without it keep their layout
        self.word_head = cw.CaptionWordHead(self.model.text_projection.shape[1], len(self.rows)) if cfg.word_loss else None
        params = [*self.model.parameters(), *(self.word_head.parameters() if self.word_head else ())]
        self.word_weights = cw.row_weights(cfg.word_form, cfg.world, cfg.world_seed, self.rows, self.remap.__getitem__) if cfg.word_loss else None
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
        )  # fmt: skip
        self.step = 0

    def train_step(self, batch: world.WorldBatch, tokenize) -> dict:
        """One optimiser step on ``batch`` (``tokenize``: open_clip's); returns the step's loss and statistics."""
        ids = tokenize(batch.captions)  # [B, 77]
        if not bool(torch.isin(ids[ids.argmax(-1, keepdim=True) >= torch.arange(ids.shape[1])], self.rows).all()):
            raise RuntimeError("a caption used a token outside world.caption_words(); update the vocabulary")
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.step, self.cfg)
        raw = self.model.encode_image(images_to_tensor(batch.images))  # [B, E]
        img = F.normalize(raw, dim=-1)
        # Text in length buckets: each bucket is cut after its own longest EOS (exact under the causal mask), so
        # short captions do not pay for the longest one in the batch.
        order = ids.argmax(-1).argsort(stable=True)  # [B] batch indices by EOS position
        parts = [encode_text_truncated(self.model, ids[c], embed_ids=self.remap[ids[c]], normalize=True)
                 for c in order.chunk(self.cfg.text_buckets)]  # fmt: skip
        txt = torch.cat(parts)[order.argsort()]  # [B, E], back in batch order
        logits = self.model.logit_scale.exp() * img @ txt.t()  # [B, B]
        target = torch.arange(len(logits))
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
        words = cw.caption_word_targets(ids, self.remap[ids], len(self.rows)) if self.word_head else None  # [B, K]
        word = cw.word_loss(self.cfg.word_form, self.word_head, raw, words, self.word_weights, self.cfg.object_weight) if words is not None else 0.0
        loss = loss + self.cfg.word_loss * word
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
        self.opt.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0.0, math.log(100.0))
        self.step += 1
        acc = (logits.argmax(1) == target).float().mean().item()
        return {"loss": loss.item(), "i2t_acc": acc, "logit_scale": self.model.logit_scale.exp().item(),
                **({"word_loss": word.item()} if self.word_head else {})}  # fmt: skip

    def load_snapshot(self, state: dict[str, torch.Tensor]) -> None:
        """Load a training snapshot's tensors (the CLIP's and, if the run has one, the word head's)."""
        clip, head = cw.split_snapshot(state)
        self.model.load_state_dict(clip)
        if self.word_head is not None:
            self.word_head.load_state_dict(head)

    def full_model(self) -> torch.nn.Module:
        """A stock micro-CLIP (full token table) carrying the trained weights, in eval mode."""
        model = create_microclip_model(self.cfg.model_config)
        state = {k: v for k, v in self.model.state_dict().items() if k != "token_embedding.weight"}
        table = init_token_table(self.cfg.seed)
        table[self.rows] = self.model.token_embedding.weight.detach()
        model.load_state_dict({**state, "token_embedding.weight": table}, strict=True)
        return model.eval()

    def save(self, out: Path) -> None:
        """Checkpoint: ``<out>/ckpt/model-<step>.safetensors``, ``optim-<step>.safetensors``, then checkpoint.json."""
        ck = out / "ckpt"
        sd = self.opt.state_dict()
        opt_tensors = {f"state.{i}.{k}": v for i, st in sd["state"].items() for k, v in st.items()}
        opt_tensors["rng.torch"] = torch.get_rng_state()
        head = {cw.PREFIX + k: v for k, v in self.word_head.state_dict().items()} if self.word_head else {}
        atomic_save_safetensors(ck / f"model-{self.step}.safetensors", {**self.model.state_dict(), **head})
        atomic_save_safetensors(ck / f"optim-{self.step}.safetensors", opt_tensors)
        info = {"step": self.step, "config": dataclasses.asdict(self.cfg), "param_groups": sd["param_groups"]}
        atomic_write_json(out / "checkpoint.json", info)  # the commit point: names the files of this step
        for f in ck.glob("*.safetensors"):
            if not f.name.endswith(f"-{self.step}.safetensors"):
                f.unlink()

    def load(self, out: Path) -> bool:
        """Resume from the checkpoint in ``out`` (``False``: none there)."""
        from safetensors.torch import load_file

        meta_path = out / "checkpoint.json"
        if not meta_path.is_file():
            return False
        info = _check_checkpoint(out, self.cfg)
        step = info["step"]
        self.load_snapshot(load_file(str(out / "ckpt" / f"model-{step}.safetensors")))
        t = load_file(str(out / "ckpt" / f"optim-{step}.safetensors"))
        torch.set_rng_state(t.pop("rng.torch"))
        state: dict[int, dict] = {}
        for key, v in t.items():
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = v
        self.opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})
        self.step = step
        return True


def pretrain(cfg: PretrainConfig, out: str | Path, progress: bool = True, stop_after: int | None = None) -> dict:
    """Pretrain (or resume) micro-CLIP into ``out``; writes ``microclip.safetensors`` (compact) at the end.

    Args:
        cfg: settings.
        out: output folder (checkpoints, ``log.jsonl``, ``summary.json``, ``microclip.safetensors``).
        progress: show a tqdm progress bar.
        stop_after: stop (with a checkpoint) after this many steps of this run; a later call resumes.

    Returns:
        The summary dict also written to ``summary.json`` (``{"finished": False, ...}`` when stopped early).
    """
    from open_clip import tokenize

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(cfg.threads == 1)
    _check_checkpoint(out, cfg)
    trainer = Trainer(cfg)
    if trainer.load(out):
        logger.info("resumed from %s at step %d", out / "checkpoint.json", trainer.step)
    start, t0 = trainer.step, time.perf_counter()
    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    if cfg.groups:
        batches = iter_grouped_batches(cfg.world_seed, cfg.batch_size, cfg.groups, start, end - start, cfg.workers)
    else:
        batches = cfg.world.iter_batches(cfg.world_seed, cfg.batch_size, start_batch=start,
                                         num_batches=end - start, processes=cfg.workers)  # fmt: skip
    bar = tqdm(total=cfg.steps, initial=start, disable=not progress, desc="pretrain micro-CLIP", dynamic_ncols=True)
    for batch in batches:
        stats = trainer.train_step(batch, tokenize)
        bar.update(1)
        bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{stats['i2t_acc']:.2f}", scale=f"{stats['logit_scale']:.1f}")
        if trainer.step % cfg.log_every == 0 or trainer.step == cfg.steps:
            append_jsonl(out / "log.jsonl", {"step": trainer.step, "lr": lr_at(trainer.step - 1, cfg), **stats,
                                             "seconds": round(time.perf_counter() - t0, 2)})  # fmt: skip
        if trainer.step % cfg.checkpoint_every == 0 or trainer.step == end:
            trainer.save(out)
    bar.close()
    seconds = time.perf_counter() - t0
    summary = {"finished": trainer.step == cfg.steps, "step": trainer.step, "config": dataclasses.asdict(cfg),
               "steps_this_run": trainer.step - start, "seconds_this_run": round(seconds, 1),
               "trained_token_rows": len(trainer.rows), "versions": _versions()}  # fmt: skip
    if summary["finished"]:
        model = trainer.full_model()
        path = out / "microclip.safetensors"
        save_compact(path, model, trainer.rows, cfg.seed, config=cfg.model_config,
                     extra_metadata={"pretrain_config": json.dumps(dataclasses.asdict(cfg)), **summary["versions"],
                                     "world_fingerprint": cfg.world.world_fingerprint()})  # fmt: skip
        _verify_export(model, path, cfg.world)
    atomic_write_json(out / "summary.json", summary)
    return summary


@torch.no_grad()
def _verify_export(model: torch.nn.Module, path: Path, world_module=world) -> None:
    """Check that the compact file loads into a model with bit-identical logits on held-out world data."""
    from open_clip import tokenize

    batch = world_module.generate(seed=12345, start=0, count=64)
    ids = tokenize(batch.captions)
    x = images_to_tensor(batch.images)
    loaded = build_microclip(path)
    for m in (model, loaded):
        m.eval()
    a = model.encode_image(x, normalize=True) @ model.encode_text(ids, normalize=True).t()
    b = loaded.encode_image(x, normalize=True) @ loaded.encode_text(ids, normalize=True).t()
    if not torch.equal(a, b):
        raise ArtifactError(f"{path}: reloaded model differs from the trained one (max |Δlogit| {(a - b).abs().max()})")


def _versions() -> dict[str, str]:
    import numpy
    import open_clip
    import PIL

    return {"torch": torch.__version__, "open_clip": open_clip.__version__, "numpy": numpy.__version__,
            "pillow": PIL.__version__}  # fmt: skip


def _group_sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(g) for g in text.split(",") if g.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated group sizes, e.g. 32,4") from None


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``--version 2``: the v2 recipe, :data:`V2_RECIPE`, for any flag not given)."""
    p = argparse.ArgumentParser(prog="python -m vlprompt.microclip.pretrain", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder (resumes from the checkpoint in it if present)")
    p.add_argument("--version", type=int, default=1, choices=(1, 2), help="1: v1 model and world; 2: v2 (ViT)")
    for flag, kind, what in (("--steps", int, ""), ("--batch-size", int, ""), ("--lr", float, ""),
                             ("--warmup", int, ""), ("--seed", int, "model init seed"), ("--world-seed", int, ""),
                             ("--threads", int, "torch threads; 1 = deterministic mode"),
                             ("--workers", int, "image-rendering processes"), ("--checkpoint-every", int, ""),
                             ("--clip-grad", float, "gradient-norm clipping (0: off)"),
                             ("--object-weight", float, "the object term's weight in a '+objects' word form")):  # fmt: skip
        p.add_argument(flag, type=kind, default=None, help=what or None)  # fmt: skip
    p.add_argument("--word-loss", type=float, default=None, help="weight of the caption-word loss (0: off)")
    p.add_argument("--word-form", default=None, choices=cw.FORMS, help="the caption-word loss's form")
    p.add_argument("--groups", type=_group_sizes, default=None, help="v2 grouped batches, e.g. 32,4 (PretrainConfig.groups)")
    p.add_argument("--stop-after", type=int, default=None, help="stop (checkpointed) after this many steps")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    names = ("steps", "batch_size", "lr", "warmup", "seed", "world_seed", "threads", "workers", "checkpoint_every",
             "clip_grad", "word_loss", "word_form", "object_weight")  # fmt: skip
    given = {k: getattr(a, k) for k in names if getattr(a, k) is not None}
    if a.groups is not None:
        given["groups"] = a.groups
    cfg = PretrainConfig(**{**(V2_RECIPE if a.version == 2 else {}), **given})
    summary = pretrain(cfg, a.out, progress=not a.no_progress, stop_after=a.stop_after)
    print(json.dumps({k: summary[k] for k in ("finished", "step", "steps_this_run", "seconds_this_run")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
