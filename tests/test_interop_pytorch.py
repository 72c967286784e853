"""Teachers imported from PyTorch files compute what the PyTorch models compute.

For every supported architecture the PyTorch model of ``torch_models`` gets random weights
and batch-norm statistics, is saved in every accepted file form, imported, and our logits
and taps must equal PyTorch's (eval mode) to 1e-4 of their largest magnitude. Then the bad
inputs, and the command line importing a teacher.
"""

import functools
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # the machine's cores are shared by JAX and other test processes
safetensors_torch = pytest.importorskip("safetensors.torch")

import torch_models  # noqa: E402  (needs torch)
from processes import REPO, environment, run  # noqa: E402

from sastc_jax import data, models  # noqa: E402
from sastc_jax.checkpoints import CheckpointError, TeacherMismatchError  # noqa: E402
from sastc_jax.interop import pytorch as torch_import  # noqa: E402
from sastc_jax.metrics import read_metrics  # noqa: E402

RTOL = 1e-4

# our model -> (PyTorch builder, classes, square input sizes checked)
CASES = {
    "resnet18_ann": (torch_models.torchvision_resnet18, 1000, (32, 112)),
    "resnet34_ann": (torch_models.torchvision_resnet34, 1000, (224,)),
    "resnet19_ann": (torch_models.ReleaseResNet19, 10, (32,)),
    "wrn28_4_ann": (torch_models.ReleaseWRN, 10, (32,)),
    "pyramidnet20_ann": (torch_models.ReleasePyramidNet, 10, (32,)),
}


def save_every_form(state_dict: dict, directory) -> list:
    """The state dict as each accepted file form; returns the paths."""
    prefixed = {f"module.{name}": tensor for name, tensor in state_dict.items()}
    optimizer = {  # an SGD state_dict: tensors outside the model's state dict
        "state": {0: {"momentum_buffer": torch.ones(3)}},
        "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0]}],
    }
    forms = {
        "bare.pth": state_dict,  # torchvision's published weights
        # the release's teacher checkpoints: a DataParallel model's state dict and more
        "ann_model_best.pth.tar": {
            "epoch": 199,
            "state_dict": prefixed,
            "best_prec": 95.1,
            "optimizer": optimizer,
        },
        "model.pt": {"model": state_dict, "optimizer": optimizer, "epoch": 3},
        "net.pth": {"net": state_dict, "acc": 95.1, "epoch": 199},
        "data_parallel.pth": prefixed,
    }
    paths = []
    for name, contents in forms.items():
        torch.save(contents, directory / name)
        paths.append(directory / name)
    tensors = {name: tensor.contiguous() for name, tensor in state_dict.items()}
    safetensors_torch.save_file(tensors, directory / "weights.safetensors")
    paths.append(directory / "weights.safetensors")
    return paths


def assert_close(ours, theirs, what: str) -> None:
    theirs = np.asarray(theirs)
    scale = float(np.abs(theirs).max())
    assert scale > 0, f"{what} is all zeros: the comparison would prove nothing"
    np.testing.assert_allclose(np.asarray(ours), theirs, rtol=RTOL, atol=RTOL * scale, err_msg=what)


@pytest.mark.parametrize("model_name", list(CASES))
def test_imported_teacher_matches_pytorch(model_name, tmp_path):
    builder, num_classes, sizes = CASES[model_name]
    generator = torch.Generator().manual_seed(0)
    reference = torch_models.randomize(builder(num_classes=num_classes), generator)
    model = models.get_model(model_name, num_classes=num_classes)

    first, *others = save_every_form(reference.state_dict(), tmp_path)
    variables, record = torch_import.load_teacher(
        first, model, model_name, (32, 32, 3), num_classes=num_classes
    )
    assert record["model"] == model_name and record["num_classes"] == num_classes
    assert set(variables) == {"params", "batch_stats"}
    tensors = torch_import.read_state_dict(first)
    for path in others:  # every file form reads as the very same tensors
        other = torch_import.read_state_dict(path)
        assert other.keys() == tensors.keys(), path.name
        assert all(np.array_equal(other[name], tensors[name]) for name in tensors), path.name

    apply = jax.jit(functools.partial(model.apply, train=False, mutable=["intermediates"]))
    for size in sizes:
        images = torch.randn(2, 3, size, size, generator=generator)
        with torch.no_grad():
            logits, taps = reference(images)
        ours, sown = apply(variables, images.permute(0, 2, 3, 1).numpy())
        assert_close(ours, logits.numpy(), f"{model_name} logits at {size}x{size}")
        our_taps = models.get_taps(sown)
        assert len(our_taps) == len(taps)
        for index, (our_tap, tap) in enumerate(zip(our_taps, taps, strict=True)):
            assert_close(
                np.transpose(our_tap, (0, 3, 1, 2)), tap.numpy(), f"{model_name} tap {index}"
            )


# --------------------------------------------------------------------------- bad inputs


def import_file(path, model_name: str, num_classes: int = 10):
    model = models.get_model(model_name, num_classes=num_classes)
    return torch_import.load_teacher(path, model, model_name, (32, 32, 3), num_classes=num_classes)


def test_another_architecture_names_missing_and_unexpected_keys(tmp_path):
    torch.save(torch_models.ReleaseWRN().state_dict(), tmp_path / "wrn.pth")
    with pytest.raises(TeacherMismatchError) as error:
        import_file(tmp_path / "wrn.pth", "pyramidnet20_ann")
    message = str(error.value)
    assert "'pyramidnet20_ann'" in message and "PyramidNet-20" in message
    assert "missing keys: bn_final.{bias,running_mean,running_var,weight}, " in message
    assert "unexpected keys: block1.layer.0.bn1.{bias,running_mean,running_var," in message
    assert "block1.layer.0.convShortcut.weight" in message
    assert "mis-shaped: fc.weight (10, 256) (needs (10, 216)), bn1.bias (256,)" in message


def test_a_shallower_resnet_names_the_missing_blocks(tmp_path):
    torch.save(torch_models.torchvision_resnet18().state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(TeacherMismatchError) as error:
        import_file(tmp_path / "resnet18.pth", "resnet34_ann", num_classes=1000)
    message = str(error.value)
    assert "torchvision resnet34" in message and "'resnet34_ann'" in message
    assert "missing keys: layer1.2.bn1.{bias,running_mean,running_var,weight}" in message
    # 8 blocks more (1 + 2 + 4 + 1) of 4 modules each: 8 modules shown, 24 counted
    assert "layer1.2.conv2.weight, layer2.2.bn1" in message and "and 24 more modules" in message
    assert "unexpected keys" not in message and "mis-shaped" not in message


def test_other_widths_are_named_mis_shaped(tmp_path):
    wider = torch_models.ReleasePyramidNet(alpha=240.0)  # widths 16 + 240 k / 9
    torch.save({"net": wider.state_dict()}, tmp_path / "pyramidnet.pth")
    with pytest.raises(TeacherMismatchError) as error:
        import_file(tmp_path / "pyramidnet.pth", "pyramidnet20_ann")
    message = str(error.value)
    assert "mis-shaped: " in message and "missing keys" not in message
    assert "layer1.0.conv1.weight (43, 16, 3, 3) (needs (38, 16, 3, 3))" in message


def test_an_extra_tensor_is_unexpected(tmp_path):
    state_dict = torch_models.ReleasePyramidNet().state_dict()
    state_dict["fc2.weight"] = torch.zeros(10, 216)
    safetensors_torch.save_file(state_dict, tmp_path / "extra.safetensors")
    with pytest.raises(TeacherMismatchError, match=r"unexpected keys: fc2\.weight"):
        import_file(tmp_path / "extra.safetensors", "pyramidnet20_ann")


def test_wrong_number_of_classes(tmp_path):
    torch.save(torch_models.ReleaseResNet19(num_classes=100).state_dict(), tmp_path / "c100.pth")
    with pytest.raises(TeacherMismatchError) as error:
        import_file(tmp_path / "c100.pth", "resnet19_ann", num_classes=10)
    assert str(error.value).endswith(
        "classifies 100 classes (layer4.2.weight has shape (100, 512)) but the dataset has "
        "10 (an image folder has one class per class folder). Use a teacher trained on these "
        "classes, or data with the teacher's classes: config.dataset.name, or "
        "config.dataset.data_dir pointing at a folder holding all 100 class folders."
    )


@pytest.mark.parametrize("name", ["teacher.pth", "teacher.safetensors"])
def test_truncated_file(name, tmp_path):
    state_dict = torch_models.ReleasePyramidNet().state_dict()
    whole = tmp_path / f"whole_{name}"
    if name.endswith(".safetensors"):
        safetensors_torch.save_file(state_dict, whole)
    else:
        torch.save(state_dict, whole)
    contents = whole.read_bytes()
    (tmp_path / name).write_bytes(contents[: len(contents) // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupt or not in this format"):
        import_file(tmp_path / name, "pyramidnet20_ann")


def test_a_file_without_a_state_dict(tmp_path):
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "no_weights.pth")
    with pytest.raises(CheckpointError, match="not a state_dict: expected a dict of tensors"):
        import_file(tmp_path / "no_weights.pth", "pyramidnet20_ann")


def test_unsupported_architecture_and_missing_file(tmp_path):
    torch.save(torch_models.ReleasePyramidNet().state_dict(), tmp_path / "teacher.pth")
    with pytest.raises(ValueError, match="'vgg11_ann' cannot be imported from PyTorch"):
        import_file(tmp_path / "teacher.pth", "vgg11_ann")
    with pytest.raises(FileNotFoundError, match="no file at"):
        import_file(tmp_path / "absent.pth", "pyramidnet20_ann")


def test_missing_torch_names_the_extra(tmp_path, monkeypatch):
    torch.save(torch_models.ReleasePyramidNet().state_dict(), tmp_path / "teacher.pth")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'sastc-jax\[torch\]'"):
        import_file(tmp_path / "teacher.pth", "pyramidnet20_ann")


def test_file_suffixes():
    for path in ("a.pth", "a.PT", "b/a.pth.tar", "a.safetensors"):
        assert torch_import.is_torch_checkpoint(path)
    for path in ("", "teacher/final", "a.npz", "a.tar"):
        assert not torch_import.is_torch_checkpoint(path)


# ------------------------------------------------------------------------- command line

CLI = [
    "--config=configs/cifar10_t2.py",
    "--config.teacher.model=pyramidnet20_ann",
    "--config.student.model=convnet_snn",
    "--config.teacher.optimizer.batch_size=8",
    "--config.student.optimizer.batch_size=8",
    "--config.student.optimizer.epochs=1",
    "--config.max_steps_per_epoch=2",
]
NUM_EXAMPLES = 24


def cli(workdir, *overrides):
    command = [sys.executable, str(REPO / "tests" / "mock_main.py"), f"--workdir={workdir}"]
    env = environment(MOCK_NUM_EXAMPLES=str(NUM_EXAMPLES))
    return run([*command, *CLI, *overrides], env)


@pytest.fixture(scope="module")
def release_teacher(tmp_path_factory):
    """A random PyramidNet-20 saved as the release saves its teachers: ``{'net': ...}``."""
    generator = torch.Generator().manual_seed(1)
    reference = torch_models.randomize(torch_models.ReleasePyramidNet(), generator)
    path = tmp_path_factory.mktemp("teacher") / "pyramidnet20.pth"
    torch.save({"net": reference.state_dict(), "acc": 0.0, "epoch": 1}, path)
    return reference, path


def pytorch_accuracy(reference) -> float:
    """The PyTorch model's accuracy on the mocked CIFAR-10 test split our pipeline reads."""
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES, policy=tfds.testing.MockPolicy.USE_CODE):
        split = data.get_dataset(
            "cifar10", "test", train=False, batch_size=8, time_steps=2, seed=0, num_devices=1
        )
        correct = 0
        for batch in split.epoch(0):
            with torch.no_grad():
                logits, _ = reference(torch.from_numpy(batch["image"]).permute(0, 3, 1, 2))
            hits = logits.argmax(1).numpy() == batch["label"]
            correct += int(np.sum(hits * batch["mask"]))
    return correct / NUM_EXAMPLES


def test_evaluate_an_imported_teacher(release_teacher, tmp_path):
    reference, path = release_teacher
    completed = cli(
        tmp_path,
        "--config.stage=evaluate",
        "--config.evaluate=teacher",
        f"--config.teacher.checkpoint={path}",
    )
    assert completed.returncode == 0, completed.stdout[-3000:]
    (summary,) = [r for r in read_metrics(tmp_path) if r["split"] == "summary"]
    assert summary["stage"] == "evaluate" and summary["evaluated"] == "teacher"
    assert summary["checkpoint"] == str(path) and summary["count"] == NUM_EXAMPLES
    assert summary["accuracy"] == pytest.approx(pytorch_accuracy(reference), abs=1e-9)
    assert not (tmp_path / "config.json").exists()  # a training run's config stays as it was


@pytest.mark.slow  # trains two SASTC steps with a PyramidNet teacher: about 2 minutes on 2 cores
def test_distil_from_an_imported_teacher(release_teacher, tmp_path):
    _, path = release_teacher
    completed = cli(tmp_path, "--config.stage=all", f"--config.teacher.checkpoint={path}")
    assert completed.returncode == 0, completed.stdout[-3000:]
    assert f"[teacher] importing {path}; skipping the stage" in completed.stdout
    summaries = [r for r in read_metrics(tmp_path) if r["split"] == "summary"]
    assert [s["stage"] for s in summaries] == ["student"] and summaries[0]["step"] == 2


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["--config.dataset.name=cifar100"],
            "classifies 10 classes (fc.weight has shape (10, 216)) but the dataset has 100",
        ),
        (["--config.stage=teacher"], "is a PyTorch file to import; the `teacher` stage"),
    ],
)
def test_command_line_errors(release_teacher, overrides, message, tmp_path):
    _, path = release_teacher
    completed = cli(
        tmp_path,
        "--config.stage=evaluate",
        "--config.evaluate=teacher",
        f"--config.teacher.checkpoint={path}",
        *overrides,
    )
    assert completed.returncode == 1, completed.stdout[-3000:]
    assert message in completed.stdout
