"""IVLP and VPT-deep: the resolved defaults are the official configs' numbers
(``muzairkhattak/multimodal-prompt-learning`` at 69bce21, ``configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml``
and ``configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml``, the configs of every script in
``scripts/independent-vlp/`` and ``scripts/vpt/``; line numbers in each assertion), and what the trainers train.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vlprompt.backbones import create_backbone
from vlprompt.engine.config import TrainConfig
from vlprompt.engine.fit import make_optimizer
from vlprompt.engine.model import PromptModel
from vlprompt.engine.recipe import method_recipe, resolve_train_config
from vlprompt.errors import BackboneError, ConfigError
from vlprompt.prompts import create_prompt_learner, get_prompt_learner_class
from vlprompt.prompts.ivlp import IVLPConfig
from vlprompt.prompts.vpt import VPTConfig

#: The official yamls as the figures driver parsed them (``tests/fidelity/figures/make_ivlp_vpt_figures.py``).
OFFICIAL_YAML = json.loads((Path(__file__).parents[1] / "fidelity" / "figures" / "official_ivlp_vpt.json"
                            ).read_text())["yaml"]
NAMES = ["dog", "golden_retriever", "cat"]
SMALL = {"ivlp": {"depth_text": 2, "depth_vision": 2}, "vpt": {"depth_vision": 2}}  # the tiny ViT has 2 + 2 blocks


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return create_backbone("vlp-tiny-vit", "random")


@pytest.mark.parametrize("method, batch, lr", [("ivlp", 4, 0.0035), ("vpt", 4, 0.0025)])
def test_train_recipe_is_the_official_yaml(method, batch, lr):
    """IVLP yaml l.4 BATCH_SIZE 4, l.17–23 sgd, LR 0.0035, MAX_EPOCH 5, cosine, WARMUP_EPOCH 1 constant at 1e-5;
    VPT yaml the same except LR 0.0025 (l.18). Dassl: momentum 0.9, weight decay 5e-4. The same for every shot
    count and dataset (one config per method). ``PREC fp16`` (l.37 / l.36) is not the default: vlprompt trains in
    fp32 unless ``--precision fp16`` (``TrainConfig.precision``, a deliberate deviation shared by every method)."""
    for shots in (1, 4, 16, None):
        for dataset in ("imagenet", "dtd", None):
            cfg = resolve_train_config(TrainConfig(), method, shots, dataset)
            assert (cfg.epochs, cfg.batch_size, cfg.lr) == (5, batch, lr)
            assert (cfg.warmup_epochs, cfg.warmup_lr, cfg.momentum, cfg.weight_decay) == (1, 1e-5, 0.9, 5e-4)
            assert cfg.precision == "fp32" and cfg.resolved
    assert method_recipe(method, 16, "dtd") == {"epochs": 5, "batch_size": batch, "lr": lr}
    cls = get_prompt_learner_class(method)
    assert cls.display_name == {"ivlp": "IVLP", "vpt": "VPT-deep"}[method]


@pytest.mark.parametrize("method", ["ivlp", "vpt"])
def test_resolved_defaults_equal_the_recorded_official_yaml(method):
    """The same numbers read from the official files themselves (parsed by the figures driver, not typed here):
    train settings, the schedule's kind, and every ``TRAINER.<NAME>`` field the learner has (``PREC`` aside: the
    deliberate fp32 default; ``CTX_INIT`` of VPT: unused by its trainer, vpt.py l.73)."""
    y = OFFICIAL_YAML[method]
    optim, trainer = y["OPTIM"], y["TRAINER"][method.upper()]
    cfg = resolve_train_config(TrainConfig(), method, 16, "dtd")
    assert (cfg.batch_size, cfg.epochs, cfg.lr) == (y["DATALOADER"]["TRAIN_X"]["BATCH_SIZE"], optim["MAX_EPOCH"],
                                                    optim["LR"])
    # yacs reads "1e-5" with literal_eval (Dassl's CfgNode), as here
    assert (cfg.warmup_epochs, cfg.warmup_lr) == (optim["WARMUP_EPOCH"], ast.literal_eval(str(optim["WARMUP_CONS_LR"])))
    assert (optim["NAME"], optim["LR_SCHEDULER"], optim["WARMUP_TYPE"]) == ("sgd", "cosine", "constant")
    assert cfg.eval_batch_size == y["DATALOADER"]["TEST"]["BATCH_SIZE"]
    fields = {"N_CTX_TEXT": "n_ctx", "CTX_INIT": "ctx_init", "N_CTX_VISION": "n_ctx_vision",
              "PROMPT_DEPTH_TEXT": "depth_text", "PROMPT_DEPTH_VISION": "depth_vision"}
    defaults = (IVLPConfig if method == "ivlp" else VPTConfig)()
    checked = {k: v for k, v in fields.items() if k in trainer and hasattr(defaults, v)}
    assert {k: getattr(defaults, v) for k, v in checked.items()} == {k: trainer[k] for k in checked}
    assert len(checked) == (5 if method == "ivlp" else 2) and trainer["PREC"] == "fp16"


def test_user_values_win_over_the_recipe():
    mine = TrainConfig(epochs=2, batch_size=8, lr=0.01)
    assert resolve_train_config(mine, "ivlp", 16, "dtd") == mine
    assert resolve_train_config(TrainConfig(lr=0.5), "vpt", 16, "dtd").lr == 0.5
    assert resolve_train_config(TrainConfig(), "coop", 16, "dtd").lr == 0.002  # the CoOp family's, unchanged


def test_learner_defaults_are_the_official_yaml():
    """IVLP yaml l.34–39: N_CTX_VISION 2, N_CTX_TEXT 2, CTX_INIT "a photo of a", PROMPT_DEPTH_VISION 12,
    PROMPT_DEPTH_TEXT 12 (train.py's own defaults, depth 9, are overridden by the yaml every script passes).
    VPT yaml l.34, 37: N_CTX_VISION 8, PROMPT_DEPTH_VISION 12; the text prompt "a photo of a {name}."
    (trainers/vpt.py l.73, 80). Both keep the official fp16 token casts by default."""
    c = IVLPConfig()
    assert (c.n_ctx, c.ctx_init, c.n_ctx_vision, c.depth_text, c.depth_vision, c.half_tokens) == (
        2, "a photo of a", 2, 12, 12, True)
    assert (c.csc, c.class_token_position, c.init_std) == (False, "end", 0.02)
    v = VPTConfig()
    assert (v.n_ctx_vision, v.depth_vision, v.text_template, v.init_std, v.half_tokens) == (
        8, 12, "a photo of a {}.", 0.02, True)


@pytest.mark.parametrize("method, trained", [("ivlp", {"ctx", "deep_text", "deep_vision"}), ("vpt", {"deep_vision"})])
def test_what_is_trained_is_what_the_official_trainer_trains(vit, method, trained):
    """``IVLP.build_model`` (independentVL.py l.204–210) / ``VPT.build_model`` (vpt.py l.139–145): the prompt
    learner's ``ctx`` and every parameter whose name contains ``VPT`` (the official names are checked against the
    official trainer in tests/fidelity/test_ivlp_vpt_figures.py). VPT-deep holds no text parameter at all."""
    learner = create_prompt_learner(method, vit, NAMES, SMALL[method])
    opt = make_optimizer(learner, resolve_train_config(TrainConfig(), method, 16, "dtd"))
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert {n for n, p in learner.named_parameters() if id(p) in ids} == trained
    assert set(learner.trainable_state_dict()) == trained  # fixed embeddings / features are not saved
    assert learner.prompts_image


@pytest.mark.parametrize("option, value, blocks", [("depth_text", 3, 2), ("depth_vision", 5, 2)])
def test_depth_above_the_block_count_is_refused_naming_the_fix(vit, option, value, blocks):
    with pytest.raises(ConfigError) as err:
        create_prompt_learner("ivlp", vit, NAMES, {**SMALL["ivlp"], option: value})
    msg = str(err.value)
    assert f"{option}={value}" in msg and f"has {blocks}" in msg and f"--learner-opt {option}={blocks}" in msg
    assert "vlp-tiny-vit" in msg
    with pytest.raises(ConfigError, match=r"--learner-opt depth_vision=2"):
        create_prompt_learner("vpt", vit, NAMES, {"depth_vision": 3})
    with pytest.raises(ConfigError, match="≥ 1"):
        VPTConfig(depth_vision=0)


def test_a_resnet_is_refused_for_vision_prompts_and_ivlp_runs_text_only_on_it():
    """The language-only IVLP config (vit_b16_c2_ep5_batch4_4ctx_language_only.yaml: N_CTX_TEXT 4, vision depth 0)
    needs no ViT: it prompts only the text tower."""
    torch.manual_seed(0)
    rn = create_backbone("vlp-tiny-rn", "random")
    with pytest.raises(BackboneError, match="ModifiedResNet.*--learner-opt depth_vision=0"):
        create_prompt_learner("ivlp", rn, NAMES, {"depth_text": 2})
    with pytest.raises(BackboneError, match="ModifiedResNet"):
        create_prompt_learner("vpt", rn, NAMES, {"depth_vision": 1})
    text_only = create_prompt_learner("ivlp", rn, NAMES, {"n_ctx": 4, "depth_text": 2, "depth_vision": 0,
                                                         "n_ctx_vision": 0})
    assert not text_only.prompts_image and text_only.kept_words == "" and text_only.deep_vision is None


def test_vpt_text_features_are_the_hand_crafted_prompts_computed_once(vit):
    """``FixedEmbeddings`` (vpt.py l.73–86): ``clip_model.encode_text`` of "a photo of a {name}." once; forward()
    returns the same prompts, so encoding them gives the same features; new class names rebuild them."""
    learner = create_prompt_learner("vpt", vit, NAMES, SMALL["vpt"])
    with torch.no_grad():
        official = F.normalize(vit.encode_text([f"a photo of a {n.replace('_', ' ')}." for n in NAMES]).float(), dim=-1)
        embeds, ids = learner()
        encoded = F.normalize(vit.encode_text_embeddings(embeds, ids).float(), dim=-1)
    torch.testing.assert_close(learner.fixed_text_features(), official, rtol=0, atol=1e-6)
    torch.testing.assert_close(encoded, official, rtol=0, atol=1e-5)
    model = PromptModel(vit, learner)
    assert model.text_path() == "fixed" and PromptModel(vit, create_prompt_learner("ivlp", vit, NAMES, SMALL["ivlp"])
                                                        ).text_path() == "shared-prefix"
    calls = []
    learner.register_forward_hook(lambda *a: calls.append(1))
    torch.testing.assert_close(model.text_features(), official, rtol=0, atol=1e-6)
    assert not calls  # the engine takes the fixed features; nothing is re-encoded per step
    learner.set_classnames(vit, ["cat", "hot_air balloon"])
    with torch.no_grad():
        new = F.normalize(vit.encode_text(["a photo of a cat.", "a photo of a hot air balloon."]).float(), dim=-1)
    torch.testing.assert_close(model.text_features(), new, rtol=0, atol=1e-6)


def test_report_labels_name_what_each_deep_method_learns():
    """The report's variant label: M is the learned input-layer text tokens (a deep method's n_ctx, not the init
    phrase's words); VPT-deep learns no text token, so it has no M, position or init part."""
    from vlprompt.runs.folder import default_label

    assert default_label("vpt", {"n_ctx_vision": 8, "depth_vision": 4}) == "VPT-deep depth_vision=4"
    assert default_label("maple", {"n_ctx": 2, "ctx_init": "a photo of a", "depth": 4}) == \
        "MaPLe M=2 end init 'a photo of a' depth=4"
    assert default_label("coop", {"n_ctx": 4, "ctx_init": "a photo of a"}) == "CoOp M=4 end init 'a photo of a'"
