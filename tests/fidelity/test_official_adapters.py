"""vlprompt's CLIP-Adapter and TaskRes against figures produced by the OFFICIAL trainers on identical features.

``figures/official_adapters.json`` was written by running ``gaopengcuhk/CLIP-Adapter:clip_adapter.py``
(``Adapter``, ``TextEncoder``, ``CustomCLIP``, ``CLIP_Adapter.forward_backward``) and
``geekyutao/TaskRes:trainers/taskres.py`` (``TaskResLearner``, ``CustomCLIP``, ``TaskRes.forward_backward``) with
Dassl's own ``build_optimizer``/``build_lr_scheduler`` on the tensors of :mod:`adapter_inputs`, the image encoder
being the identity on cached features (``figures/README.md`` says exactly how). Here the same tensors go through
:mod:`vlprompt.adapters`, and every figure must agree:

- the seeded initialisation (CLIP-Adapter's ``nn.Linear`` init drawn after ``torch.manual_seed(seed)``; TaskRes's
  zero residual on the raw base), the logits at init and after training (SGD / Adam, Dassl's cosine schedule with
  constant warm-up, ``drop_last``), the per-epoch learning rates and mean losses, parameter norms;
- CLIP-Adapter on new class names (the official ``TextEncoder`` of three other classes);
- the batch order (one seeded permutation per epoch, Dassl's ``drop_last`` rule) and Dassl's lr over 200 epochs.

Tolerances: logits are ``100 · cos``; measured (figures/README.md) ≤ 6e-8 on logits at init and after training (the
figures' 7-decimal rounding: the computation is the same in fp32), 1.9e-6 on new-class logits (the official code
divides by the norm, vlprompt's ``F.normalize``), 0 on losses and parameter norms. The tolerances leave room for
another BLAS / thread count.
"""

from __future__ import annotations

import json
from pathlib import Path

import adapter_inputs as AI
import pytest
import torch
import torch.nn.functional as F

from vlprompt.adapters import AdapterData, create_adapter
from vlprompt.adapters.training import DasslOptim, dassl_lr, epoch_batches

FIG = json.loads((Path(__file__).parent / "figures" / "official_adapters.json").read_text())
ATOL_LOGIT = 2e-5
ATOL_LOSS = 1e-5
RTOL_NORM = 1e-5
X = AI.adapter_inputs()


def setup_module():
    if AI.inputs_sha256() != FIG["inputs_sha256"]:
        pytest.fail("adapter_inputs() no longer reproduces the tensors the official figures were made from "
                    f"(sha256 {AI.inputs_sha256()} != {FIG['inputs_sha256']}): this torch draws differently; "
                    "regenerate the figures (figures/README.md) rather than comparing.")


def _data(case: dict, views: bool, text_raw: bool = True) -> AdapterData:
    raw = X["text_raw"]  # (C, E) the official base / text-encoder output
    return AdapterData(train=X["train"], train_labels=X["labels"], text=F.normalize(raw, dim=-1),
                       logit_scale=case["logit_scale"], views=X["views"] if views else None,
                       seed=case["config"]["seed"], text_unnormalised=raw if text_raw else None)


def _close(ours: torch.Tensor, figure: list, atol: float) -> None:
    ref = torch.tensor(figure, dtype=torch.float32)
    assert ours.shape == ref.shape
    assert (ours.detach() - ref).abs().max().item() <= atol, (ours, ref)


@pytest.mark.parametrize("name", ["clip_adapter", "clip_adapter_lr", "taskres_views", "taskres_b4"])
def test_batch_order_and_drop_last(name):
    case = FIG["cases"][name]
    cfg = case["config"]
    g = torch.Generator().manual_seed(cfg["seed"])
    for epoch, official in enumerate(case["batches"]):
        ours = [b.tolist() for b in epoch_batches(len(X["labels"]), cfg["batch_size"], g)]
        assert ours == official, f"epoch {epoch + 1}"  # e.g. 16 images in batches of 5: 3 batches, 1 dropped


@pytest.mark.parametrize("trace", FIG["dassl_lr"], ids=lambda t: f"ep{t['max_epoch']}")
def test_dassl_schedule_matches_dassl_scheduler(trace):
    spec = DasslOptim("sgd", lr=trace["lr"], epochs=trace["max_epoch"], batch_size=1)
    ours = [dassl_lr(e, spec) for e in range(1, trace["max_epoch"] + 1)]
    assert ours == pytest.approx(trace["epoch_lrs"], rel=1e-9, abs=1e-15)


def _clip_adapter(case: dict):
    cfg = case["config"]
    return create_adapter("clip-adapter", {"epochs": cfg["epochs"], "lr": cfg["lr"], "batch_size": cfg["batch_size"]})


def _new_text() -> torch.Tensor:
    return F.normalize(X["new_text_raw"], dim=-1)


@pytest.mark.parametrize("name", ["clip_adapter", "clip_adapter_lr"])
def test_clip_adapter_init_equals_official(name):
    case = FIG["cases"][name]
    adapter = _clip_adapter(case)
    data = _data(case, views=True)
    adapter._build(data.train.shape[1], data.seed, data.text, data.logit_scale)  # the init fit() starts from
    assert adapter.fc[0].weight.norm().item() == pytest.approx(case["init"]["fc0_norm"], rel=RTOL_NORM)
    assert adapter.fc[2].weight.norm().item() == pytest.approx(case["init"]["fc2_norm"], rel=RTOL_NORM)
    _close(adapter.fc[0].weight.flatten()[:8], case["init"]["fc0_first8"], 1e-7)
    with torch.no_grad():
        _close(adapter(X["test"]), case["init"]["logits"], ATOL_LOGIT)
        _close(adapter(X["test"], text=_new_text()), case["init"]["new_class_logits"], ATOL_LOGIT)


@pytest.mark.parametrize("name", ["clip_adapter", "clip_adapter_lr"])
def test_clip_adapter_training_equals_official(name):
    case = FIG["cases"][name]
    adapter = _clip_adapter(case)
    record = adapter.fit(_data(case, views=True))
    assert record["epoch_lrs"] == pytest.approx(case["epoch_lrs"], rel=1e-9)
    assert record["epoch_losses"] == pytest.approx(case["epoch_losses"], abs=ATOL_LOSS)
    assert record["final_loss"] == pytest.approx(case["epoch_losses"][-1], abs=ATOL_LOSS)
    assert record["steps"] == sum(len(b) for b in case["batches"]) and record["views"] == AI.NUM_VIEWS
    final = case["final"]
    assert adapter.fc[0].weight.norm().item() == pytest.approx(final["fc0_norm"], rel=RTOL_NORM)
    assert adapter.fc[2].weight.norm().item() == pytest.approx(final["fc2_norm"], rel=RTOL_NORM)
    _close(adapter.fc[2].weight.flatten()[:8], final["fc2_first8"], 1e-6)
    with torch.no_grad():
        logits = adapter(X["test"])
        _close(logits, final["logits"], ATOL_LOGIT)
        # new class names: the trained MLP with another classifier (the official TextEncoder of 3 other classes)
        _close(adapter(X["test"], text=_new_text()), final["new_class_logits"], ATOL_LOGIT)
    # the figures moved by more than the tolerance: training is what is being compared
    moved = (torch.tensor(final["logits"]) - torch.tensor(case["init"]["logits"])).abs().max().item()
    assert moved > 100 * ATOL_LOGIT


@pytest.mark.parametrize("name", ["taskres_views", "taskres_b4"])
def test_taskres_init_and_training_equal_official(name):
    case = FIG["cases"][name]
    cfg = case["config"]
    adapter = create_adapter("taskres", {"alpha": cfg["alpha"], "lr": cfg["lr"], "epochs": cfg["epochs"],
                                         "batch_size": cfg["batch_size"]})
    data = _data(case, views=cfg["views"] > 0)
    adapter._build(data.text_unnormalised, data.logit_scale)  # the init fit() starts from
    with torch.no_grad():
        _close(adapter(X["test"]), case["init"]["logits"], ATOL_LOGIT)
    record = adapter.fit(data)
    assert record["base"] == "raw" and record["views"] == cfg["views"]
    _close(adapter.base_text_features.norm(dim=-1), case["init"]["base_norms"], 1e-5)
    assert record["epoch_lrs"] == pytest.approx(case["epoch_lrs"], rel=1e-9)
    assert record["epoch_losses"] == pytest.approx(case["epoch_losses"], abs=ATOL_LOSS)
    final = case["final"]
    residual = adapter.text_feature_residuals.detach()
    assert residual.norm().item() == pytest.approx(final["residual_norm"], rel=RTOL_NORM)
    _close(residual.norm(dim=-1), final["residual_row_norms"], 1e-6)
    _close(residual.flatten()[:8], final["residual_first8"], 1e-7)
    with torch.no_grad():
        _close(adapter(X["test"]), final["logits"], ATOL_LOGIT)
    moved = (torch.tensor(final["logits"]) - torch.tensor(case["init"]["logits"])).abs().max().item()
    assert moved > 100 * ATOL_LOGIT
