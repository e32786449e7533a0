"""The demo's protocols: ``vlprompt demo``'s default (short: one seed, CoOp's ep50 configs at every shot count,
base-to-new with each method's own recipe), the paper's, and ``--quick``: what reaches the grid runner's settings
and what the report says of them."""

from __future__ import annotations

from vlprompt.microclip import demo
from vlprompt.microclip.demo import SHORT_EPOCHS, DemoConfig, part_epochs
from vlprompt.microclip.demo_report import _protocol_text


def test_each_protocol_gives_its_epochs_to_each_grid():
    assert part_epochs(DemoConfig.short("x")) == (SHORT_EPOCHS, None) == (50, None)  # b2n: CoCoOp 10, IVLP 5, ...
    assert part_epochs(DemoConfig(out="x")) == (None, None)  # the paper's: 50/100/200 by shots
    assert part_epochs(DemoConfig.quick("x")) == (10, 10)  # a smoke test: 10 epochs everywhere
    short = DemoConfig.short("x", suite="v1")
    assert short.base2new == () and short.seeds == (1,)  # world v1 has no task with >= 20 classes


def test_execute_hands_the_epochs_to_the_runner_settings(monkeypatch):
    from vlprompt.runs import grid_run

    seen = []

    class Summary:
        failed = ()

    monkeypatch.setattr(grid_run, "run_jobs", lambda jobs, settings, **kw: seen.append(settings.train.epochs) or Summary())
    cfg = DemoConfig.short("x")
    cfg.tasks = ("scenes",)
    demo._execute([], cfg, False, 50)
    demo._execute([], cfg, False, None)
    assert seen == [50, None]


def test_the_report_states_the_protocol_and_how_short_departs_from_the_paper():
    short = _protocol_text({"protocol": "short", "train": {"epochs": 50, "base2new_epochs": "official"}})
    assert "Protocol **short**: MAX_EPOCH 50 for the few-shot runs, each method’s own recipe for base-to-new" in short
    assert "one seed instead of three" in short and "`*_ep50`" in short and "--protocol paper" in short
    paper = _protocol_text({"protocol": "paper", "train": {"epochs": "official", "base2new_epochs": "official"}})
    assert "50/100/200 by shots, as the paper" in paper and "one seed" not in paper
    old = _protocol_text({"train": {"epochs": "official"}})  # a results.json from before protocols: the paper's
    assert old.startswith("Protocol **paper**")


def test_tasks_rendered_in_two_processes_are_the_files_rendered_in_one(tmp_path):
    import json

    from vlprompt.microclip import tasks2
    from vlprompt.microclip.demo_suite import write_tasks

    names = ["positions", "colours"]  # the two smallest v2 tasks
    serial = write_tasks(tasks2.write_task, names, str(tmp_path / "one"), processes=1)
    pooled = write_tasks(tasks2.write_task, names, str(tmp_path / "two"), processes=2)
    assert list(pooled) == names and all(pooled[n].parent == tmp_path / "two" / "v2" / n for n in names)
    for n in names:  # the manifest holds the SHA-256 of every image file and of the split
        one = json.loads((serial[n].parent / "manifest.json").read_text())
        two = json.loads((pooled[n].parent / "manifest.json").read_text())
        assert one == two and one["content_sha256"]
