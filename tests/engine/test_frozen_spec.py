"""Issue 13: ``RunSpec`` is frozen and no run function changes the spec it is given.

Before, ``train_run`` assigned the learner's full config and the resolved recipe into the caller's spec
(``spec.learner = …``, ``spec.train = resolve_train_config(…)``), ``zeroshot_run``/``eval_run``/``linear_probe_run``
overwrote ``method``/``learner``/``backbone``: a spec reused for a second run (a grid, a notebook) silently carried
the first run's resolved values. Each run now derives its resolved spec (``dataclasses.replace``) and records that
one; the tests pin both halves: the caller's spec equals a deep copy taken before, and ``config.json`` still holds
the resolved values (CoOp batch 32, CoCoOp batch 1, the learner's full config).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle

import pytest

from vlprompt.engine.config import TrainConfig
from vlprompt.engine.run import RunSpec, eval_run, spec_to_dict, train_run, zeroshot_run
from vlprompt.types import ReadOnlyDict


def _spec(folder, out, **kw) -> RunSpec:
    kw = {"shots": 1, "backbone": "vlp-tiny-vit", **kw}
    return RunSpec(dataset=f"folder:{folder}", out=str(out), pretrained="random", device="cpu", cache_dir="", **kw)


@pytest.mark.parametrize(("method", "batch"), [("coop", 32), ("cocoop", 1)])
def test_train_run_leaves_the_spec_unchanged(image_folder, tmp_path, method, batch):
    """``batch_size`` left unset (``None``) and a one-option learner: the run resolves them (recorded in
    ``config.json``: the method's official batch, every option of the learner's config) but the spec keeps
    ``None`` and ``{"n_ctx": 2, "ctx_init": None}``."""
    spec = _spec(image_folder, tmp_path / method, method=method, learner={"n_ctx": 2, "ctx_init": None},
                 train=TrainConfig(epochs=1, augment="none"))
    before = copy.deepcopy(spec)
    train_run(spec)
    assert spec == before
    assert spec.train.batch_size is None and dict(spec.learner) == {"n_ctx": 2, "ctx_init": None}
    cfg = json.loads((tmp_path / method / "config.json").read_text())
    assert (cfg["train"]["batch_size"], cfg["train"]["epochs"]) == (batch, 1)  # the derived, resolved spec
    assert cfg["method"] == method and cfg["learner"]["n_ctx"] == 2 and "class_token_position" in cfg["learner"]

    # a saved prompt evaluated elsewhere: eval_run records the source's method and backbone, not in the spec
    other = _spec(image_folder, tmp_path / f"{method}-eval", backbone="RN50", method="zeroshot")
    before = copy.deepcopy(other)
    eval_run(str(tmp_path / method), other)
    assert other == before
    cfg = json.loads((tmp_path / f"{method}-eval" / "config.json").read_text())
    assert (cfg["method"], cfg["backbone"]["name"]) == (method, "vlp-tiny-vit")


def test_zeroshot_and_linear_probe_leave_the_spec_unchanged(image_folder, tmp_path):
    pytest.importorskip("sklearn")
    from vlprompt.engine.baselines import linear_probe_run

    spec = _spec(image_folder, tmp_path / "zs", shots=None, learner={"n_ctx": 2})
    before = copy.deepcopy(spec)
    templates = ["a photo of a {}."]
    zeroshot_run(spec, templates)
    assert spec == before and dict(spec.learner) == {"n_ctx": 2} and spec.method == "coop"
    cfg = json.loads((tmp_path / "zs" / "config.json").read_text())
    assert (cfg["method"], cfg["learner"]) == ("zeroshot", {"templates": templates})

    spec = dataclasses.replace(spec, out=str(tmp_path / "lp"), shots=2)
    before = copy.deepcopy(spec)
    linear_probe_run(spec, num_steps=1, max_iter=50)
    assert spec == before
    cfg = json.loads((tmp_path / "lp" / "config.json").read_text())
    assert cfg["method"] == "linear-probe" and cfg["learner"]["num_steps"] == 1


def test_run_spec_is_frozen(tmp_path):
    learner = {"n_ctx": 4, "ctx_init": None, "nested": [1, 2]}
    spec = RunSpec(dataset="dtd", out=str(tmp_path), learner=learner, expect={"classnames": ["a"]})
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.train = TrainConfig(epochs=1)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.learner = {}  # type: ignore[misc]
    for change in (lambda d: d.__setitem__("n_ctx", 8), lambda d: d.update(n_ctx=8), lambda d: d.pop("n_ctx"),
                   lambda d: d.setdefault("csc", True), lambda d: d.clear(), lambda d: d.__delitem__("n_ctx")):
        with pytest.raises(TypeError, match="frozen spec"):
            change(spec.learner)
        with pytest.raises(TypeError, match="frozen spec"):
            change(spec.expect)
    learner["n_ctx"] = 99
    learner["nested"].append(3)  # the spec holds a deep copy: the caller's later changes do not reach it
    assert spec.learner == {"n_ctx": 4, "ctx_init": None, "nested": [1, 2]}
    assert isinstance(spec.learner, ReadOnlyDict) and isinstance(spec.expect, ReadOnlyDict)

    # still a plain value: pickles (subprocesses, cluster jobs), deep-copies, and serialises as before
    for twin in (pickle.loads(pickle.dumps(spec)), copy.deepcopy(spec), dataclasses.replace(spec)):
        assert twin == spec and isinstance(twin.learner, ReadOnlyDict)
    d = spec_to_dict(spec)
    assert type(d["learner"]) is dict and type(d["expect"]) is dict  # the caller's to change
    assert json.loads(json.dumps(d))["learner"] == {"n_ctx": 4, "ctx_init": None, "nested": [1, 2]}
    assert RunSpec(**{**d, "train": TrainConfig(**d["train"])}) == spec  # the demo's round trip through JSON
