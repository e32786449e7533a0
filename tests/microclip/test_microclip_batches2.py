"""Grouped pretraining batches over world v2 (``vlprompt.microclip.batches2``, ``PretrainConfig.groups``): each
group shares its leader's shade, style and background, each sub-group also its leader's shape, every image keeps
its own world draws otherwise, and the stream is pure (resumable, independent of the number of rendering processes)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vlprompt.errors import ArtifactError, ConfigError
from vlprompt.microclip import world2
from vlprompt.microclip.batches2 import LEVELS, generate_grouped, iter_grouped_batches
from vlprompt.microclip.pretrain import V2_RECIPE, PretrainConfig, main, pretrain

COL = {a: k for k, a in enumerate(world2.ATTRIBUTE_NAMES)}
GROUP_COLS = [COL[a] for a in LEVELS[0]]  # shade, style, background
SHAPE = COL["shape"]
OWN_COLS = [COL[a] for a in world2.ATTRIBUTE_NAMES if a not in (*LEVELS[0], *LEVELS[1], "shape2")]


def test_groups_share_the_leaders_world_draws_and_keep_their_own_otherwise():
    g = generate_grouped(3, 0, 16, sizes=(8,))
    iid = world2.generate(3, 0, 16)  # the i.i.d. world stream
    for i in range(16):
        lead = 8 * (i // 8)
        # shared: the leader's values as the world itself draws image `lead` (so the world's rates are kept)
        assert g.labels[i, GROUP_COLS].tolist() == iid.labels[lead, GROUP_COLS].tolist()
        # everything else: image i's own world draws (shape, texture, size, position, count)
        assert g.labels[i, OWN_COLS + [SHAPE]].tolist() == iid.labels[i, OWN_COLS + [SHAPE]].tolist()
    for lead in (0, 8):  # leaders are the i.i.d. stream's images, byte for byte
        assert np.array_equal(g.images[lead], iid.images[lead]) and g.captions[lead] == iid.captions[lead]
    assert len(set(g.labels[:8, SHAPE].tolist())) > 2  # a group is not one shape repeated
    assert len({tuple(r) for r in g.labels[:, GROUP_COLS].tolist()}) == 2  # two groups, two shared triples
    one = generate_grouped(3, 0, 16, sizes=(1,))  # group size 1 is the i.i.d. stream itself
    assert np.array_equal(one.images, iid.images) and one.captions == iid.captions


def test_sub_groups_also_share_the_shape_of_their_own_leader():
    g = generate_grouped(4, 0, 16, sizes=(8, 4))
    iid, flat = world2.generate(4, 0, 16), generate_grouped(4, 0, 16, sizes=(8,))
    for i in range(16):
        assert g.labels[i, GROUP_COLS].tolist() == iid.labels[8 * (i // 8), GROUP_COLS].tolist()
        assert g.labels[i, SHAPE] == flat.labels[4 * (i // 4), SHAPE]  # the sub-group leader's (own) shape
        assert g.labels[i, OWN_COLS].tolist() == iid.labels[i, OWN_COLS].tolist()
    assert np.array_equal(g.images[[0, 8]], iid.images[[0, 8]])  # group leaders: the world's own images
    assert np.array_equal(g.images[[4, 12]], flat.images[[4, 12]])  # sub-group leaders: their one-level images
    assert len(set(g.labels[:8, SHAPE].tolist())) == 2  # two sub-groups of 4, one shape each


def test_grouped_stream_is_pure_resumable_and_process_independent():
    whole = generate_grouped(0, 0, 32, sizes=(16, 4))
    part = generate_grouped(0, 6, 20, sizes=(16, 4))  # starts mid-group: its leaders are re-drawn, not assumed
    assert np.array_equal(part.images, whole.images[6:26]) and part.captions == whole.captions[6:26]
    one = list(iter_grouped_batches(0, 16, (16, 4), start_batch=0, num_batches=2, processes=1))
    two = list(iter_grouped_batches(0, 16, (16, 4), start_batch=1, num_batches=1, processes=2))  # resumed at 1
    assert np.array_equal(one[0].images, whole.images[:16]) and np.array_equal(one[1].images, whole.images[16:])
    assert np.array_equal(two[0].images, one[1].images) and two[0].captions == one[1].captions


def test_group_sizes_are_checked():
    with pytest.raises(ConfigError, match="groups=.*version 2, not 1"):
        PretrainConfig(version=1, groups=(8,))
    with pytest.raises(ConfigError, match=r"\(8,\) \(batch size 12\)"):
        PretrainConfig(version=2, batch_size=12, groups=(8,))
    with pytest.raises(ConfigError, match=r"\(8, 3\).*dividing"):
        iter_grouped_batches(0, 16, (8, 3))
    with pytest.raises(ConfigError, match="expected 1–2 sizes"):
        generate_grouped(0, 0, 2, sizes=(8, 4, 2))


def test_grouped_pretraining_resumes_bit_exactly_and_is_recorded(tmp_path):
    recipe = {k: V2_RECIPE[k] for k in ("clip_grad", "word_loss", "word_form")}  # what the CLI adds for --version 2
    small = PretrainConfig(version=2, steps=2, batch_size=8, groups=(4, 2), lr=1e-3, warmup=1, threads=1, checkpoint_every=5,
                           log_every=1, **recipe)  # fmt: skip
    a = pretrain(small, tmp_path / "a", progress=False)
    # the command line builds the same config: --groups 4,2 (other flags given, the rest from V2_RECIPE)
    assert main(["--version", "2", "--out", str(tmp_path / "b"), "--steps", "2", "--batch-size", "8", "--warmup", "1",
                 "--groups", "4,2", "--checkpoint-every", "5", "--workers", "1", "--stop-after", "1",
                 "--no-progress"]) == 0  # fmt: skip
    b = pretrain(dataclasses.replace(small, log_every=25), tmp_path / "b", progress=False)  # resumed
    wa, wb = (load_file(str(tmp_path / r / "microclip.safetensors")) for r in "ab")
    assert a["finished"] and b["finished"] and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["config"]["groups"] == (4, 2) and json.loads((tmp_path / "b" / "checkpoint.json").read_text())[
        "config"]["groups"] == [4, 2]  # fmt: skip
    iid = pretrain(dataclasses.replace(small, groups=(), steps=1), tmp_path / "c", progress=False)
    loss = [json.loads((tmp_path / r / "log.jsonl").read_text().splitlines()[0])["loss"] for r in "ac"]
    assert iid["finished"] and loss[0] != loss[1]  # the option reaches the data: step 1 saw another batch
    with pytest.raises(ArtifactError, match="groups"):  # resuming a grouped run without grouping is refused
        pretrain(dataclasses.replace(small, groups=()), tmp_path / "b", progress=False)


def test_checkpoints_from_before_grouping_resume_as_iid(tmp_path):
    cfg = PretrainConfig(version=2, steps=2, batch_size=6, warmup=1, threads=1, checkpoint_every=5, log_every=1)
    pretrain(cfg, tmp_path / "r", progress=False, stop_after=1)
    meta = tmp_path / "r" / "checkpoint.json"
    info = json.loads(meta.read_text())
    del info["config"]["groups"]  # as written by the code of the 3,000-step run started before this option
    meta.write_text(json.dumps(info))
    assert pretrain(cfg, tmp_path / "r", progress=False)["finished"]


def test_groups_flag_names_the_bad_value(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["--version", "2", "--out", str(tmp_path), "--groups", "32;4"])
    assert "'32;4': expected comma-separated group sizes" in capsys.readouterr().err
