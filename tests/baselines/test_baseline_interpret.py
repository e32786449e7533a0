"""``vlprompt interpret``: nearest vocabulary words of unified and class-specific context, readable, k per vector,
ranked by Euclidean distance and by cosine similarity exactly as a brute-force computation ranks them."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from baseline_layouts import single_thread, write_split_benchmark
from safetensors.torch import load_file

from vlprompt.backbones import create_backbone
from vlprompt.cli.main import main
from vlprompt.interpret import interpret_run, readable_token

BASE = ["--backbone", "vlp-tiny-rn", "--pretrained", "random", "--device", "cpu"]
INIT = "a photo of a"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    yield from single_thread()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("interp")
    write_split_benchmark(base / "data", "dtd")
    out = {}
    for kind, extra in (("uc", []), ("csc", ["--csc"])):
        out[kind] = base / kind
        assert main(["train", "--dataset", "dtd", "--root", str(base / "data"), "--shots", "1", "--epochs", "1",
                     "--ctx-init", INIT, "--augment", "none", "--out", str(out[kind]), *BASE, *extra]) == 0
    return out


@pytest.fixture(scope="module")
def table():
    return create_backbone("vlp-tiny-rn", "random").token_embedding_weight.detach().double()  # (V, D)


def _brute_force(vec: torch.Tensor, table: torch.Tensor, k: int) -> tuple[list[int], list[int]]:
    dist = ((table - vec.double()) ** 2).sum(-1).sqrt()  # (V,)
    cos = (table @ vec.double()) / (table.norm(dim=-1) * vec.double().norm())
    return dist.argsort()[:k].tolist(), cos.argsort(descending=True)[:k].tolist()


def _check_ranks(vectors: list[dict], ctx: torch.Tensor, table: torch.Tensor, k: int) -> None:
    for v, row in zip(vectors, ctx, strict=True):
        euc, cos = _brute_force(row, table, k)
        assert [n["token_id"] for n in v["euclidean"]] == euc
        assert [n["token_id"] for n in v["cosine"]] == cos
        d = [n["score"] for n in v["euclidean"]]
        assert d == sorted(d) and d[0] == pytest.approx((table[euc[0]] - row.double()).norm().item())
        assert v["cosine"][0]["score"] == pytest.approx(F.cosine_similarity(table[cos[0]], row.double(), dim=0).item())


def test_unified_context(runs, table, capsys):
    capsys.readouterr()
    assert main(["interpret", "--run", str(runs["uc"]), "--top-k", "3", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert (res["csc"], res["n_ctx"], res["top_k"], res["backbone"]) == (False, 4, 3, "vlp-tiny-rn")
    vecs = res["vectors"]
    assert len(vecs) == 4 and all(v["classname"] is None for v in vecs)
    assert all(len(v["euclidean"]) == 3 and len(v["cosine"]) == 3 for v in vecs)
    # one epoch at the warm-up lr barely moves the context: it still sits on the words it started from
    assert [v["euclidean"][0]["word"] for v in vecs] == INIT.split()
    assert [v["cosine"][0]["word"] for v in vecs] == INIT.split()
    assert all("</w>" not in n["word"] for v in vecs for n in v["euclidean"] + v["cosine"])
    assert vecs[1]["euclidean"][0]["token"] == "photo</w>"
    ctx = load_file(str(runs["uc"] / "learner.safetensors"))["ctx"]  # (M, D)
    _check_ranks(vecs, ctx, table, 3)

    assert main(["interpret", "--run", str(runs["uc"]), "--top-k", "2"]) == 0
    text = capsys.readouterr().out
    assert "nearest by Euclidean distance" in text and "nearest by cosine similarity" in text
    assert "shared context: nearest words (Euclidean) 'a photo of a'" in text and "</w>" not in text


def test_class_specific_context_per_class(runs, table):
    res = interpret_run(runs["csc"], top_k=5)
    classes = ["banded", "blotchy", "zigzagged"]
    assert res.csc and res.n_ctx == 4 and len(res.vectors) == 3 * 4
    assert [v.classname for v in res.vectors] == [c for c in classes for _ in range(4)]
    assert [v.index for v in res.vectors] == [0, 1, 2, 3] * 3
    for c in classes:
        assert res.nearest_text("euclidean", c) == INIT
    ctx = load_file(str(runs["csc"] / "learner.safetensors"))["ctx"]  # (C, M, D)
    _check_ranks(res.to_dict()["vectors"], ctx.reshape(-1, ctx.shape[-1]), table, 5)


def test_words_are_decoded_from_byte_level_bpe():
    bb = create_backbone("vlp-tiny-rn", "random")
    (tid,) = bb.bpe_tokens("café")
    raw, word = readable_token(bb, tid)
    assert raw != "café</w>" and word == "café"


@pytest.mark.parametrize(("argv", "message"), [(["--top-k", "0"], "--top-k"), ([], "not a finished vlprompt")])
def test_bad_input(runs, tmp_path, capsys, argv, message):
    run = runs["uc"] if argv else tmp_path
    assert main(["interpret", "--run", str(run), *argv]) == 2
    assert message in capsys.readouterr().err
