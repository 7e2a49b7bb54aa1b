"""The hard proxy: families calibrated on validation images only, every model judged on its
proxy under them, with the stored and a shift-aware threshold."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from bench.hard_proxy import (
    FAMILIES,
    NEUTRAL,
    cache_path,
    get_args_parser,
    main,
    parse_families,
    setting,
)
from ml import metrics
from ml.data import write_manifest
from tests.conftest import make_checkpoint
from tests.synthetic import write_dataset

pytestmark = pytest.mark.slow  # trains, or starts a process (not in make test-unit)

SIZE = 64


@pytest.fixture()
def run(tmp_path: Path) -> Path:
    """A checkpoint beside its validation and proxy manifests, as ml.train leaves them."""
    checkpoint = make_checkpoint(tmp_path / "model.pt", input_size=SIZE, threshold=0.64)
    write_manifest(checkpoint.with_suffix(".val.csv"), write_dataset(tmp_path / "v", 4, size=SIZE))
    write_manifest(
        checkpoint.with_suffix(".test.csv"), write_dataset(tmp_path / "t", 4, size=SIZE, seed=5)
    )
    return checkpoint


def _args(run: Path, *more: str):
    argv = ["--calibrate", str(run), "--judge", str(run), "--out", str(run.parent / "out")]
    return get_args_parser().parse_args([*argv, *more])


def test_the_mildest_hard_enough_setting_is_chosen_on_validation_only(run: Path):
    # Any AUC is <= 1.0: the mildest setting of every family is already "as hard".
    args = _args(run, "--target-auc", "1.0")
    table = main(args)
    scores = sorted(p.name for p in (args.out / "scores").iterdir())
    proxy = [s for s in scores if ".proxy." in s]
    assert len(proxy) == 1 + len(FAMILIES)  # the proxy: only judged, once per family
    for family, (_, values) in FAMILIES.items():
        assert f"| {family} | " in table
        assert cache_path(args.out, run, "val", setting(family, values[0])).is_file()
        assert not cache_path(args.out, run, "val", setting(family, values[1])).is_file()
    rows = [line for line in table.splitlines() if line.startswith("| model.pt |")]
    rows = [line for line in rows if " of " not in line]  # the rules table comes last
    assert len(rows) == 1 + len(FAMILIES) + 1  # unshifted, each family, the mean

    # The shift-aware threshold: the sensitivity rule on the validation images of every
    # calibrated family, pooled; the proxy's figures at it come from the proxy scores.
    val = [
        np.load(cache_path(args.out, run, "val", setting(f, v[0])))
        for f, (_, v) in FAMILIES.items()
    ]
    aware = metrics.choose_threshold(
        np.concatenate([d["y"] for d in val]), np.concatenate([d["p"] for d in val])
    )
    assert f"({aware:.3f})" in rows[1]
    proxy_none = np.load(cache_path(args.out, run, "proxy", NEUTRAL))
    sens, spec = metrics.sensitivity_specificity(proxy_none["y"], proxy_none["p"], aware)
    assert f"{sens:.3f} / {spec:.3f} ({aware:.3f})" in rows[0]

    # Every rule for a threshold that travels, judged on the shifted proxy families.
    rules = [line for line in table.splitlines() if line.startswith("| model.pt | ")]
    rules = [line for line in rules if line.endswith(f" of {len(FAMILIES)} |")]
    assert len(rules) == 4
    assert f"| {aware:.3f} |" in next(
        line for line in rules if "sensitivity >= 0.95, shifted" in line
    )

    before = {p: p.stat().st_mtime_ns for p in (args.out / "scores").iterdir()}
    assert main(args) == table  # a second run reads its scores back
    assert {p: p.stat().st_mtime_ns for p in (args.out / "scores").iterdir()} == before


def test_a_family_never_as_hard_as_the_target_is_left_out(run: Path):
    args = _args(run, "--target-auc", "-1", "--target-specificity", "-1")
    table = main(args)
    assert "| tighter collimation | crop 0.6 |" in table  # every severity tried
    assert table.count("| no |") == sum(len(v) for _, v in FAMILIES.values())
    rows = [line for line in table.splitlines() if line.startswith("| model.pt |")]
    assert len(rows) == 1 and "| none |" in rows[0]  # judged unshifted only


def test_an_earlier_calibration_is_reused_without_its_checkpoint(run: Path):
    argv = ["--judge", str(run), "--out", str(run.parent / "out")]
    args = get_args_parser().parse_args([*argv, "--families", "noise=12,JPEG=8"])
    table = main(args)
    assert "Calibration on" not in table  # nothing calibrated
    val = {p for p in (args.out / "scores").iterdir() if ".val." in p.name}
    assert val == {
        cache_path(args.out, run, "val", setting(f, v)) for f, v in [("noise", 12), ("JPEG", 8)]
    }
    rows = [line for line in table.splitlines() if line.startswith("| model.pt |")]
    assert [r.split(" | ")[1] for r in rows[:3]] == ["none", "noise", "JPEG"]

    for bad, why in [("nois=12", "unknown family 'nois'"), ("noise=13", "not one of its"),
                     ("noise=x", "is not a number")]:  # fmt: skip
        with pytest.raises(argparse.ArgumentTypeError, match=why):
            parse_families(bad)
    with pytest.raises(SystemExit):  # one or the other, not both
        get_args_parser().parse_args([*argv, "--families", "noise=12", "--calibrate", str(run)])
