"""Figures: curves from a metrics file and attention heat maps are written as PNG."""

import json

import numpy as np
import pytest

from sastc_jax import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plot_run_writes_curves(tmp_path):
    records = [
        {"stage": "teacher", "split": "train", "step": 1, "loss": 2.0, "ce": 2.0},
        {"stage": "teacher", "split": "test", "step": 2, "accuracy": 0.5, "accuracy_per_t": [0.5]},
        {
            "stage": "student",
            "split": "train",
            "step": 1,
            "loss": 9.0,
            "ce": 2.1,
            "kd": 0.4,
            "calibration": 0.08,
        },
        {
            "stage": "student",
            "split": "test",
            "step": 2,
            "accuracy": 0.4,
            "accuracy_per_t": [0.3, 0.4],
        },
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    output = plots.plot_run(tmp_path)
    assert output == tmp_path / "curves.png"
    assert output.read_bytes()[:8] == PNG_MAGIC


def test_plot_run_without_metrics_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"metrics\.jsonl"):
        plots.plot_run(tmp_path)


def test_plot_attention(tmp_path):
    attention = np.random.default_rng(0).dirichlet(np.ones(3), size=(2, 4, 3))
    output = plots.plot_attention(attention, tmp_path / "attention.png")
    assert output.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match=r"\(T, B, S, K\)"):
        plots.plot_attention(attention[0], tmp_path / "bad.png")


def test_plot_attention_panels_marks_planted_pairs(tmp_path):
    rng = np.random.default_rng(0)
    panels = {
        "sastc": rng.dirichlet(np.ones(3), size=(2, 4, 3)),
        "spatial": rng.dirichlet(np.ones(3), size=(1, 4, 3)),
    }
    output = plots.plot_attention_panels(panels, tmp_path / "panels.png", ((1, 2, 0), (2, 0, 0)))
    assert output.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match=r"'bad' must be \(T, B, S, K\)"):
        plots.plot_attention_panels({"bad": panels["sastc"][0]}, tmp_path / "bad.png")
