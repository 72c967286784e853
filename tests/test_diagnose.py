"""The calibration diagnosis of a trained run: loss shares, pair errors, attention moved."""

import json

import numpy as np
import pytest
from test_compare import tiny_config
from test_data_static import write_fashion_dir

from sastc_jax import compare, diagnose


@pytest.mark.slow  # trains a tiny teacher and student (about a minute on 2 cores)
def test_diagnosis_of_a_tiny_sastc_run(tmp_path):
    (tmp_path / "data").mkdir()
    write_fashion_dir(tmp_path / "data", n_train=80, n_test=20)
    config = tiny_config(tmp_path / "data")
    config.compare.rows = ("sastc",)
    config.compare.paired = ()
    workdir = tmp_path / "compare"
    compare.run(config, workdir, analyse=False)
    run_dir = workdir / "runs" / "sastc_seed0"

    result = diagnose.diagnose_run(run_dir)

    assert result["split"] == "validation" and result["beta"] == config.loss.beta
    shares = result["loss_shares"]
    assert [entry["step"] for entry in shares] == [1, 2, 3]
    for entry in shares:  # the three weighted parts are the whole logged loss
        parts = entry["ce_share"] + entry["kd_share"] + entry["calibration_share"]
        assert parts == pytest.approx(1.0, abs=1e-5) and abs(entry["unexplained"]) < 1e-5
    for name in ("initial", "trained"):
        state = result[name]
        attention = np.asarray(state["attention"])  # (T, S, K)
        assert attention.shape == (config.time_steps, 3, 3)
        np.testing.assert_allclose(attention.sum(-1), 1.0, rtol=1e-5)
        errors = np.asarray(state["pair_errors"])
        assert errors.shape == (3, 3) and (errors > 0).all()
        entropy = np.asarray(state["entropy_per_student_tap"])
        assert ((entropy > 0) & (entropy <= result["max_entropy"] + 1e-6)).all()
        assert state["weighted_error"] > 0
    moved = np.abs(np.asarray(result["trained"]["attention"]) - result["initial"]["attention"])
    assert result["attention_change"] == pytest.approx(float(moved.mean()), rel=1e-5)
    assert json.loads((run_dir / diagnose.DIAGNOSIS).read_text())["method"] == "sastc"
    assert "Attention moved by" in (run_dir / "diagnosis.md").read_text()


def test_a_run_without_calibration_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"method": "kd"}))
    with pytest.raises(ValueError, match=r"trained method 'kd', which has no calibration"):
        diagnose.diagnose_run(tmp_path)
