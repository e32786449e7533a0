"""vlprompt's Tip-Adapter and Tip-Adapter-F against figures of the OFFICIAL code on identical feature tensors.

``figures/official_tip_adapter.json`` was written by running ``gaopengcuhk/Tip-Adapter``'s ``utils.build_cache_model``,
``pre_load_features``, ``search_hp``, ``cls_acc`` and ``main.run_tip_adapter`` / ``run_tip_adapter_F`` on the tensors of
:mod:`tip_adapter_inputs` (``figures/README.md``: how; ``make_tip_adapter_figures.py``: the driver). Here the same
tensors go through :func:`vlprompt.adapters.create_adapter` → ``fit`` → ``forward`` and must give:

- the cache keys (mean of 10 raw views, then L2-normalised) and one-hot values;
- the α, β that ``search_hp`` picks on the **validation** split, its "new best" trace, over the official grid of the
  dataset's config (ImageNet: scale (7, 3); DTD: (13, 13); 200 × 20 points);
- the test logits with the chosen α, β (fp32: 1e-4; against the official fp16 run, the official precision: 0.1);
- Tip-Adapter-F: the per-epoch loss and validation accuracy, the chosen epoch, the fine-tuned keys and the test
  logits after 20 epochs of batch 256 (ImageNet config) and 5 epochs of batch 6 (3 steps per epoch, last one partial;
  DTD config, lr 0.01), with the batch order both sides used (``torch.randperm`` from a generator seeded with 1).

Measured (``figures/README.md``): ≤ 1.5e-5 on fp32 logits (|logit| ≤ 80, i.e. ≤ 2 ulps), ≤ 1e-7 on keys (the
figures are rounded to 8 decimals), 0.032 on logits and 4.2e-4 on keys against fp16 (its ulp at 32–64 is 0.031).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tip_adapter_inputs as TI
import torch

from vlprompt.adapters import AdapterData, create_adapter
from vlprompt.adapters.tip_adapter import normalise

FIG = json.loads((Path(__file__).parent / "figures" / "official_tip_adapter.json").read_text())
CASES = FIG["cases"]
ATOL_LOGIT = 1e-4  # fp32 logits are 100·cos + α·cache, |logit| ≤ 80: fp32 ulp ≤ 7.6e-6
ATOL_KEY = 1e-6  # unit-vector coordinates (figures rounded to 8 decimals)
ATOL_LOGIT_FP16 = 0.1  # ≈ 3 fp16 ulps at |logit| in [32, 64)
ATOL_KEY_FP16 = 2e-3
ATOL_LOSS = 1e-5

#: figure case → (method, config): the dataset picks the official configs/<dataset>.yaml values.
SETUPS = {
    "tip_imagenet_fp32": ("tip-adapter", {"dataset": "imagenet"}),
    "tip_dtd_fp32": ("tip-adapter", {"dataset": "dtd"}),
    "tip_imagenet_fp16": ("tip-adapter", {"dataset": "imagenet"}),
    "tipf_imagenet_fp32": ("tip-adapter-f", {"dataset": "imagenet"}),
    "tipf_dtd_fp32_b6": ("tip-adapter-f", {"dataset": "dtd", "batch_size": 6, "train_epoch": 5, "lr": 0.01}),
}


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    tensors = TI.tip_inputs()
    if TI.tensors_sha256(tensors) != FIG["inputs_sha256"]:
        pytest.fail("tip_adapter_inputs.tip_inputs() no longer reproduces the tensors the official figures were "
                    "computed on (sha256 differs): regenerate figures/official_tip_adapter.json (figures/README.md).")
    return tensors


def adapter_data(inp: dict[str, torch.Tensor], val: str | None = "val") -> AdapterData:
    return AdapterData(train=inp["train"], train_labels=inp["train_labels"], text=inp["text"],
                       logit_scale=TI.LOGIT_SCALE, views=inp["views"], val=None if val is None else inp[val],
                       val_labels=None if val is None else inp[f"{val}_labels"], seed=1)


@pytest.fixture(scope="module")
def fitted(inputs):
    out = {}
    for case, (method, config) in SETUPS.items():
        adapter = create_adapter(method, config)
        record = adapter.fit(adapter_data(inputs))
        with torch.no_grad():
            logits = adapter(inputs["test"])
        out[case] = (adapter, record, logits)
    return out


def rounded(trace: list[list[float]]) -> list[list[float]]:
    return [[round(x, 2) for x in row] for row in trace]  # the official code prints β, α and accuracy with .2f


def test_figures_come_from_the_official_code():
    assert FIG["source"]["repo"] == "gaopengcuhk/Tip-Adapter"
    assert FIG["source"]["commit"] == "d0e2d6f8c5feb8b6ce937b757810761f7155d4d5"
    assert set(CASES) == set(SETUPS)


@pytest.mark.parametrize("case", ["tip_imagenet_fp32", "tip_dtd_fp32"])
def test_cache_keys_and_values_match_build_cache_model(fitted, case):
    adapter, record, _ = fitted[case]
    assert torch.allclose(adapter.cache_keys, torch.tensor(CASES[case]["cache_keys"]), atol=ATOL_KEY, rtol=0)
    assert CASES[case]["cache_keys_shape_official"] == [TI.DIM, TI.NUM_CLASSES * TI.SHOTS]  # [E, N] official layout
    assert adapter.cache_values.argmax(1).tolist() == CASES[case]["cache_values_argmax"]
    assert torch.equal(adapter.cache_values.sum(1), torch.ones(TI.NUM_CLASSES * TI.SHOTS))
    assert record["num_views"] == TI.NUM_VIEWS == adapter.recipe["num_views"]


@pytest.mark.parametrize("case", ["tip_imagenet_fp32", "tip_dtd_fp32", "tipf_imagenet_fp32", "tipf_dtd_fp32_b6"])
def test_alpha_beta_chosen_on_val_as_search_hp(fitted, case):
    _, record, _ = fitted[case]
    fig = CASES[case]
    assert (record["beta"], record["alpha"]) == (fig["best_beta"], fig["best_alpha"])  # the same Python floats
    assert record["selected_on"] == "val"
    assert rounded(record["search"]["trace"]) == rounded(fig["search_trace"])
    grid = (record["search"]["beta_grid"]["steps"], record["search"]["alpha_grid"]["steps"])
    assert grid == (200, 20) == tuple(fig["config"]["search_step"])
    assert record["search"]["beta_grid"]["last"] == pytest.approx(0.1 + 199 * (fig["config"]["search_scale"][0] - 0.1)
                                                                  / 200)


@pytest.mark.parametrize("case", ["tip_imagenet_fp32", "tip_dtd_fp32"])
def test_tip_adapter_logits_match_official(inputs, fitted, case):
    adapter, record, logits = fitted[case]
    fig = CASES[case]
    assert torch.allclose(logits, torch.tensor(fig["test_logits"]), atol=ATOL_LOGIT, rtol=0)
    # the two parts: zero-shot logits, and the initial-α/β validation logits of run_tip_adapter
    f_test, f_val = normalise(inputs["test"]), normalise(inputs["val"])
    zs = TI.LOGIT_SCALE * f_test @ adapter.text.t()
    assert torch.allclose(zs, torch.tensor(fig["test_zero_shot_logits"]), atol=ATOL_LOGIT, rtol=0)
    with torch.no_grad():
        init = adapter.logits(f_val, fig["config"]["init_alpha"], fig["config"]["init_beta"])
    assert torch.allclose(init, torch.tensor(fig["val_init_logits"]), atol=ATOL_LOGIT, rtol=0)
    assert record["search"]["val_accuracy_init"] == fig["val_init_acc"]


def test_fp32_against_the_official_fp16_run(inputs, fitted):
    """The official code runs in fp16 (OpenAI's CLIP on the GPU); vlprompt's fp32 keys and logits agree with it to
    fp16 rounding, and the choice of α, β is the same."""
    adapter, record, logits = fitted["tip_imagenet_fp16"]
    fig = CASES["tip_imagenet_fp16"]
    assert fig["dtype"] == "torch.float16" and fig["values_dtype_official"] == "torch.float16"
    assert torch.allclose(adapter.cache_keys, torch.tensor(fig["cache_keys"]), atol=ATOL_KEY_FP16, rtol=0)
    assert torch.allclose(logits, torch.tensor(fig["test_logits"]), atol=ATOL_LOGIT_FP16, rtol=0)
    assert (record["beta"], record["alpha"]) == (fig["best_beta"], fig["best_alpha"])
    correct = int((logits.argmax(1) == inputs["test_labels"]).sum())
    assert 100 * correct / len(inputs["test_labels"]) == fig["test_acc"]


@pytest.mark.parametrize("case", ["tipf_imagenet_fp32", "tipf_dtd_fp32_b6"])
def test_tip_adapter_f_training_matches_official(fitted, case):
    adapter, record, logits = fitted[case]
    fig = CASES[case]
    steps = fig["steps_per_epoch"]
    assert steps == -(-TI.NUM_CLASSES * TI.SHOTS // fig["batch_size"])
    assert len(record["epochs"]) == fig["config"]["train_epoch"] == len(fig["val_acc_per_epoch"])
    # the official loss.item() per step, averaged per epoch as run_tip_adapter_F prints it
    official = [sum(fig["losses"][e * steps:(e + 1) * steps]) / steps for e in range(len(record["epochs"]))]
    assert [r["loss"] for r in record["epochs"]] == pytest.approx(official, abs=ATOL_LOSS)
    assert [r["val_accuracy"] for r in record["epochs"]] == fig["val_acc_per_epoch"]
    assert record["chosen_epoch"] == fig["best_epoch"] and record["epoch_selected_on"] == "val"
    assert torch.allclose(adapter.adapter.weight, torch.tensor(fig["trained_keys"]), atol=ATOL_KEY, rtol=0)
    assert torch.allclose(logits, torch.tensor(fig["test_logits"]), atol=ATOL_LOGIT, rtol=0)


def test_tip_adapter_f_first_step_is_the_cache_model_on_the_seeded_batch(inputs, fitted):
    """Epoch 0, step 0: view 0 of the images in the order randperm(N) of a generator seeded with the run's seed,
    through the untrained cache at the initial α, β — the official first-step logits."""
    fig = CASES["tipf_dtd_fp32_b6"]
    perm = torch.randperm(TI.NUM_CLASSES * TI.SHOTS, generator=torch.Generator().manual_seed(1))
    assert perm.tolist() == fig["batch_orders"][0]
    tip, _, _ = fitted["tip_dtd_fp32"]  # the same cache, untrained
    batch = perm[:fig["batch_size"]]
    with torch.no_grad():
        first = tip.logits(normalise(inputs["views"][0][batch]), fig["config"]["init_alpha"],
                           fig["config"]["init_beta"])
    assert torch.allclose(first, torch.tensor(fig["first_step_logits"]), atol=ATOL_LOGIT, rtol=0)


def test_search_reads_the_validation_split_only(inputs):
    """The official ImageNet script searches on the test set; here the choice is a function of ``data.val`` alone:
    with the validation split it is the official val choice, which differs from the official test-set choice, and
    only with the test features passed *as* the validation split does it become the test-set choice."""
    fig = CASES["tip_imagenet_fp32"]
    assert fig["best_on_test"] != [fig["best_beta"], fig["best_alpha"]]  # the two choices differ on these inputs
    record = create_adapter("tip-adapter", {"dataset": "imagenet"}).fit(adapter_data(inputs))
    assert [record["beta"], record["alpha"]] == [fig["best_beta"], fig["best_alpha"]]
    on_test = create_adapter("tip-adapter", {"dataset": "imagenet"}).fit(adapter_data(inputs, val="test"))
    assert [on_test["beta"], on_test["alpha"]] == fig["best_on_test"]
    assert rounded(on_test["search"]["trace"]) == rounded(fig["search_trace_on_test"])
    assert not hasattr(adapter_data(inputs), "test")  # AdapterData has no test split to read
