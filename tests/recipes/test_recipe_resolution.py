"""Every method's resolved recipe equals its official config (numbers copied from the files cited), and the
Python API and the CLI resolve it the same way, in the library.

Official sources (``Repo:path``):
- CoOp: ``CoOp:configs/trainers/CoOp/rn50.yaml`` / ``rn50_ep100.yaml`` / ``rn50_ep50.yaml`` (BATCH_SIZE 32,
  MAX_EPOCH 200/100/50, LR 0.002, WARMUP_EPOCH 1, WARMUP_CONS_LR 1e-5, TEST.BATCH_SIZE 100), ``CoOp:COOP.md``
  (epochs per shot count; ImageNet always ``*_ep50``);
- CoCoOp: ``CoOp:configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml`` (BATCH_SIZE 1, MAX_EPOCH 10);
- KgCoOp: ``KgCoOp:KgCoOp/configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml`` (BATCH_SIZE 128, MAX_EPOCH 100), run by
  ``KgCoOp/scripts/base2new_train.sh`` (16 shots, NCTX 4, W 8.0) and ``xd_train.sh`` (4 shots);
- Dassl: ``Dassl:dassl/config/defaults.py`` l.153–156 (WEIGHT_DECAY 5e-4, MOMENTUM 0.9, SGD_DAMPNING 0,
  SGD_NESTEROV False).
"""

from __future__ import annotations

import inspect
import json

import pytest

from vlprompt.cli.main import main
from vlprompt.engine.config import TrainConfig
from vlprompt.engine.recipe import method_recipe, resolve_train_config, steps_per_epoch, train_drop_last
from vlprompt.engine.run import RunSpec, train_run
from vlprompt.errors import ConfigError

SHOTS = (1, 2, 4, 8, 16)

# Settings every official method shares (Dassl defaults + every yaml), and vlprompt's deliberate fp32 default.
SHARED = {"lr": 0.002, "momentum": 0.9, "weight_decay": 5e-4, "warmup_epochs": 1, "warmup_lr": 1e-5,
          "augment": "online", "flip": True, "crop_scale_min": 0.08, "eval_batch_size": 100, "precision": "fp32"}


def _check_shared(cfg: TrainConfig) -> None:
    assert {k: getattr(cfg, k) for k in SHARED} == SHARED
    assert cfg.resolved


def test_coop_recipe():
    """CoOp (unified or CSC: the same config files): batch 32; 50/100/100/200/200 epochs; ImageNet 50 always."""
    for shots, epochs in zip(SHOTS, (50, 100, 100, 200, 200), strict=True):
        cfg = resolve_train_config(TrainConfig(), "coop", shots, "dtd")
        assert (cfg.batch_size, cfg.epochs) == (32, epochs)
        _check_shared(cfg)
        assert resolve_train_config(TrainConfig(), "coop", shots, "imagenet").epochs == 50
    assert resolve_train_config(TrainConfig(), "coop", None, "dtd").epochs == 200  # all images: rn50.yaml


def test_cocoop_recipe():
    for shots in (*SHOTS, None):
        for dataset in ("imagenet", "caltech101"):
            cfg = resolve_train_config(TrainConfig(), "cocoop", shots, dataset)
            assert (cfg.batch_size, cfg.epochs) == (1, 10)
            _check_shared(cfg)


def test_kgcoop_recipe():
    """Batch 128 and 100 epochs for every shot count and dataset (ImageNet included): one config, every script."""
    for shots in (*SHOTS, None):
        for dataset in ("imagenet", "dtd", "eurosat"):
            cfg = resolve_train_config(TrainConfig(), "kgcoop", shots, dataset)
            assert (cfg.batch_size, cfg.epochs) == (128, 100)
            _check_shared(cfg)
    assert method_recipe("kgcoop", 4, "dtd") == {"epochs": 100, "batch_size": 128, "lr": 0.002}


def test_learner_defaults_of_each_method():
    """M, init and λ: CoOp M=16 random N(0, 0.02²) end (``CoOp:train.py`` extend_cfg); CoCoOp and KgCoOp M=4 from
    "a photo of a" (the ctxv1 configs; KgCoOp hard-codes the words, ``trainers/kgcoop.py`` l.96); λ = 8."""
    from vlprompt.prompts import CoCoOpConfig, CoOpConfig, KgCoOpConfig

    c = CoOpConfig()
    assert (c.n_ctx, c.ctx_init, c.csc, c.class_token_position, c.init_std) == (16, None, False, "end", 0.02)
    cc = CoCoOpConfig()
    assert (cc.n_ctx, cc.ctx_init, cc.csc, cc.meta_reduction) == (4, "a photo of a", False, 16)
    kg = KgCoOpConfig()
    assert (kg.n_ctx, kg.ctx_init, kg.csc, kg.kg_weight) == (4, "a photo of a", False, 8.0)


def test_user_values_win_and_resolution_is_idempotent():
    mine = TrainConfig(epochs=3, batch_size=7, lr=0.01)
    for method in ("coop", "cocoop", "kgcoop"):
        assert resolve_train_config(mine, method, 16, "dtd") == mine
    half = resolve_train_config(TrainConfig(batch_size=5), "kgcoop", 16, "dtd")
    assert (half.batch_size, half.epochs) == (5, 100)
    assert resolve_train_config(half, "coop", 1, "dtd") == half
    assert not TrainConfig().resolved


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ConfigError, match="--method 'kgcop' is unknown. Did you mean kgcoop"):
        resolve_train_config(TrainConfig(), "kgcop", 16, "dtd")


def test_dassl_drop_last_rule():
    """``Dassl:dassl/data/data_manager.py`` l.43: ``drop_last = is_train and len(data_source) >= batch_size``."""
    assert train_drop_last(32, 32) and train_drop_last(70, 32) and not train_drop_last(10, 32)
    assert [steps_per_epoch(n, 32) for n in (10, 31, 32, 63, 64, 70)] == [1, 1, 1, 1, 2, 2]
    assert steps_per_epoch(5, 128) == 1 and steps_per_epoch(16 * 100, 128) == 12  # KgCoOp, 16 shots x 100 classes


def test_cli_help_states_the_resolved_defaults(capsys):
    """The --help texts name each method's resolved numbers (checked against the resolver, so they cannot drift)."""
    assert main(["train", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for m in ("coop", "cocoop", "kgcoop"):
        assert f"{m} {method_recipe(m, 16, 'dtd')['batch_size']}" in out
    assert "cocoop 10, ivlp 5, kgcoop 100, maple 5, promptsrc 20, vpt 5" in out  # epochs
    assert "coop 32, ivlp 4, kgcoop 128" in out  # batch sizes
    assert "cocoop 0.002, coop 0.002, ivlp 0.0035, kgcoop 0.002, maple 0.0035, promptsrc 0.0025, vpt 0.0025" in out
    assert "coop 50/100/100/200/200 for 1/2/4/8/16 shots (50 for ImageNet)" in out
    assert [method_recipe("coop", k, "dtd")["epochs"] for k in SHOTS] == [50, 100, 100, 200, 200]
    for text, field in (("SGD momentum (default 0.9)", "momentum"),
                        ("SGD weight decay (default 5e-4)", "weight_decay"),
                        ("constant warm-up lr (default 1)", "warmup_epochs"), ("warm-up lr (default 1e-5)", "warmup_lr")):
        assert text in out
        # lr: unset (None) until a method's recipe resolves it; 0.002 where none does (the CoOp family's)
        value = TrainConfig().base_lr if field == "lr" else getattr(TrainConfig(), field)
        assert value == float(text.rsplit(" ", 1)[1].rstrip(")"))


def test_cli_passes_only_what_the_user_gave():
    """Argument defaults are None: TrainConfig's (official) defaults and the library's recipe decide."""
    import argparse

    from vlprompt.cli.common import add_train_args, train_config

    p = argparse.ArgumentParser()
    add_train_args(p)
    cfg = train_config(p.parse_args([]))
    assert cfg == TrainConfig() and cfg.batch_size is None and cfg.epochs is None
    assert (cfg.weight_decay, cfg.momentum, cfg.lr, cfg.base_lr) == (5e-4, 0.9, None, 0.002)
    assert train_config(p.parse_args(["--batch-size", "3", "--no-flip"])) == TrainConfig(batch_size=3, flip=False)


def _count_steps(monkeypatch) -> list[int]:
    """Record the batch size of every optimiser step taken from now on."""
    from vlprompt.engine.model import PromptModel

    sizes: list[int] = []
    real = PromptModel.training_loss

    def counted(self, image_features, labels, images=None):
        sizes.append(int(labels.numel()))
        return real(self, image_features, labels, images)

    monkeypatch.setattr(PromptModel, "training_loss", counted)
    return sizes


def _spec(folder, out, **kw) -> RunSpec:
    return RunSpec(dataset=f"folder:{folder}", out=str(out), shots=2, backbone="vlp-tiny-vit", pretrained="random",
                   device="cpu", cache_dir="", **kw)


def test_python_api_trains_cocoop_at_its_recipe_like_the_cli(image_folder, tmp_path, monkeypatch):
    """``train_run`` (no CLI involved) with method cocoop: batch 1, 10 epochs, one step per image per epoch; the
    CLI's run of the same settings records the identical resolved ``train`` block."""
    sizes = _count_steps(monkeypatch)
    api = tmp_path / "api"
    metrics = train_run(_spec(image_folder, api, method="cocoop", train=TrainConfig(augment="none")))
    cfg = json.loads((api / "config.json").read_text())
    n = len(cfg["fewshot"]["train"])
    assert n == 6 and metrics["epochs"] == 10
    assert (cfg["train"]["batch_size"], cfg["train"]["epochs"]) == (1, 10)
    assert sizes == [1] * (10 * n)  # CoCoOp's batch 1: every image is its own step

    cli = tmp_path / "cli"
    assert main(["train", "--dataset", f"folder:{image_folder}", "--shots", "2", "--out", str(cli), "--backbone",
                 "vlp-tiny-vit", "--pretrained", "random", "--device", "cpu", "--cache-dir", "", "--method", "cocoop", "--augment", "none"]) == 0
    assert json.loads((cli / "config.json").read_text())["train"] == cfg["train"]


@pytest.mark.parametrize("augment", ["online", "none"])
def test_drop_last_and_steps_per_epoch(image_folder, tmp_path, monkeypatch, augment):
    """6 training images: batch 4 → one full batch per epoch (the partial one dropped, Dassl); batch 8 → one
    partial batch of 6 (fewer images than the batch: nothing dropped). Both batch sources (DataLoader, features)."""
    sizes = _count_steps(monkeypatch)
    train_run(_spec(image_folder, tmp_path / "b4", train=TrainConfig(epochs=2, batch_size=4, augment=augment),
                    learner={"n_ctx": 2}))
    assert sizes == [4, 4]  # not [4, 2, 4, 2]
    sizes.clear()
    train_run(_spec(image_folder, tmp_path / "b8", train=TrainConfig(epochs=2, batch_size=8, augment=augment),
                    learner={"n_ctx": 2}))
    assert sizes == [6, 6]


def test_linear_probe_and_zero_shot_defaults():
    """Linear probe: ``CoOp:lpclip/linear_probe.py`` l.54 (grid), l.57 (lbfgs, max_iter 1000, l2), l.8 and
    ``linear_probe.sh`` (--num_step 8), l.25 (val shots min(K, 4)). Zero-shot: one template per dataset
    (``CoOp:trainers/zsclip.py`` CUSTOM_TEMPLATES), DTD "{} texture.", EuroSAT "a centered satellite photo of {}."."""
    from vlprompt.data.templates import CUSTOM_TEMPLATES, get_templates
    from vlprompt.engine.baselines import linear_probe_run
    from vlprompt.eval.linear_probe import COARSE_GRID, fit_linear_probe

    assert COARSE_GRID == (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)
    for fn in (linear_probe_run, fit_linear_probe):
        params = inspect.signature(fn).parameters
        assert (params["num_steps"].default, params["max_iter"].default) == (8, 1000)
    assert CUSTOM_TEMPLATES["dtd"] == "{} texture."
    assert CUSTOM_TEMPLATES["eurosat"] == "a centered satellite photo of {}."
    assert get_templates("dataset", CUSTOM_TEMPLATES["dtd"], "dtd") == ["{} texture."]
    assert len(get_templates("ensemble7", CUSTOM_TEMPLATES["dtd"], "dtd")) == 8
    assert len(get_templates("ensemble7", CUSTOM_TEMPLATES["imagenet"], "imagenet")) == 7

