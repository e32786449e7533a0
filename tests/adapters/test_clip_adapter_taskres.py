"""CLIP-Adapter and TaskRes on cached features: recipes, artifacts, new class names, what fit may read, bad input.

Their logits against the official code are in ``tests/fidelity/test_official_adapters.py``; here the contracts
around them.
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from vlprompt.adapters import AdapterData, ClipAdapter, TaskRes, create_adapter, get_adapter_class, list_adapters
from vlprompt.adapters.taskres import official_config
from vlprompt.adapters.training import DasslOptim, epoch_features
from vlprompt.errors import ArtifactError, ConfigError, TrainingDivergedError

C, SHOTS, E = 4, 4, 32


def _data(seed: int = 0, views: int | None = 2, shots: int = SHOTS, raw_text: bool = True, **extra) -> AdapterData:
    g = torch.Generator().manual_seed(123)
    protos = torch.randn(C, E, generator=g)
    labels = torch.arange(C).repeat_interleave(shots)  # (N,)
    train = 0.5 * protos[labels] + torch.randn(labels.numel(), E, generator=g)  # (N, E) raw
    text_raw = protos + 0.5 * torch.randn(C, E, generator=g)  # (C, E)
    v = None if views is None else train[None] + 0.2 * torch.randn(views, labels.numel(), E, generator=g)
    return AdapterData(train=train, train_labels=labels, text=F.normalize(text_raw, dim=-1), logit_scale=100.0,
                       views=v, seed=seed, text_unnormalised=text_raw if raw_text else None, **extra)


def _small(method: str, **cfg):
    return create_adapter(method, {"epochs": 3, "batch_size": 4, **cfg})


def test_registered_with_the_official_recipes():
    assert {"clip-adapter", "taskres"} <= set(list_adapters())
    ca, tr = get_adapter_class("clip-adapter"), get_adapter_class("taskres")
    assert ca is ClipAdapter and tr is TaskRes
    assert ca.uses_views and ca.new_classes and not ca.uses_val
    assert tr.uses_views and not tr.new_classes and not tr.uses_val
    # gaopengcuhk/CLIP-Adapter:clip_adapter.py + CoOp's rn50.yaml; geekyutao/TaskRes configs + train_regular.sh
    assert {k: ca.recipe[k] for k in ("optimizer", "lr", "batch_size", "epochs", "reduction", "ratio")} == {
        "optimizer": "sgd", "lr": 0.002, "batch_size": 32, "epochs": 200, "reduction": 4, "ratio": 0.2}
    assert {k: tr.recipe[k] for k in ("optimizer", "lr", "batch_size", "alpha", "warmup_lr")} == {
        "optimizer": "adam", "lr": 2e-3, "batch_size": 256, "alpha": 0.5, "warmup_lr": 1e-5}
    default = ClipAdapter().config
    assert (default.reduction, default.ratio, default.lr, default.batch_size, default.epochs) == (
        4, 0.2, 0.002, 32, 200)


def test_taskres_official_settings_per_dataset_and_shots():
    assert official_config("oxford_flowers", 16) == {"alpha": 1.0, "lr": 2e-3, "epochs": 200}
    assert official_config("imagenet", 1) == {"alpha": 0.5, "lr": 2e-4, "epochs": 100}
    assert official_config("dtd", 4) == {"alpha": 0.5, "lr": 2e-3, "epochs": 100}
    assert official_config("dtd", 8)["epochs"] == 200


@pytest.mark.parametrize("shots, epochs", [(4, 100), (8, 200)])
def test_taskres_epochs_follow_the_shot_count(shots, epochs):
    record = create_adapter("taskres").fit(_data(shots=shots, views=None))
    assert (record["epochs"], record["shots"], record["steps"]) == (epochs, shots, epochs)  # N < 256: one batch


class _Poison(torch.Tensor):
    """Any torch operation on it fails: proves fit never reads it."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        raise AssertionError(f"validation features were read during fit ({func})")


@pytest.mark.parametrize("method", ["clip-adapter", "taskres"])
def test_fit_never_reads_the_validation_split(method):
    val = torch.zeros(3, E).as_subclass(_Poison)
    val_labels = torch.zeros(3, dtype=torch.long).as_subclass(_Poison)
    record = _small(method).fit(_data(val=val, val_labels=val_labels))
    assert record["epochs"] == 3 and record["final_loss"] == record["epoch_losses"][-1]


@pytest.mark.parametrize("method, keys", [("clip-adapter", {"fc.0.weight", "fc.2.weight"}),
                                          ("taskres", {"base_text_features", "text_feature_residuals"})])
def test_state_dict_round_trip_through_prepare(method, keys, tmp_path):
    data = _data()
    adapter = _small(method)
    adapter.fit(data)
    state = adapter.state_dict()
    assert set(state) == keys  # the official checkpoints' names; the text classifier is not in CLIP-Adapter's
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "adapter.safetensors")
    loaded = load_file(tmp_path / "adapter.safetensors")
    fresh = create_adapter(method, adapter.config_dict())
    fresh.prepare(C, E, data.text, data.logit_scale, {k: list(v.shape) for k, v in loaded.items()})
    fresh.load_state_dict(loaded)
    test = torch.randn(5, E, generator=torch.Generator().manual_seed(9)) * 3
    with torch.no_grad():
        assert torch.equal(fresh(test), adapter(test))
        assert not torch.allclose(adapter(test), data.zero_shot_logits(test))  # the artifact carries what was fitted


@pytest.mark.parametrize("method, name", [("clip-adapter", "fc.0.weight"), ("taskres", "base_text_features")])
def test_prepare_refuses_other_shapes(method, name):
    adapter = _small(method)
    with pytest.raises(ArtifactError, match=name):
        adapter.prepare(C, E, torch.zeros(C, E), 100.0, {name: [3, 5]})


def test_clip_adapter_classifies_new_class_names():
    data = _data()
    adapter = _small("clip-adapter")
    adapter.fit(data)
    test = torch.randn(5, E, generator=torch.Generator().manual_seed(2))
    new_text = F.normalize(torch.randn(7, E, generator=torch.Generator().manual_seed(3)), dim=-1)
    with torch.no_grad():
        assert torch.allclose(adapter(test, text=data.text), adapter(test), atol=1e-6)
        logits = adapter(test, text=new_text)
        # the closed form: 100 · normalize(0.2 · mlp(f) + 0.8 · f) @ new_text.T
        f = 0.2 * adapter.fc(test) + 0.8 * test
        assert torch.allclose(logits, 100.0 * F.normalize(f, dim=-1) @ new_text.t(), atol=1e-5)
    assert logits.shape == (5, 7)


def test_taskres_refuses_new_class_names_and_the_enhanced_base():
    adapter = _small("taskres")
    adapter.fit(_data())
    with pytest.raises(ConfigError, match="per fitted class"):
        adapter(torch.zeros(2, E), text=torch.zeros(3, E))
    with pytest.raises(ConfigError, match="enhanced_base"):
        create_adapter("taskres", {"enhanced_base": "strong_base/ImageNet/rn50_16shots/model.pth.tar"})


def test_taskres_base_is_the_raw_text_feature_when_norms_are_given(caplog):
    data = _data()
    adapter = _small("taskres")
    assert adapter.fit(data)["base"] == "raw"
    assert torch.allclose(adapter.base_text_features.norm(dim=-1), data.text_unnormalised.norm(dim=-1), rtol=1e-6)
    with caplog.at_level(logging.WARNING, logger="vlprompt.adapters.taskres"):
        assert _small("taskres").fit(_data(raw_text=False))["base"] == "normalised"
    assert "text_unnormalised" in caplog.text


def test_views_cycle_per_epoch_and_fall_back_to_the_train_features():
    data = _data(views=3)
    assert [torch.equal(epoch_features(data, e), data.views[(e - 1) % 3]) for e in (1, 2, 3, 4, 7)] == [True] * 5
    no_views = _data(views=None)
    assert epoch_features(no_views, 5) is no_views.train
    assert _small("clip-adapter").fit(no_views)["views"] == 0


def test_fit_draws_from_its_seed_only():
    torch.manual_seed(77)
    expected = torch.rand(3)
    torch.manual_seed(77)
    a = _small("clip-adapter")
    a.fit(_data(seed=5))
    assert torch.equal(torch.rand(3), expected)  # the global RNG was not consumed
    b = _small("clip-adapter")
    b.fit(_data(seed=6))
    assert not torch.equal(a.fc[0].weight, b.fc[0].weight)  # the seed sets the init


@pytest.mark.parametrize("method, config, match", [
    ("clip-adapter", {"ratio": 1.5}, "ratio"),
    ("clip-adapter", {"reduction": 0}, "reduction"),
    ("clip-adapter", {"epochs": 0}, "epochs"),
    ("clip-adapter", {"lr": -1.0}, "lr"),
    ("taskres", {"alpha": -0.1}, "alpha"),
    ("taskres", {"residual": 1}, "unknown option"),
])
def test_bad_settings_are_refused_naming_the_value(method, config, match):
    with pytest.raises(ConfigError, match=match):
        adapter = create_adapter(method, config)
        adapter.fit(_data())


def test_divergence_stops_training_with_the_fix():
    data = _data()
    big = AdapterData(data.train * float("inf"), data.train_labels, data.text, 100.0, seed=0)
    with pytest.raises(TrainingDivergedError, match="lower lr"):
        _small("clip-adapter").fit(big)


def test_optimizer_name_is_checked():
    with pytest.raises(ConfigError, match="adam"):
        DasslOptim("adamw", lr=1e-3, epochs=1, batch_size=1)
