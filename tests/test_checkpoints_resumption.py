"""Which config changes a workdir's checkpoints refuse, and what a run records."""

import json
import re

import pytest

from sastc_jax import configuration
from sastc_jax.checkpoints import resumption


def workdir_with(tmp_path, config, stages):
    """A workdir whose config.json is ``config`` and whose ``stages`` have a step saved."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(config.to_json_best_effort(indent=2))
    for stage in stages:
        (tmp_path / stage / "latest" / "2").mkdir(parents=True)
    return tmp_path


def test_a_fresh_workdir_accepts_anything(tmp_path):
    record = resumption.check_resume(configuration.base_config(), tmp_path, tmp_path / "t")
    assert record == {"resumed": [], "changed": {}, "teacher_sha256": None}


@pytest.mark.parametrize(
    ("field", "value", "stages"),
    [
        ("method", "kd", ["student"]),
        ("time_steps", 4, ["student"]),
        ("neuron.tau", 0.25, ["student"]),
        ("teacher.model", "vgg11_ann", ["teacher"]),
        ("student.optimizer.clip_grad_norm", 1.0, ["student"]),
    ],
)
def test_a_change_of_meaning_is_refused_naming_the_field(tmp_path, field, value, stages):
    stored = configuration.base_config()
    workdir = workdir_with(tmp_path, stored, stages)
    changed = configuration.base_config()
    section, _, name = field.rpartition(".")
    (changed[section] if section else changed)[name] = value
    with pytest.raises(resumption.ResumeMismatchError, match=re.escape(f"config.{field} = ")):
        resumption.check_resume(changed, workdir, tmp_path / "teacher")


def test_a_student_change_is_free_while_only_the_teacher_has_checkpoints(tmp_path):
    workdir = workdir_with(tmp_path, configuration.base_config(), ["teacher"])
    changed = configuration.base_config()
    changed.method = "kd"
    changed.student.optimizer.epochs = 300
    record = resumption.check_resume(changed, workdir, tmp_path / "teacher")
    assert record["resumed"] == ["teacher"]
    assert record["changed"] == {"method": ["sastc", "kd"], "student.optimizer.epochs": [240, 300]}


def test_another_teacher_file_is_refused_once_recorded(tmp_path):
    config = configuration.base_config()
    teacher = tmp_path / "teacher.safetensors"
    teacher.write_bytes(b"first teacher")
    workdir = workdir_with(tmp_path / "run", config, ["student"])
    record = resumption.check_resume(config, workdir, teacher)
    resumption.record_run(workdir, record)
    assert (
        json.loads((workdir / "history.jsonl").read_text())["teacher_sha256"]
        == (record["teacher_sha256"])
    )
    teacher.write_bytes(b"another teacher")
    with pytest.raises(resumption.ResumeMismatchError, match="not the one the student"):
        resumption.check_resume(config, workdir, teacher)


def test_an_unreadable_config_json_is_named(tmp_path):
    workdir = workdir_with(tmp_path, configuration.base_config(), ["student"])
    (workdir / "config.json").write_text("{cut short")
    with pytest.raises(resumption.ResumeMismatchError, match=r"config\.json cannot be read"):
        resumption.check_resume(configuration.base_config(), workdir, tmp_path / "t")
