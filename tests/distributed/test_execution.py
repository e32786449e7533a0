"""The execution strategy object (issue 13): one process or one torchrun rank, made once and passed explicitly.

What could go wrong and is checked here: a member of :class:`SingleProcess` that does more than the plain
computation; :func:`open_execution` choosing the wrong strategy; a library call that ignores the strategy it was
given and looks up the module-global process group instead (then a :class:`SingleProcess` handed to code running
inside an open group would shard or wait in a collective); and a run function that does not pass its strategy down
(then it would fall back on :func:`current_execution`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from dist_ranks import run_ranks
from safetensors.torch import load_file, save_file

from vlprompt.engine import execution as X
from vlprompt.engine.execution import Execution, SingleProcess, Torchrun, open_execution
from vlprompt.errors import TrainingDivergedError
from vlprompt.features.cache import FeatureCache

gloo = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                          reason="torch.distributed with gloo is not available")
CLASSES = ["red fox", "green frog", "blue jay", "a cat", "dog"]  # 5 classes: 3 + 2 over 2 ranks


def test_single_process_members_are_the_plain_computation(tmp_path):
    ex = SingleProcess("cpu")
    assert isinstance(ex, Execution) and (ex.rank, ex.world_size, ex.is_main, ex.device) == (0, 1, True,
                                                                                               torch.device("cpu"))
    rows = torch.arange(12.0).reshape(6, 2)
    assert ex.shard_range(6) == (0, 6) and ex.shard_range(0) == (0, 0)
    assert ex.gather_rows(rows, 6) is rows and ex.all_gather_rows(rows, 6) is rows and ex.all_reduce_sum(rows) is rows
    assert ex.broadcast({"a": 1}) == {"a": 1} and ex.broadcast_tensor(rows) is rows
    assert ex.on_main(lambda a, b: a * b, 6, b=7) == 42 and ex.batch_shard() is None
    ex.barrier()
    with pytest.raises(TrainingDivergedError, match="nan"):  # raised as it is: nothing to transport
        ex.on_main(_diverge)
    calls = []
    cache, key = FeatureCache(str(tmp_path)), {"split": "test", "num": 6}
    first = ex.cached(cache, key, lambda: calls.append(1) or rows)
    again = ex.cached(cache, key, lambda: calls.append(2) or rows)  # a hit: compute not called
    assert calls == [1] and torch.equal(first, rows) and torch.equal(again, rows)


def test_outside_torchrun_open_execution_is_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with open_execution(torch.device("cpu")) as ex:
        assert type(ex) is SingleProcess and ex.device == torch.device("cpu")
        assert not torch.distributed.is_initialized()
    assert type(X.current_execution()) is SingleProcess
    with pytest.raises(RuntimeError, match="open process group"):
        Torchrun(torch.device("cpu"))


def _diverge() -> None:
    raise TrainingDivergedError("the training loss became nan")


def _text(model) -> torch.Tensor:
    with torch.no_grad():
        return model.text_features()  # (C, E)


def _model(execution):
    from vlprompt.backbones import create_backbone
    from vlprompt.engine.model import PromptModel
    from vlprompt.prompts import create_prompt_learner

    torch.manual_seed(0)
    backbone = create_backbone("vlp-tiny-vit", "random", device="cpu")
    return PromptModel(backbone, create_prompt_learner("coop", backbone, CLASSES, {"n_ctx": 3}), execution=execution)


def _worker(rank: int, ports: list[int], out: str, folder: str) -> None:
    from vlprompt.data import load_dataset
    from vlprompt.data.transforms import build_transform
    from vlprompt.engine import pipeline as P

    got: dict = {}
    with open_execution(torch.device("cpu")) as ex:
        got.update(kind=type(ex).__name__, rank=ex.rank, world=ex.world_size, main=ex.is_main,
                   shards=[ex.shard_range(5), ex.shard_range(2)], told=ex.broadcast(f"from rank {ex.rank}"))
        mine = torch.arange(10.0).reshape(5, 2)[slice(*ex.shard_range(5))]  # this rank's rows of [5, 2]
        gathered = ex.gather_rows(mine, 5)
        ex.barrier()
        try:
            ex.on_main(_diverge)  # raised on rank 0 only; rank 1 raises the rebuilt copy
        except TrainingDivergedError as e:
            got["error"] = [type(e).__name__, str(e)]
        # the strategy given is the one used: inside the open group, a SingleProcess model encodes all classes
        # itself (no collective: rank 1 does not wait for rank 0), and a Torchrun one shards them
        gathers, real_gather = [], torch.distributed.all_gather
        torch.distributed.all_gather = lambda *a, **k: gathers.append(1) or real_gather(*a, **k)
        try:
            alone = _text(_model(SingleProcess("cpu")))
            got["gathers_alone"] = len(gathers)
            shared = _text(_model(ex))
            got["gathers_shared"] = len(gathers) - got["gathers_alone"]
        finally:
            torch.distributed.all_gather = real_gather
        records = list(load_dataset(f"folder:{folder}", None).train)
        backbone = _model(None).backbone
        tf = build_transform(backbone.preprocess, train=False)
        puts = []
        real_put = FeatureCache.put
        FeatureCache.put = lambda self, key, t: puts.append(key["split"]) or real_put(self, key, t)
        try:
            kw = dict(dataset="d", root="/", precision="fp32", batch_size=5)
            own = P.cached_features(backbone, records, "fp", tf, split="own", cache_dir=f"{out}/cache{rank}",
                                    execution=SingleProcess("cpu"), **kw)  # every rank reads and writes its own
            common = P.cached_features(backbone, records, "fp", tf, split="common", cache_dir=f"{out}/cache",
                                       execution=ex, **kw)  # rank 0 writes, the encoding is sharded
        finally:
            FeatureCache.put = real_put
        got["puts"] = puts
    Path(out, f"rank{rank}.json").write_text(json.dumps(got))
    save_file({"gathered": gathered, "alone": alone, "shared": shared, "own": own, "common": common},
              f"{out}/rank{rank}.safetensors")


@gloo
def test_two_ranks_use_the_strategy_they_are_given(textured_folder, tmp_path):
    run_ranks(_worker, str(tmp_path), str(textured_folder))
    single = SingleProcess("cpu")
    expected_text = _text(_model(single))
    from vlprompt.data import load_dataset
    from vlprompt.data.transforms import build_transform
    from vlprompt.engine import pipeline as P

    backbone = _model(None).backbone
    feats = P.extract_features(backbone, list(load_dataset(f"folder:{textured_folder}", None).train),
                               build_transform(backbone.preprocess, train=False), batch_size=5, execution=single)
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got == {"kind": "Torchrun", "rank": rank, "world": 2, "main": rank == 0,
                       "shards": [[0, 3], [0, 1]] if rank == 0 else [[3, 5], [1, 2]],
                       "told": "from rank 0", "error": ["TrainingDivergedError", "the training loss became nan"],
                       "puts": ["own", "common"] if rank == 0 else ["own"], "gathers_alone": 0,
                       "gathers_shared": 1}  # one gather of the (C_r, E) shards
        t = load_file(str(tmp_path / f"rank{rank}.safetensors"))
        assert torch.equal(t["gathered"], torch.arange(10.0).reshape(5, 2))
        torch.testing.assert_close(t["alone"], expected_text, atol=1e-6, rtol=0)
        torch.testing.assert_close(t["shared"], expected_text, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(t["own"], feats, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(t["common"], feats, atol=1e-5, rtol=1e-5)
    assert (tmp_path / "cache1").is_dir() and (tmp_path / "cache0").is_dir()  # each rank's own cache, as told


def test_the_run_functions_pass_their_execution_down(image_folder, tmp_path, monkeypatch):
    """`vlprompt train` and `vlprompt eval` in one process never fall back on the current execution: every library
    call gets the run's strategy (model, loop, features, cache, rank-0 file work)."""
    from vlprompt.cli.main import main

    def no_lookup():
        raise AssertionError("a library call was not given the run's execution")

    monkeypatch.setattr(X, "current_execution", no_lookup)
    base = ["--dataset", f"folder:{image_folder}", "--device", "cpu", "--cache-dir", str(tmp_path / "cache")]
    assert main(["train", *base, "--shots", "2", "--epochs", "1", "--n-ctx", "2", "--backbone", "vlp-tiny-rn",
                 "--pretrained", "random", "--out", str(tmp_path / "run"), "--augment", "cached:2"]) == 0
    assert main(["eval", "--run", str(tmp_path / "run"), *base, "--out", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["accuracy"] == pytest.approx(
        json.loads((tmp_path / "run" / "metrics.json").read_text())["accuracy"])
