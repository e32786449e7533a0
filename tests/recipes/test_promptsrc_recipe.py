"""PromptSRC's resolved defaults against its official configs (``muzairkhattak/PromptSRC`` bb95c77,
``configs/trainers/PromptSRC/*.yaml``, run by ``scripts/promptsrc/{base2new_train,few_shot,xd_train}.sh``)."""

from __future__ import annotations

from vlprompt.engine.config import TrainConfig
from vlprompt.engine.recipe import resolve_train_config
from vlprompt.prompts.promptsrc import PROTOCOL_RECIPES, PromptSRCConfig

SHOTS = (1, 2, 4, 8, 16, None)


def test_base_to_new_training_defaults_are_the_official_config():
    """``vit_b16_c2_ep20_batch4_4+4ctx.yaml``: BATCH_SIZE 4, MAX_EPOCH 20 for every dataset and shot count (CoOp's
    per-shot epochs must not leak in), SGD momentum 0.9 / wd 5e-4 (Dassl's defaults), WARMUP_EPOCH 1 constant at
    WARMUP_CONS_LR 1e-5."""
    for dataset in ("dtd", "imagenet", None):
        for shots in SHOTS:
            cfg = resolve_train_config(TrainConfig(), "promptsrc", shots, dataset)
            assert (cfg.epochs, cfg.batch_size) == (20, 4)
            assert (cfg.momentum, cfg.weight_decay, cfg.warmup_epochs, cfg.warmup_lr) == (0.9, 5e-4, 1, 1e-5)
    assert resolve_train_config(TrainConfig(epochs=3, lr=0.0025), "promptsrc", 16, "dtd").epochs == 3


def test_base_to_new_lr_resolves_to_the_official_one():
    assert resolve_train_config(TrainConfig(), "promptsrc", 16, "dtd").lr == 0.0025


def test_learner_defaults_are_the_official_trainer_options():
    """``TRAINER.PROMPTSRC`` of the base-to-new config: N_CTX_TEXT/VISION 4, CTX_INIT "a photo of a", depths 9/9,
    TEXT_LOSS_WEIGHT 25, IMAGE_LOSS_WEIGHT 10, GPA_MEAN 15, GPA_STD 1; PREC fp16's token casts kept."""
    cfg = PromptSRCConfig()
    assert (cfg.n_ctx, cfg.n_ctx_vision, cfg.ctx_init, cfg.depth_text, cfg.depth_vision) == (4, 4, "a photo of a", 9, 9)
    assert (cfg.text_loss_weight, cfg.image_loss_weight, cfg.gpa_mean, cfg.gpa_std) == (25, 10, 15, 1)
    assert cfg.gpa and cfg.half_tokens and cfg.half_teacher and not cfg.csc


def test_the_other_protocols_configs_are_recorded_as_named_variants():
    """Few-shot (``…_ep50_…_few_shot.yaml``: MAX_EPOCH 50, GPA 30/30, or 45/5 for the fine-grained datasets) and
    cross-dataset (``…_ep20_…_cross_datasets.yaml``: depths 3/3, GPA 6/10); each builds a valid config."""
    got = {k: (v["epochs"], v["batch_size"], v["lr"], v["learner"]) for k, v in PROTOCOL_RECIPES.items()}
    assert got == {
        "base2new": (20, 4, 0.0025, {}),
        "cross_dataset": (20, 4, 0.0025, {"depth_text": 3, "depth_vision": 3, "gpa_mean": 6.0, "gpa_std": 10.0}),
        "few_shot": (50, 4, 0.0025, {"gpa_mean": 30.0, "gpa_std": 30.0}),
        "few_shot_fine": (50, 4, 0.0025, {"gpa_mean": 45.0, "gpa_std": 5.0}),
    }
    for v in PROTOCOL_RECIPES.values():
        PromptSRCConfig(**v["learner"])
