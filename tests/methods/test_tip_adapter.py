"""Tip-Adapter / Tip-Adapter-F behaviour around the official computation (which tests/fidelity pins): the official
per-dataset settings, what happens without a validation split or without views, the artifact round trip through
``prepare``, and the refusals. Figures against the official code: ``tests/fidelity/test_tip_adapter_figures.py``."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

from vlprompt._io import atomic_save_safetensors
from vlprompt.adapters import AdapterData, create_adapter, get_adapter_class, list_adapters
from vlprompt.adapters.tip_adapter import TipAdapterConfig, count_correct, normalise, official_config, search_grid
from vlprompt.errors import ArtifactError, ConfigError, TrainingDivergedError

C, K, E, V = 3, 2, 8, 4


def make_data(with_val: bool = True, with_views: bool = True, seed: int = 0) -> AdapterData:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(C).repeat(K)
    means = torch.randn(C, E, generator=g)
    train = 3 * means[labels] + torch.randn(C * K, E, generator=g)
    views = train + 0.5 * torch.randn(V, C * K, E, generator=g)
    val = 3 * means[labels] + torch.randn(C * K, E, generator=g)
    text = torch.nn.functional.normalize(means + torch.randn(C, E, generator=g), dim=-1)
    return AdapterData(train=train, train_labels=labels, text=text, logit_scale=100.0,
                       views=views if with_views else None, val=val if with_val else None,
                       val_labels=labels.clone() if with_val else None, seed=3)


def test_registered_with_the_interface_flags_and_recipe():
    assert {"tip-adapter", "tip-adapter-f"} <= set(list_adapters())
    for method in ("tip-adapter", "tip-adapter-f"):
        cls = get_adapter_class(method)
        assert (cls.uses_views, cls.uses_val, cls.new_classes) == (True, True, False)
        assert cls.recipe["num_views"] == 10  # configs/*.yaml augment_epoch
        assert (cls.recipe["crop_scale_min"], cls.recipe["flip"]) == (0.5, True)  # main.py's cache transform
    assert get_adapter_class("tip-adapter-f").recipe == {"num_views": 10, "crop_scale_min": 0.5, "flip": True,
                                                          "epochs": 20, "batch_size": 256, "lr": 0.001}


@pytest.mark.parametrize("dataset, expected", [
    # configs/<name>.yaml: search_scale, init_alpha, train_epoch (init_beta 1 everywhere)
    ("eurosat", ((12.0, 10.0), 2.0, 100)),
    ("fgvc_aircraft", ((30.0, 30.0), 5.0, 20)),  # fgvc.yaml
    ("oxford_flowers", ((50.0, 50.0), 10.0, 20)),
    ("food101", ((10.0, 10.0), 1.17, 20)),
    ("imagenet", ((7.0, 3.0), 1.17, 20)),
    ("my_custom_data", ((7.0, 3.0), 1.17, 20)),  # no official config: ImageNet's
    (None, ((7.0, 3.0), 1.17, 20)),
])
def test_official_settings_per_dataset(dataset, expected):
    s = TipAdapterConfig(dataset=dataset).resolved()
    assert (tuple(s["search_scale"]), s["init_alpha"], s["train_epoch"]) == expected
    assert (s["init_beta"], s["search_step"], s["lr"], s["batch_size"]) == (1.0, [200, 20], 0.001, 256)
    official = official_config(dataset)
    assert {k: s[k] for k in official_config(dataset, 4)} == {**official, "search_scale": list(official["search_scale"])}  # shots change nothing
    assert s["official_config"] == (dataset if dataset in ("eurosat", "fgvc_aircraft", "oxford_flowers", "food101",
                                                           "imagenet") else "imagenet")


def test_user_values_win_and_stay_json_lists():
    cfg = create_adapter("tip-adapter", {"dataset": "dtd", "init_alpha": 0.5, "search_scale": [4, 2],
                                         "search_step": [10, 5]}).config
    s = cfg.resolved()
    assert (s["init_alpha"], s["search_scale"], s["search_step"], s["train_epoch"]) == (0.5, [4, 2], [10, 5], 20)
    assert create_adapter("tip-adapter", cfg.__dict__).config == cfg  # config_dict → the same config
    assert search_grid(7, 200)[:2] == [0.1, 0.1 + 6.9 / 200] and len(search_grid(7, 200)) == 200  # 7 excluded


@pytest.mark.parametrize("config, needle", [
    ({"search_scale": [1, 2, 3]}, "search_scale=[1, 2, 3]: expected two numbers"),
    ({"search_step": [0, 20]}, "expected positive values"),
    ({"train_epoch": 0}, "train_epoch=0: expected at least 1"),
    ({"alpha": 1.0}, "unknown option(s) ['alpha'] for method 'tip-adapter'"),
])
def test_bad_options_refused_naming_them(config, needle):
    with pytest.raises(ConfigError) as err:
        create_adapter("tip-adapter", config)
    assert needle in str(err.value)


def test_without_val_the_official_initial_values_are_used():
    tip = create_adapter("tip-adapter", {"dataset": "dtd"})
    record = tip.fit(make_data(with_val=False))
    assert (record["alpha"], record["beta"]) == (2.0, 1.0)  # dtd.yaml init_alpha, init_beta
    assert record["selected_on"] == "init (no validation split)" and record["search"] is None
    assert (float(tip.alpha), float(tip.beta)) == (2.0, 1.0)

    tipf = create_adapter("tip-adapter-f", {"dataset": "dtd", "train_epoch": 3})
    record = tipf.fit(make_data(with_val=False))
    assert record["chosen_epoch"] == 2 and record["epoch_selected_on"] == "last epoch (no validation split)"
    assert "val_accuracy" not in record["epochs"][0] and (record["alpha"], record["beta"]) == (2.0, 1.0)


def test_tip_adapter_f_record_and_schedule():
    tipf = create_adapter("tip-adapter-f", {"train_epoch": 4, "batch_size": 4})  # 6 images: batches 4 + 2
    record = tipf.fit(make_data())
    assert [r["epoch"] for r in record["epochs"]] == [0, 1, 2, 3]
    assert record["epochs"][-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine over 4 epochs × 2 steps ends at 0
    assert record["epochs"][0]["lr"] == pytest.approx(0.001 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi / 4))))
    assert 0 <= record["chosen_epoch"] < 4 and record["epoch_selected_on"] == "val"
    assert not tipf.adapter.weight.requires_grad  # fitted: inference builds no graph
    assert json.loads(json.dumps(record))["chosen_epoch"] == record["chosen_epoch"]  # the record is plain JSON


def test_without_views_the_test_transform_features_are_the_keys(caplog):
    data = make_data(with_views=False)
    tip = create_adapter("tip-adapter")
    with caplog.at_level(logging.WARNING, logger="vlprompt.adapters.tip_adapter"):
        record = tip.fit(data)
    assert torch.allclose(tip.cache_keys, normalise(data.train))
    assert record["num_views"] == 0 and "no augmented views" in caplog.text


@pytest.mark.parametrize("method, keys", [("tip-adapter", "cache_keys"), ("tip-adapter-f", "adapter.weight")])
def test_state_dict_round_trip_through_prepare(tmp_path, method, keys):
    data = make_data()
    fitted = create_adapter(method, {"train_epoch": 2})
    fitted.fit(data)
    state = fitted.state_dict()
    assert set(state) == {keys, "cache_values", "alpha", "beta"}  # the cache is the artifact; text is not in it
    assert list(state[keys].shape) == [C * K, E] and list(state["cache_values"].shape) == [C * K, C]
    atomic_save_safetensors(tmp_path / "adapter.safetensors", dict(state))
    loaded_state = load_file(tmp_path / "adapter.safetensors")
    loaded = create_adapter(method, fitted.config_dict())
    loaded.prepare(C, E, data.text, data.logit_scale, {k: list(v.shape) for k, v in loaded_state.items()})
    loaded.load_state_dict(loaded_state, strict=True)
    x = torch.randn(5, E, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        assert torch.equal(loaded(x), fitted(x))
        assert torch.equal(loaded(x, data.text), fitted(x))  # the same classes' text: allowed


def test_refusals():
    data = make_data()
    tip = create_adapter("tip-adapter")
    with pytest.raises(ConfigError, match="has no cache yet: call fit"):
        tip(torch.randn(2, E))
    tip.fit(data)
    with pytest.raises(ConfigError, match="caches 3 classes and cannot classify 5 others"):
        tip(torch.randn(2, E), torch.nn.functional.normalize(torch.randn(5, E), dim=-1))
    shapes = {k: list(v.shape) for k, v in tip.state_dict().items()}
    with pytest.raises(ArtifactError, match=r"expected \[N, 8\] and \[N, 4\]"):
        create_adapter("tip-adapter").prepare(4, E, data.text, 100.0, shapes)
    with pytest.raises(ArtifactError, match="lacks adapter.weight"):
        create_adapter("tip-adapter-f").prepare(C, E, data.text, 100.0, shapes)
    bad = dict(tip.state_dict())
    bad["cache_values"] = bad["cache_values"] * 0.5
    other = create_adapter("tip-adapter")
    other.prepare(C, E, data.text, 100.0, shapes)
    with pytest.raises(ArtifactError, match="not one-hot labels"):
        other.load_state_dict(bad)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pruned_grid_count_equals_the_dense_argmax(seed):
    """count_correct keeps only the classes that can win somewhere on the α grid; it must count exactly what the
    official dense ``argmax(clip + cache · α)`` does, ties included (small integers make exact ties common)."""
    g = torch.Generator().manual_seed(seed)
    m, c = 64, 50
    clip = torch.randint(0, 6, (m, c), generator=g).float()
    cache = torch.randint(0, 4, (m, c), generator=g).float() * torch.rand(m, 1, generator=g).round()
    labels = torch.randint(0, c, (m,), generator=g)
    alphas = torch.tensor(search_grid(3, 20))
    dense = torch.stack([((clip + cache * a).argmax(dim=1) == labels).sum() for a in alphas.tolist()])
    assert torch.equal(count_correct(clip, cache, alphas, labels), dense)
    no_cache = torch.stack([(clip.argmax(dim=1) == labels).sum()] * len(alphas))  # every class flat in α
    assert torch.equal(count_correct(clip, torch.zeros(m, c), alphas, labels), no_cache)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_grid_count_equals_the_dense_argmax_on_real_valued_crossings(seed):
    """The search settles a row from the two ends of the α grid when no class crosses the true class in between;
    on real-valued logits (clip of either sign, exp-weighted caches) where many classes cross it inside the grid,
    the count must still be the dense ``argmax(clip + cache · α)``'s at every α."""
    g = torch.Generator().manual_seed(seed)
    m, c = 200, 40
    clip = 30 * torch.randn(m, c, generator=g) / (1 + 9 * torch.rand(m, 1, generator=g))
    cache = torch.exp(3 * torch.randn(m, c, generator=g)) * (torch.rand(m, c, generator=g) < 0.5)
    labels = torch.randint(0, c, (m,), generator=g)
    # row 0: the true class wins only from α = 1 on (a crossing inside the grid); row 1: beaten at every α
    clip[0], cache[0], labels[0] = 0.0, 0.0, 3
    clip[0, 3], cache[0, 3], clip[0, 5] = 0.0, 2.0, 2.0
    clip[1], cache[1], labels[1] = 0.0, 0.0, 0
    clip[1, 2], cache[1, 2] = 1.0, 1.0
    alphas = torch.tensor(search_grid(3, 20))
    dense = torch.stack([((clip + cache * a).argmax(dim=1) == labels).sum() for a in alphas])
    assert torch.equal(count_correct(clip, cache, alphas, labels), dense)
    assert not torch.equal(dense, dense[:1].expand_as(dense))  # the crossings do change the count along α


def test_loading_other_cache_values_changes_the_classes():
    """The key → class index is kept between calls; loading another artifact in place (``load_state_dict`` writes
    into the same ``cache_values``) must not leave the old classes in use."""
    first, second = make_data(seed=0), make_data(seed=0)
    second = AdapterData(train=second.train, train_labels=second.train_labels.roll(1), text=second.text,
                         logit_scale=100.0, views=second.views, val=second.val, val_labels=second.val_labels, seed=3)
    a, b = create_adapter("tip-adapter"), create_adapter("tip-adapter")
    a.fit(first)
    b.fit(second)
    x = torch.randn(5, E, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        before = a(x)  # fills a's class index
        a.load_state_dict(b.state_dict())
        assert torch.equal(a(x), b(x)) and not torch.equal(a(x), before)


def test_tip_adapter_f_refuses_a_diverged_loss():
    data = make_data()
    views = data.views.clone()
    views[1, 0, 0] = float("nan")  # a NaN feature (in a view, hence in its cache key): the loss is not finite
    bad = AdapterData(train=data.train, train_labels=data.train_labels, text=data.text, logit_scale=100.0,
                      views=views, val=data.val, val_labels=data.val_labels, seed=3)
    with pytest.raises(TrainingDivergedError, match="tip-adapter-f: the training loss became nan; rerun with a lower lr"):
        create_adapter("tip-adapter-f", {"train_epoch": 2}).fit(bad)
