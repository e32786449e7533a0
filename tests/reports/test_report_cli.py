"""``vlprompt report``: exit codes, printed markdown, --out, and clear errors for a bad RUNS_DIR."""

from __future__ import annotations

import json
from pathlib import Path

from vlprompt.cli.main import main


def _run(folder: Path, acc: float | None, seed: int = 1) -> None:
    folder.mkdir(parents=True)
    config = {"label": "CoOp M=16 end", "method": "coop", "dataset": {"name": "dtd"}, "shots": 2, "seed": seed}
    (folder / "config.json").write_text(json.dumps(config | {"backbone": {"name": "RN50"}}))
    if acc is not None:
        (folder / "metrics.json").write_text(json.dumps({"accuracy": acc, "train_seconds": 3.0}))


def test_report_prints_table_and_writes_to_out(tmp_path, capsys):
    runs = tmp_path / "runs"
    _run(runs / "s1", 50.0, seed=1)
    _run(runs / "s2", 54.0, seed=2)
    _run(runs / "s3", None, seed=3)  # unfinished: skipped
    out = tmp_path / "report"
    assert main(["report", str(runs), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "| CoOp M=16 end | 2 | 52.00 ± 2.00 |" in captured.out  # mean 52, population std 2
    assert "Skipped: 1 unfinished" in captured.out
    assert "results.md" in captured.err and "wrote" not in captured.out
    assert {p.name for p in out.iterdir()} >= {"results.md", "results.csv", "results.json", "fewshot_curves.png"}
    assert not (runs / "results.md").exists()


def test_report_defaults_out_to_runs_dir(tmp_path, capsys):
    _run(tmp_path / "a", 61.0)
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "results.md").read_text().count("61.00") == 1
    assert json.loads((tmp_path / "results.json").read_text())["num_runs"] == 1


def test_report_errors_are_one_line_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "vlprompt report: error:" in err and "does not exist" in err and "Traceback" not in err

    _run(tmp_path / "only_unfinished", None)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no finished runs" in err and "1 unfinished" in err
