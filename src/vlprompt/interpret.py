"""Interpret learned context vectors as their nearest vocabulary words (CoOp paper §4.5, ``interpret_prompt.py``).

The paper maps each learned context vector to the closest entries of the frozen token embedding table by
**Euclidean** distance; vlprompt also gives the closest by **cosine** similarity (a vector's norm can drift during
training, which Euclidean ranking then mostly reflects). Unlike the official script, which hard-codes RN50's table,
prints raw BPE strings (``photo</w>``) and refuses class-specific context, this uses the table of the backbone the
prompt was trained on (from ``learner.json``; its weights fingerprint is checked), decodes tokens to readable text,
and handles class-specific context class by class.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from vlprompt.backbones.base import Backbone
from vlprompt.errors import ArtifactError, ConfigError

_logger = logging.getLogger(__name__)

_CHUNK = 256  # context vectors per distance computation: (256, V) float64 ≈ 100 MB for CLIP's 49408 tokens


@dataclass(frozen=True)
class Neighbour:
    """One vocabulary entry near a context vector.

    Attributes:
        token_id: index into the token embedding table.
        token: the raw BPE string (``photo</w>``).
        word: readable text (``</w>`` stripped, byte-level BPE characters decoded).
        score: Euclidean distance (smaller is nearer) or cosine similarity (larger is nearer).
    """

    token_id: int
    token: str
    word: str
    score: float


@dataclass
class ContextNeighbours:
    """The nearest words of one context vector.

    Attributes:
        classname: the class whose context this is (class-specific context), ``None`` for unified context.
        index: position of the vector in the context, 0-based (``[V]_{index+1}`` in the paper's notation).
        norm: L2 norm of the vector.
        euclidean: ``top_k`` nearest by Euclidean distance, nearest first.
        cosine: ``top_k`` nearest by cosine similarity, nearest first.
    """

    classname: str | None
    index: int
    norm: float
    euclidean: list[Neighbour] = field(default_factory=list)
    cosine: list[Neighbour] = field(default_factory=list)


@dataclass
class PromptInterpretation:
    """Nearest words of every context vector of a run (class by class for class-specific context)."""

    run: str
    backbone: str
    csc: bool
    n_ctx: int
    top_k: int
    vectors: list[ContextNeighbours]

    def nearest_text(self, metric: str = "euclidean", classname: str | None = None) -> str:
        """The top-1 words of one context joined in order, e.g. ``"a photo of a"``."""
        return _joined([v for v in self.vectors if v.classname == classname], metric)

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return asdict(self)


def readable_token(backbone: Backbone, token_id: int) -> tuple[str, str]:
    """``(raw BPE string, readable word)`` of one vocabulary entry.

    CLIP's BPE stores bytes as printable unicode stand-ins and marks word ends with ``</w>``; the word is the
    string with ``</w>`` removed and the stand-ins turned back into UTF-8 text where the tokenizer allows it.
    """
    raw = backbone.decode_token(token_id)
    word = raw.replace("</w>", "")
    byte_decoder = getattr(getattr(backbone, "tokenizer", None), "byte_decoder", None)
    if byte_decoder and all(c in byte_decoder for c in word):
        word = bytearray(byte_decoder[c] for c in word).decode("utf-8", errors="replace")
    return raw, word


def nearest_tokens(
    vectors: torch.Tensor, table: torch.Tensor, top_k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k vocabulary entries of each vector by Euclidean distance and by cosine similarity.

    Args:
        vectors: ``[N, D]`` context vectors.
        table: ``[V, D]`` token embedding table.
        top_k: entries per vector.

    Returns:
        ``(euc_ids [N, k], euc_dist [N, k], cos_ids [N, k], cos_sim [N, k])``, nearest first. Computed in float64
        so the ranking matches a direct ``‖x − e‖`` computation even between close neighbours.
    """
    table = table.detach().double()
    table_unit = F.normalize(table, dim=-1)
    out: list[list[torch.Tensor]] = [[], [], [], []]
    for start in range(0, vectors.shape[0], _CHUNK):
        x = vectors[start : start + _CHUNK].detach().double().to(table.device)  # (n, D)
        dist = torch.cdist(x.unsqueeze(0), table.unsqueeze(0)).squeeze(0)  # (n, V)
        d, i = dist.topk(top_k, dim=-1, largest=False)  # topk returns sorted values
        sim = F.normalize(x, dim=-1) @ table_unit.t()  # (n, V)
        s, j = sim.topk(top_k, dim=-1)
        for acc, t in zip(out, (i, d, j, s), strict=True):
            acc.append(t.cpu())
    euc_ids, euc_dist, cos_ids, cos_sim = (torch.cat(t) for t in out)
    return euc_ids, euc_dist, cos_ids, cos_sim


def interpret_run(run_dir: str | Path, top_k: int = 3, *, device: str | torch.device = "cpu",
                  pretrained: str | None = None, backbone: Backbone | None = None) -> PromptInterpretation:
    """Nearest vocabulary words of every learned context vector of a training run.

    Args:
        run_dir: a training run folder (``learner.json`` + ``learner.safetensors``).
        top_k: words per vector and metric.
        device: where to build the backbone.
        pretrained: where the backbone weights are now, if they moved (the fingerprint is still checked).
        backbone: an already-built backbone (must be the one recorded in ``learner.json``).

    Raises:
        ConfigError: ``top_k`` outside ``1..vocabulary size``.
        ArtifactError: not a training run, a damaged file, a learner without context vectors, or another backbone.
    """
    from vlprompt.backbones import create_backbone, recorded_pretrained
    from vlprompt.engine.checkpoint import check_backbone

    if (Path(run_dir) / "adapter.json").is_file():  # issue 16
        raise ArtifactError(f"'{run_dir}' is a feature-space adapter run (adapter.json): it learned no context "
                            "vectors, so there are no words to find; interpret a prompt run (coop, kgcoop, cocoop).")
    meta, path, ctx = _read_context(run_dir)  # ctx: (M, D) unified or (C, M, D) class-specific
    if backbone is None:
        ident = meta["backbone"]
        backbone = create_backbone(ident["name"], pretrained or recorded_pretrained(ident), device=device)
    check_backbone(meta, backbone, str(run_dir))
    table = backbone.token_embedding_weight  # (V, D)
    if not 1 <= top_k <= table.shape[0]:
        raise ConfigError(f"--top-k must be between 1 and the vocabulary size {table.shape[0]}, got {top_k}.")
    if ctx.shape[-1] != table.shape[1]:
        raise ArtifactError(f"'{path}': context vectors have width {ctx.shape[-1]} but the token embeddings of "
                            f"{backbone.name} have width {table.shape[1]}; the run does not belong to this backbone.")
    csc = ctx.dim() == 3
    classnames: list[str | None] = list(meta["classnames"]) if csc else [None]
    if csc and len(classnames) != ctx.shape[0]:
        raise ArtifactError(f"'{path}': {ctx.shape[0]} class contexts but {len(classnames)} class names in "
                            "learner.json; the run folder is damaged.")
    flat = ctx.reshape(-1, ctx.shape[-1])  # (C·M, D) or (M, D), class-major
    n_ctx = ctx.shape[-2]
    euc_ids, euc_dist, cos_ids, cos_sim = nearest_tokens(flat, table, top_k)
    words: dict[int, tuple[str, str]] = {}

    def neighbours(ids: torch.Tensor, scores: torch.Tensor) -> list[Neighbour]:
        res = []
        for i, s in zip(ids.tolist(), scores.tolist(), strict=True):
            if i not in words:
                words[i] = readable_token(backbone, i)
            res.append(Neighbour(int(i), words[i][0], words[i][1], float(s)))
        return res

    vectors = [
        ContextNeighbours(classnames[row // n_ctx], row % n_ctx, float(flat[row].norm()),
                          neighbours(euc_ids[row], euc_dist[row]), neighbours(cos_ids[row], cos_sim[row]))
        for row in range(flat.shape[0])
    ]
    return PromptInterpretation(str(run_dir), backbone.name, csc, n_ctx, top_k, vectors)


def _read_context(run_dir: str | Path) -> tuple[dict, Path, torch.Tensor]:
    """``(learner.json, the weights file, its float context vectors)`` of a training run.

    Raises:
        ArtifactError: not a training run, a damaged file, or a learner without context vectors.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from vlprompt.engine.checkpoint import LEARNER_WEIGHTS, read_learner_json

    meta = read_learner_json(run_dir)
    if meta.get("prompts_image"):  # issue 15
        raise ArtifactError(
            f"'{run_dir}' holds a {meta['method']} prompt with learned tokens inside the image tower (deep vision "
            "prompts): they live in the vision transformer's hidden space, where there are no words, so `vlprompt "
            "interpret` does not explain them; interpret a prompt learned as input-layer context vectors only "
            "(coop, cocoop, kgcoop).")
    path = Path(run_dir) / LEARNER_WEIGHTS
    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise ArtifactError(f"'{path}' could not be read ({e}); the run folder is damaged — retrain it.") from e
    if "ctx" not in state:
        raise ArtifactError(f"'{path}' holds {sorted(state)} but no 'ctx' context vectors; `vlprompt interpret` "
                            f"explains prompts learned as context vectors (CoOp), not method '{meta['method']}'.")
    return meta, path, state["ctx"].float()


def format_table(interp: PromptInterpretation) -> str:
    """A plain-text table: one line per context vector, the top-k words by each metric with their scores."""

    def cell(ns: list[Neighbour], fmt: str) -> str:
        return ", ".join(f"{n.word!r} {n.score:{fmt}}" for n in ns)

    rows = [(v.classname or "(shared)", str(v.index + 1), f"{v.norm:.3f}", cell(v.euclidean, ".4f"),
             cell(v.cosine, ".3f")) for v in interp.vectors]
    head = ("class" if interp.csc else "context", "#", "norm", "nearest by Euclidean distance (paper)",
            "nearest by cosine similarity")
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    lines = ["  ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)).rstrip() for r in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    by_context: dict[str | None, list[ContextNeighbours]] = {}
    for v in interp.vectors:  # dicts keep insertion order: classes in label order
        by_context.setdefault(v.classname, []).append(v)
    for c, vs in by_context.items():
        who = f"class {c!r}" if c is not None else "shared context"
        lines.append(f"{who}: nearest words (Euclidean) '{_joined(vs, 'euclidean')}', "
                     f"(cosine) '{_joined(vs, 'cosine')}'")
    return "\n".join(lines)


def _joined(vectors: list[ContextNeighbours], metric: str) -> str:
    return " ".join(getattr(v, metric)[0].word for v in vectors)


__all__ = ["ContextNeighbours", "Neighbour", "PromptInterpretation", "format_table", "interpret_run",
           "nearest_tokens", "readable_token"]
