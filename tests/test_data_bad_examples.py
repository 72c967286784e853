"""The bad-examples policy ('error' / 'skip') and the data `verify` command.

The folders hold each kind of bad file a user meets: a 0-byte file, a text file named
.JPEG and a truncated JPEG (the helpers of test_data_image_folder build the rest).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from absl import app
from test_data_image_folder import HOST, SIZE, write_image, write_tree

from sastc_jax import configuration, data
from sastc_jax.cli import data as data_cli
from sastc_jax.cli import flags as cli_flags
from sastc_jax.data import bad_examples, image_folder, verify

CLEAN = {
    "train": {
        "ant": ["a0.png", "a1.jpg", "a2.png"],
        "moth": ["m0.jpeg", "m1.png"],
        "zebra": ["z0.JPEG", "z1.png", "z2.png", "z3.png"],
    },
    "val": {"ant": ["v0.png"], "moth": ["v0.png", "v1.png"], "zebra": ["v0.png"]},
}
# (split folder, class, file) -> the damage done to it.
DAMAGE = {
    ("train", "ant", "a1.jpg"): "empty",
    ("train", "moth", "m0.jpeg"): "text",
    ("train", "zebra", "z2.png"): "truncated",  # replaced by a truncated JPEG of that name
    ("val", "moth", "v1.png"): "text",
}


def damage(path: str, kind: str) -> None:
    if kind == "empty":
        content = b""
    elif kind == "text":
        content = b"this is not an image, just text\n"
    else:  # the first 800 bytes of a JPEG (whatever the file's name says)
        write_image(path + ".jpg", 200, 150, seed=1)
        with open(path + ".jpg", "rb") as handle:
            content = handle.read()[:800]
        os.remove(path + ".jpg")
    with open(path, "wb") as handle:
        handle.write(content)


def bad_tree(root) -> dict[str, str]:
    """The CLEAN tree with the DAMAGE done; returns {path: kind} of the damaged files."""
    write_tree(root, CLEAN)
    damaged = {}
    for (split, name, file), kind in DAMAGE.items():
        path = os.path.join(root, split, name, file)
        damage(path, kind)
        damaged[path] = kind
    return damaged


def get(root, split: str = "train", **kwargs) -> data.Dataset:
    kwargs = {"batch_size": 3, "train": split == "train", "image_size": SIZE, **HOST, **kwargs}
    return data.get_dataset("imagenet2012", split, data_dir=str(root), **kwargs)


def whole_epoch(dataset: data.Dataset, epoch: int = 0, start_step: int = 0) -> list[dict]:
    return list(dataset.epoch(epoch, start_step=start_step))


# --------------------------------------------------------------------------- the policy


@pytest.mark.parametrize("kind", ["empty", "text", "truncated"])
def test_error_policy_stops_at_the_bad_file_and_names_it(tmp_path, kind):
    write_tree(tmp_path, CLEAN)
    path = os.path.join(tmp_path, "train", "moth", "m1.png")
    damage(path, kind)
    for policy in ({}, {"bad_examples": "error"}):  # 'error' is the default
        train = get(tmp_path, augment=False, **policy)
        assert train.bad_examples is None
        with pytest.raises(image_folder.UnreadableImageError) as error:
            whole_epoch(train)
        assert error.value.path == path and error.value.index == 4
        assert f"Cannot decode image {path}" in str(error.value) and "'moth'" in str(error.value)


def test_unknown_policy_is_refused_by_the_pipeline_and_the_config(tmp_path):
    write_tree(tmp_path, CLEAN)
    with pytest.raises(ValueError, match=r"bad_examples = 'ignore' is not a policy.*'skip'"):
        get(tmp_path, bad_examples="ignore")
    config = configuration.base_config()
    assert config.dataset.bad_examples == "error"
    config.dataset.bad_examples = "drop"
    with pytest.raises(ValueError, match=r"config.dataset.bad_examples = 'drop'.*error, skip"):
        configuration.validate(config)


def test_skip_replaces_each_bad_file_with_the_next_good_one_of_its_class(tmp_path):
    damaged = bad_tree(tmp_path)
    plain = get(tmp_path, train=False, augment=False, batch_size=9)
    loader = plain.loader
    # Split order: ant a0 a1* a2 | moth m0* m1 | zebra z0 z1 z2* z3 (* = damaged).
    expected = {1: 2, 3: 4, 7: 8}
    skip = get(tmp_path, train=False, augment=False, batch_size=9, bad_examples="skip")
    skip.bad_examples.log_path = tmp_path / "work" / bad_examples.LOG_NAME
    (batch,) = whole_epoch(skip)
    assert batch["image"].shape == (9, SIZE, SIZE, 3) and batch["mask"].all()
    np.testing.assert_array_equal(batch["label"], loader.labels)  # every class keeps its count
    sources = [expected.get(i, i) for i in range(9)]
    np.testing.assert_array_equal(batch["image"], loader.load(np.array(sources), None)[0])
    assert skip.bad_examples.count == 3

    lines = (tmp_path / "work" / "bad_examples.jsonl").read_text().splitlines()
    records = sorted((json.loads(line) for line in lines), key=lambda r: r["index"])
    assert [r["index"] for r in records] == [1, 3, 7]
    for record in records:
        path = os.path.join(loader.split_dir, loader.paths[record["index"]])
        substitute = os.path.join(loader.split_dir, loader.paths[expected[record["index"]]])
        assert record["path"] == path and damaged[path]
        assert record["substitute_index"] == expected[record["index"]]
        assert record["substitute_path"] == substitute
        assert record["label"] == loader.labels[record["index"]]
        assert (record["split"], record["epoch"], record["batch"], record["process"]) == (
            "train",
            0,
            0,
            0,
        )
        assert record["reason"].split(":")[0] in ("UnidentifiedImageError", "OSError")

    # Met again (another epoch), a bad file is replaced the same way and not logged again.
    (again,) = whole_epoch(skip, epoch=1)
    np.testing.assert_array_equal(again["image"], batch["image"])
    assert len((tmp_path / "work" / "bad_examples.jsonl").read_text().splitlines()) == 3


def test_skip_wraps_around_inside_the_class_and_refuses_an_all_bad_class(tmp_path):
    write_tree(tmp_path, CLEAN)
    last = os.path.join(tmp_path, "train", "zebra", "z3.png")  # the class's last example
    damage(last, "text")
    skip = get(tmp_path, train=False, augment=False, batch_size=9, bad_examples="skip")
    (batch,) = whole_epoch(skip)
    np.testing.assert_array_equal(batch["image"][8], skip.loader.load(np.array([5]), None)[0][0])
    assert skip.bad_examples.records[0]["substitute_index"] == 5  # z0, first of 'zebra'

    for file in CLEAN["train"]["moth"]:
        damage(os.path.join(tmp_path, "train", "moth", file), "empty")
    skip = get(tmp_path, train=False, augment=False, batch_size=9, bad_examples="skip")
    with pytest.raises(
        data.UnreadableExampleError, match=r"All 2 examples of class 1 \('moth'\) in the"
    ):
        whole_epoch(skip)


def test_skip_is_deterministic_across_loaders_epochs_and_resume(tmp_path):
    bad_tree(tmp_path)
    first = get(tmp_path, seed=5, bad_examples="skip")
    second = get(tmp_path, seed=5, bad_examples="skip")
    assert first.steps_per_epoch == 3
    for epoch in (0, 1):
        a, b = whole_epoch(first, epoch), whole_epoch(second, epoch)
        assert len(a) == len(b) == 3
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x["image"], y["image"])
            np.testing.assert_array_equal(x["label"], y["label"])
            assert x["image"].shape == (3, SIZE, SIZE, 3)
    # A fresh loader resumed at step 2 of epoch 1 (it has met no bad file yet).
    resumed = get(tmp_path, seed=5, bad_examples="skip")
    tail = whole_epoch(resumed, 1, start_step=2)
    np.testing.assert_array_equal(tail[0]["image"], whole_epoch(first, 1)[2]["image"])
    # The train order shuffles, so labels per batch are those of the shuffled indices.
    indices, _ = first.host_indices(1)
    labels = np.concatenate([b["label"] for b in whole_epoch(first, 1)])
    np.testing.assert_array_equal(labels, first.loader.labels[indices.reshape(-1)])


def test_skip_in_a_validation_share_uses_examples_of_that_share(tmp_path):
    write_tree(tmp_path, CLEAN)
    common = {"validation_fraction": 0.5, "bad_examples": "skip", "augment": False}
    held_out = get(tmp_path, "validation", batch_size=5, **common)
    indices = held_out.loader.indices  # the base examples held out
    zebra = [int(i) for i in indices if held_out.loader.loader.labels[i] == 2]
    assert len(zebra) == 2
    damage(os.path.join(tmp_path, "train", held_out.loader.loader.paths[zebra[0]]), "text")
    held_out = get(tmp_path, "validation", batch_size=5, **common)
    whole_epoch(held_out)
    (record,) = held_out.bad_examples.records
    substitute = int(held_out.loader.indices[record["substitute_index"]])
    assert substitute == zebra[1] and record["split"] == "validation"


def test_count_unions_the_processes_masks(tmp_path):
    bad_tree(tmp_path)
    skip = get(tmp_path, train=False, augment=False, batch_size=9, bad_examples="skip")
    whole_epoch(skip)
    assert bad_examples.count_bad([skip.bad_examples, None]) == 3
    other = np.zeros(9, bool)
    other[[1, 5]] = True  # another process met example 1 too, and 5

    def gather(packed):  # what process_allgather returns: one row per process
        return np.stack([packed, np.packbits(other)])

    assert bad_examples.count_bad([skip.bad_examples], gather) == 4
    assert bad_examples.log_path(tmp_path, 0) == tmp_path / "bad_examples.jsonl"
    assert bad_examples.log_path(tmp_path, 3) == tmp_path / "bad_examples.process3.jsonl"


# --------------------------------------------------------------------------- verify


def write_config(path, data_dir: str, name: str = "imagenet2012", source: str = "folder") -> str:
    path.write_text(
        "from sastc_jax.configuration import base_config\n\n\n"
        "def get_config():\n"
        "    config = base_config()\n"
        f"    config.dataset.name = {name!r}\n"
        f"    config.dataset.source = {source!r}\n"
        f"    config.dataset.data_dir = {data_dir!r}\n"
        f"    config.dataset.image_size = {SIZE}\n"
        "    return config\n"
    )
    return str(path)


def data_command(*args: str) -> int:
    """``python -m sastc_jax.data ARGS`` in this process; returns its exit status."""
    return cli_flags.call(data_cli.main, args)


def test_verify_passes_a_clean_folder(tmp_path, capsys):
    write_tree(tmp_path / "data", CLEAN)
    config = write_config(tmp_path / "config.py", "/nowhere")
    output = tmp_path / "bad.jsonl"
    argv = ["verify", f"--config={config}", f"--config.dataset.data_dir={tmp_path / 'data'}"]
    assert data_command(*argv, f"--output={output}", "--threads=2") == 0
    assert output.read_text() == ""
    out = capsys.readouterr().out
    assert "train: 9 examples checked, 0 bad" in out and "test: 4 examples checked, 0 bad" in out
    assert "no bad examples." in out


def test_verify_lists_every_bad_file_and_fails(tmp_path, capsys, monkeypatch):
    damaged = bad_tree(tmp_path / "data")
    config = write_config(tmp_path / "config.py", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    assert data_command("verify", f"--config={config}", "--noprogress") == 1
    records = [json.loads(line) for line in (tmp_path / "bad_files.jsonl").read_text().splitlines()]
    assert {r["path"]: r["split"] for r in records} == {
        path: "test" if f"{os.sep}val{os.sep}" in path else "train" for path in damaged
    }
    by_path = {r["path"]: r for r in records}
    truncated = os.path.join(tmp_path, "data", "train", "zebra", "z2.png")
    assert by_path[truncated]["class"] == "zebra" and by_path[truncated]["index"] == 7
    assert "truncated" in by_path[truncated]["reason"]
    out = capsys.readouterr().out
    assert "train: 9 examples checked, 3 bad" in out and "test: 4 examples checked, 1 bad" in out
    assert "4 bad; listed in bad_files.jsonl" in out


def test_verify_reports_each_tfds_record_that_fails():
    class Records:
        def __getitem__(self, index):
            if index == 1:
                raise ValueError("corrupt record")
            return {"image": np.zeros((2, 3, 3) if index == 0 else (0,), np.uint8), "label": 1}

    check = verify._check_record(Records())
    assert check(0) is None
    assert check(1) == "ValueError: corrupt record"
    assert check(2) == "decoded image has shape (0,), not (H, W[, C])"


def test_verify_array_sources_and_usage_errors(tmp_path, capsys):
    import gzip

    from test_data_static import write_fashion_dir

    os.makedirs(tmp_path / "fm")
    write_fashion_dir(tmp_path / "fm", n_train=5, n_test=3)
    config = write_config(tmp_path / "config.py", str(tmp_path / "fm"), "fashion_mnist", "local")
    output = f"--output={tmp_path / 'bad.jsonl'}"
    assert data_command("verify", f"--config={config}", output) == 0
    assert "train: 5 examples checked, 0 bad" in capsys.readouterr().out

    labels = tmp_path / "fm" / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(labels, "rb") as handle:
        content = handle.read()
    with gzip.open(labels, "wb") as handle:
        handle.write(content[:-2])  # two labels short of the header's count
    assert data_command("verify", f"--config={config}", output) == 1
    (record,) = [json.loads(line) for line in (tmp_path / "bad.jsonl").read_text().splitlines()]
    assert record["split"] == "test" and str(labels) in record["reason"]
    assert "truncated or corrupt" in record["reason"]

    with pytest.raises(app.UsageError, match="expected the command `verify`, got: check"):
        data_command("check", f"--config={config}")
    assert data_command("verify", f"--config={config}", "--config.dataset.bad_examples=x") == 2
    assert "config.dataset.bad_examples = 'x'" in capsys.readouterr().err


# --------------------------------------------------------------------------- a training stage


def test_a_teacher_stage_skips_logs_and_counts_the_bad_files(tmp_path):
    from sastc_jax import metrics, parallel, train
    from sastc_jax.configuration import optimizer_config

    damaged = bad_tree(tmp_path / "data")
    config = configuration.base_config()
    config.dataset.name, config.dataset.source = "imagenet2012", "folder"
    config.dataset.data_dir, config.dataset.image_size = str(tmp_path / "data"), SIZE
    config.dataset.bad_examples = "skip"
    config.teacher.model = "convnet_ann"
    config.teacher.model_kwargs.widths = (4, 8, 8)
    config.teacher.optimizer = optimizer_config(
        learning_rate=0.01, epochs=1, batch_size=9, schedule="constant"
    )
    config.checkpoint_every_steps = 1000
    configuration.validate(config)
    workdir = tmp_path / "work"
    logger = metrics.MetricsLogger(workdir, progress_bars=False)
    summary = train.train_teacher(config, workdir, parallel.make_mesh(), logger)
    # One training batch holds the whole split (3 bad files), the test split 1.
    assert summary["bad_examples"] == 4
    lines = (workdir / "bad_examples.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["path"] for line in lines) == sorted(damaged)
    record = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["split"] == "summary" and record["bad_examples"] == 4

    # Stage 'evaluate' of the saved teacher meets the test split's bad file again.
    config.stage, config.evaluate = "evaluate", "teacher"
    evaluation = train.evaluate_checkpoint(config, workdir, parallel.make_mesh(), logger)
    assert evaluation["bad_examples"] == 1 and evaluation["count"] == 4
    lines = (workdir / "bad_examples.jsonl").read_text().splitlines()
    assert len(lines) == 5 and json.loads(lines[-1])["split"] == "test"
