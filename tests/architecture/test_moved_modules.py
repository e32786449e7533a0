"""Issue 13 moved the application modules from ``engine/`` to ``runs/``; the old paths stay for users, scripts and
other branches. Pinned: each 1:1 move is the *same module* under its old name (so private names and patches are
shared), and ``vlprompt.engine.run`` still exports every name callers import from it (its former ``__all__``, the
public step names, and the private ones other modules imported)."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize(("old", "new"), [
    ("vlprompt.engine.train_state", "vlprompt.runs.state"),
    ("vlprompt.engine.tracking", "vlprompt.runs.tracking"),
    ("vlprompt.engine.replay", "vlprompt.runs.replay"),
    ("vlprompt.engine.baselines", "vlprompt.runs.probe"),
])
def test_old_path_is_the_moved_module(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)
    package, _, name = old.rpartition(".")
    assert getattr(importlib.import_module(package), name) is importlib.import_module(new)  # `from engine import x`


def test_engine_run_keeps_every_name():
    import vlprompt
    from vlprompt.engine import run
    from vlprompt.engine.spec import RunSpec
    from vlprompt.runs import evaluate, folder, train

    expected = {"RunSpec": RunSpec, "train_run": train.train_run, "zeroshot_run": evaluate.zeroshot_run,
                "eval_run": evaluate.eval_run, "default_label": folder.default_label,
                "prepare_out": folder.prepare_out, "log_eval_only": folder.log_eval_only,
                "base_config": folder.base_config, "load_inputs": folder.load_inputs,
                "refuse_finished": folder.refuse_finished, "test_features": folder.test_features,
                "RunInputs": folder.RunInputs, "_versions": folder.versions, "_base_config": folder.base_config,
                "_load": folder.load_inputs, "_test_features": folder.test_features,
                "_refuse_finished": folder.refuse_finished, "_data_options": folder.data_options}
    assert {name: getattr(run, name) for name in expected} == expected
    assert callable(run.spec_to_dict)
    assert (vlprompt.RunSpec, vlprompt.train_run) == (RunSpec, train.train_run)
