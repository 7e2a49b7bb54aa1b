from __future__ import annotations

from pathlib import Path

import torch

from ml.bench import bench_model, bench_preprocessing, format_rows, get_args_parser, main
from tests.synthetic import make_xray


def test_it_skips_what_it_cannot_measure(tmp_path: Path):
    (row,) = bench_model("no_such_net", img_size=32, batch_sizes=(1,))
    assert row[0] == "no_such_net" and row[2].startswith("skipped: not in ml.models")
    (row,) = bench_preprocessing(tmp_path / "absent", img_size=32, repeats=1)
    assert "skipped" in row[2] and "absent" in row[2]


def test_it_times_preprocessing_with_and_without_draft(tmp_path: Path):
    for i in range(2):
        make_xray("NORMAL", seed=i, size=400).save(tmp_path / f"IM-000{i}-0001.jpeg")
    rows = bench_preprocessing(tmp_path, img_size=64, repeats=1)
    assert [setting for _, setting, _ in rows] == ["with draft()", "without draft()"]
    assert all(figure.endswith("ms/img") and float(figure.split()[0]) > 0 for *_, figure in rows)
    assert rows[0][0] == "preprocessing (2 JPEGs, ~400 px)"


def test_it_prints_one_table(tmp_path: Path, capsys):
    # The test process's own thread count, so the bench's set_num_threads changes nothing.
    args = get_args_parser().parse_args(
        [
            "--archs",
            "no_such_net",
            "--images",
            str(tmp_path / "absent"),
            "--threads",
            str(torch.get_num_threads()),
        ]
    )
    rows = main(args)
    out = capsys.readouterr().out
    assert format_rows(rows) in out
    assert out.splitlines()[1].split() == ["what", "setting", "figure"]
    assert len(rows) == 2 and all("skipped" in figure for *_, figure in rows)


def test_it_documents_every_flag():
    assert [a.dest for a in get_args_parser()._actions if not a.help] == []
