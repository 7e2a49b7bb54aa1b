"""The recipe benchmark: trains each recipe and seed once, scores the proxy, prints a table."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.recipes import get_args_parser, main
from ml.checkpoint import read_meta
from tests.synthetic import write_dataset

pytestmark = pytest.mark.slow  # trains, or starts a process (not in make test-unit)


def test_it_trains_each_run_once_and_tables_the_proxy_figures(tmp_path: Path):
    write_dataset(tmp_path / "data", 16, size=48, seed=2)
    write_dataset(tmp_path / "full", 3, size=64, seed=9)
    argv = [
        "--data", str(tmp_path / "data"), "--full-resolution", str(tmp_path / "full"),
        "--out", str(tmp_path / "out"), "--seeds", "0", "--recipes", "robust,fastai",
        "--train-args", "--img-size 32 --freeze-epochs 0 --epochs 1 --batch-size 8 --lr 1e-3 "
        "--threads 2",
    ]  # fmt: skip
    table = main(get_args_parser().parse_args(argv))

    rows = [line for line in table.splitlines() if line.startswith("| robust | 0 |")]
    rows += [line for line in table.splitlines() if line.startswith("| fastai | 0 |")]
    assert len(rows) == 2 and all(line.count("|") == 13 for line in rows)
    checkpoint = tmp_path / "out" / "robust-s0.pt"
    for suffix in (".pt", ".test.csv", ".val.csv", ".scores.npz", ".cams.json", ".log"):
        assert checkpoint.with_suffix(suffix).is_file(), suffix
    # The proxy is the acquisition split ml.train carved: the most recent patients.
    assert read_meta(checkpoint).train_args["test_split"] == "acquisition"
    before = checkpoint.stat().st_mtime_ns
    again = main(get_args_parser().parse_args([*argv, "--report-only"]))
    assert checkpoint.stat().st_mtime_ns == before  # not trained again
    assert [line for line in again.splitlines() if line.startswith("| robust | 0 |")] == rows[:1]
