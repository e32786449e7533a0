"""Grouped pretraining batches over world v2 (``vlprompt.microclip.batches2``, ``PretrainConfig.group_size``): each
group shares its leader's shade, style and background, every image keeps its own world draws otherwise, and the
stream is pure (resumable, independent of the number of rendering processes)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vlprompt.errors import ArtifactError, ConfigError
from vlprompt.microclip import world2
from vlprompt.microclip.batches2 import SHARED, generate_grouped, iter_grouped_batches
from vlprompt.microclip.pretrain import PretrainConfig, pretrain

COL = {a: k for k, a in enumerate(world2.ATTRIBUTE_NAMES)}
SHARED_COLS = [COL[a] for a in SHARED]
OWN_COLS = [COL[a] for a in world2.ATTRIBUTE_NAMES if a not in SHARED]


def test_groups_share_the_leaders_world_draws_and_keep_their_own_otherwise():
    g = generate_grouped(3, 0, 16, group_size=8)
    iid = world2.generate(3, 0, 16)  # the i.i.d. world stream
    for i in range(16):
        lead = 8 * (i // 8)
        # shared: the leader's values as the world itself draws image `lead` (so the world's rates are kept)
        assert g.labels[i, SHARED_COLS].tolist() == iid.labels[lead, SHARED_COLS].tolist()
        # everything else: image i's own world draws (shape, texture, size, position, count, second shape)
        assert g.labels[i, OWN_COLS].tolist() == iid.labels[i, OWN_COLS].tolist()
    for lead in (0, 8):  # leaders are the i.i.d. stream's images, byte for byte
        assert np.array_equal(g.images[lead], iid.images[lead]) and g.captions[lead] == iid.captions[lead]
    assert len(set(g.labels[:8, COL["shape"]].tolist())) > 2  # a group is not one shape repeated
    assert len({tuple(r) for r in g.labels[:, SHARED_COLS].tolist()}) == 2  # two groups, two shared triples
    one = generate_grouped(3, 0, 16, group_size=1)  # group size 1 is the i.i.d. stream itself
    assert np.array_equal(one.images, iid.images) and one.captions == iid.captions


def test_grouped_stream_is_pure_resumable_and_process_independent():
    whole = generate_grouped(0, 0, 32, group_size=8)
    part = generate_grouped(0, 5, 20, group_size=8)  # starts mid-group: its leader is re-drawn, not assumed
    assert np.array_equal(part.images, whole.images[5:25]) and part.captions == whole.captions[5:25]
    one = list(iter_grouped_batches(0, 16, 8, start_batch=0, num_batches=2, processes=1))
    two = list(iter_grouped_batches(0, 16, 8, start_batch=1, num_batches=1, processes=2))  # resumed at batch 1
    assert np.array_equal(one[0].images, whole.images[:16]) and np.array_equal(one[1].images, whole.images[16:])
    assert np.array_equal(two[0].images, one[1].images) and two[0].captions == one[1].captions


def test_group_size_is_checked():
    with pytest.raises(ConfigError, match="group_size=8 .*version 1"):
        PretrainConfig(version=1, group_size=8)
    with pytest.raises(ConfigError, match="group_size=8 .*batch_size 12"):
        PretrainConfig(version=2, batch_size=12, group_size=8)
    with pytest.raises(ConfigError, match="divides the batch size"):
        iter_grouped_batches(0, 12, 8)
    with pytest.raises(ConfigError, match="group_size=0"):
        generate_grouped(0, 0, 2, group_size=0)


def test_grouped_pretraining_resumes_bit_exactly_and_is_recorded(tmp_path):
    small = PretrainConfig(version=2, steps=2, batch_size=8, group_size=4, warmup=1, threads=1, checkpoint_every=5,
                           log_every=1)  # fmt: skip
    a = pretrain(small, tmp_path / "a", progress=False)
    assert not pretrain(small, tmp_path / "b", progress=False, stop_after=1)["finished"]
    b = pretrain(small, tmp_path / "b", progress=False)
    wa, wb = (load_file(str(tmp_path / r / "microclip.safetensors")) for r in "ab")
    assert a["finished"] and b["finished"] and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["config"]["group_size"] == 4
    iid = pretrain(dataclasses.replace(small, group_size=0, steps=1), tmp_path / "c", progress=False)
    loss = [json.loads((tmp_path / r / "log.jsonl").read_text().splitlines()[0])["loss"] for r in "ac"]
    assert iid["finished"] and loss[0] != loss[1]  # the option reaches the data: step 1 saw another batch
    with pytest.raises(ArtifactError, match="group_size"):  # resuming a grouped run without grouping is refused
        pretrain(dataclasses.replace(small, group_size=0), tmp_path / "b", progress=False)


def test_checkpoints_from_before_grouping_resume_as_iid(tmp_path):
    cfg = PretrainConfig(version=2, steps=2, batch_size=6, warmup=1, threads=1, checkpoint_every=5, log_every=1)
    pretrain(cfg, tmp_path / "r", progress=False, stop_after=1)
    meta = tmp_path / "r" / "checkpoint.json"
    info = json.loads(meta.read_text())
    del info["config"]["group_size"]  # as written by the code of the running 3,000-step run
    meta.write_text(json.dumps(info))
    assert pretrain(cfg, tmp_path / "r", progress=False)["finished"]
