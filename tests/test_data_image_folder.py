"""ImageNet from an ImageFolder tree: layout, torchvision's transforms, sharding, bad inputs.

The trees are generated here: small JPEG and PNG files and a small crop size, so the
whole file runs in seconds. References are torchvision's PIL transforms written out with
Pillow (torchvision's RandomResizedCrop = crop, then bilinear resize; Resize + CenterCrop
= bilinear resize of the shorter side, then crop).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from sastc_jax import data
from sastc_jax.data import augment as aug
from sastc_jax.data import image_folder, static
from sastc_jax.data.augment import ExampleRandom

HOST = {"process_index": 0, "process_count": 1, "num_devices": 1, "num_threads": 2}
SIZE = 24  # crop side in these tests; evaluation resizes the shorter side to 27
MEAN, STD = np.asarray(static.IMAGENET_MEAN), np.asarray(static.IMAGENET_STD)


def picture(width: int, height: int, seed: int) -> Image.Image:
    """A smooth random RGB picture (so JPEG keeps it close and resizing has work to do)."""
    rng = np.random.default_rng(seed)
    field = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
    return field.resize((width, height), Image.Resampling.BICUBIC)


def write_image(path: str, width: int = 40, height: int = 30, seed: int = 0) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    picture(width, height, seed).save(path)


def write_tree(root, layout: dict[str, dict[str, list[str]]]) -> None:
    """layout: split folder -> class -> file names (relative; may hold a sub-folder)."""
    seed = 0
    for split, classes in layout.items():
        for name, files in classes.items():
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for file in files:
                seed += 1
                path = os.path.join(root, split, name, file)
                if file.endswith(".txt"):
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    with open(path, "w") as handle:
                        handle.write("not an image")
                else:
                    write_image(path, 32 + seed % 9, 28, seed)


LAYOUT = {
    "train": {
        "zebra": ["z1.png", "z0.JPEG"],
        "ant": ["b.jpg", "a.png", "sub/c.png", "notes.txt", ".hidden.jpg"],
        "moth": ["m.jpeg"],
    },
    "val": {"zebra": ["v.png"], "ant": ["v1.png", "v0.png"], "moth": ["v.png"]},
}


def get(root, split: str, **kwargs) -> data.Dataset:
    kwargs = {"batch_size": 2, "train": split == "train", "image_size": SIZE, **HOST, **kwargs}
    return data.get_dataset("imagenet2012", split, data_dir=str(root), **kwargs)


def pixels(normalised: np.ndarray) -> np.ndarray:
    """Back from (x/255 - mean)/std to [0, 255]."""
    return (normalised * STD + MEAN) * 255.0


def reference_eval(path: str, size: int = SIZE) -> np.ndarray:
    """torchvision: Resize(resize) (shorter side), then CenterCrop(size), on a PIL image."""
    image = Image.open(path).convert("RGB")
    resize = image_folder.eval_resize(size)
    width, height = image.size
    if width <= height:
        new_w, new_h = resize, int(resize * height / width)
    else:
        new_w, new_h = int(resize * width / height), resize
    resized = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top, left = round((new_h - size) / 2), round((new_w - size) / 2)
    return np.asarray(resized.crop((left, top, left + size, top + size)), np.float64)


def reference_train(path: str, index: int, seed: int, epoch: int) -> np.ndarray:
    """torchvision: RandomResizedCrop(size) then RandomHorizontalFlip, with our draws."""
    random = ExampleRandom(seed, epoch)
    uniforms = random.uniform(np.array([index]), 16, 40).reshape(10, 4)
    image = Image.open(path).convert("RGB")
    top, left, height, width = aug.random_resized_crop_box(image.height, image.width, uniforms)
    crop = image.crop((left, top, left + width, top + height))
    out = np.asarray(crop.resize((SIZE, SIZE), Image.Resampling.BILINEAR), np.float64)
    return out[:, ::-1] if random.coin(np.array([index]), 2)[0] else out


def test_layout_classes_and_order_follow_image_folder(tmp_path):
    write_tree(tmp_path, LAYOUT)
    assert data.resolve_source("imagenet2012", str(tmp_path)) == "folder"
    train = get(tmp_path, "train")
    loader = train.loader
    assert loader.classes == ["ant", "moth", "zebra"]
    # By class, then sorted paths (sub-folders walked); no .txt, no hidden file.
    assert loader.paths == [
        os.path.join("ant", "a.png"),
        os.path.join("ant", "b.jpg"),
        os.path.join("ant", "sub", "c.png"),
        os.path.join("moth", "m.jpeg"),
        os.path.join("zebra", "z0.JPEG"),
        os.path.join("zebra", "z1.png"),
    ]
    assert loader.labels.tolist() == [0, 0, 0, 1, 2, 2]
    assert (train.num_examples, train.num_classes, train.input_shape) == (6, 3, (24, 24, 3))
    test = get(tmp_path, "test")
    assert test.loader.labels.tolist() == [0, 0, 1, 2] and test.num_classes == 3


def test_evaluation_is_resize_then_centre_crop_over_the_whole_split(tmp_path):
    write_tree(tmp_path, LAYOUT)
    wide = os.path.join(tmp_path, "val", "ant", "v0.png")
    write_image(wide, 61, 29, seed=99)  # landscape, odd margins: tests the crop rounding
    tall = os.path.join(tmp_path, "val", "moth", "v.png")
    write_image(tall, 29, 50, seed=98)
    Image.open(tall).convert("L").save(tall)  # grey-scale files become RGB
    test = get(tmp_path, "test", batch_size=3)
    batches = list(test.epoch(0))
    assert test.steps_per_epoch == 2 and len(batches) == 2
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.tolist() == [True] * 4 + [False] * 2
    images = np.concatenate([b["image"] for b in batches])[mask]
    assert images.dtype == np.float32 and images.shape == (4, 24, 24, 3)
    labels = np.concatenate([b["label"] for b in batches])[mask]
    assert labels.tolist() == [0, 0, 1, 2]
    for image, path in zip(images, test.loader.paths, strict=True):
        expected = reference_eval(os.path.join(test.loader.split_dir, path))
        np.testing.assert_allclose(pixels(image), expected, atol=1e-3)
    grey = pixels(images[2])
    np.testing.assert_allclose(grey[..., 0], grey[..., 2], atol=1e-3)


def test_training_crop_is_torchvision_random_resized_crop(tmp_path):
    write_tree(tmp_path, LAYOUT)
    train = get(tmp_path, "train", seed=7)
    loader = train.loader
    loader.jpeg_draft = False
    indices = np.arange(train.num_examples)
    for epoch in (0, 3):
        images, labels = loader.load(indices, ExampleRandom(7, epoch))
        np.testing.assert_array_equal(labels, loader.labels)
        for index in indices:
            path = os.path.join(loader.split_dir, loader.paths[index])
            np.testing.assert_allclose(
                pixels(images[index]), reference_train(path, index, 7, epoch), atol=1e-3
            )


def test_training_is_deterministic_reshuffled_and_resumable(tmp_path):
    write_tree(tmp_path, LAYOUT)
    train = get(tmp_path, "train", seed=3)
    first = list(train.epoch(2))
    again = list(get(tmp_path, "train", seed=3).epoch(2))
    assert train.steps_per_epoch == 3 and len(first) == 3
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
        assert a["mask"].all()
    resumed = list(train.epoch(2, start_step=1))
    for a, b in zip(resumed, first[1:], strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
    orders = {tuple(train.host_indices(e)[0].reshape(-1)) for e in range(6)}
    assert len(orders) > 1  # reshuffled per epoch
    plain = list(get(tmp_path, "train", seed=3, augment=False).epoch(2))
    assert not np.array_equal(first[0]["image"], plain[0]["image"])
    np.testing.assert_array_equal(first[0]["label"], plain[0]["label"])


def test_two_hosts_share_the_split(tmp_path):
    write_tree(tmp_path, LAYOUT)
    seen, steps = [], set()
    for host in range(2):
        hosts = {**HOST, "process_index": host, "process_count": 2}
        test = data.get_dataset(
            "imagenet2012",
            "test",
            batch_size=1,
            train=False,
            image_size=SIZE,
            data_dir=str(tmp_path),
            **hosts,
        )
        batches = list(test.epoch(0))
        mask = np.concatenate([b["mask"] for b in batches])
        seen.append(test.host_indices(0)[0].reshape(-1)[mask].tolist())
        steps.add(len(batches))
        train = data.get_dataset(
            "imagenet2012", "train", batch_size=1, train=True, image_size=SIZE,
            data_dir=str(tmp_path), **hosts,
        )  # fmt: skip
        steps_train = train.host_indices(0)[0]
        assert steps_train.shape == (3, 1)
    assert len(steps) == 1
    assert sorted(seen[0] + seen[1]) == [0, 1, 2, 3]


def test_jpeg_draft_decodes_large_files_reduced_and_close(tmp_path, monkeypatch):
    from PIL import JpegImagePlugin

    root = tmp_path / "tree"
    for split in ("train", "val"):
        path = os.path.join(root, split, "only", "big.jpg")
        os.makedirs(os.path.dirname(path))
        picture(400, 300, seed=5).save(path, quality=95)
    scales = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = original(self, mode, size)
        scales.append(self.decoderconfig[0])
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    test = get(root, "test", batch_size=1)
    reduced = test.loader.load(np.array([0]), None)[0]
    assert scales == [8]  # 300 / 27 > 8: decoded at 1/8 scale, 50 x 38, still >= 27
    train = get(root, "train", batch_size=1)
    random = ExampleRandom(0, 0)
    uniforms = random.uniform(np.array([0]), 16, 40).reshape(10, 4)
    _, _, crop_h, crop_w = aug.random_resized_crop_box(300, 400, uniforms)
    reduced_train = train.loader.load(np.array([0]), random)[0]
    assert len(scales) == 2 and scales[1] == min(8, 2 ** int(np.log2(min(crop_h, crop_w) / 24)))
    assert scales[1] > 1  # this seed's crop is large enough to be decoded reduced

    test.loader.jpeg_draft = train.loader.jpeg_draft = False
    full = test.loader.load(np.array([0]), None)[0]
    full_train = train.loader.load(np.array([0]), random)[0]
    for a, b in ((reduced, full), (reduced_train, full_train)):
        difference = np.abs(pixels(a) - pixels(b))
        assert difference.mean() < 1.0 and difference.max() < 4.0
    exact = reference_eval(os.path.join(test.loader.split_dir, "only", "big.jpg"))
    np.testing.assert_allclose(pixels(full[0]), exact, atol=1e-3)


# --------------------------------------------------------------------------- bad inputs


def test_folder_without_images_is_refused(tmp_path):
    write_tree(tmp_path, {"train": {"a": ["x.txt"], "b": []}, "val": {"a": [], "b": []}})
    with pytest.raises(data.DatasetNotFoundError) as error:
        get(tmp_path, "train")
    message = str(error.value)
    assert f"No image files in {os.path.join(tmp_path, 'train')}" in message
    assert "'a', 'b'" in message and ".jpeg" in message and ".png" in message


def test_class_folder_without_images_is_named(tmp_path):
    write_tree(tmp_path, {**LAYOUT, "val": {**LAYOUT["val"], "moth": []}})
    with pytest.raises(
        data.DatasetNotFoundError, match=r"Class folders without images in .*'moth'"
    ):
        get(tmp_path, "test")


def test_split_folder_without_class_folders(tmp_path):
    write_tree(tmp_path, {"train": LAYOUT["train"]})
    os.makedirs(tmp_path / "val")
    write_image(str(tmp_path / "val" / "loose.jpg"))
    with pytest.raises(data.DatasetNotFoundError, match=r"No class folders in .*val"):
        get(tmp_path, "train")


def test_class_in_train_but_not_in_val_is_named(tmp_path):
    layout = {**LAYOUT, "val": {"ant": ["v.png"], "zebra": ["v.png"], "wasp": ["v.png"]}}
    write_tree(tmp_path, layout)
    for split in ("train", "test"):  # refused whichever split is asked for first
        with pytest.raises(ValueError) as error:
            get(tmp_path, split)
        message = str(error.value)
        assert f"in {os.path.join(tmp_path, 'train')} only: 'moth'" in message
        assert f"in {os.path.join(tmp_path, 'val')} only: 'wasp'" in message
        assert "same class folders" in message


def test_missing_val_folder(tmp_path):
    write_tree(tmp_path, {"train": LAYOUT["train"]})
    assert data.resolve_source("imagenet2012", str(tmp_path)) == "folder"
    with pytest.raises(data.DatasetNotFoundError, match=r"val is not a directory"):
        get(tmp_path, "train")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_unreadable_image_names_the_file(tmp_path, damage):
    write_tree(tmp_path, LAYOUT)
    path = os.path.join(tmp_path, "train", "moth", "m.jpeg")
    if damage == "garbage":
        content = b"this is not an image"
    else:
        write_image(path, 200, 150, seed=1)
        with open(path, "rb") as handle:
            content = handle.read()[:800]
    with open(path, "wb") as handle:
        handle.write(content)
    train = get(tmp_path, "train", augment=False)
    with pytest.raises(image_folder.UnreadableImageError) as error:
        list(train.epoch(0))  # raised through the grain threads, in the consuming thread
    assert error.value.path == path
    assert f"Cannot decode image {path}" in str(error.value) and "'moth'" in str(error.value)


def test_folder_source_needs_data_dir():
    with pytest.raises(ValueError, match="needs data_dir"):
        data.get_dataset("imagenet2012", "train", batch_size=2, train=True, source="folder", **HOST)
    assert data.resolve_source("imagenet2012", None) == "tfds"
    with pytest.raises(ValueError, match=r"source 'cifar_python' is not a reader of imagenet2012"):
        data.resolve_source("imagenet2012", None, "cifar_python")
