"""Every CLI command fails with one readable line on stderr and a non-zero exit code: wrong flag values, missing
paths, incompatible combinations and unexpected exceptions (no traceback unless --debug)."""

from __future__ import annotations

import argparse
import json

import pytest

import vlprompt.cli.main as cli
from vlprompt.cli.main import build_parser, main
from vlprompt.errors import DataError

BASE = ["--backbone", "vlp-tiny-rn", "--pretrained", "random", "--device", "cpu", "--cache-dir", ""]
# Arguments that name something to read: given a path that does not exist, the command must say so.
INPUT_DESTS = {"dataset", "run", "images", "runs_dir", "datasets", "name", "run_dir", "runs"}


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


COMMANDS = sorted(_commands())


def _error_line(capsys) -> str:
    """The error output, checked to be one readable line (warnings logged before it are allowed)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error:" in ln]
    assert len(errors) == 1 and errors[0] == lines[-1], err
    assert errors[0].startswith("vlprompt")
    return errors[0]


def _actions(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if not isinstance(a, argparse._HelpAction)]


def test_every_command_is_covered():
    assert {"train", "eval", "zeroshot", "predict", "datasets", "report"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_unknown_flag(command, capsys):
    assert main([command, "--no-such-flag"]) == 2
    line = _error_line(capsys)
    assert "unrecognized arguments: --no-such-flag" in line or "required" in line or "invalid choice" in line
    assert "(see 'vlprompt" in line and "--help')" in line  # points at the usage


@pytest.mark.parametrize("command", COMMANDS)
def test_wrong_number(command, capsys):
    p = _commands()[command]
    numeric = [a for a in _actions(p) if a.option_strings and a.type in (int, float)]
    if not numeric:
        pytest.skip(f"'{command}' has no numeric option")
    for action in numeric:
        assert main([command, action.option_strings[0], "twelve"]) == 2
        assert f"invalid {action.type.__name__} value: 'twelve'" in _error_line(capsys)


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_input_path(command, tmp_path, capsys):
    """Every required argument filled; the inputs name files that do not exist."""
    p = _commands()[command]
    if any(isinstance(a, argparse._SubParsersAction) for a in _actions(p)):
        argv = [command, "check", str(tmp_path / "missing")]  # `datasets check NAME`
    else:
        argv = [command]
        required = [a for a in _actions(p) if a.required or (not a.option_strings and a.nargs != "?")]
        if not any(a.dest in INPUT_DESTS for a in required):
            pytest.skip(f"'{command}' reads no input path")
        for a in required:
            value = str(tmp_path / ("out" if a.dest == "out" else f"missing_{a.dest}"))
            argv += [a.option_strings[0], value] if a.option_strings else [value]
        for flag, value in (("--device", "cpu"), ("--cache-dir", "")):
            if any(flag in a.option_strings for a in _actions(p)):
                argv += [flag, value]
    code = main(argv)
    assert code != 0
    assert "missing" in _error_line(capsys)
    if command in ("train", "eval", "zeroshot"):  # inputs are validated before any output folder is created
        assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", COMMANDS)
def test_unexpected_exception_is_one_line_and_debug_shows_it(command, monkeypatch, capsys):
    real = cli.build_parser

    def boom(args):
        raise RuntimeError("something broke\ndeep inside")

    def patched():
        parser = real()
        for sp in next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices.values():
            sp.set_defaults(func=boom)
        return parser

    monkeypatch.setattr(cli, "build_parser", patched)
    argv = _minimal_argv(command)
    assert main(argv) == 1
    assert _error_line(capsys) == (f"vlprompt {command}: error: RuntimeError: something broke deep inside "
                                   "(run with --debug for the traceback)")
    with pytest.raises(RuntimeError, match="something broke"):
        main(["--debug", *argv])
    with pytest.raises(RuntimeError, match="something broke"):
        main([*argv, "--debug"])  # where the message suggests it: anywhere on the line


def _minimal_argv(command: str) -> list[str]:
    """Arguments that parse (values need not exist: the command's function is replaced)."""
    p = _commands()[command]
    if any(isinstance(a, argparse._SubParsersAction) for a in _actions(p)):
        return [command, "list"]
    argv = [command]
    for a in _actions(p):
        if a.required or (not a.option_strings and a.nargs != "?"):
            value = a.choices[0] if a.choices else "x"
            argv += [a.option_strings[0], str(value)] if a.option_strings else [str(value)]
    return argv


@pytest.mark.parametrize(
    ("exc", "code", "text"),
    [
        (DataError("bad data\nsecond line"), 2, "vlprompt report: error: bad data second line"),
        (PermissionError(13, "Permission denied", "/x"), 2, "Permission denied: '/x'"),
        (KeyboardInterrupt(), 130, "vlprompt report: error: interrupted"),
        (MemoryError(), 1, "out of memory"),
    ],
)
def test_error_kinds_and_exit_codes(exc, code, text, monkeypatch, capsys, tmp_path):
    import vlprompt.reports as reports

    def raise_it(*a, **k):
        raise exc

    monkeypatch.setattr(reports, "write_report", raise_it)
    assert main(["report", str(tmp_path)]) == code
    assert text in _error_line(capsys)


def test_help_and_no_command(capsys):
    assert main(["--help"]) == 0
    assert "train" in capsys.readouterr().out
    assert main([]) == 2
    assert main(["trian"]) == 2
    assert "invalid choice: 'trian'" in _error_line(capsys)


# Incompatible combinations and wrong values that only the library can judge (after parsing).
BAD = [
    (["--resume", "--overwrite"], "contradict"),
    (["--shots", "-3"], "--shots must be ≥ 0"),
    (["--seed", "-1"], "--seed must be in 0..2**32-1"),
    (["--epochs", "0"], "--epochs must be ≥ 1"),
    (["--batch-size", "0"], "--batch-size must be ≥ 1"),
    (["--lr", "-0.1"], "--lr must be > 0"),
    (["--crop-scale-min", "1.5"], "--crop-scale-min must be in (0, 1]"),
    (["--workers", "-2"], "--workers must be ≥ 0"),
    (["--augment", "sometimes"], "--augment 'sometimes' is invalid"),
    (["--n-ctx", "0"], "--n-ctx must be ≥ 1"),
    (["--ctx-init", ""], "--ctx-init is empty"),
    (["--method", "cocop"], "Did you mean cocoop, coop"),
    (["--device", "banana"], "--device 'banana' is not a valid device"),
    (["--classnames", "{tmp}/missing.txt"], "missing.txt' does not exist"),
    (["--pretrained", "{tmp}/missing.pt"], "missing.pt': no such file"),
    (["--backbone", "vlp-tiny-bidir"], "no causal mask"),
]


@pytest.mark.parametrize(("extra", "message"), BAD, ids=[b[1][:24] for b in BAD])
def test_train_wrong_values_and_combinations(extra, message, image_folder, tmp_path, capsys):
    extra = [e.format(tmp=tmp_path) for e in extra]
    argv = ["train", "--dataset", f"folder:{image_folder}", "--out", str(tmp_path / "o"), *BASE, *extra]
    assert main(argv) == 2
    assert message in _error_line(capsys)


def test_out_is_a_file_and_zeroshot_templates(image_folder, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    common = ["--dataset", f"folder:{image_folder}", *BASE]
    assert main(["train", *common, "--out", str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in _error_line(capsys)
    for template, message in (("no placeholder", "has no '{}' placeholder"), ("a {} {}", "cannot be filled"),
                              ("{name} photo {}", "cannot be filled")):
        assert main(["zeroshot", *common, "--out", str(tmp_path / "z"), "--template", template]) == 2
        assert message in _error_line(capsys)
    assert main(["zeroshot", *common, "--out", str(tmp_path / "z"), "--templates", str(tmp_path / "none.txt")]) == 2
    assert "neither one of dataset" in _error_line(capsys)


def test_paths_outside_the_dataset_root_need_the_flag(tmp_path, capsys):
    from PIL import Image

    inside, outside = tmp_path / "ds", tmp_path / "elsewhere"
    for d, n in ((inside, 6), (outside, 6)):
        for cls in ("a", "b"):
            (d / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (40 * i, 200 if cls == "a" else 0, 9)).save(d / cls / f"{i}.png")
    rows = [f"{cls}/{i}.png,{cls}" for cls in ("a", "b") for i in range(6)]
    rows += [f"../elsewhere/{cls}/{i}.png,{cls}" for cls in ("a", "b") for i in range(6)]
    (inside / "data.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    argv = ["zeroshot", "--dataset", f"csv:{inside / 'data.csv'}", "--out", str(tmp_path / "z"), *BASE]
    assert main(argv) == 2
    line = _error_line(capsys)
    assert "'../elsewhere/a/0.png'" in line and "points outside" in line and "--allow-outside-root" in line
    assert main([*argv, "--allow-outside-root"]) == 0
    cfg = json.loads((tmp_path / "z" / "config.json").read_text())
    assert cfg["dataset"]["num_classes"] == 2
    assert main(["datasets", "check", f"csv:{inside / 'data.csv'}"]) == 2
    assert "points outside" in _error_line(capsys)
    assert main(["datasets", "check", f"csv:{inside / 'data.csv'}", "--allow-outside-root"]) == 0
    split = {"train": [[f"/etc/{i}.png", 0, "a"] for i in range(2)], "test": [["a/0.png", 0, "a"]]}
    (inside / "split.json").write_text(json.dumps(split))
    assert main(["train", "--dataset", f"split:{inside / 'split.json'}", "--out", str(tmp_path / "t"), *BASE]) == 2
    assert "'/etc/0.png'" in _error_line(capsys)


def test_benchmark_missing_dataset_is_one_line(tmp_path, capsys):
    """`benchmark` has no required input since --datasets got per-protocol defaults, so the generic missing-input
    test skips it: a dataset that does not exist is still one line (exit 2) before any run starts."""
    missing = str(tmp_path / "missing_datasets")
    assert main(["benchmark", "--datasets", missing, "--out", str(tmp_path / "out"), "--device", "cpu",
                 "--cache-dir", ""]) == 2
    line = _error_line(capsys)
    assert "missing_datasets" in line and "folder:PATH" in line
    assert not (tmp_path / "out").exists()
