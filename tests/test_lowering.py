"""Every train and eval step the trainer builds lowers for the GPU and the TPU, without a
device of either kind (``jax.export`` for ``('cuda', 'tpu')``), and holds none of the
CPU-only forms of :mod:`sastc_jax.ops` once ``config.ops`` is resolved as those platforms
resolve it (``'auto'`` -> ``'xla'``).

The CPU forms are recognised in the exported StableHLO text by their named scopes
(:data:`sastc_jax.ops.cpu.NAMED_SCOPE`, :data:`sastc_jax.ops.remat.NAMED_SCOPE`), which
every computation of theirs runs inside and which the module's locations carry; a custom
call is allowed only to the platform-neutral targets of :data:`PORTABLE_CUSTOM_CALLS`.
``test_the_detector_finds_the_cpu_forms`` proves the check catches a ``'cpu_matmul'``
program.
"""

import json
import re
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from processes import environment, run
from test_configs import load_config

from sastc_jax import configuration, data, losses, neurons, ops, parallel, train
from sastc_jax.ops import cpu, remat
from sastc_jax.train import step as step_lib

PLATFORMS = ("cuda", "tpu")
BACKENDS = {"cuda": "gpu", "tpu": "tpu"}  # jax.default_backend() on each platform
CPU_SCOPES = (cpu.NAMED_SCOPE, remat.NAMED_SCOPE)
# Custom-call targets every platform implements (sharding annotations of the partitioner).
PORTABLE_CUSTOM_CALLS = frozenset({"Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape"})
LOCATION = re.compile(r'loc\("([^"]*)"')
CUSTOM_CALL = re.compile(r'custom_call\s*@([\w.$-]+)|call_target_name\s*=\s*"([^"]+)"')
TINY_WIDTHS = (8, 16, 32)
TINY_BATCH = 4  # the smallest per-device batch the attention embedding (B // 4) allows


def resolved_ops() -> str:
    """What ``config.ops = 'auto'`` becomes on the exported platforms (one name for both)."""
    names = {ops.select("auto", backend=BACKENDS[platform]).name for platform in PLATFORMS}
    assert len(names) == 1, names
    return names.pop()


def cpu_forms_in(module_text: str) -> list[str]:
    """The CPU-only forms a StableHLO module's text holds, one line per finding.

    A finding is a location whose name stack has a component equal to one of
    :data:`CPU_SCOPES`, or a custom call to a target outside
    :data:`PORTABLE_CUSTOM_CALLS`. Raises ``AssertionError`` if the text carries no
    named locations at all: then the absence of the scopes would prove nothing.
    """
    names = LOCATION.findall(module_text)
    assert any("/" in name for name in names), "the module text carries no named locations"
    findings = sorted(
        {
            f"scope {scope}: {name}"
            for name in names
            for scope in set(name.split("/")) & set(CPU_SCOPES)
        }
    )
    targets = {a or b for a, b in CUSTOM_CALL.findall(module_text)}
    findings += [f"custom call {target}" for target in sorted(targets - PORTABLE_CUSTOM_CALLS)]
    return findings


def exported_text(function, *args) -> str:
    exported = jax.export.export(function, platforms=PLATFORMS)(*args)
    assert exported.platforms == PLATFORMS
    return exported.mlir_module()


def tiny_config(
    method: str, time_steps: int, dtype: str, remat: bool, ops_name: str | None = None
) -> ml_collections.ConfigDict:
    """CIFAR-10 convnet teacher and student of widths :data:`TINY_WIDTHS`."""
    config = configuration.base_config()
    config.method, config.time_steps, config.dtype, config.remat = method, time_steps, dtype, remat
    config.ops = ops_name or resolved_ops()
    config.teacher.model, config.student.model = "convnet_ann", "convnet_snn"
    config.teacher.model_kwargs = ml_collections.ConfigDict({"widths": TINY_WIDTHS})
    config.student.model_kwargs = ml_collections.ConfigDict({"widths": TINY_WIDTHS})
    return config


def file_config(name: str, **overrides) -> ml_collections.ConfigDict:
    """``configs/<name>.py``'s config with ``overrides`` and the resolved ops."""
    config = load_config(name)
    config.ops = resolved_ops()
    config.update(overrides)
    return config


def step_programs(config: ml_collections.ConfigDict, local_batch: int, mesh) -> dict:
    """``{'train': (train_step, args), 'eval': (eval_step, args)}`` as the trainer builds
    them from ``config`` over ``mesh``, with abstract arguments (nothing is computed)."""
    spec = data.dataset_spec(config.dataset.name)
    frame = spec.input_shape(config.dataset.image_size or None)
    example = (config.time_steps, *frame) if spec.event_frames else frame
    sample = np.zeros((local_batch, *example), np.float32)
    parts = train.build_distillation(config, spec.num_classes, sample)
    tx, schedule = step_lib.make_optimizer(config.student.optimizer, steps_per_epoch=10)
    keys = jax.random.split(jax.random.key(0), 3)

    def initial():
        variables = parts.student.init(keys[0], jnp.asarray(sample), train=False)
        params = {"student": variables["params"]}
        if parts.calibrator is not None:
            params["calibration"] = parts.init_calibration(keys[1])
        frozen = {}
        if parts.teacher is not None:
            frozen = parts.teacher.init(keys[2], jnp.asarray(sample), train=False)
        state = step_lib.TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=jax.tree.map(
                lambda x: jnp.broadcast_to(x, (mesh.size, *x.shape)), variables["batch_stats"]
            ),
            opt_state=tx.init(params),
        )
        return state, frozen, variables["batch_stats"]

    state, frozen, batch_stats = jax.eval_shape(initial)
    global_batch = local_batch * mesh.size
    batch = {
        "image": jax.ShapeDtypeStruct((global_batch, *example), jnp.float32),
        "label": jax.ShapeDtypeStruct((global_batch,), jnp.int32),
        "mask": jax.ShapeDtypeStruct((global_batch,), jnp.bool_),
    }
    train_step = step_lib.make_train_step(parts.objective, tx, schedule, mesh)
    eval_step = step_lib.make_eval_step(parts.student, mesh)
    eval_variables = {"params": state.params["student"], "batch_stats": batch_stats}
    return {
        "train": (train_step, (state, frozen, batch)),
        "eval": (eval_step, (eval_variables, batch)),
    }


def assert_lowers_without_cpu_forms(config, local_batch: int, mesh, which=("train", "eval")):
    programs = step_programs(config, local_batch, mesh)
    for name in which:
        function, args = programs[name]
        assert cpu_forms_in(exported_text(function, *args)) == [], name


# T=2 is the unrolled neuron, T=16 its loop form (neurons.FULL_UNROLL_MAX_T). Every method
# at both; the dtype and remat cycle over the methods so that each (T, dtype, remat)
# combination is exported at least once.
COMBINATIONS = [("float32", False), ("bfloat16", True), ("bfloat16", False), ("float32", True)]
TRAIN_CASES = [
    (method, time_steps, *COMBINATIONS[(i + j) % len(COMBINATIONS)])
    for i, method in enumerate(losses.METHODS)
    for j, time_steps in enumerate((2, 16))
]


def test_cases_cover_every_method_and_every_combination():
    assert {case[0] for case in TRAIN_CASES} == set(losses.METHODS)
    if len(losses.METHODS) >= len(COMBINATIONS):
        assert {case[1:] for case in TRAIN_CASES} == {
            (t, *combination) for t in (2, 16) for combination in COMBINATIONS
        }
    assert neurons.FULL_UNROLL_MAX_T == 8  # 2 is unrolled, 16 the loop form


@pytest.mark.parametrize(("method", "time_steps", "dtype", "remat"), TRAIN_CASES)
def test_train_step_lowers_for_gpu_and_tpu(method, time_steps, dtype, remat):
    config = tiny_config(method, time_steps, dtype, remat)
    assert config.ops == "xla"
    assert_lowers_without_cpu_forms(config, TINY_BATCH, parallel.make_mesh(), ("train",))


# The eval step depends on the student only (train.distill_stage builds it from
# parts.student whatever the method).
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("time_steps", [2, 16])
def test_eval_step_lowers_for_gpu_and_tpu(time_steps, dtype):
    config = tiny_config("ce", time_steps, dtype, remat=False)
    assert_lowers_without_cpu_forms(config, TINY_BATCH, parallel.make_mesh(), ("eval",))


def test_the_detector_finds_the_cpu_forms():
    config = tiny_config("sastc", 2, "float32", remat=True, ops_name="cpu_matmul")
    programs = step_programs(config, TINY_BATCH, parallel.make_mesh())
    findings = cpu_forms_in(exported_text(*programs["train"][:1], *programs["train"][1]))
    assert any(f.startswith(f"scope {cpu.NAMED_SCOPE}:") for f in findings), findings[:5]
    assert any(f.startswith(f"scope {remat.NAMED_SCOPE}:") for f in findings), findings[:5]
    assert cpu_forms_in('loc("jit(f)/add") custom_call @lapack_sgesdd') == [
        "custom call lapack_sgesdd"
    ]
    with pytest.raises(AssertionError, match="no named locations"):
        cpu_forms_in("module { }")


def test_lif_tangent_primitive_lowers_for_gpu_and_tpu():
    """Forward mode through the loop form binds ``lif_tangent`` itself (reverse mode
    transposes it away), so exporting a JVP exercises its lowering rule."""
    currents = jax.ShapeDtypeStruct((16, 4, 8), jnp.float32)

    def tangents(x):
        return jax.jvp(neurons.lif, (x,), (jnp.ones_like(x),))

    assert "lif_tangent" in str(jax.make_jaxpr(tangents)(currents))
    assert cpu_forms_in(exported_text(jax.jit(tangents), currents)) == []


DATA_PARALLEL = textwrap.dedent(
    """
    import json
    import sys
    import jax
    from sastc_jax import parallel
    sys.path.insert(0, "tests")  # run from the repository root
    import test_lowering as lowering

    mesh = parallel.make_mesh()
    assert mesh.size == 4, mesh
    results = {}
    for method, time_steps in (("sastc", 2), ("kd", 16)):
        config = lowering.tiny_config(method, time_steps, "float32", remat=False)
        programs = lowering.step_programs(config, lowering.TINY_BATCH, mesh)
        for name, (function, args) in programs.items():
            exported = jax.export.export(function, platforms=lowering.PLATFORMS)(*args)
            results[f"{method} T={time_steps} {name}"] = {
                "devices": exported.nr_devices,
                "findings": lowering.cpu_forms_in(exported.mlir_module()),
            }
    print(json.dumps(results))
    """
)


def test_data_parallel_steps_lower_for_gpu_and_tpu():
    flags = "--xla_force_host_platform_device_count=4"
    result = run([sys.executable, "-c", DATA_PARALLEL], environment(XLA_FLAGS=flags), 300)
    assert result.returncode == 0, result.stdout[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    results = json.loads(lines[-1])
    assert sorted(results) == [
        f"{c} {n}" for c in ("kd T=16", "sastc T=2") for n in ("eval", "train")
    ]
    for name, result in results.items():
        assert result == {"devices": 4, "findings": []}, name


@pytest.mark.slow
def test_imagenet_step_lowers_for_gpu_and_tpu():
    config = file_config("imagenet_t4", method="sastc", remat=True)
    assert config.time_steps == 4 and config.dtype == "bfloat16"
    assert config.student.model == "resnet34_snn"
    assert_lowers_without_cpu_forms(config, TINY_BATCH, parallel.make_mesh())


@pytest.mark.slow
def test_dvs_step_lowers_for_gpu_and_tpu():
    config = file_config("dvs_gesture", method="sastc")
    assert config.time_steps == 10 and config.student.model == "vgg11_snn"
    assert_lowers_without_cpu_forms(config, TINY_BATCH, parallel.make_mesh())
