"""The distributed building blocks on 2 CPU processes (gloo) equal the single-process computation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from dist_ranks import run_ranks
from safetensors.torch import load_file, save_file

from vlprompt.engine import distributed as D
from vlprompt.errors import ConfigError

pytestmark = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

C, E, B = 5, 4, 6  # classes (uneven over 2 ranks: 3 + 2), embedding, global batch


def _problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(C, E, generator=g), torch.randn(B, E, generator=g), torch.randint(C, (B,), generator=g)


def _loss(img: torch.Tensor, y: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy plus a regularizer of the (gathered) text features, like KgCoOp's."""
    return F.cross_entropy(img @ text.t(), y) + text.pow(2).mean()


def _gather_worker(rank: int, ports: list[int], out: str) -> None:
    torch.distributed.init_process_group("gloo")  # a group the caller opened: used only inside process_group()
    assert not D.active() and D.world_size() == 1
    with D.process_group(torch.device("cpu")):
        assert D.active() and D.world_size() == 2
        w0, img, y = _problem()
        w = w0.clone().requires_grad_(True)
        lo, hi = D.shard_range(C)
        text = D.all_gather_rows(torch.tanh(w[lo:hi]), C)  # (C_r, E) per rank → (C, E)
        shard = D.BatchShard()
        img_r, y_r = shard.split(img, y)  # (B_r, E)
        (_loss(img_r, y_r, text) * shard.share).backward()
        shard.reduce_grads(torch.optim.SGD([w], lr=0.1))
        save_file({"grad": w.grad.contiguous(), "text": text.detach().contiguous()}, f"{out}/rank{rank}.safetensors")

        def refuse() -> None:
            raise ConfigError("--out is taken")

        errors = []
        for call in (lambda: D.on_main(refuse), lambda: shard.split(img[:1], y[:1])):
            try:
                call()
            except ConfigError as e:  # every rank raises rank 0's error (no rank left waiting)
                errors.append(str(e))
        assert D.on_main(lambda: D.rank() + 10) == 10  # rank 0's result on every rank
        Path(out, f"errors{rank}.json").write_text(json.dumps(errors))
    assert torch.distributed.is_initialized()  # left open for its owner
    torch.distributed.destroy_process_group()


def test_gather_with_gradient_equals_single_process(tmp_path):
    run_ranks(_gather_worker, str(tmp_path))
    w0, img, y = _problem()
    w = w0.clone().requires_grad_(True)
    text = torch.tanh(w)
    _loss(img, y, text).backward()
    for rank in range(2):
        got = load_file(str(tmp_path / f"rank{rank}.safetensors"))
        torch.testing.assert_close(got["text"], text.detach(), atol=1e-6, rtol=0)
        torch.testing.assert_close(got["grad"], w.grad, atol=1e-6, rtol=1e-5)
        errors = json.loads((tmp_path / f"errors{rank}.json").read_text())
        assert errors[0] == "--out is taken" and "a training batch holds 1 images but 2 processes" in errors[1]


def test_shard_range_covers_rows_in_order():
    for n in (0, 1, 5, 32):
        for w in (1, 2, 3, 8):
            ranges = [D.shard_range(n, r, w) for r in range(w)]
            assert [lo for lo, _ in ranges][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
            assert max(hi - lo for lo, hi in ranges) - min(hi - lo for lo, hi in ranges) <= 1


def test_not_launched_is_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not D.launched() and not D.active() and D.world_size() == 1 and D.is_main()
    with D.process_group(torch.device("cpu")):  # a no-op outside torchrun
        assert not torch.distributed.is_initialized()
    assert D.on_main(lambda a, b: a + b, 1, 2) == 3


def test_bad_launch_environment_is_explained(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for k in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(D.DistributedError, match="MASTER_ADDR, MASTER_PORT"):
        with D.process_group(torch.device("cpu")):
            pass


def test_failed_rendezvous_names_master_addr_and_port(monkeypatch):
    import socket

    with socket.socket() as taken:  # rank 0 cannot listen on a port that is already in use
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
        monkeypatch.setenv("MASTER_PORT", port)
        with pytest.raises(D.DistributedError, match=f"MASTER_ADDR=127.0.0.1 MASTER_PORT={port}"):
            with D.process_group(torch.device("cpu")):
                pass
    assert not torch.distributed.is_initialized()


# --- the prompt model and feature extraction on a tiny backbone -------------------------------------------------

CLASSES = ["red fox", "green frog", "blue jay", "a cat", "dog"]


def _model(csc: bool):
    from vlprompt.backbones import create_backbone
    from vlprompt.engine.model import PromptModel
    from vlprompt.prompts import create_prompt_learner

    torch.manual_seed(0)
    backbone = create_backbone("vlp-tiny-vit", "random", device="cpu")
    learner = create_prompt_learner("coop", backbone, CLASSES, {"n_ctx": 3, "csc": csc})
    return PromptModel(backbone, learner)


def _text_step(model) -> dict[str, torch.Tensor]:
    """Text features and the context gradient of a loss over all classes (sharded under a process group)."""
    g = torch.Generator().manual_seed(1)
    img = F.normalize(torch.randn(B, model.backbone.embed_dim, generator=g), dim=-1)  # (B, E)
    y = torch.randint(len(CLASSES), (B,), generator=g)
    opt = torch.optim.SGD(model.learner.parameters(), lr=0.1)
    shard = D.BatchShard() if D.active() else None
    if shard is not None:
        img, y = shard.split(img, y)
    text = model.text_features()  # (C, E)
    loss = F.cross_entropy(model.logits(img, text), y) * (shard.share if shard else 1.0)
    loss.backward()
    if shard is not None:
        shard.reduce_grads(opt)
    return {"text": text.detach(), "grad": model.learner.ctx.grad.clone()}


def _records(folder: Path):
    from vlprompt.data import load_dataset

    return list(load_dataset(f"folder:{folder}", None).train)


def _features(backbone, records, cache_dir: str, log: Path) -> dict[str, torch.Tensor]:
    from vlprompt.data.transforms import build_transform
    from vlprompt.engine import pipeline as P
    from vlprompt.features.cache import FeatureCache

    put = FeatureCache.put

    def logged_put(self, key, features):  # records which rank writes the cache
        with open(log, "a") as f:
            f.write(f"put by rank {D.rank()}\n")
        put(self, key, features)

    FeatureCache.put = logged_put
    try:
        test_tf = build_transform(backbone.preprocess, train=False)
        kw = dict(dataset="d", split="train", root="/", precision="fp32", cache_dir=cache_dir, batch_size=5)
        first = P.cached_features(backbone, records, "fp", test_tf, **kw)  # a miss: computed, then stored
        again = P.cached_features(backbone, records, "fp", test_tf, **kw)  # a hit: read by rank 0, shared
        torch.manual_seed(7)
        # 2 views: a miss, each rank augments and encodes its half of the 2N (view, image) items; then 3 views: 2
        # hits read by rank 0 and shared, 1 miss encoded sharded (N items over 2 ranks)
        views2 = P.cached_views(backbone, records, num_views=2, aug_seed=5, **kw)
        views3 = P.cached_views(backbone, records, num_views=3, aug_seed=5, **kw)
        after = torch.rand(3)  # the global RNG continues as in the single process
    finally:
        FeatureCache.put = put
    return {"first": first, "again": again, "views2": views2, "views3": views3, "rng_after": after}


def _model_worker(rank: int, ports: list[int], out: str, folder: str) -> None:
    with D.process_group(torch.device("cpu")):
        result = {}
        for csc in (False, True):
            result.update({f"{k}_csc{int(csc)}": v for k, v in _text_step(_model(csc)).items()})
        model = _model(False)
        result.update(_features(model.backbone, _records(Path(folder)), f"{out}/cache", Path(out) / "puts.log"))
        save_file({k: v.contiguous() for k, v in result.items()}, f"{out}/rank{rank}.safetensors")


def test_sharded_text_features_and_extraction_equal_single_process(textured_folder, tmp_path):
    run_ranks(_model_worker, str(tmp_path), str(textured_folder))
    expected = {}
    for csc in (False, True):
        model = _model(csc)
        assert model.text_path() == ("plain" if csc else "shared-prefix")
        expected.update({f"{k}_csc{int(csc)}": v for k, v in _text_step(model).items()})
    single = tmp_path / "single"
    single.mkdir()
    expected.update(_features(_model(False).backbone, _records(textured_folder), str(single / "cache"),
                              single / "puts.log"))
    for rank in range(2):
        got = load_file(str(tmp_path / f"rank{rank}.safetensors"))
        assert got.keys() == expected.keys()
        for k, v in expected.items():
            torch.testing.assert_close(got[k], v, atol=1e-5, rtol=1e-5, msg=lambda m, k=k, r=rank: f"{k} on rank {r}: {m}")
    # every entry was written once, by rank 0 (test features, then views 0, 1, then view 2), and the lookups after
    # the first were hits
    assert (tmp_path / "puts.log").read_text() == "put by rank 0\n" * 4
    assert len(list((tmp_path / "cache").glob("*.json"))) == 4
    shapes = [json.loads(p.read_text())["shape"] for p in (tmp_path / "cache").glob("*.json")]
    assert sorted(shapes) == [list(expected["first"].shape)] * 4
    assert torch.equal(expected["views3"][:2], expected["views2"])
    assert (expected["views3"][0] - expected["views3"][1]).abs().max() > 1e-3  # the views differ: a real check
