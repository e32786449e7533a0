"""CLAP and LP++ as feature-space adapters: registry flags and recipes, no validation data read, artifact round trip
through ``prepare``, and the refusals (new classes, bad options, mis-shaped views, a class without images).

Fidelity to the official code is in ``tests/fidelity/test_clap_lpp_figures.py``.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from vlprompt.adapters import AdapterData, create_adapter, get_adapter_class, list_adapters
from vlprompt.errors import ConfigError, DataError

C, K, E, V = 4, 3, 16, 2
FAST = {"clap": {"epochs": 4, "batch_size": 8}, "lpplusplus": {"epochs": 12}}


def _data(**over) -> AdapterData:
    g = torch.Generator().manual_seed(3)
    means = torch.randn(C, E, generator=g)
    labels = torch.arange(C).repeat_interleave(K)
    train = 4 * (means[labels] + torch.randn(C * K, E, generator=g))
    raw = 6 * (means + 0.5 * torch.randn(C, E, generator=g))
    kw = {"train": train, "train_labels": labels, "text": torch.nn.functional.normalize(raw, dim=-1),
          "logit_scale": 100.0, "views": train + torch.randn(V, C * K, E, generator=g), "seed": 5,
          "text_unnormalised": raw}
    return AdapterData(**{**kw, **over})


class Poison:
    """Stands in for the validation split: any use of it raises."""

    def __getattr__(self, name):
        raise AssertionError(f"fit read the validation data (.{name})")

    def __len__(self):
        raise AssertionError("fit read the validation data (len)")


def test_registered_with_official_recipes():
    assert {"clap", "lpplusplus"} <= set(list_adapters())
    clap, lpp = get_adapter_class("clap"), get_adapter_class("lpplusplus")
    for cls in (clap, lpp):
        assert cls.uses_views and not cls.uses_val and not cls.new_classes
    assert (clap.recipe["epochs"], clap.recipe["lr"], clap.recipe["batch_size"], clap.recipe["num_views"]) == (
        300, 0.1, 256, 20)
    assert (lpp.recipe["epochs"], lpp.recipe["alpha_every"], lpp.recipe["num_views"]) == (300, 10, 1)
    assert clap.recipe["crop_scale_min"] == 0.08 and lpp.recipe["crop_scale_min"] == 0.5  # their train views
    assert clap.display_name == "CLAP" and lpp.display_name == "LP++"


@pytest.mark.parametrize("method", ["clap", "lpplusplus"])
def test_fit_never_reads_validation_data(method):
    test = torch.randn(7, E)
    clean = create_adapter(method, FAST[method])
    clean.fit(_data())
    poisoned = create_adapter(method, FAST[method])
    poisoned.fit(_data(val=Poison(), val_labels=Poison()))
    assert torch.equal(clean(test), poisoned(test))


@pytest.mark.parametrize("method", ["clap", "lpplusplus"])
def test_state_dict_round_trip_through_prepare(method):
    data = _data()
    adapter = create_adapter(method, FAST[method])
    record = adapter.fit(data)
    json.dumps(record)  # the record is the artifact's JSON
    blob = st_save({k: v.contiguous() for k, v in adapter.state_dict().items()})
    state = st_load(blob)
    loaded = create_adapter(method, adapter.config_dict())
    loaded.prepare(C, E, data.text, data.logit_scale, {k: list(v.shape) for k, v in state.items()})
    loaded.load_state_dict(state, strict=True)
    test = torch.randn(9, E) * 5
    assert torch.equal(loaded(test), adapter(test))
    untrained = create_adapter(method, {**FAST[method], "epochs": 0})
    untrained.fit(data)
    assert not torch.allclose(untrained(test), loaded(test), atol=1e-3)  # what was loaded is the trained state


@pytest.mark.parametrize("method", ["clap", "lpplusplus"])
def test_refuses_new_classes_and_unfitted_use(method):
    adapter = create_adapter(method, FAST[method])
    with pytest.raises(ConfigError, match="fit"):
        adapter(torch.randn(2, E))
    adapter.fit(_data())
    with pytest.raises(ConfigError, match="cannot classify other classes"):
        adapter(torch.randn(2, E), text=torch.randn(3, E))


@pytest.mark.parametrize(("method", "options", "match"), [
    ("clap", {"constraint": "l1"}, "constraint 'l1'.*'l2'"),
    ("clap", {"epochs": -1}, "epochs ≥ 0"),
    ("clap", {"lr": 0.0}, "lr > 0"),
    ("clap", {"temperature": 1}, "unknown option"),
    ("lpplusplus", {"alpha_every": 0}, "alpha_every ≥ 1"),
])
def test_bad_options_refused(method, options, match):
    with pytest.raises(ConfigError, match=match):
        create_adapter(method, options)


@pytest.mark.parametrize("method", ["clap", "lpplusplus"])
def test_bad_views_and_missing_class_refused(method):
    with pytest.raises(ConfigError, match=r"views must be \[V, N, E\]"):
        create_adapter(method, FAST[method]).fit(_data(views=torch.randn(V, C * K - 1, E)))
    data = _data()
    labels = data.train_labels.clone()
    labels[labels == 2] = 1  # class 2 has no image
    with pytest.raises(DataError, match=r"class\(es\) \[2\] have no training image"):
        create_adapter(method, FAST[method]).fit(_data(train_labels=labels))


@pytest.mark.parametrize("method", ["clap", "lpplusplus"])
def test_without_views_trains_on_the_test_transform_features(method):
    adapter = create_adapter(method, FAST[method])
    record = adapter.fit(_data(views=None))
    assert record["views_used"] == 0
    single = create_adapter(method, FAST[method])
    single.fit(_data(views=_data().train.unsqueeze(0)))  # the same features given as one view
    test = torch.randn(5, E)
    assert torch.equal(adapter(test), single(test))


def test_clap_uses_unnormalised_text_and_records_the_fallback():
    raw = create_adapter("clap", FAST["clap"])
    assert raw.fit(_data())["text_init"] == "unnormalised"
    assert torch.allclose(raw.prototypes.norm(dim=-1), _data().text_unnormalised.norm(dim=-1), rtol=0.5)
    fallback = create_adapter("clap", FAST["clap"])
    assert fallback.fit(_data(text_unnormalised=None))["text_init"] == "normalised (deviation)"
    test = torch.randn(5, E)
    assert not torch.allclose(raw(test), fallback(test), atol=1e-3)  # the norms change the training


def test_clap_zslp_has_no_penalty_and_lpp_uses_only_the_first_view():
    zslp = create_adapter("clap", {**FAST["clap"], "constraint": "none"})
    assert zslp.fit(_data())["multipliers"] == {"mean": 0.0, "min": 0.0, "max": 0.0}
    data = _data()
    first = create_adapter("lpplusplus", FAST["lpplusplus"])
    first.fit(_data(views=data.views[:1]))
    both = create_adapter("lpplusplus", FAST["lpplusplus"])
    both.fit(data)
    test = torch.randn(5, E)
    assert torch.equal(first(test), both(test))


@pytest.mark.parametrize("method", ["clap", "lpplusplus"])
def test_fit_inside_no_grad(method):
    """A caller's ``torch.no_grad()`` (evaluation code) does not stop the training."""
    plain = create_adapter(method, FAST[method])
    plain.fit(_data())
    with torch.no_grad():
        inside = create_adapter(method, FAST[method])
        inside.fit(_data())
    test = torch.randn(4, E)
    assert torch.equal(plain(test), inside(test))


@pytest.mark.parametrize("constraint", ["l2", "none"])
def test_clap_hand_gradient_equals_autograd_of_the_official_loss(constraint):
    """``Clap._step`` forms ∂/∂p of ``CE(s · x̂ (p/‖p‖)ᵀ) + mean_c α_c ‖p_c − t_c‖²`` by hand; autograd on that loss
    (``forward_lp`` + ``zero_shot_constraint``) must give the same gradient and loss."""
    from vlprompt.adapters.clap import Clap, ClapConfig

    g = torch.Generator().manual_seed(11)
    x, y = 3 * torch.randn(10, E, generator=g), torch.randint(0, C, (10,), generator=g)
    base = 5 * torch.randn(C, E, generator=g)
    protos = base + torch.randn(C, E, generator=g)
    adapter = Clap(ClapConfig(constraint=constraint))
    adapter._make(protos.clone(), torch.rand(C, generator=g) if constraint == "l2" else torch.zeros(C), 100.0)
    p = protos.clone().requires_grad_(True)
    xn = x / x.norm(dim=-1, keepdim=True)
    loss = torch.nn.functional.cross_entropy(xn @ (p / p.norm(dim=-1, keepdim=True)).t() * 100.0, y)
    loss = loss + torch.mean(adapter.multipliers * (p - base).pow(2).sum(-1))
    loss.backward()
    momentum = torch.zeros(C, E)
    pull = (2.0 / C) * adapter.multipliers
    ours = adapter._step(x, y, protos.clone(), momentum, pull, pull[:, None] * base, base)
    assert ours == pytest.approx(loss.item(), rel=1e-6)
    torch.testing.assert_close(momentum, p.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [6, 40])  # N < E (eigh of F Fᵀ) and N > E (eigh of FᵀF)
def test_lpp_step_size_is_4n_over_the_largest_squared_singular_value(n):
    from vlprompt.adapters.lp_plus_plus import lpp_init

    g = torch.Generator().manual_seed(n)
    feats = torch.nn.functional.normalize(torch.randn(n, E, generator=g) + 2, dim=-1)
    labels = torch.arange(n) % C
    text = torch.nn.functional.normalize(torch.randn(C, E, generator=g), dim=-1)
    sigma = torch.linalg.svdvals(feats.double())[0]
    assert float(lpp_init(feats, labels, text)["lr_w"]) == pytest.approx(4 * n / float(sigma) ** 2, rel=1e-5)


def test_lpp_hand_gradients_equal_autograd_of_the_official_loop():
    """``LPPlusPlus._train`` forms the gradients and the SGD-momentum step by hand; the official loop restated with
    autograd and ``torch.optim.SGD`` (``linear_probe_p2.py``: ``(W, b)`` stepped every iteration, ``α`` after every
    10th from its never-zeroed gradient) must reach the same weights after 25 iterations (two ``α`` steps)."""
    from vlprompt.adapters.lp_plus_plus import lpp_init

    data = _data()
    ours = create_adapter("lpplusplus", {"epochs": 25})
    ours.fit(data)
    feats = torch.nn.functional.normalize(data.views[0], dim=-1)
    init = lpp_init(feats, data.train_labels, data.text)
    bound = 1.0 / E**0.5
    w = torch.nn.Parameter(init["weight"].clone())
    b = torch.nn.Parameter(torch.empty(C).uniform_(-bound, bound, generator=torch.Generator().manual_seed(data.seed)))
    alpha = torch.nn.Parameter(init["alpha"] * torch.ones(C))
    opt = torch.optim.SGD([w, b], lr=float(init["lr_w"]), momentum=0.9)
    for epoch in range(25):
        logits = torch.nn.functional.linear(feats, w, b) + alpha * (feats @ data.text.t())
        loss = torch.nn.functional.cross_entropy(logits, data.train_labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (epoch + 1) % 10 == 0:
            with torch.no_grad():
                alpha -= init["lr_alpha"] * alpha.grad
    assert not torch.equal(alpha.detach(), init["alpha"] * torch.ones(C))  # α did move
    for mine, official in ((ours.weight, w), (ours.bias, b), (ours.alpha, alpha)):
        torch.testing.assert_close(mine, official.detach(), rtol=1e-5, atol=1e-5)
    assert ours.record["final_loss"] == pytest.approx(loss.item(), rel=1e-5)
