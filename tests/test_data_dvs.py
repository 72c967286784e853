"""DVS-Gesture and CIFAR10-DVS through tonic, on event files written in tonic's layout.

As in tonic's own test suite, the fake recordings are placed exactly where tonic's
dataset classes look after extraction (no archives, nothing downloaded). CIFAR10-DVS
recordings are real AEDAT4 files (flatbuffers written by hand below), read by tonic's
`read_aedat4` through the `aedat` package.
"""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from sastc_jax import data
from sastc_jax.data import dvs

pytest.importorskip("tonic", reason="DVS pipelines need the `dvs` extra (tonic)")

HOST = {"process_index": 0, "process_count": 1, "num_devices": 1, "num_threads": 2}
T = 4
BIN_MS = 100  # recordings span 4 bins of 100 ms


def coded_events(label: int, tag: int) -> list[tuple[int, int, int, int]]:
    """(x, y, p, t_ms) events: in bin b, b+1 events at x = 4*label + b, y = 2*tag, p = b % 2."""
    events = []
    for b in range(T):
        events += [(4 * label + b, 2 * tag, b % 2, b * BIN_MS + 50)] * (b + 1)
    events.append((127, 127, 0, T * BIN_MS))  # marks the end of the recording
    return events


def write_gesture(root, split: str, users: list[int]) -> None:
    """tonic's DVSGesture layout: ibmGesture{Train,Test}/user<NN>_<light>/<label>.npy."""
    folder = "ibmGestureTrain" if split == "train" else "ibmGestureTest"
    for user in users:
        path = os.path.join(root, "DVSGesture", folder, f"user{user:02d}_led")
        os.makedirs(path, exist_ok=True)
        for label in range(11):
            np.save(os.path.join(path, f"{label}.npy"), np.array(coded_events(label, user)))


_AEDAT_XML = (
    '<dv version="2.0"><node name="outInfo" path="/mainloop/Recorder/outInfo/">'
    '<node name="0" path="/mainloop/Recorder/outInfo/0/">'
    '<attr key="compression" type="string">NONE</attr>'
    '<attr key="typeIdentifier" type="string">EVTS</attr>'
    '<node name="info" path="/mainloop/Recorder/outInfo/0/info/">'
    '<attr key="sizeX" type="int">128</attr><attr key="sizeY" type="int">128</attr>'
    "</node></node></node></dv>"
)
_AEDAT_EVENT = np.dtype(
    {
        "names": ["t", "x", "y", "on"],
        "formats": ["<i8", "<i2", "<i2", "?"],
        "offsets": [0, 8, 10, 12],
        "itemsize": 16,
    }
)


def write_aedat4(path: str, events: list[tuple[int, int, int, int]]) -> None:
    """Uncompressed AEDAT4: magic, IOHeader flatbuffer, one size-prefixed EVTS packet."""
    description = _AEDAT_XML.encode()
    # IOHeader table {compression: int32, file_data_position: int64, description: string}.
    header = struct.pack("<I4s", 24, b"IOHE") + struct.pack("<5H", 10, 20, 4, 8, 16) + bytes(6)
    header += struct.pack("<iiqI", 16, 0, -1, 4)
    text = struct.pack("<I", len(description)) + description + b"\0"
    header += text + bytes(-len(text) % 4)
    # EventPacket table {elements: [Event]} with Event = struct {t, x, y, on} (16 bytes).
    records = np.zeros(len(events), _AEDAT_EVENT)
    for k, (x, y, p, t_ms) in enumerate(events):
        records[k] = (t_ms * 1000, x, y, bool(p))
    body = struct.pack("<I4s", 16, b"EVTS") + struct.pack("<3H", 6, 8, 4) + bytes(2)
    body += struct.pack("<iII", 8, 4, len(records)) + records.tobytes()
    packet = struct.pack("<I", len(body)) + body
    with open(path, "wb") as handle:
        handle.write(b"#!AER-DAT4.0\r\n" + struct.pack("<I", len(header)) + header)
        handle.write(struct.pack("<II", 0, len(packet)) + packet)


def write_cifar10_dvs(root, per_class: int) -> None:
    """tonic's CIFAR10DVS layout: CIFAR10DVS/<class>/cifar10_<class>_<i>.aedat4."""
    import tonic.datasets

    for name, label in tonic.datasets.CIFAR10DVS.classes.items():
        path = os.path.join(root, "CIFAR10DVS", name)
        os.makedirs(path, exist_ok=True)
        for i in range(per_class):
            write_aedat4(
                os.path.join(path, f"cifar10_{name}_{i}.aedat4"), coded_events(label, tag=i)
            )


def decode(clips: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Recover (label, tag) of coded clips from where bin 0 put its event."""
    scale = 128 // size
    first = clips[:, 0, :, :, 0]  # bin 0, polarity 0
    flat = first.reshape(len(clips), -1).argmax(axis=1)
    row, col = np.divmod(flat, size)
    return (col * scale) // 4, (row * scale) // 2


def test_gesture_frames_labels_and_split(tmp_path):
    write_gesture(tmp_path, "train", users=[1, 2, 10])
    write_gesture(tmp_path, "test", users=[24])
    test = data.get_dataset(
        "dvs_gesture",
        "test",
        batch_size=4,
        time_steps=T,
        train=False,
        data_dir=str(tmp_path),
        **HOST,
    )
    assert (test.num_examples, test.num_classes, test.input_shape) == (11, 11, (T, 128, 128, 2))
    batches = list(test.epoch(0))
    clips = np.concatenate([b["image"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    mask = np.concatenate([b["mask"] for b in batches])
    assert clips.dtype == np.float32 and clips.shape == (12, T, 128, 128, 2)
    assert mask.sum() == 11 and sorted(labels[mask].tolist()) == list(range(11))
    for clip, label in zip(clips[mask], labels[mask], strict=True):
        for b in range(T):  # exact counts at the coded pixels: b + 1 events in bin b
            assert clip[b, 2 * 24, 4 * label + b, b % 2] == b + 1
            assert clip[b].sum() in (b + 1, b + 2)  # + the end marker in the last bin
    np.testing.assert_array_equal(decode(clips[mask], 128)[0], labels[mask])

    train = data.get_dataset(
        "dvs_gesture",
        "train",
        batch_size=8,
        time_steps=T,
        train=True,
        data_dir=str(tmp_path),
        image_size=32,
        **HOST,
    )
    plain = data.get_dataset(
        "dvs_gesture",
        "train",
        batch_size=8,
        time_steps=T,
        train=True,
        augment=False,
        data_dir=str(tmp_path),
        image_size=32,
        **HOST,
    )
    assert train.num_examples == 33 and train.input_shape == (T, 32, 32, 2)
    assert train.steps_per_epoch == 4
    for augmented, clean in zip(train.epoch(1), plain.epoch(1), strict=True):
        np.testing.assert_array_equal(augmented["label"], clean["label"])
        label, _ = decode(clean["image"], 32)
        np.testing.assert_array_equal(label, clean["label"])
        # Area resize by 4: each coded pixel becomes (b + 1) / 16 in one output pixel.
        assert np.allclose(clean["image"][:, 1].max(axis=(1, 2, 3)), 2 / 16)
        # Roll keeps every event (no flip for gestures: it would swap left/right classes).
        np.testing.assert_allclose(
            augmented["image"].sum(axis=(2, 3)), clean["image"].sum(axis=(2, 3)), rtol=1e-3
        )
    assert not train.loader.flip


def test_cifar10_dvs_split_is_deterministic_and_disjoint(tmp_path):
    pytest.importorskip("aedat", reason="tonic reads CIFAR10-DVS AEDAT4 files with `aedat`")
    write_cifar10_dvs(tmp_path, per_class=12)
    common = {"time_steps": T, "data_dir": str(tmp_path), "image_size": 64, **HOST}
    train = data.get_dataset("cifar10_dvs", "train", batch_size=10, train=False, **common)
    test = data.get_dataset("cifar10_dvs", "test", batch_size=10, train=False, **common)
    assert (train.num_examples, test.num_examples) == (100, 20)  # 10 + 2 per class
    assert test.num_classes == 10 and test.input_shape == (T, 64, 64, 2)

    def contents(ds):
        batches = list(ds.epoch(0))
        clips = np.concatenate([b["image"] for b in batches])
        labels = np.concatenate([b["label"] for b in batches])
        label, tag = decode(clips, 64)
        np.testing.assert_array_equal(label, labels)
        return set(zip(labels.tolist(), tag.tolist(), strict=True))

    train_files, test_files = contents(train), contents(test)
    # Per class, files 0..9 (numeric order, not "0, 1, 10, 11, 2, ...") train, 10 and 11 test.
    assert test_files == {(c, i) for c in range(10) for i in (10, 11)}
    assert train_files == {(c, i) for c in range(10) for i in range(10)}
    # Rebuilding from the cache gives the same frames.
    again = data.get_dataset("cifar10_dvs", "test", batch_size=10, train=False, **common)
    assert contents(again) == test_files
    cached = os.listdir(os.path.join(tmp_path, "sastc_frames"))
    assert sum(name.endswith(".frames.npy") for name in cached) == 2
    assert not any(".tmp" in name for name in cached)

    augmented = data.get_dataset(
        "cifar10_dvs", "train", batch_size=10, train=True, seed=1, **common
    )
    plain = data.get_dataset(
        "cifar10_dvs", "train", batch_size=10, train=True, seed=1, augment=False, **common
    )
    changed = 0
    for a, c in zip(augmented.epoch(0), plain.epoch(0), strict=True):
        np.testing.assert_array_equal(a["label"], c["label"])
        changed += not np.array_equal(a["image"], c["image"])
    assert changed and augmented.loader.flip


def test_cifar10_dvs_split_helper():
    paths = [f"c/{label}/x_{i}.aedat4" for label in (1, 0) for i in (3, 1, 2, 0, 10)]
    targets = [1] * 5 + [0] * 5
    train = dvs.cifar10_dvs_split(paths, targets, "train")
    test = dvs.cifar10_dvs_split(paths, targets, "test")
    assert not set(train) & set(test) and sorted(train + test) == list(range(10))
    assert [paths[i] for i in test] == ["c/0/x_10.aedat4", "c/1/x_10.aedat4"]
    assert dvs.cifar10_dvs_split(paths, targets, "train") == train


def test_dvs_bad_input(tmp_path):
    with pytest.raises(ValueError, match="time_steps >= 1"):
        data.get_dataset(
            "dvs_gesture", "train", batch_size=4, time_steps=0, train=True, data_dir="x", **HOST
        )
    with pytest.raises(ValueError, match="needs data_dir"):
        data.get_dataset("cifar10_dvs", "train", batch_size=4, time_steps=2, train=True, **HOST)
    with pytest.raises(data.DatasetNotFoundError) as error:
        data.get_dataset(
            "dvs_gesture",
            "train",
            batch_size=4,
            time_steps=2,
            train=True,
            data_dir=str(tmp_path),
            **HOST,
        )
    assert os.path.join(str(tmp_path), "DVSGesture", "ibmGestureTrain") in str(error.value)
    assert "ibmGestureTrain.tar.gz" in str(error.value)
    with pytest.raises(data.DatasetNotFoundError) as error:
        data.get_dataset(
            "cifar10_dvs",
            "test",
            batch_size=4,
            time_steps=2,
            train=False,
            data_dir=str(tmp_path),
            **HOST,
        )
    assert os.path.join(str(tmp_path), "CIFAR10DVS") in str(error.value)


def test_failed_framing_leaves_no_partial_cache(tmp_path):
    write_gesture(tmp_path, "test", users=[3])
    broken = os.path.join(tmp_path, "DVSGesture", "ibmGestureTest", "user03_led", "5.npy")
    with open(broken, "wb") as handle:
        handle.write(b"not an npy file")
    with pytest.raises(ValueError):
        data.get_dataset(
            "dvs_gesture",
            "test",
            batch_size=4,
            time_steps=T,
            train=False,
            data_dir=str(tmp_path),
            **HOST,
        )
    assert os.listdir(os.path.join(tmp_path, "sastc_frames")) == []
