"""vlprompt's CLAP / ZS-LP and LP++ adapters against figures produced by the OFFICIAL code on the same tensors.

``figures/official_clap.json`` was written by running ``jusiro/CLAP:trainers/adapters.py`` (``AdapterMethod``,
``CustomCLIP.forward_lp``, ``TrainerXCostume.run_epoch``, ``ADAPTER.forward_backward`` with real Dassl optimiser,
scheduler and trainer methods) and ``figures/official_lpp.json`` by running
``FereshteShakeri/FewShot-CLIP-Strong-Baseline:methods/linear_probe_p2.py`` (``LinearProbe_P2.forward`` and its step
size / init functions) on the tensors of :mod:`probe_inputs` (``figures/README.md`` says exactly how). Here the same
tensors go through :func:`vlprompt.adapters.create_adapter` ``fit`` / ``forward``, and every figure must agree:

- CLAP: the class-adaptive multipliers, the per-epoch learning rates, the batches per epoch, the test logits at init
  and after training (the recipe: 300 epochs of one batch; and batch size 8: two batches per epoch drawn from the
  60 shuffled view features, 5 and 300 epochs), the learned prototypes; ZS-LP (no constraint) after 5 epochs;
- LP++: ``lr_w``, ``lr_α``, ``α`` init, the class-sum init of ``W``, and after 0, 1, 9, 10, 11, 20 and 300
  iterations ``α`` (updated at 10 and 20 with the accumulated gradient), ``W``, ``b`` and the test logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import probe_inputs as P
import pytest
import torch

from vlprompt.adapters import AdapterData, create_adapter
from vlprompt.adapters.clap import epoch_lr
from vlprompt.adapters.lp_plus_plus import lpp_init

FIGURES = Path(__file__).parent / "figures"
CLAP = json.loads((FIGURES / "official_clap.json").read_text())
LPP = json.loads((FIGURES / "official_lpp.json").read_text())
X = P.probe_inputs()

# fp32 tolerances; measured (figures/README.md): CLAP logits (|z| ≤ 40) ≤ 8.9e-6 (0 at init), prototypes ≤ 4.8e-7,
# multipliers ≤ 6e-8, lrs 1.3e-15 relative; LP++ logits (|z| ≤ 35) ≤ 1.6e-5, W ≤ 1.4e-5, b ≤ 7.7e-6, α bit-equal,
# lr_w 1.4e-7 and lr_α 3.2e-7 relative.
ATOL_LOGIT = 1e-4
ATOL_WEIGHT = 5e-5
ATOL_MULT = 1e-6
RTOL_STEP = 1e-6


def _t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _close(ours: torch.Tensor, official, atol: float, what: str) -> None:
    diff = float((ours.detach().double() - _t(official)).abs().max())
    assert diff <= atol, f"{what}: max |vlprompt − official| = {diff:.3g} > {atol}"


def _data(**over) -> AdapterData:
    kw = {"train": X["train"], "train_labels": X["labels"], "text": X["text"], "logit_scale": CLAP["logit_scale"],
          "views": X["views"], "seed": CLAP["seed"], "text_unnormalised": X["text_raw"]}
    return AdapterData(**{**kw, **over})


def test_inputs_reproduce():
    """The generator still makes the tensors the figures were computed on (else regenerate, README.md)."""
    assert P.inputs_sha256() == CLAP["inputs_sha256"] == LPP["inputs_sha256"]


@pytest.mark.parametrize("case", sorted(CLAP["cases"]))
def test_clap_matches_official(case):
    fig = CLAP["cases"][case]
    cfg = fig["config"]
    # the batch orders: vlprompt's fit draws one torch.randperm(V·N) per epoch from a generator seeded with the seed
    g = torch.Generator().manual_seed(CLAP["seed"])
    perms = [torch.randperm(P.VIEWS * P.CLASSES * P.SHOTS, generator=g) for _ in range(cfg["epochs"])]
    assert P.permutations_sha256(perms) == fig["perms_sha256"], "torch.randperm changed: regenerate the figures"
    options = {"constraint": cfg["constraint"], "batch_size": cfg["batch_size"]}
    init = create_adapter("clap", {**options, "epochs": 0})
    init.fit(_data())
    _close(init(X["test"]), fig["init_logits"], ATOL_LOGIT, f"{case} logits at init")
    adapter = create_adapter("clap", {**options, "epochs": cfg["epochs"]})
    record = adapter.fit(_data())
    assert record["batches_per_epoch"] == cfg["num_batches"]
    assert record["views_used"] == P.VIEWS and record["text_init"] == "unnormalised"
    _close(adapter.multipliers, fig["multipliers"], ATOL_MULT, f"{case} multipliers")
    ours_lr = [epoch_lr(e, cfg["epochs"], 0.1) for e in range(cfg["epochs"])]
    assert ours_lr == pytest.approx(fig["lrs"], rel=1e-12, abs=0)
    _close(adapter.prototypes, fig["final_prototypes"], ATOL_WEIGHT, f"{case} prototypes")
    _close(adapter(X["test"]), fig["final_logits"], ATOL_LOGIT, f"{case} logits after training")
    assert record["final_loss"] == pytest.approx(fig["last_loss"], rel=1e-4)


def test_clap_multipliers_are_per_class_zero_shot_probabilities():
    """A closed form next to the official figure: α_c = mean over class-c view features of softmax(zs)[c]."""
    feats = X["views"].reshape(-1, P.DIM)
    labels = X["labels"].repeat(P.VIEWS)
    probs = torch.softmax(CLAP["logit_scale"] * torch.nn.functional.normalize(feats, dim=-1) @ X["text"].t(), -1)
    expect = torch.stack([probs[labels == c, c].mean() for c in range(P.CLASSES)])
    _close(expect, CLAP["cases"]["clap_recipe"]["multipliers"], ATOL_MULT, "closed-form multipliers")
    assert min(CLAP["cases"]["clap_recipe"]["multipliers"]) < 0.8  # not all ≈ 1: the class weights differ


def test_lpp_init_matches_official():
    feats = X["views"][0] / X["views"][0].norm(dim=-1, keepdim=True)
    init = lpp_init(feats, X["labels"], X["text"])
    official = LPP["init"]
    for key in ("lr_w", "lr_alpha"):
        assert float(init[key]) == pytest.approx(official[key], rel=RTOL_STEP), key
    assert float(init["alpha"]) == pytest.approx(official["alpha_init"], rel=RTOL_STEP)
    _close(init["weight"], official["centroids"], ATOL_WEIGHT, "W init (class sums)")


@pytest.mark.parametrize("case", sorted(LPP["cases"]))
def test_lpp_matches_official(case):
    fig = LPP["cases"][case]
    adapter = create_adapter("lpplusplus", {"epochs": fig["epochs"]})
    record = adapter.fit(_data())
    assert record["views_used"] == 1
    _close(adapter.alpha, fig["alpha"], ATOL_WEIGHT * 2, f"{case} alpha")
    _close(adapter.weight, fig["weight"], ATOL_WEIGHT, f"{case} W")
    _close(adapter.bias, fig["bias"], ATOL_WEIGHT, f"{case} b")
    _close(adapter(X["test"]), fig["test_logits"], ATOL_LOGIT, f"{case} test logits")
    if fig["loss"] is not None:
        assert record["final_loss"] == pytest.approx(fig["loss"], rel=1e-4, abs=1e-8)


def test_lpp_alpha_moves_only_every_tenth_iteration_with_accumulated_gradient():
    """The official α schedule, pinned by the figures: constant through 9 iterations, changed at 10, constant at
    11, changed again at 20. (That the official never zeroes ``α.grad`` is pinned by the e20 / e300 cases above: a
    variant that zeroes it after each α step is 0.149 off at 20 iterations and 4.3 at 300.)"""
    alpha = {k: _t(LPP["cases"][f"lpp_e{k}"]["alpha"]) for k in (0, 9, 10, 11, 20)}
    assert torch.equal(alpha[0], alpha[9]) and torch.equal(alpha[10], alpha[11])
    assert not torch.equal(alpha[9], alpha[10]) and not torch.equal(alpha[11], alpha[20])
