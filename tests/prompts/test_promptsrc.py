"""PromptSRC (vlprompt.prompts.promptsrc): Gaussian prompt aggregation across a resume, in the artifact and through
fit(); the frozen ensemble features' cache; the refusals. The official numbers themselves are pinned in
tests/fidelity/test_promptsrc_figures.py."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from vlprompt.backbones import create_backbone
from vlprompt.engine.checkpoint import load_learner, save_learner
from vlprompt.engine.config import TrainConfig
from vlprompt.engine.fit import fit
from vlprompt.engine.model import PromptModel
from vlprompt.errors import BackboneError, ConfigError
from vlprompt.prompts import TrainingStep, create_prompt_learner
from vlprompt.prompts.gpa import gaussian_epoch_weights
from vlprompt.prompts.promptsrc import PromptSRC, PromptSRCConfig

NAMES = ["dog", "golden_retriever", "cat"]
SMALL = {"depth_text": 2, "depth_vision": 2, "gpa_mean": 3.0, "gpa_std": 1.5}  # fits the 2-block tiny towers
EPOCHS = 5


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return create_backbone("vlp-tiny-vit", "random")


def small(vit, seed: int = 0, **extra) -> PromptSRC:
    torch.manual_seed(seed)
    return PromptSRC(vit, NAMES, PromptSRCConfig(**{**SMALL, **extra}))


def epoch_states(learner: PromptSRC, seed: int = 7) -> list[dict[str, torch.Tensor]]:
    """A distinct (fake) learned state for each of :data:`EPOCHS` epochs."""
    g = torch.Generator().manual_seed(seed)
    return [{n: torch.randn(p.shape, generator=g) for n, p in learner.named_parameters()} for _ in range(EPOCHS)]


def run_epochs(learner: PromptSRC, states: list[dict[str, torch.Tensor]], epochs: range) -> None:
    for e in epochs:
        with torch.no_grad():
            for n, p in learner.named_parameters():
                p.copy_(states[e - 1][n])
        learner.on_epoch_end(e, EPOCHS)


def test_a_resumed_aggregate_equals_the_uninterrupted_one_bit_for_bit(vit, tmp_path):
    """Epochs 1–2, the state_dict through a safetensors file into a fresh learner (other random init), epochs 3–5:
    the aggregate and the final prompts are bit-identical to five uninterrupted epochs, and equal the closed form
    Σ_e w_e·state_e; restarting without the saved state is refused."""
    whole = small(vit)
    states = epoch_states(whole)
    run_epochs(whole, states, range(1, EPOCHS + 1))
    first = small(vit)
    run_epochs(first, states, range(1, 3))
    save_file(first.state_dict(), str(tmp_path / "state.safetensors"))
    resumed = small(vit, seed=99)
    resumed.load_state_dict(load_file(str(tmp_path / "state.safetensors")))
    run_epochs(resumed, states, range(3, EPOCHS + 1))
    whole.finalize()
    resumed.finalize()
    w = gaussian_epoch_weights(EPOCHS, SMALL["gpa_mean"], SMALL["gpa_std"])
    for n, p in whole.named_parameters():
        assert torch.equal(p, dict(resumed.named_parameters())[n]), n
        closed = sum(wi * s[n].double() for wi, s in zip(w, states, strict=True))
        assert torch.allclose(p.double(), closed, atol=1e-6), n
    assert int(whole.gpa_epochs) == int(resumed.gpa_epochs) == EPOCHS
    with pytest.raises(ConfigError, match="holds 0 epochs, but epoch 3 ended"):
        run_epochs(small(vit), states, range(3, 4))


def test_the_artifact_holds_the_aggregated_prompts_only(vit, tmp_path):
    """save_learner writes ctx / deep_text / deep_vision (the aggregate, after finalize) and no gpa_* accumulator;
    load_learner rebuilds the same prompts and logits; the accumulators are in the resumable state_dict."""
    learner = small(vit)
    run_epochs(learner, epoch_states(learner), range(1, EPOCHS + 1))
    learner.finalize()
    assert set(learner.state_dict()) == {"ctx", "deep_text", "deep_vision", "gpa_ctx", "gpa_deep_text",
                                         "gpa_deep_vision", "gpa_epochs"}
    assert set(learner.trainable_state_dict()) == {"ctx", "deep_text", "deep_vision"}
    save_learner(tmp_path, learner, vit)
    assert set(load_file(str(tmp_path / "learner.safetensors"))) == {"ctx", "deep_text", "deep_vision"}
    loaded = load_learner(tmp_path, vit)
    for n, p in learner.named_parameters():
        assert torch.equal(p, dict(loaded.named_parameters())[n]), n
        assert torch.equal(p, getattr(learner, f"gpa_{n}")), n  # the prompts are the aggregate
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = (PromptModel(vit, m) for m in (learner, loaded))
        assert torch.equal(a.logits(a.encode_images(images)), b.logits(b.encode_images(images)))


def test_fit_aggregates_every_epoch_and_ends_on_the_aggregate(vit):
    """Three real epochs through fit() (image batches, the prompted tower): the final prompts are exactly the
    official accumulation of the prompts fit() left at each epoch's end."""
    learner = small(vit, gpa_mean=2.0, gpa_std=1.0)
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(3, 3, 32, 32, generator=g), torch.tensor([0, 1, 2])) for _ in range(2)]
    seen = []
    fit(PromptModel(vit, learner), batches, TrainConfig(batch_size=3, lr=0.05), 3, images_are_features=False,
        on_epoch=lambda record, opt: seen.append({n: p.detach().clone() for n, p in learner.named_parameters()}))
    w = gaussian_epoch_weights(3, 2.0, 1.0)
    for n, p in learner.named_parameters():
        agg = seen[0][n] * w[0]
        for e in (1, 2):
            agg = agg + seen[e][n] * w[e]
        assert torch.equal(p.detach(), agg), n
        assert not torch.equal(p.detach(), seen[-1][n]), n


def test_fit_killed_after_epoch_two_and_resumed_from_the_train_state_ends_bit_identical(vit, tmp_path):
    """The run's own resumable state (runs/state: learner state_dict incl. the gpa_* buffers, SGD momentum) saved
    after epoch 2 of 4, the run killed, a fresh learner (another init) restored and trained on: the final
    (aggregated) prompts are bit-identical to an uninterrupted run's."""
    from vlprompt.engine.fit import make_optimizer
    from vlprompt.runs.state import load_train_state, save_train_state

    cfg, opts = TrainConfig(batch_size=3, lr=0.05), {"gpa_mean": 3.0, "gpa_std": 1.0}
    g = torch.Generator().manual_seed(4)
    batches = [(torch.randn(3, 3, 32, 32, generator=g), torch.tensor([0, 1, 2])) for _ in range(2)]
    whole = small(vit, **opts)
    fit(PromptModel(vit, whole), batches, cfg, 4, images_are_features=False)

    class Killed(Exception):
        pass

    def save_then_die(record, opt):
        save_train_state(tmp_path, epoch=record["epoch"], learner=first, optimizer=opt, generator=None)
        if record["epoch"] == 2:
            raise Killed

    first = small(vit, **opts)
    with pytest.raises(Killed):
        fit(PromptModel(vit, first), batches, cfg, 4, images_are_features=False, on_epoch=save_then_die)
    resumed = small(vit, seed=99, **opts)
    opt = make_optimizer(resumed, cfg)
    assert load_train_state(tmp_path, learner=resumed, optimizer=opt, generator=None) == 2
    assert int(resumed.gpa_epochs) == 2
    fit(PromptModel(vit, resumed), batches, cfg, 4, images_are_features=False, start_epoch=3, optimizer=opt)
    for n, p in whole.named_parameters():
        assert torch.equal(p, dict(resumed.named_parameters())[n]), n


def test_without_gpa_the_last_epoch_is_kept(vit):
    learner = small(vit, gpa=False)
    states = epoch_states(learner)
    run_epochs(learner, states, range(1, EPOCHS + 1))
    learner.finalize()
    assert torch.equal(learner.ctx.detach(), states[-1]["ctx"]) and int(learner.gpa_epochs) == 0


def test_gaussian_weights_closed_form_and_refusals():
    """The base-to-new schedule (20 epochs, μ 15, σ 1) peaks at epoch 15, symmetric around it, sums to 1; an
    all-underflowing schedule and σ ≤ 0 are refused with the option names."""
    w = gaussian_epoch_weights(20, 15.0, 1.0)
    assert max(range(20), key=w.__getitem__) == 14 and w[13] == w[15] and math.isclose(sum(w), 1.0)
    dens = [math.exp(-0.5 * (a - 15) ** 2) for a in range(1, 21)]
    assert all(math.isclose(wi, d / sum(dens), rel_tol=1e-12) for wi, d in zip(w, dens, strict=True))
    with pytest.raises(ConfigError, match="gpa_mean=60.0, gpa_std=1.0"):
        gaussian_epoch_weights(2, 60.0, 1.0)
    with pytest.raises(ConfigError, match="gpa_std"):
        PromptSRCConfig(gpa_std=0.0)
    with pytest.raises(ConfigError, match="loss weights"):
        PromptSRCConfig(text_loss_weight=-1.0)


def test_frozen_text_features_are_computed_once_per_class_list_and_not_saved(vit, monkeypatch):
    """60 templates encoded at the first training step only (not by evaluation), reused after, recomputed for new
    class names; never in the state dict."""
    learner = small(vit)
    model = PromptModel(vit, learner)
    calls = []
    real = vit.encode_text
    monkeypatch.setattr(vit, "encode_text", lambda texts: calls.append(len(texts)) or real(texts))
    images, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])
    with torch.no_grad():
        model.predict_logits(model.encode_images(images))
    assert calls == [] and learner.teacher_text is None
    model.training_loss(None, labels, images)
    model.training_loss(None, labels, images)
    assert calls == [len(NAMES)] * 60 and learner.teacher_text.shape == (3, vit.embed_dim)
    assert "teacher_text" not in learner.state_dict()
    learner.set_classnames(vit, ["bird", "fish"])
    assert learner.teacher_text is None
    model.training_loss(None, torch.tensor([0, 1, 1]), images)
    assert calls[-1] == 2 and len(calls) == 120 and learner.teacher_text.shape == (2, vit.embed_dim)


def test_registration_defaults_and_depth_refusal(vit):
    """Registered as 'promptsrc' with the official base-to-new options; depth 9 on a 2-block tower is refused with
    the block count and the fix."""
    cfg = PromptSRCConfig()
    assert (cfg.n_ctx, cfg.n_ctx_vision, cfg.depth_text, cfg.depth_vision, cfg.ctx_init) == (4, 4, 9, 9, "a photo of a")
    assert (cfg.text_loss_weight, cfg.image_loss_weight, cfg.gpa_mean, cfg.gpa_std) == (25.0, 10.0, 15.0, 1.0)
    assert cfg.half_tokens and cfg.half_teacher and cfg.gpa
    with pytest.raises(ConfigError, match="depth_text=9: .* 'vlp-tiny-vit' has 2 text blocks; set --learner-opt "
                       "depth_text=2"):
        create_prompt_learner("promptsrc", vit, NAMES)
    with pytest.raises(ConfigError, match="depth_vision=3"):
        create_prompt_learner("promptsrc", vit, NAMES, {**SMALL, "depth_vision": 3})
    rn = create_backbone("vlp-tiny-rn", "random")
    with pytest.raises(BackboneError, match="not a ViT"):  # the hook's refusal of a ResNet image tower
        create_prompt_learner("promptsrc", rn, NAMES, SMALL)
    # text prompts only (depth_vision 0): trains on cached features; the frozen image features are the step's own
    text_only = create_prompt_learner("promptsrc", rn, NAMES, {**SMALL, "depth_vision": 0})
    assert not text_only.prompts_image
    feats = torch.nn.functional.normalize(torch.randn(3, rn.embed_dim), dim=-1)
    model = PromptModel(rn, text_only)
    with torch.no_grad():
        text = model.text_features()
    terms = text_only.consistency_terms(TrainingStep(text, feats, model.logits(feats, text), torch.tensor([0, 1, 2]),
                                                     None, rn))
    assert float(terms["image_l1"]) == 0.0 and float(terms["text_l1"]) > 0 and float(terms["kl"]) > 0
    learner = create_prompt_learner("promptsrc", vit, NAMES, SMALL)
    assert type(learner) is PromptSRC and learner.display_name == "PromptSRC" and learner.prompts_image
    assert learner.kept_words == "" and learner.init_text == "a photo of a"  # all four words learned
