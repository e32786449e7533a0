"""MaPLe's resolved defaults against its official config (``muzairkhattak/multimodal-prompt-learning`` 69bce21,
``configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml``, used for every dataset by
``scripts/maple/base2new_train_maple.sh`` and ``reproduce_maple.sh``; the ``TRAINER.MAPLE`` defaults of
``train.py`` l.105–109).

Official: ``DATALOADER.TRAIN_X.BATCH_SIZE 4``; ``OPTIM``: sgd, ``LR 0.0035``, ``MAX_EPOCH 5``, cosine,
``WARMUP_EPOCH 1``, ``WARMUP_TYPE constant``, ``WARMUP_CONS_LR 1e-5`` (momentum 0.9 and weight decay 5e-4:
Dassl's defaults); ``TRAINER.MAPLE``: ``N_CTX 2``, ``CTX_INIT "a photo of a"``, ``PREC fp16``, ``PROMPT_DEPTH 9``.
"""

from __future__ import annotations

import pytest

from vlprompt.engine.config import TrainConfig
from vlprompt.engine.recipe import method_recipe, resolve_train_config
from vlprompt.prompts.maple import MaPLeConfig


@pytest.mark.parametrize("shots, dataset", [(16, "dtd"), (16, "imagenet"), (1, "eurosat"), (None, None)])
def test_maple_resolves_the_official_epochs_and_batch_for_every_dataset(shots, dataset):
    """One config for every dataset and shot count (ImageNet's CoOp 50 epochs do not apply)."""
    assert method_recipe("maple", shots, dataset) == {"epochs": 5, "batch_size": 4, "lr": 0.0035}
    cfg = resolve_train_config(TrainConfig(), "maple", shots, dataset)
    assert (cfg.epochs, cfg.batch_size, cfg.momentum, cfg.weight_decay, cfg.warmup_epochs, cfg.warmup_lr) == \
        (5, 4, 0.9, 5e-4, 1, 1e-5)


def test_the_users_values_win():
    cfg = resolve_train_config(TrainConfig(epochs=2, batch_size=8, lr=0.0035), "maple", 16, "dtd")
    assert (cfg.epochs, cfg.batch_size, cfg.lr) == (2, 8, 0.0035)


def test_maple_learner_defaults_are_the_official_trainer_options():
    cfg = MaPLeConfig()
    assert (cfg.n_ctx, cfg.ctx_init, cfg.depth, cfg.half_tokens, cfg.init_std) == (2, "a photo of a", 9, True, 0.02)


def test_precision_default_is_fp32_a_named_deviation():
    """Official PREC fp16 (every CLIP weight and the context in fp16, SGD without master weights); vlprompt's
    default is fp32, the official mode being ``--precision fp16``."""
    assert TrainConfig().precision == "fp32"
    assert TrainConfig(precision="fp16").precision == "fp16"  # the official mode stays available


def test_maple_resolves_the_official_lr():
    assert resolve_train_config(TrainConfig(), "maple", 16, "dtd").lr == 0.0035
