"""Orbax-backed stage and teacher checkpoints (sastc_jax.checkpoints)."""

import gc
import inspect
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from faults import array_files, fill_disk_at_step, flip_byte, truncate
from flax import struct
from processes import environment, free_port

from sastc_jax.checkpoints import (
    CHECKSUMS,
    CheckpointError,
    Checkpoints,
    CorruptCheckpointError,
    TeacherMismatchError,
    load_stage_state,
    restore_teacher,
    save_teacher,
    teacher_exists,
    verify_checksums,
    verify_workdir,
)
from sastc_jax.cli import checkpoints as checkpoints_cli
from sastc_jax.cli import flags as cli_flags

JsonCheckpointHandler = ocp.handlers.JsonCheckpointHandler

# A failed orbax restore abandons read coroutines / event-loop callbacks that are reported
# when garbage-collected: harmless, and expected in the failure tests here. Collecting after
# each test keeps those reports inside this module, where this filter applies.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(autouse=True)
def _collect_abandoned_coroutines():
    yield
    gc.collect()


TX = optax.sgd(0.1, momentum=0.9)


@struct.dataclass
class TrainState:
    step: jax.Array
    params: dict
    batch_stats: dict
    opt_state: optax.OptState


def make_params(seed: int, features: int = 2, extra: bool = False) -> dict:
    params = {
        "dense": {
            "kernel": jax.random.normal(jax.random.key(seed), (3, features)),
            "bias": jnp.arange(features, dtype=jnp.bfloat16) + seed,
        }
    }
    if extra:
        params["head"] = jnp.ones((features,))
    return params


def make_state(seed: int = 0, step: int = 0, **param_kwargs) -> TrainState:
    """A train state whose momentum is non-zero (one SGD update applied)."""
    params = make_params(seed, **param_kwargs)
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = TX.update(grads, TX.init(params), params)
    features = params["dense"]["bias"].shape[0]
    return TrainState(
        step=jnp.asarray(step, jnp.int32),
        params=params,
        batch_stats={"bn": {"mean": jnp.full((features,), float(seed))}},
        opt_state=opt_state,
    )


def assert_same_tree(actual, expected) -> None:
    """Same pytree structure (dataclass, optax NamedTuples included), dtypes and values."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert a.dtype == e.dtype
        assert a.shape == e.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def step_dirs(path: Path) -> list[int]:
    return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit())


def test_round_trip_of_state_and_metadata(tmp_path):
    state = make_state(seed=1, step=7)
    metadata = {
        "epoch": 3,
        "config": {"lr": 0.1, "widths": (1, 2)},
        "model": "m",
        "x": np.float32(2),
    }
    with Checkpoints(tmp_path) as ckpts:
        assert ckpts.save(7, state, metadata=metadata)
    with Checkpoints(tmp_path) as ckpts:
        assert ckpts.latest_step() == 7
        restored, restored_metadata = ckpts.restore(make_state(seed=2))
        assert_same_tree(restored, state)
        assert restored_metadata == {
            "epoch": 3,
            "config": {"lr": 0.1, "widths": [1, 2]},
            "model": "m",
            "x": 2.0,
        }
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
        )
        from_abstract, _ = ckpts.restore(abstract, step=7)
        assert_same_tree(from_abstract, state)
        assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(from_abstract))


def test_load_stage_state_reads_latest_and_best_without_a_target(tmp_path):
    with pytest.raises(CheckpointError, match=r"no latest checkpoint in .*nothing/latest"):
        load_stage_state(tmp_path / "nothing")
    with Checkpoints(tmp_path) as ckpts:
        ckpts.save(1, make_state(seed=1, step=1), metadata={"step": 1}, metrics={"accuracy": 0.9})
        ckpts.save(2, make_state(seed=2, step=2), metadata={"step": 2}, metrics={"accuracy": 0.1})
    listing = sorted(p.name for p in tmp_path.rglob("*"))
    latest, metadata = load_stage_state(tmp_path)
    assert metadata == {"step": 2} and int(latest["step"]) == 2
    assert set(latest) == {"step", "params", "batch_stats", "opt_state"}
    np.testing.assert_array_equal(
        latest["params"]["dense"]["kernel"], make_params(2)["dense"]["kernel"]
    )
    best, metadata = load_stage_state(tmp_path, which="best")
    assert metadata == {"step": 1} and int(best["step"]) == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == listing  # reads only
    with pytest.raises(ValueError, match="which must be one of"):
        load_stage_state(tmp_path, which="final")


def test_save_returns_before_writing_yet_the_state_may_be_donated(tmp_path):
    state = make_state(seed=3, step=1)
    expected = jax.device_get(state)
    with Checkpoints(tmp_path) as ckpts:
        ckpts.save(1, state, metadata={})
        for leaf in jax.tree.leaves(state):
            leaf.delete()  # as a jitted step with donate_argnums would
        restored, _ = ckpts.restore(make_state())
    assert_same_tree(restored, jax.tree.map(jnp.asarray, expected))


def test_keeps_last_n_and_the_best_separately(tmp_path):
    accuracies = {1: 0.3, 2: 0.9, 3: 0.5, 4: 0.95, 5: 0.6, 6: 0.4}
    with Checkpoints(tmp_path, max_to_keep=2) as ckpts:
        for step, accuracy in accuracies.items():
            metrics = {"accuracy": np.float32(accuracy), "loss": 1.0 - accuracy}
            ckpts.save(step, make_state(step=step), metadata={"epoch": step}, metrics=metrics)
            if step == 3:
                assert ckpts.best()[0] == 2
    assert step_dirs(tmp_path / "latest") == [5, 6]
    assert step_dirs(tmp_path / "best") == [4]
    with Checkpoints(tmp_path, max_to_keep=2) as ckpts:
        best_step, best_metrics = ckpts.best()
        assert best_step == 4
        assert best_metrics["accuracy"] == pytest.approx(0.95)
        assert best_metrics["loss"] == pytest.approx(0.05)
        state, metadata = ckpts.restore_best(make_state())
        assert int(state.step) == 4 and metadata == {"epoch": 4}
        state, _ = ckpts.restore(make_state())
        assert int(state.step) == 6
        with pytest.raises(CheckpointError, match=r"step 3 .*\[5, 6\]"):
            ckpts.restore(make_state(), step=3)


def test_second_save_at_a_step_is_skipped_unless_forced(tmp_path):
    first, second = make_state(seed=1, step=1), make_state(seed=2, step=1)
    with Checkpoints(tmp_path) as ckpts:
        assert ckpts.save(1, first, metadata={"n": 1})
        assert not ckpts.save(1, second, metadata={"n": 2})
        state, metadata = ckpts.restore(make_state())
        assert_same_tree(state, first)
        assert metadata == {"n": 1}
        assert ckpts.save(1, second, metadata={"n": 2}, force=True)
        state, metadata = ckpts.restore(make_state())
        assert_same_tree(state, second)
        assert metadata == {"n": 2}
        # the same step may still become the best once its eval metrics are known
        assert ckpts.save(1, second, metadata={"n": 2}, metrics={"accuracy": 0.5})
        assert ckpts.best() == (1, {"accuracy": 0.5})


def test_empty_directory(tmp_path):
    with Checkpoints(tmp_path / "run") as ckpts:
        assert ckpts.latest_step() is None
        assert ckpts.best() is None
        with pytest.raises(CheckpointError, match=str(tmp_path / "run" / "latest")):
            ckpts.restore(make_state())
        with pytest.raises(CheckpointError, match=str(tmp_path / "run" / "best")):
            ckpts.restore_best(make_state())


def test_uncommitted_save_is_ignored(tmp_path):
    with Checkpoints(tmp_path) as ckpts:
        ckpts.save(1, make_state(seed=1, step=1), metadata={})
        ckpts.save(2, make_state(seed=2, step=2), metadata={})
    # a save interrupted before orbax's final rename
    os.rename(tmp_path / "latest" / "2", tmp_path / "latest" / "2.orbax-checkpoint-tmp-1700000000")
    with Checkpoints(tmp_path) as ckpts:
        assert ckpts.latest_step() == 1
        state, _ = ckpts.restore(make_state())
        assert_same_tree(state, make_state(seed=1, step=1))


def _truncate_array_data(step_dir: Path) -> None:
    data_files = [
        p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"
    ]
    assert data_files
    for path in data_files:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


CORRUPTIONS = {
    "array data truncated": _truncate_array_data,
    "tree metadata deleted": lambda step_dir: (step_dir / "state" / "_METADATA").unlink(),
    "json metadata deleted": lambda step_dir: (step_dir / "metadata" / "metadata").unlink(),
    "state item deleted": lambda step_dir: shutil.rmtree(step_dir / "state"),
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_partial_checkpoint_raises_checkpoint_error(tmp_path, corrupt):
    with Checkpoints(tmp_path) as ckpts:
        ckpts.save(1, make_state(step=1), metadata={})
        ckpts.save(2, make_state(step=2), metadata={})
    corrupt(tmp_path / "latest" / "2")
    with Checkpoints(tmp_path) as ckpts:
        with pytest.raises(CheckpointError) as info:
            ckpts.restore(make_state())
        message = str(info.value)
        assert str(tmp_path / "latest" / "2") in message and "step 2" in message
        assert "delete" in message
        state, _ = ckpts.restore(make_state(), step=1)  # older steps stay usable
        assert int(state.step) == 1


MISMATCHES = {
    "extra leaf": (make_state(extra=True), "head: in the target"),
    "missing leaf": (
        make_state().replace(batch_stats={}),
        "batch_stats/bn/mean: in the checkpoint",
    ),
    "other shape": (make_state(features=4), r"params/dense/kernel: shape \(3, 2\) stored"),
    "other optimizer": (
        make_state().replace(opt_state=optax.adam(1e-3).init(make_params(0))),
        "in the target, not in the checkpoint",
    ),
}


@pytest.mark.parametrize(("target", "detail"), MISMATCHES.values(), ids=MISMATCHES.keys())
def test_structure_mismatch_raises_checkpoint_error(tmp_path, target, detail):
    with Checkpoints(tmp_path) as ckpts:
        ckpts.save(1, make_state(step=1), metadata={})
        with pytest.raises(CheckpointError, match=detail) as info:
            ckpts.restore(target)
    assert str(tmp_path / "latest" / "1") in str(info.value)


def test_teacher_round_trip_and_replacement(tmp_path):
    directory = tmp_path / "teacher"
    variables = {"params": make_params(4), "batch_stats": {"bn": {"var": jnp.ones(2)}}}
    assert not teacher_exists(directory)
    save_teacher(directory, variables, model="resnet19_ann", num_classes=10, dataset="cifar10")
    assert teacher_exists(directory)
    loaded, record = restore_teacher(directory, model="resnet19_ann", num_classes=10)
    assert_same_tree(loaded, variables)
    assert record == {
        "model": "resnet19_ann",
        "num_classes": 10,
        "dataset": "cifar10",
        "accuracy": None,
    }
    newer = jax.tree.map(lambda x: x + 1, variables)
    save_teacher(directory, newer, model="resnet19_ann", num_classes=10, dataset="c", accuracy=0.9)
    target = jax.tree.map(jnp.zeros_like, variables)
    loaded, record = restore_teacher(directory, model="resnet19_ann", num_classes=10, target=target)
    assert_same_tree(loaded, newer)
    assert record["accuracy"] == pytest.approx(0.9)
    assert len(step_dirs(directory)) == 1


@pytest.mark.parametrize(
    ("model", "num_classes"), [("wrn28_4_ann", 10), ("resnet19_ann", 100)], ids=["model", "classes"]
)
def test_teacher_mismatch_names_both_sides(tmp_path, model, num_classes):
    save_teacher(
        tmp_path, {"params": make_params(0)}, model="resnet19_ann", num_classes=10, dataset="c"
    )
    with pytest.raises(TeacherMismatchError) as info:
        restore_teacher(tmp_path, model=model, num_classes=num_classes)
    message = str(info.value)
    assert str(tmp_path) in message
    assert "holds resnet19_ann with 10 classes" in message
    assert f"asks for {model} with {num_classes} classes" in message


def test_missing_teacher_raises_checkpoint_error(tmp_path):
    directory = tmp_path / "no_teacher"
    assert not teacher_exists(directory)
    with pytest.raises(CheckpointError, match=f"{directory}.*`teacher` stage"):
        restore_teacher(directory, model="resnet19_ann", num_classes=10)
    directory.mkdir()  # exists but holds no checkpoint
    assert not teacher_exists(directory)
    with pytest.raises(CheckpointError, match=r"config\.teacher\.checkpoint"):
        restore_teacher(directory, model="resnet19_ann", num_classes=10)


def dict_state(scale: int) -> dict:
    """A plain-dict state with an optax state; its source also runs in child processes."""
    params = {"w": jnp.arange(6.0).reshape(3, 2) * scale}
    return {"step": jnp.int32(scale), "params": params, "opt_state": TX.init(params)}


DICT_STATE = inspect.getsource(dict_state)

FOUR_DEVICE_CHILD = (
    """
import sys
import jax, jax.numpy as jnp, numpy as np, optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from sastc_jax.checkpoints import Checkpoints
TX = optax.sgd(0.1, momentum=0.9)
"""
    + DICT_STATE
    + """
assert jax.device_count() == 4
replicated = NamedSharding(Mesh(np.asarray(jax.devices()), ("data",)), PartitionSpec())
abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), dict_state(0)
)
with Checkpoints(sys.argv[1]) as ckpts:
    state, _ = ckpts.restore(abstract)
for leaf, expected in zip(jax.tree.leaves(state), jax.tree.leaves(dict_state(2)), strict=True):
    assert leaf.sharding == replicated, leaf.sharding
    np.testing.assert_array_equal(np.asarray(leaf), np.asarray(expected))
with Checkpoints(sys.argv[2]) as ckpts:
    ckpts.save(1, jax.device_put(dict_state(3), replicated), metadata={"devices": 4})
"""
)


def test_restore_on_another_device_count(tmp_path):
    """1 device -> 4 replicated (in a child process with 4 host devices) -> 1 device."""
    with Checkpoints(tmp_path / "one") as ckpts:
        ckpts.save(1, dict_state(2), metadata={})
    env = environment(XLA_FLAGS="--xla_force_host_platform_device_count=4")
    args = [sys.executable, "-c", FOUR_DEVICE_CHILD, str(tmp_path / "one"), str(tmp_path / "four")]
    child = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-3000:]
    with Checkpoints(tmp_path / "four") as ckpts:
        state, metadata = ckpts.restore(dict_state(0))
    assert_same_tree(state, dict_state(3))
    assert metadata == {"devices": 4}


MULTI_PROCESS_CHILD = (
    """
import sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
import jax.numpy as jnp, numpy as np, optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from sastc_jax.checkpoints import Checkpoints, restore_teacher, save_teacher
TX = optax.sgd(0.1, momentum=0.9)
"""
    + DICT_STATE
    + """
replicated = NamedSharding(Mesh(np.asarray(jax.devices()), ("data",)), PartitionSpec())
def put(tree):
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(replicated, np.asarray(x)), tree
    )
workdir = sys.argv[3]
with Checkpoints(workdir + "/run", max_to_keep=2) as ckpts:
    for step, accuracy in [(1, 0.5), (2, 0.7), (3, 0.6)]:
        metrics = {"accuracy": accuracy}
        ckpts.save(step, put(dict_state(step)), metadata={"epoch": step}, metrics=metrics)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), dict_state(0)
    )
    state, metadata = ckpts.restore(abstract)
    assert metadata == {"epoch": 3} and int(state["step"]) == 3
    state, metadata = ckpts.restore_best(abstract)
    assert metadata == {"epoch": 2} and int(state["step"]) == 2
from jax.experimental import multihost_utils
from pathlib import Path
if jax.process_index() == 0:  # bit rot in the newest step: both processes fall back
    data = max((Path(workdir) / "run/latest/3").rglob("d/*"), key=lambda p: p.stat().st_size)
    data.write_bytes(data.read_bytes()[:-1] + bytes([data.read_bytes()[-1] ^ 0xFF]))
multihost_utils.sync_global_devices("corrupted")
with Checkpoints(workdir + "/run", max_to_keep=2) as ckpts:
    resumed = ckpts.resume(abstract)
    assert resumed.step == 2 and int(resumed.state["step"]) == 2, resumed.path
teacher = put({"params": {"w": jnp.ones(3)}})
save_teacher(workdir + "/teacher", teacher, model="m", num_classes=2, dataset="d")
variables, record = restore_teacher(workdir + "/teacher", model="m", num_classes=2)
assert variables["params"]["w"].sharding.is_fully_replicated and record["model"] == "m"
print("OK", jax.process_index())
"""
)


@pytest.mark.slow
def test_two_processes_share_one_checkpoint_directory(tmp_path):
    """Two jax.distributed CPU processes save, prune, restore and fall back together."""
    port, env = free_port(), environment()
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                MULTI_PROCESS_CHILD,
                f"localhost:{port}",
                str(rank),
                str(tmp_path),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = [child.communicate(timeout=180) for child in children]
    for rank, (child, (out, err)) in enumerate(zip(children, outputs, strict=True)):
        assert child.returncode == 0 and f"OK {rank}" in out, err[-3000:]
    assert step_dirs(tmp_path / "run" / "latest") == [2]
    assert step_dirs(tmp_path / "run" / "best") == [2]
    assert [p.name for p in (tmp_path / "run" / "corrupt").iterdir()] == ["latest-3"]


# ------------------------------------------------------------- integrity and fallback


def kind_of(relative: str) -> str:
    """A saved file's kind: its path in the step with array file names and the directory
    of commit markers left out (``state/ocdbt.process_0/d/*``, ``commit_success.txt``)."""
    parts = relative.split("/")
    if parts[-1] == "commit_success.txt":
        return "commit_success.txt"
    if len(parts) > 1 and parts[-2] == "d":
        parts[-1] = "*"
    return "/".join(parts)


def files_by_kind(step_dir: Path) -> dict[str, Path]:
    """One file of every kind in a step directory (the largest, for array data)."""
    files = sorted((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: -p.stat().st_size)
    chosen = {}
    for path in files:
        chosen.setdefault(kind_of(path.relative_to(step_dir).as_posix()), path)
    return chosen


def save_two_steps(directory: Path) -> None:
    """latest/1 (also best/1, accuracy 0.5) and latest/2 (accuracy 0.4: not the best)."""
    with Checkpoints(directory) as ckpts:
        ckpts.save(1, make_state(seed=1, step=1), metadata={"n": 1}, metrics={"accuracy": 0.5})
        ckpts.save(2, make_state(seed=2, step=2), metadata={"n": 2}, metrics={"accuracy": 0.4})


def test_every_saved_file_is_checksummed(tmp_path):
    save_two_steps(tmp_path / "run")
    save_teacher(
        tmp_path / "teacher", {"params": make_params(0)}, model="m", num_classes=2, dataset="d"
    )
    for step_dir in [
        tmp_path / "run/latest/1",
        tmp_path / "run/latest/2",
        tmp_path / "run/best/1",
        tmp_path / "teacher/0",
    ]:
        manifest = json.loads((step_dir / CHECKSUMS).read_text())
        on_disk = {p.relative_to(step_dir).as_posix() for p in step_dir.rglob("*") if p.is_file()}
        assert set(manifest["files"]) == on_disk - {CHECKSUMS}
        assert verify_checksums(step_dir) == []
    kinds = set(files_by_kind(tmp_path / "run/best/1"))
    assert {
        "state/ocdbt.process_0/d/*",
        "state/_METADATA",
        "metadata/metadata",
        "metrics/metrics",
        "_CHECKPOINT_METADATA",
        CHECKSUMS,
    } <= kinds


def test_a_flipped_byte_in_any_file_of_the_newest_step_falls_back(tmp_path, caplog):
    """Every kind of file of latest/2 in turn: resume reports it by path and reason, moves
    the step aside and restores step 1 bit for bit."""
    pristine = tmp_path / "pristine"
    save_two_steps(pristine)
    kinds = files_by_kind(pristine / "latest" / "2")
    assert len(kinds) >= 8, sorted(kinds)
    for kind, path in kinds.items():
        run = tmp_path / kind.replace("/", "_").replace("*", "data")
        shutil.copytree(pristine, run)
        flip_byte(run / path.relative_to(pristine))
        with Checkpoints(run) as ckpts:
            caplog.clear()
            resumed = ckpts.resume(make_state())
            assert resumed.step == 1 and resumed.path == run / "latest" / "1", kind
            assert_same_tree(resumed.state, make_state(seed=1, step=1))
            assert resumed.metadata == {"n": 1}
            assert ckpts.verified_step() == 1
        warning = caplog.text
        assert f"{run / 'latest' / '2'} (step 2) is corrupt" in warning, (kind, warning)
        expected = CHECKSUMS if kind == CHECKSUMS else kind.split("*")[0]
        assert expected in warning, (kind, warning)
        assert step_dirs(run / "latest") == [1]
        assert (run / "corrupt" / "latest-2").is_dir()  # kept for inspection


CORRUPT_FILES = {
    "truncated array file": (lambda d: truncate(array_files(d)[0]), "is truncated"),
    "deleted array file": (lambda d: array_files(d)[0].unlink(), "is missing"),
    "deleted json item": (lambda d: (d / "metadata" / "metadata").unlink(), "is missing"),
    "interrupted checksums": (lambda d: (d / CHECKSUMS).unlink(), "save never finished"),
}


@pytest.mark.parametrize(("corrupt", "reason"), CORRUPT_FILES.values(), ids=CORRUPT_FILES.keys())
def test_damaged_step_is_named_and_skipped(tmp_path, corrupt, reason, caplog):
    save_two_steps(tmp_path)
    corrupt(tmp_path / "latest" / "2")
    with Checkpoints(tmp_path) as ckpts:
        with pytest.raises(CorruptCheckpointError, match=reason) as info:
            ckpts.restore(make_state())  # an explicit restore verifies and moves nothing
        assert str(tmp_path / "latest" / "2") in str(info.value)
        resumed = ckpts.resume(make_state())
    assert resumed.step == 1 and reason in caplog.text
    assert_same_tree(resumed.state, make_state(seed=1, step=1))


def test_the_intact_best_step_is_used_when_newer_latest_steps_are_corrupt(tmp_path):
    with Checkpoints(tmp_path) as ckpts:
        ckpts.save(1, make_state(seed=1, step=1), metadata={"n": 1})
        ckpts.save(2, make_state(seed=2, step=2), metadata={"n": 2}, metrics={"accuracy": 0.9})
    flip_byte(array_files(tmp_path / "latest" / "2")[0])
    with Checkpoints(tmp_path) as ckpts:
        resumed = ckpts.resume(make_state())
        assert resumed.step == 2 and resumed.path == tmp_path / "best" / "2"
        assert_same_tree(resumed.state, make_state(seed=2, step=2))
        assert ckpts.best() == (2, {"accuracy": 0.9})


def test_a_corrupt_best_step_is_moved_aside_even_when_latest_is_used(tmp_path, caplog):
    save_two_steps(tmp_path)
    flip_byte(tmp_path / "best" / "1" / "metrics" / "metrics")
    with Checkpoints(tmp_path) as ckpts:
        resumed = ckpts.resume(make_state())
        assert resumed.step == 2 and resumed.path == tmp_path / "latest" / "2"
        assert ckpts.best() is None
        with pytest.raises(CheckpointError, match="no best checkpoint"):
            ckpts.restore_best(make_state())
    assert f"{tmp_path / 'best' / '1'} (step 1) is corrupt" in caplog.text
    assert (tmp_path / "corrupt" / "best-1").is_dir()


def test_non_finite_values_after_restore_are_a_corrupt_checkpoint(tmp_path, caplog):
    state = make_state(seed=2, step=2)
    nan_params = {"dense": {**state.params["dense"], "bias": jnp.full(2, jnp.inf, jnp.bfloat16)}}
    nan_state = state.replace(params=nan_params)
    with Checkpoints(tmp_path) as ckpts:
        ckpts.save(1, make_state(seed=1, step=1), metadata={})
        ckpts.save(2, nan_state, metadata={})
    with Checkpoints(tmp_path) as ckpts:
        with pytest.raises(CorruptCheckpointError, match=r"non-finite values .*'bias'.*2 of 2"):
            ckpts.restore(make_state(), step=2)
        resumed = ckpts.resume(make_state())
    assert resumed.step == 1
    assert "non-finite values right after the restore" in caplog.text


def test_no_intact_checkpoint_is_a_clear_error_then_a_fresh_start(tmp_path):
    save_two_steps(tmp_path)
    for step_dir in ["latest/1", "latest/2", "best/1"]:
        flip_byte(array_files(tmp_path / step_dir)[0])
    no_intact = pytest.raises(CorruptCheckpointError, match="no intact checkpoint")
    with Checkpoints(tmp_path) as ckpts, no_intact as info:
        ckpts.resume(make_state())
    for step_dir in ["latest/1", "latest/2", "best/1"]:
        assert str(tmp_path / step_dir) in str(info.value)
    assert sorted(p.name for p in (tmp_path / "corrupt").iterdir()) == [
        "best-1",
        "latest-1",
        "latest-2",
    ]
    with Checkpoints(tmp_path) as ckpts:
        assert ckpts.resume(make_state()) is None  # the rerun starts from scratch


def test_only_interrupted_saves_start_the_stage_from_scratch(tmp_path, caplog):
    """A run killed while its first checkpoint was being checksummed resumes from scratch."""
    with Checkpoints(tmp_path) as ckpts:
        ckpts.save(2, make_state(seed=2, step=2), metadata={})
    (tmp_path / "latest" / "2" / CHECKSUMS).unlink()
    with Checkpoints(tmp_path) as ckpts:
        assert ckpts.resume(make_state()) is None
    assert "only interrupted saves" in caplog.text and "save never finished" in caplog.text
    assert (tmp_path / "corrupt" / "latest-2").is_dir()


def test_a_full_disk_while_saving_keeps_the_earlier_steps_verified(tmp_path, monkeypatch):
    # Registered with monkeypatch so the handler is restored after fill_disk_at_step.
    monkeypatch.setattr(JsonCheckpointHandler, "_save_fn", JsonCheckpointHandler._save_fn)
    with Checkpoints(tmp_path) as ckpts:
        ckpts.save(1, make_state(seed=1, step=1), metadata={})
        ckpts.save(2, make_state(seed=2, step=2), metadata={})
        fill_disk_at_step(3)
        ckpts.save(3, make_state(seed=3, step=3), metadata={})  # fails in the background
        with pytest.raises(CheckpointError) as info:
            ckpts.wait_until_finished()
    message = str(info.value)
    assert f"cannot save the checkpoint at {tmp_path / 'latest' / '3'} (step 3)" in message
    assert "No space left on device" in message and "last verified one is step 2" in message
    assert verify_workdir(tmp_path, out=io.StringIO())
    with Checkpoints(tmp_path) as ckpts:
        resumed = ckpts.resume(make_state())
    assert resumed.step == 2
    assert_same_tree(resumed.state, make_state(seed=2, step=2))


def test_corrupt_teacher_is_an_error_never_a_silent_teacher(tmp_path):
    variables = {"params": make_params(4), "batch_stats": {"bn": {"var": jnp.ones(2)}}}
    save_teacher(tmp_path / "good", variables, model="m", num_classes=2, dataset="d")
    shutil.copytree(tmp_path / "good", tmp_path / "flipped")
    flip_byte(array_files(tmp_path / "flipped" / "0")[0])
    with pytest.raises(CorruptCheckpointError, match="does not match its SHA-256") as info:
        restore_teacher(tmp_path / "flipped", model="m", num_classes=2)
    assert str(tmp_path / "flipped" / "0") in str(info.value) and "`teacher` stage" in str(
        info.value
    )
    nan_variables = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), variables)
    save_teacher(tmp_path / "nan", nan_variables, model="m", num_classes=2, dataset="d")
    with pytest.raises(CorruptCheckpointError, match="non-finite values"):
        restore_teacher(tmp_path / "nan", model="m", num_classes=2)


def checkpoints_command(*args: str) -> int:
    """``python -m sastc_jax.checkpoints ARGS`` in this process; returns its exit status."""
    return cli_flags.call(checkpoints_cli.main, args)


def test_verify_command_lists_every_checkpoint(tmp_path, capsys):
    save_two_steps(tmp_path / "student")
    save_teacher(
        tmp_path / "teacher" / "final",
        {"params": make_params(0)},
        model="m",
        num_classes=2,
        dataset="d",
    )
    assert checkpoints_command("verify", f"--workdir={tmp_path}") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:-1] == [
        f"intact   {tmp_path / path}"
        for path in ["student/best/1", "student/latest/1", "student/latest/2", "teacher/final/0"]
    ]
    assert lines[-1] == "4 checkpoint(s): 4 intact, 0 corrupt"
    truncate(array_files(tmp_path / "student" / "latest" / "2")[0])
    assert checkpoints_command("verify", f"--workdir={tmp_path}") == 1
    out = capsys.readouterr().out
    assert f"CORRUPT  {tmp_path / 'student/latest/2'}: state/ocdbt.process_0/d/" in out
    assert "is truncated" in out and "4 checkpoint(s): 3 intact, 1 corrupt" in out
    assert checkpoints_command("verify", f"--workdir={tmp_path / 'student' / 'best'}") == 0
    (tmp_path / "empty").mkdir()
    assert checkpoints_command("verify", f"--workdir={tmp_path / 'empty'}") == 1
    assert "no checkpoints found under" in capsys.readouterr().out


def test_another_config_is_not_taken_for_corruption(tmp_path):
    with Checkpoints(tmp_path) as ckpts:
        ckpts.save(1, make_state(step=1), metadata={})
    with Checkpoints(tmp_path) as ckpts, pytest.raises(CheckpointError) as info:
        ckpts.resume(make_state(features=4))
    assert not isinstance(info.value, CorruptCheckpointError)
    assert "params/dense/kernel: shape (3, 2) stored" in str(info.value)
    assert "use the config that wrote" in str(info.value)
    assert step_dirs(tmp_path / "latest") == [1] and not (tmp_path / "corrupt").exists()
