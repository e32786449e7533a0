"""Weights identity is exact and the same in every process: threads, devices, CPU kernels and lossless dtype moves
do not change it; one changed value (1 ulp) does (issue 12 §2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from portability_child import run

from vlprompt.backbones import create_backbone
from vlprompt.backbones.base import (
    fingerprint_version,
    legacy_fingerprint_v0,
    match_legacy_fingerprint,
    weights_fingerprint,
)
from vlprompt.backbones.microclip import _torch_token_table, init_token_table
from vlprompt.backbones.torch_normal import torch_normal

SPECS = ["microclip", "vlp-tiny-rn=random", "vlp-tiny-vit=random"]  # shipped micro-CLIP; seeded random open_clip inits


def _fingerprints(configs, threads):
    proc = run(str(configs), threads, "fingerprints", *SPECS)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["threads"] == threads
    return out


def _here(spec: str) -> str:
    name, _, pretrained = spec.partition("=")
    return create_backbone(name, pretrained or None).fingerprint


def test_same_weights_same_identity_in_1_and_3_thread_processes(tiny_model_configs):
    one, three = _fingerprints(tiny_model_configs, 1), _fingerprints(tiny_model_configs, 3)
    for spec in SPECS:
        assert fingerprint_version(one[spec]["fingerprint"]) == 2
        # also proves the random inits and the regenerated token table do not depend on the thread count
        assert one[spec]["fingerprint"] == three[spec]["fingerprint"], spec
        assert one[spec]["fingerprint"] == _here(spec), spec  # and this process's
    # the processes really differ where 0.1.0's float64 sums do (the bug: e855… vs 3605… for micro-CLIP)
    assert one["microclip"]["legacy"] != three["microclip"]["legacy"]


def test_token_table_does_not_depend_on_threads():
    """torch's normal_ (the fast path that loads the shipped table) draws serially: threads never matter."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = _torch_token_table(7, 49408, 128)
        torch.set_num_threads(3)
        b = _torch_token_table(7, 49408, 128)
    finally:
        torch.set_num_threads(before)
    assert a.shape == (49408, 128) and torch.equal(a, b)


def test_moved_and_widened_weights_keep_their_identity():
    model = create_backbone("vlp-tiny-rn", "random").model
    fp = weights_fingerprint(model)
    assert weights_fingerprint(model) == fp
    assert weights_fingerprint(model.double()) == fp  # fp32 → fp64 keeps every value
    model.float()
    half = {k: v.half() for k, v in model.state_dict().items()}
    assert weights_fingerprint(model.half()) != fp  # fp16 rounds the values: other weights
    model.load_state_dict({k: v.float() for k, v in half.items()})  # fp16 values held in fp32: equal to the fp16 ones
    assert weights_fingerprint(model) == weights_fingerprint(model.half())
    # fingerprints are taken as the weights are loaded, before the --precision cast
    assert create_backbone("vlp-tiny-rn", "random", precision="fp16").fingerprint == create_backbone("vlp-tiny-rn", "random").fingerprint


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to move the weights to")
def test_weights_on_gpu_keep_their_identity():
    model = create_backbone("microclip").model
    fp = weights_fingerprint(model)
    assert weights_fingerprint(model.cuda()) == fp
    assert create_backbone("microclip", device="cuda", precision="fp16").fingerprint == fp


def test_one_ulp_is_other_weights():
    model = create_backbone("vlp-tiny-rn", "random").model
    fp = weights_fingerprint(model)
    w = model.state_dict()["token_embedding.weight"]  # (49408, 64): a value in the middle, not first/last 256
    with torch.no_grad():
        old = w[20000, 5].clone()
        w[20000, 5] = torch.nextafter(old, torch.tensor(1.0))
        assert weights_fingerprint(model) != fp
        w[20000, 5] = old
    assert weights_fingerprint(model) == fp


def test_legacy_fingerprint_is_matched_under_its_thread_count():
    model = create_backbone("microclip").model
    before = torch.get_num_threads()
    fps = {n: legacy_fingerprint_v0(model, n) for n in (1, 2, 3, 5)}
    assert torch.get_num_threads() == before  # restored
    assert len(set(fps.values())) >= 2  # 0.1.0's fingerprint depends on the thread count
    assert all(fingerprint_version(f) == 0 for f in fps.values())
    for n, f in fps.items():
        assert legacy_fingerprint_v0(model, n) == f  # and is reproducible for a given count
        found = match_legacy_fingerprint(model, f)
        assert found is not None and legacy_fingerprint_v0(model, found) == f
    assert torch.get_num_threads() == before
    other = create_backbone("vlp-tiny-rn", "random").model
    assert match_legacy_fingerprint(other, fps[1], thread_counts=[1, 2, 3, 4]) is None


def test_token_table_recomputation_is_torchs_own_draw():
    """init_token_table recomputes torch's AVX2 normal_ with exact float32 arithmetic, bit for bit."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("torch runs its DEFAULT normal_ kernel on this CPU; the reference is the AVX2 kernel")
    for n, seed, mean, std in ((16, 1, 0.0, 1.0), (37, 5, 0.5, 2.0), (1000, 3, -1.0, 0.1), (200_000, 9, 0.0, 0.02)):
        g, ref_g = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        ref = torch.empty(n).normal_(mean, std, generator=ref_g)
        assert torch.equal(torch.from_numpy(torch_normal(n, g, mean, std)), ref), (n, seed)
        assert torch.equal(g.get_state(), ref_g.get_state())  # the generator advanced identically
    table = init_token_table(0)
    assert torch.equal(table, torch.empty(49408, 128).normal_(0.0, 0.02, generator=torch.Generator().manual_seed(0)))


def test_shipped_microclip_is_the_same_on_a_cpu_without_avx2():
    """With torch's DEFAULT kernel (as on ARM), normal_ rounds differently; the shipped weights must not."""
    code = ("import torch; from vlprompt.backbones import create_backbone; "
            "g = torch.Generator().manual_seed(0); "
            "print(torch.backends.cpu.get_cpu_capability(), torch.empty(4096).normal_(generator=g).sum().item(), "
            "create_backbone('microclip').fingerprint)")
    outs = {}
    for cap in ("default", "avx2"):
        env = {**os.environ, "ATEN_CPU_CAPABILITY": cap, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert "differ from training" not in proc.stderr
        outs[cap] = proc.stdout.split()
    if outs["avx2"][0] not in ("AVX2", "AVX512") or outs["default"][0] != "DEFAULT":
        pytest.skip(f"this CPU cannot run both torch kernels (got {outs['avx2'][0]}, {outs['default'][0]})")
    assert outs["default"][1] != outs["avx2"][1]  # torch's own draws differ between the kernels ...
    assert outs["default"][2] == outs["avx2"][2] == create_backbone("microclip").fingerprint  # ... the weights don't
