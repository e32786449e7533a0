"""The per-epoch training state: an exact round trip of learner, optimizer and every RNG; damage is an ArtifactError."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

import vlprompt.engine.train_state as TS
from vlprompt.errors import ArtifactError, ConfigError


def _setup(seed=0):
    torch.manual_seed(seed)
    learner = torch.nn.Module()
    learner.ctx = torch.nn.Parameter(torch.randn(4, 8))
    opt = torch.optim.SGD(learner.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    learner.ctx.grad = torch.randn(4, 8)
    opt.step()  # creates the momentum buffer
    return learner, opt, torch.Generator().manual_seed(seed + 1)


def _draws(gen):
    return (torch.rand(3).tolist(), torch.randperm(10, generator=gen).tolist(), np.random.rand(2).tolist(),
            random.random(), random.gauss(0, 1))


def test_round_trip_restores_learner_optimizer_and_all_rngs(tmp_path):
    learner, opt, gen = _setup()
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    TS.save_train_state(tmp_path, epoch=3, learner=learner, optimizer=opt, generator=gen, digest="abc")
    expected = _draws(gen)
    ctx, momentum = learner.ctx.detach().clone(), opt.state[learner.ctx]["momentum_buffer"].clone()

    learner2, opt2, gen2 = _setup(seed=7)  # a fresh process: other values everywhere
    torch.manual_seed(123), np.random.seed(5), random.seed(9)
    assert TS.load_train_state(tmp_path, learner=learner2, optimizer=opt2, generator=gen2, digest="abc") == 3
    assert torch.equal(learner2.ctx, ctx) and torch.equal(opt2.state[learner2.ctx]["momentum_buffer"], momentum)
    assert opt2.param_groups[0]["momentum"] == 0.9 and opt2.param_groups[0]["weight_decay"] == 5e-4
    assert _draws(gen2) == expected


def test_only_the_latest_weights_file_is_kept_and_removal_is_complete(tmp_path):
    learner, opt, gen = _setup()
    for epoch in (1, 2, 3):
        TS.save_train_state(tmp_path, epoch=epoch, learner=learner, optimizer=opt, generator=gen)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train_state-e0003.safetensors", "train_state.json"]
    (tmp_path / ".train_state-e0004.safetensors.x1.tmp").write_bytes(b"half")
    TS.remove_stale_temporaries(tmp_path)
    TS.remove_train_state(tmp_path)
    assert list(tmp_path.iterdir()) == []


def _tamper_json(path, fn):
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta))


TAMPERS = {
    "invalid JSON": (lambda d: (d / TS.TRAIN_STATE_JSON).write_text("{\"epoch\": 3, "), "not valid JSON"),
    "deeply nested JSON": (lambda d: (d / TS.TRAIN_STATE_JSON).write_text("[" * 100000), "not valid JSON"),
    "other format": (lambda d: _tamper_json(d / TS.TRAIN_STATE_JSON, lambda m: m.update(format="x")), "not a vlprompt"),
    "negative epoch": (lambda d: _tamper_json(d / TS.TRAIN_STATE_JSON, lambda m: m.update(epoch=-1)), "invalid"),
    "weights elsewhere": (lambda d: _tamper_json(d / TS.TRAIN_STATE_JSON, lambda m: m.update(weights="../x")),
                          "invalid"),
    "weights missing": (lambda d: next(d.glob("*.safetensors")).unlink(), "missing or does not match"),
    "weights changed": (lambda d: next(d.glob("*.safetensors")).write_bytes(b"\0" * 64), "does not match the checksum"),
    "optimizer garbage": (lambda d: _tamper_json(d / TS.TRAIN_STATE_JSON, lambda m: m.update(optimizer=[1])),
                          "could not be restored"),
    "param groups garbage": (lambda d: _tamper_json(d / TS.TRAIN_STATE_JSON,
                                                    lambda m: m["optimizer"].update(param_groups=[])),
                             "could not be restored"),
    "rng garbage": (lambda d: _tamper_json(d / TS.TRAIN_STATE_JSON, lambda m: m["rng"].update(numpy=["X", 0, 0, 0])),
                    "could not be restored"),
    "other config": (lambda d: None, "another configuration"),
}


@pytest.mark.parametrize("case", list(TAMPERS))
def test_damaged_state_is_an_artifact_error(tmp_path, case):
    learner, opt, gen = _setup()
    TS.save_train_state(tmp_path, epoch=2, learner=learner, optimizer=opt, generator=gen, digest="abc")
    tamper, message = TAMPERS[case]
    tamper(tmp_path)
    with pytest.raises(ArtifactError, match=message) as e:
        TS.load_train_state(tmp_path, learner=learner, optimizer=opt, generator=gen,
                            digest="other" if case == "other config" else "abc")
    assert "--overwrite" in str(e.value)


def test_state_of_a_different_learner_shape(tmp_path):
    learner, opt, gen = _setup()
    TS.save_train_state(tmp_path, epoch=1, learner=learner, optimizer=opt, generator=gen)
    other = torch.nn.Module()
    other.ctx = torch.nn.Parameter(torch.zeros(2, 8))
    with pytest.raises(ArtifactError, match=r"'ctx' is \(4, 8\)"):
        TS.load_train_state(tmp_path, learner=other, optimizer=torch.optim.SGD(other.parameters(), lr=1), generator=gen)


def test_resume_point_and_config_differences(tmp_path):
    config = {"seed": 1, "train": {"lr": 0.002, "epochs": 5}, "started": "t0", "versions": {"torch": "1"}}
    assert TS.resume_point(tmp_path, config) == 0  # nothing saved
    (tmp_path / "config.json").write_text(json.dumps(config))
    learner, opt, gen = _setup()
    TS.save_train_state(tmp_path, epoch=2, learner=learner, optimizer=opt, generator=gen)
    later = {**config, "started": "t1", "versions": {"torch": "2"}, "threads": 8}  # volatile entries may change
    assert TS.resume_point(tmp_path, later) == 2
    with pytest.raises(ConfigError, match=r"train\.epochs: 5 → 9"):
        TS.resume_point(tmp_path, {**config, "train": {"lr": 0.002, "epochs": 9}})
