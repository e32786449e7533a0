"""`--config FILE`: YAML and JSON files map onto the flags (sections, '-' or '_' keys), flags given on the command
line win, values are validated by the flags' own converters, and unknown keys or malformed files are refused in
one line naming the file, the key and the valid keys."""

from __future__ import annotations

import json

import pytest

from vlprompt.cli.common import learner_options, run_spec, train_config
from vlprompt.cli.config_file import apply_config
from vlprompt.cli.main import build_parser, main
from vlprompt.engine.config import TrainConfig

YAML = """\
# a hand-written experiment
data:
  dataset: folder:{folder}
  shots: 2
  seed: 5
backbone:
  name: vlp-tiny-rn
  pretrained: random
  device: cpu
learner:
  method: kgcoop
  n-ctx: 2
  kg_weight: 4
train:
  epochs: 2
  batch-size: 4
  lr: 1e-2            # YAML 1.1 reads this as a string; --lr's own converter makes it 0.01
  augment: none
  flip: false
  num_workers: 0
output:
  cache_dir: ""
  label: yaml run
"""


def _args(argv):
    """The namespace a command's function receives (the file merged, defaults filled)."""
    return apply_config(build_parser().parse_args(argv))


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text if isinstance(text, str) else json.dumps(text))
    return path


def test_yaml_sections_map_onto_the_flags_and_train(image_folder, tmp_path):
    cfg = _write(tmp_path, "exp.yaml", YAML.format(folder=image_folder))
    args = _args(["train", "--config", str(cfg), "--out", str(tmp_path / "o")])
    spec = run_spec(args)
    assert (spec.dataset, spec.shots, spec.seed, spec.backbone, spec.pretrained, spec.device, spec.method) == (
        f"folder:{image_folder}", 2, 5, "vlp-tiny-rn", "random", "cpu", "kgcoop")
    assert spec.learner == {"n_ctx": 2, "ctx_init": None, "kg_weight": 4.0}
    assert spec.train == TrainConfig(epochs=2, batch_size=4, lr=0.01, augment="none", flip=False, num_workers=0)
    assert (spec.label, spec.cache_dir) == ("yaml run", "")

    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 0
    rec = json.loads((tmp_path / "run" / "config.json").read_text())
    assert rec["method"] == "kgcoop" and rec["learner"]["kg_weight"] == 4.0 and rec["learner"]["n_ctx"] == 2
    assert rec["train"]["batch_size"] == 4 and rec["train"]["lr"] == 0.01 and rec["label"] == "yaml run"


def test_command_line_beats_the_file_beats_the_defaults(image_folder, tmp_path):
    cfg = _write(tmp_path, "exp.yaml", YAML.format(folder=image_folder))
    args = _args(["train", "--config", str(cfg), "--out", "o", "--shots", "4", "--seed", "1", "--lr", "0.5", "--learner-opt", "kg_weight=2", "--n-ctx", "3"])
    spec = run_spec(args)
    assert (spec.shots, spec.seed, spec.train.lr) == (4, 1, 0.5)  # --seed 1 equals the default and still wins
    assert spec.learner == {"n_ctx": 3, "ctx_init": None, "kg_weight": 2.0}
    assert spec.train.epochs == 2 and spec.train.flip is False  # from the file
    assert spec.train.momentum == 0.9 and spec.subsample == "all" and spec.root is None  # defaults


def test_json_file_flat_keys_dash_or_underscore(image_folder, tmp_path):
    cfg = _write(tmp_path, "c.json", {"dataset": f"folder:{image_folder}", "batch-size": 8, "weight_decay": 0.001,
                                      "no_flip": False, "classnames": None, "csc": True, "ctx-init": "a photo of a",
                                      "learner_opt": ["init_std=0.05"], "eval-batch-size": 7})
    with pytest.raises(Exception, match="unknown key 'no_flip'. Did you mean 'flip'"):
        _args(["train", "--config", str(cfg), "--out", "o"])  # --no-flip is set by 'flip' (true/false) only
    data = json.loads(cfg.read_text())
    del data["no_flip"]
    cfg.write_text(json.dumps(data))
    args = _args(["train", "--config", str(cfg), "--out", "o"])
    assert train_config(args) == TrainConfig(batch_size=8, weight_decay=0.001, eval_batch_size=7)
    assert learner_options(args) == {"ctx_init": "a photo of a", "csc": True, "init_std": 0.05}
    assert args.classnames_file is None


def test_a_file_may_supply_the_required_flags_and_their_absence_is_named(image_folder, tmp_path, capsys):
    assert main(["train", "--out", "o"]) == 2  # without --config: argparse's own message, unchanged
    assert "the following arguments are required: --dataset" in capsys.readouterr().err
    cfg = _write(tmp_path, "c.json", {"shots": 2})
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"vlprompt train: error: the following arguments are required: --dataset, --out; give them on the "
                   f"command line or in --config '{cfg}' (dataset, out).")
    args = _args(["train", "--config", str(_write(tmp_path, "d.json", {"dataset": "x", "out": "y"}))])
    assert (args.dataset, args.out) == ("x", "y")


BAD = [
    ({"shot": 4}, "unknown key 'shot'. Did you mean 'shots'? Valid keys: "),
    ({"train": {"epoch": 4}}, "unknown key 'epoch' in section 'train'. Did you mean 'epochs'?"),
    ({"method": "kgcoop", "learner": {"kg_wieght": 4}}, "unknown key 'kg_wieght' in section 'learner'. Did you mean "
                                                        "'kg_weight'? Valid keys: class_token_position, csc, ctx_init"),
    ({"learner": {"meta_reduction": 4}}, "unknown key 'meta_reduction' in section 'learner'"),  # coop has none
    ({"shots": "four"}, "key 'shots' (--shots): got 'four'; expected an integer."),
    ({"shots": 2.5}, "key 'shots' (--shots): got '2.5'; expected an integer."),
    ({"lr": True}, "key 'lr' (--lr): got True; expected a number."),
    ({"csc": "yes"}, "key 'csc' (--csc): got 'yes'; expected true or false."),
    ({"subsample": "bse"}, "key 'subsample' (--subsample): got 'bse'; expected a string, one of all, base, new."),
    ({"method": "cocop"}, "key 'method' (--method): --method 'cocop' is unknown. Did you mean cocoop, coop"),
    ({"pretrained": 3}, "key 'pretrained' (--pretrained): got 3; expected a string."),
    ({"backbone": ["RN50"]}, "key 'backbone' (--backbone): got a list; expected a string."),
    ({"method": "kgcoop", "learner": {"kg_weight": "big"}}, "key 'learner.kg_weight': got 'big'; method 'kgcoop' "
                                                           "expects a float (default 8.0)."),
    ({"learner_opt": "kg_weight"}, "is not KEY=VALUE"),
    ({"batch_size": 4, "train": {"batch-size": 8}}, "'train.batch-size' and 'batch_size' both set --batch-size"),
    ({"config": "other.yaml"}, "config files do not include other config files"),
    ({"train": 3}, "section 'train' must be a mapping of settings, got 3."),
    ({"epochs": 0}, "--epochs must be ≥ 1, got 0"),  # the library's own checks still apply
    ({"versions": {}, "method": "zeroshot", "learner": {"templates": ["{}"]}}, "records a 'zeroshot' run"),
    ({"versions": {}, "method": "coop", "evaluated_from": "/r"}, "records an evaluation (vlprompt eval of /r)"),
]


@pytest.mark.parametrize(("content", "message"), BAD, ids=[m[:30] for _, m in BAD])
def test_bad_files_are_one_line_naming_file_and_key(content, message, image_folder, tmp_path, capsys):
    cfg = _write(tmp_path, "bad.json", {"dataset": f"folder:{image_folder}", "backbone": "vlp-tiny-rn",
                                        "pretrained": "random", "device": "cpu", **content})
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("vlprompt train: error: ") and message in err, err
    if "key '" in message:
        assert str(cfg) in err
    assert not (tmp_path / "o").exists()


def test_unknown_key_lists_every_valid_key(tmp_path, capsys):
    assert main(["train", "--config", str(_write(tmp_path, "c.yaml", "shot: 4\n")), "--out", "o"]) == 2
    err = capsys.readouterr().err
    valid = err.split("Valid keys: ", 1)[1].rstrip(". \n").split(", ")
    for key in ("dataset", "shots", "seed", "backbone", "pretrained", "method", "n_ctx", "lr", "epochs",
                "batch_size", "workers", "eval_batch_size", "learner", "train", "versions", "fewshot"):
        assert key in valid, key


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("c.json", '{"shots": 4,}', "is not valid JSON: Expecting property name enclosed in double quotes at line 1"),
        ("c.json", '{"shots": 4, "shots": 8}', "duplicate key 'shots'; each setting may appear once"),
        ("c.yaml", "shots: 4\nshots: 8\n", "duplicate key 'shots' (line 2)"),
        ("c.yaml", "shots: [4\n", "is not valid YAML"),
        ("c.yaml", "- shots\n- 4\n", "holds a list, not a mapping of settings"),
        ("missing.yaml", None, "no such file"),
    ],
)
def test_malformed_files(name, text, message, tmp_path, capsys):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    assert main(["train", "--config", str(path), "--out", "o"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and str(path) in err, err


def test_help_documents_the_format(capsys):
    for command in ("train", "linear-probe", "zeroshot"):
        assert main([command, "--help"]) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert "--config FILE" in out and "YAML (.yaml, .yml) or JSON (.json)" in out
        assert "Precedence: command-line flag > file > default" in out
        assert "A run folder's config.json is accepted as it is and re-runs that run" in out
        assert "Unknown keys and wrong types are refused" in out


def _record(tmp_path, **changes):
    """A coop run record as `vlprompt train` writes it with every learner and recipe value left to the defaults
    (coop, 4 shots: the recipe's 100 epochs and batch 32)."""
    record = {
        "label": "CoOp M=16 end", "method": "coop",
        "dataset": {"name": "folder", "spec": "folder:/d", "root": "/d", "num_classes": 3,
                    "classnames": ["a", "b", "c"], "template": "a photo of a {}.", "info": {}},
        "shots": 4, "seed": 1, "subsample": "all",
        "data": {"root": None, "classnames_file": None, "fewshot_file": None, "strict": False,
                 "allow_outside_root": False},
        "backbone": {"name": "RN50", "pretrained": "openai", "activation": "quick_gelu", "fingerprint": "f",
                     "token_dim": 512, "embed_dim": 1024},
        "learner": {"n_ctx": 16, "ctx_init": None, "csc": False, "class_token_position": "end", "init_std": 0.02,
                    "truncate": True},
        "train": {**TrainConfig(epochs=100, batch_size=32).to_dict()},
        "device": "cpu", "threads": 1, "versions": {"vlprompt": "0.0.1"},
        "fewshot": {"train": ["x.png"], "val": []}, "started": "2026-01-01T00:00:00",
    }
    record.update(changes)
    return _write(tmp_path, "config.json", record)


def test_a_record_replays_verbatim(tmp_path, caplog):
    args = _args(["train", "--config", str(_record(tmp_path)), "--out", "o"])
    spec = run_spec(args)
    assert spec.train == TrainConfig(epochs=100, batch_size=32)
    assert learner_options(args) == {"n_ctx": 16, "ctx_init": None, "class_token_position": "end", "init_std": 0.02,
                                     "truncate": True}
    assert (spec.label, spec.backbone, spec.pretrained, spec.dataset, spec.device) == (
        "CoOp M=16 end", "RN50", "openai", "folder:/d", "cpu")
    assert spec.expect == {"source": str(tmp_path / "config.json"), "fewshot": {"train": ["x.png"], "val": []},
                           "classnames": ["a", "b", "c"], "fingerprint": "f"}
    assert "recorded with other versions (vlprompt 0.0.1 →" in caplog.text


def test_overriding_what_a_recorded_value_was_resolved_from_resolves_it_again(tmp_path):
    """`--method kgcoop` on a coop record trains kgcoop with kgcoop's own defaults (not coop's recorded M=16,
    batch 32, label); `--shots 16` re-resolves the recipe's epochs. Values the user had chosen stay."""
    args = _args(["train", "--config", str(_record(tmp_path)), "--out", "o", "--method", "kgcoop"])
    assert learner_options(args) == {}
    assert train_config(args) == TrainConfig() and args.label is None
    assert run_spec(args).expect["fewshot"] == {"train": ["x.png"], "val": []}  # same data: still checked
    args = _args(["train", "--config", str(_record(tmp_path)), "--out", "o", "--shots", "16"])
    assert train_config(args) == TrainConfig(batch_size=32) and args.n_ctx == 16
    assert "fewshot" not in run_spec(args).expect  # other images by design: not compared with the record
    chosen = _record(tmp_path, learner={"n_ctx": 4, "ctx_init": None, "csc": True, "class_token_position": "end",
                                        "init_std": 0.02, "truncate": True},
                     train=TrainConfig(epochs=7, batch_size=32).to_dict(), label="mine")
    args = _args(["train", "--config", str(chosen), "--out", "o", "--method", "kgcoop"])
    assert learner_options(args) == {"n_ctx": 4, "ctx_init": None, "csc": True}
    assert train_config(args) == TrainConfig(epochs=7) and args.label == "mine"


def test_recorded_random_init_stays_random_and_flags_keep_their_meaning(tmp_path):
    cocoop = {"n_ctx": 4, "ctx_init": None, "class_token_position": "end", "init_std": 0.02, "truncate": True,
              "meta_reduction": 16, "csc": False}
    args = _args(["train", "--config", str(_record(tmp_path, method="cocoop", learner=cocoop, label="x")), "--out",
                  "o"])
    assert learner_options(args)["ctx_init"] is None and learner_options(args)["n_ctx"] == 4
    words = dict(cocoop, ctx_init="a photo of a")
    args = _args(["train", "--config", str(_record(tmp_path, method="cocoop", learner=words, label="x")), "--out",
                  "o", "--n-ctx", "8"])  # --n-ctx alone: M random vectors, the recorded words are not used
    assert learner_options(args)["ctx_init"] is None and learner_options(args)["n_ctx"] == 8


def test_thread_count_difference_is_warned(tmp_path, caplog):
    import torch

    _args(["train", "--config", str(_record(tmp_path, threads=torch.get_num_threads() + 3)), "--out", "o"])
    assert f"ran with {torch.get_num_threads() + 3} CPU threads" in caplog.text
    assert f"OMP_NUM_THREADS={torch.get_num_threads() + 3}" in caplog.text


def test_method_override_on_a_real_record_takes_the_new_methods_defaults(image_folder, tmp_path, caplog):
    """The README's example: a KgCoOp run (its defaults: M=4 from 'a photo of a', λ=8, batch 128, 100 epochs)
    re-run with --method coop trains CoOp as `vlprompt train --method coop` would (M=16 random, batch 32)."""
    run = tmp_path / "kg"
    assert main(["train", "--dataset", f"folder:{image_folder}", "--shots", "2", "--method", "kgcoop", "--epochs",
                 "1", "--augment", "none", "--backbone", "vlp-tiny-rn", "--pretrained", "random", "--device", "cpu",
                 "--cache-dir", "", "--out", str(run)]) == 0
    rec = json.loads((run / "config.json").read_text())
    assert rec["learner"]["n_ctx"] == 4 and rec["learner"]["ctx_init"] == "a photo of a"
    assert rec["train"]["batch_size"] == 128 and rec["label"].startswith("KgCoOp")
    args = _args(["train", "--config", str(run / "config.json"), "--method", "coop", "--out", "o"])
    assert learner_options(args) == {} and args.label is None
    assert train_config(args) == TrainConfig(epochs=1, augment="none")  # batch 128 was kgcoop's: resolved again
    args = _args(["train", "--config", str(run / "config.json"), "--out", "o"])  # as recorded
    assert learner_options(args) == {k: v for k, v in rec["learner"].items() if k != "csc"}
    assert train_config(args) == TrainConfig(**rec["train"])
    assert learner_options(args)["template"] == "a photo of a {}."  # resolved from this dataset: replayed
    args = _args(["train", "--config", str(run / "config.json"), "--dataset", "folder:/elsewhere", "--out", "o"])
    assert "template" not in learner_options(args)  # another dataset: its own template again
    assert learner_options(args)["kg_weight"] == 8.0

    # a chosen option the new method lacks is not silently carried over: it is dropped, with a warning
    rec["learner"]["kg_weight"] = 4.0
    (tmp_path / "k4.json").write_text(json.dumps(rec))
    args = _args(["train", "--config", str(tmp_path / "k4.json"), "--method", "coop", "--out", "o"])
    assert learner_options(args) == {}
    assert "--method coop: options of the recorded kgcoop run that coop does not have are not used: kg_weight=4.0" \
        in caplog.text
