"""Whether a config may continue the checkpoints of a workdir, and the record of each run.

``WORKDIR/config.json`` describes every checkpoint of the workdir (``analyze``,
``export`` and ``evaluate`` rebuild the models from it), so a rerun that would change
what a checkpoint means is refused before anything in the workdir is written:
:data:`MEANING` lists, per stage, the fields that change it (models, widths, T, the
neuron, the method, the dataset, the teacher). Other changes (more epochs, another
learning rate, the logging cadence) are legitimate: they are accepted and recorded, one
JSON line per run in ``WORKDIR/history.jsonl`` with the fields that changed and the
fingerprint of the teacher the student is trained against.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import ml_collections

from sastc_jax.checkpoints.integrity import CHECKSUMS
from sastc_jax.checkpoints.runs import CONFIG

HISTORY = "history.jsonl"
# Per stage directory of the workdir: the config fields that change what its checkpoints
# hold (their shapes, their inputs, the function they compute, the teacher they follow).
_DATA = ("dataset.name", "dataset.image_size")
_TEACHER = ("teacher.model", "teacher.model_kwargs")
MEANING = {
    "teacher": (*_DATA, *_TEACHER),
    "student": (
        *_DATA,
        *_TEACHER,
        "teacher.checkpoint",
        "method",
        "student.model",
        "student.model_kwargs",
        "time_steps",
        "neuron",
        "calibration.embed_dim",
        "loss.learn_attention_scale",
    ),
}
# Fields whose switching on or off (0 <-> > 0) changes the optimiser state's structure.
SWITCHES = {
    "teacher": ("teacher.optimizer.clip_grad_norm",),
    "student": ("student.optimizer.clip_grad_norm",),
}
_STAGE_CHECKPOINT_DIRS = {"teacher": ("latest", "best", "final"), "student": ("latest", "best")}


class ResumeMismatchError(ValueError):
    """The config changes what a workdir's checkpoints mean; the message names the field."""


def _has_steps(directory: Path) -> bool:
    """Whether ``directory`` holds a committed orbax step (a directory named by a number)."""
    return directory.is_dir() and any(
        entry.name.isdigit() and entry.is_dir() for entry in directory.iterdir()
    )


def stages_with_checkpoints(workdir: Path) -> list[str]:
    """The stages (``'teacher'``, ``'student'``) with a saved checkpoint in ``workdir``."""
    return [
        stage
        for stage, kinds in _STAGE_CHECKPOINT_DIRS.items()
        if any(_has_steps(workdir / stage / kind) for kind in kinds)
    ]


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{'a.b': leaf}`` of a nested dict; a dict field that is empty stays a leaf."""
    if isinstance(tree, dict) and tree:
        flat = {}
        for key, value in tree.items():
            flat |= _flatten(value, f"{prefix}{key}.")
        return flat
    return {prefix.removesuffix("."): tree}


def _under(field: str, prefixes: tuple[str, ...]) -> bool:
    return any(field == prefix or field.startswith(prefix + ".") for prefix in prefixes)


def config_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config's leaves as JSON values (lists for tuples), keyed by dotted field name."""
    return _flatten(json.loads(config.to_json_best_effort()))


def stored_fields(workdir: Path) -> dict[str, Any] | None:
    """The leaves of ``workdir/config.json`` as :func:`config_fields`; None without one.
    Raises ResumeMismatchError when it cannot be read."""
    path = workdir / CONFIG
    if not path.is_file():
        return None
    try:
        return _flatten(json.loads(path.read_text()))
    except (OSError, ValueError) as error:
        raise ResumeMismatchError(
            f"{path} cannot be read ({error}), so the checkpoints beside it cannot be checked "
            "against this config. Restore the file from the command that trained the run, "
            "or use another --workdir."
        ) from error


def teacher_fingerprint(path: Path) -> str | None:
    """SHA-256 of a teacher: of its checksum manifests (an orbax teacher directory) or of
    the file (a PyTorch / safetensors file); None when there is no teacher there."""
    digest = hashlib.sha256()
    if path.is_file():
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    manifests = sorted(path.glob(f"*/{CHECKSUMS}")) if path.is_dir() else []
    if not manifests:
        return None
    for manifest in manifests:
        digest.update(manifest.read_bytes())
    return digest.hexdigest()


def last_record(workdir: Path) -> dict[str, Any]:
    """The newest record of ``workdir/history.jsonl``; ``{}`` when there is none."""
    path = workdir / HISTORY
    if not path.is_file():
        return {}
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    try:
        return json.loads(lines[-1]) if lines else {}
    except ValueError:
        return {}  # a line cut short by a kill: no fingerprint to compare against


def check_resume(
    config: ml_collections.ConfigDict, workdir: Path, teacher_dir: Path
) -> dict[str, Any]:
    """Refuse ``config`` when it changes what a checkpoint in ``workdir`` means; else
    return the run's record for :func:`record_run`.

    Reads only. Raises :class:`ResumeMismatchError` naming the first field of
    :data:`MEANING` (for each stage with a checkpoint) whose value differs from
    ``workdir/config.json``, or of :data:`SWITCHES` switched on or off, or, when the
    student has checkpoints, a teacher at ``teacher_dir`` whose fingerprint differs from
    the one recorded. The record holds the stages resumed, every other changed field
    (``{field: [stored, new]}``) and the teacher fingerprint."""
    resumed = stages_with_checkpoints(workdir)
    stored = stored_fields(workdir) if resumed else None
    new = config_fields(config)
    changed = {}
    if stored is not None:
        for field in sorted(set(stored) | set(new)):
            if field not in stored or field not in new or stored[field] == new[field]:
                continue  # a field this version does not know is not compared
            refused = [
                stage
                for stage in resumed
                if _under(field, MEANING[stage])
                or (field in SWITCHES[stage] and bool(stored[field]) != bool(new[field]))
            ]
            if refused:
                raise ResumeMismatchError(
                    f"config.{field} = {new[field]!r}, but the {refused[0]} checkpoints in "
                    f"{workdir / refused[0]} were trained with {stored[field]!r} (as "
                    f"{workdir / CONFIG} records). Resume with config.{field}="
                    f"{stored[field]!r}, or use another --workdir for the new setting."
                )
            changed[field] = [stored[field], new[field]]
    fingerprint = teacher_fingerprint(teacher_dir) if config.method != "ce" else None
    recorded = last_record(workdir).get("teacher_sha256")
    if "student" in resumed and fingerprint and recorded and fingerprint != recorded:
        raise ResumeMismatchError(
            f"the teacher at {teacher_dir} is not the one the student checkpoints in "
            f"{workdir / 'student'} were distilled from (its SHA-256 {fingerprint[:12]}... "
            f"differs from the recorded {recorded[:12]}..., {workdir / HISTORY}). Put that "
            "teacher back, or use another --workdir to distil from this one."
        )
    return {"resumed": resumed, "changed": changed, "teacher_sha256": fingerprint or recorded}


def record_run(workdir: Path, record: dict[str, Any]) -> None:
    """Append ``record`` (from :func:`check_resume`) with the time to ``workdir/history.jsonl``."""
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    line = json.dumps({"started": started, **record}) + "\n"
    with (workdir / HISTORY).open("a") as stream:
        stream.write(line)
        stream.flush()
        os.fsync(stream.fileno())
