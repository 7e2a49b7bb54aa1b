"""bench.load's reading of the worker's log: where a drain's time went."""

from __future__ import annotations

from datetime import datetime

import pytest

from bench.load import drain_breakdown

LOG = """\
[2026-12-07 01:24:33,900: INFO/ForkPoolWorker-1] Batch of 16 (onnx-fp32): claim 9 ms, load 1 ms, read 0 ms, predict 90 ms, record 7 ms
[2026-12-07 01:24:34,000: INFO/MainProcess] Task diagnosis.tasks.predict[1] received
[2026-12-07 01:24:34,100: INFO/ForkPoolWorker-1] Batch of 16 (onnx-fp32): claim 10 ms, load 0 ms, read 2 ms, predict 120 ms, record 8 ms
[2026-12-07 01:24:34,300: INFO/ForkPoolWorker-1] Batch of 32 (onnx-fp32): claim 14 ms, load 0 ms, read 4 ms, predict 160 ms, record 12 ms
[2026-12-07 01:24:34,500: INFO/ForkPoolWorker-1] Batch of 8 (onnx-fp32): claim 6 ms, load 0 ms, read 0 ms, predict 50 ms, record 4 ms
"""  # noqa: E501


def at(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").astimezone()


def test_it_reads_the_batches_logged_since_the_release():
    spent = drain_breakdown(LOG, at("2026-12-07 01:24:33,950"))  # the first line is before
    assert spent["batches"] == 3 and spent["mean_size"] == pytest.approx(56 / 3)
    assert spent["ms"] == pytest.approx(
        {"claim": 10.0, "read": 2.0, "predict": 110.0, "record": 8.0}
    )
    # 330 ms of predicting in the 550 ms from the release to the last batch's line.
    assert spent["predict_share"] == pytest.approx(0.330 / 0.550)


def test_no_batch_since_the_release_gives_nothing():
    assert drain_breakdown(LOG, at("2026-12-07 01:24:35,000")) is None
    assert drain_breakdown("", at("2026-12-07 01:24:33,000")) is None
