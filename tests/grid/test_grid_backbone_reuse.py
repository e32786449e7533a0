"""The transfer protocols build one backbone per worker, as the few-shot grid does: every evaluation of a prompt on
a dg/xd target (``eval_run``) loads the prompt into the worker's backbone instead of building its own, so a grid of
P prompts × T targets builds 1 backbone, not 1 + P·T. Counted by the backbone constructions themselves."""

from __future__ import annotations

import pytest
from grid_helpers import FAST, accuracy, benchmark, finished
from grid_layouts import single_thread, write_dtd4, write_imagenet_family, write_split_benchmark

from vlprompt.backbones.open_clip import OpenClipBackbone

DG = ["imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    yield from single_thread()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("reuse_data")
    write_imagenet_family(root)
    write_dtd4(root)
    write_split_benchmark(root, "oxford_pets", seed=3)
    return root


@pytest.fixture
def built(monkeypatch) -> list[str]:
    """The name of every backbone constructed while the test runs."""
    names: list[str] = []
    init = OpenClipBackbone.__init__

    def counting(self, *args, **kwargs):
        init(self, *args, **kwargs)
        names.append(self.name)

    monkeypatch.setattr(OpenClipBackbone, "__init__", counting)
    return names


def _argv(protocol, data, runs, *extra):
    return ["--protocol", protocol, "--shots", "1", "--seeds", "1,2", "--methods", "coop,cocoop", "--root",
            str(data), "--out", str(runs), *FAST, *extra]


def test_a_dg_grid_builds_one_backbone(data, tmp_path, capsys, built):
    runs = tmp_path / "runs"
    code, out, _ = benchmark(capsys, *_argv("dg", data, runs), "--no-report")
    assert code == 0 and "4 runs: 4 ran, 0 already finished, 0 failed" in out
    prompts = [runs / "imagenet" / m / "1shots" / f"seed{s}" for m in ("coop", "cocoop") for s in (1, 2)]
    assert finished(runs) == set(prompts) | {p / f"eval_{t}" for p in prompts for t in DG}  # 16 evaluations
    assert built == ["vlp-tiny-rn"]  # was 17: the grid's, then one per evaluation

    # the same grid extended to xd in the same folder: the ImageNet prompts are reused, 4 × 2 new evaluations
    built.clear()
    code, out, _ = benchmark(capsys, *_argv("xd", data, runs), "--datasets", "dtd,oxford_pets", "--no-report")
    assert code == 0 and "4 runs: 4 ran, 0 already finished, 0 failed" in out and built == ["vlp-tiny-rn"]

    # an evaluation on the shared backbone gives what `vlprompt eval` gives with a backbone of its own
    from vlprompt.cli.main import main

    alone = tmp_path / "alone"
    assert main(["eval", "--run", str(prompts[2]), "--dataset", "imagenet_r", "--root", str(data), "--out",
                 str(alone), "--pretrained", "random", "--device", "cpu", "--cache-dir", ""]) == 0
    assert accuracy(alone) == accuracy(prompts[2] / "eval_imagenet_r")


def test_a_cluster_job_builds_one_backbone_for_its_evaluations(data, tmp_path, built):
    """GridJob (what each submitit job runs, here called in this process): the job's training and its four
    evaluations share one backbone (was 5)."""
    from vlprompt.cli.benchmark import build_config
    from vlprompt.cli.main import build_parser
    from vlprompt.runs.executors import GridJob
    from vlprompt.runs.grid import plan

    args = build_parser().parse_args(["benchmark", *_argv("dg", data, tmp_path / "runs")])
    cfg = build_config(args)
    job = next(j for j in plan(cfg) if j.method == "coop")
    metrics, error = GridJob()(job, cfg)
    assert error is None and set(metrics["evaluations"]) == set(DG) and job.done
    assert built == ["vlp-tiny-rn"]


def test_backbones_are_built_once_per_precision(built):
    """A grid trained in fp16 evaluates its prompts in fp32, as ``eval_run`` builds them: one backbone of each."""
    import torch

    from vlprompt.engine.config import TrainConfig
    from vlprompt.runs.grid import BenchmarkConfig
    from vlprompt.runs.jobs import EVAL_PRECISION, Backbones

    cfg = BenchmarkConfig(datasets=("dtd",), backbone="vlp-tiny-rn", pretrained="random", device="cpu",
                          train=TrainConfig(precision="fp16"))
    backbones = Backbones()
    train, again = backbones.get(cfg), backbones.get(cfg)
    evals = [backbones.get(cfg, EVAL_PRECISION) for _ in range(3)]
    assert train is again and all(e is evals[0] for e in evals) and evals[0] is not train
    assert built == ["vlp-tiny-rn", "vlp-tiny-rn"]
    assert train.dtype == torch.float16 and evals[0].dtype == torch.float32
