"""metrics.jsonl records mirrored as TensorBoard scalars, and the run without tensorboardX."""

import sys

import pytest
from event_files import read_scalars

from sastc_jax import metrics

TRAIN = {
    "stage": "student",
    "split": "train",
    "step": 1,
    "epoch": 0,
    "images_per_second": 250.0,
    "ce": 2.5,
    "kd": 0.25,
    "calibration": 0.5,
    "loss": 52.75,
    "learning_rate": 0.1,
}
TEST = {
    "stage": "student",
    "split": "test",
    "step": 2,
    "epoch": 1,
    "accuracy": 0.75,
    "accuracy_per_t": [0.5, 0.75],
    "loss": 1.25,
    "count": 24,
    "firing_rate": 0.125,
}


def test_scalars_name_stage_split_and_time_step():
    assert metrics.scalars(TEST) == {
        "student/test/accuracy": 0.75,
        "student/test/accuracy_t1": 0.5,
        "student/test/accuracy_t2": 0.75,
        "student/test/loss": 1.25,
        "student/test/firing_rate": 0.125,
    }


def test_records_are_written_as_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboardX")
    logger = metrics.MetricsLogger(tmp_path, tensorboard=True)
    logger.write(TRAIN)
    logger.write(TEST)
    logger.write({"stage": "student", "split": "summary", "step": 2, "seconds": 3.0})
    logger.close()
    scalars = read_scalars(tmp_path / metrics.TENSORBOARD_DIR)
    assert scalars["student/train/ce"] == [(1, 2.5)]
    assert scalars["student/train/learning_rate"] == [(1, pytest.approx(0.1))]
    assert scalars["student/test/accuracy_t2"] == [(2, 0.75)]
    assert not any("summary" in tag for tag in scalars)
    assert len(metrics.read_metrics(tmp_path)) == 3  # metrics.jsonl as before


def test_without_tensorboardx_one_line_and_no_event_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails
    logger = metrics.MetricsLogger(tmp_path, tensorboard=True)
    logger.write(TRAIN)
    logger.close()
    assert "tensorboardX is not installed: no TensorBoard event files" in capsys.readouterr().err
    assert not (tmp_path / metrics.TENSORBOARD_DIR).exists()
    assert metrics.read_metrics(tmp_path) == [TRAIN]


def test_processes_other_than_0_write_no_event_files(tmp_path):
    logger = metrics.MetricsLogger(tmp_path, enabled=False, tensorboard=True)
    logger.write(TRAIN)
    logger.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "rate, shown", [(1549.6, "1550"), (100.2, "100"), (12.34, "12.3"), (0.512, "0.512")]
)
def test_progress_bar_rate_never_rounds_a_slow_run_to_zero(rate, shown):
    assert metrics.format_rate(rate) == shown
