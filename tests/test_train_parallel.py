"""The data-parallel step on 8 simulated devices equals the per-device program run shard
by shard on one device with the gradients averaged (docs/method.md §10: every trainable parameter,
the calibration module's too, is data-parallel)."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from processes import environment

SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np, optax
    from sastc_jax import calibration, losses, models, parallel, train
    from sastc_jax.train import step

    mesh = parallel.make_mesh()
    assert mesh.size == 8, mesh
    devices, local, steps = 8, 8, 2  # local batch 8: embedding d = 2
    rng = np.random.default_rng(0)
    images = rng.normal(size=(devices * local, 16, 16, 3)).astype(np.float32)
    labels = rng.integers(0, 10, size=devices * local).astype(np.int32)
    batch = {"image": images, "label": labels, "mask": np.ones(devices * local, bool)}

    student = models.get_model("convnet_snn", num_classes=10, time_steps=steps,
                               widths=(8, 16, 32))
    teacher = models.get_model("convnet_ann", num_classes=10, widths=(8, 16, 32))
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    teacher_vars = teacher.init(k1, images[:local], train=False)
    student_vars = student.init(k2, images[:local], train=False)
    student_taps = models.get_taps(student.apply(student_vars, images[:local], train=False,
                                                 mutable=["intermediates"])[1])
    teacher_taps = models.get_taps(teacher.apply(teacher_vars, images[:local], train=False,
                                                 mutable=["intermediates"])[1])
    calibrator = calibration.calibration_module(student_taps, teacher_taps, method="sastc")
    params = {"student": student_vars["params"],
              "calibration": calibrator.init(k3, student_taps, teacher_taps)["params"]}
    tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.01, momentum=0.9))
    objective = step.student_objective(student, teacher, calibrator, "sastc",
                                        losses.LossWeights())

    train_step = step.make_train_step(objective, tx, optax.constant_schedule(0.01), mesh)
    state = train.new_state(parallel.replicate(params, mesh), student_vars["batch_stats"],
                            tx, mesh)
    state, parts = train_step(state, parallel.replicate(teacher_vars, mesh),
                        parallel.shard_batch(batch, mesh))

    # Reference: the same per-device objective, shard by shard on one device.
    grads, shard_stats = [], []
    for k in range(devices):
        shard = {name: value[k * local:(k + 1) * local] for name, value in batch.items()}
        grad, (_, stats) = jax.grad(objective, has_aux=True)(
            params, student_vars["batch_stats"], teacher_vars, shard)
        grads.append(grad)
        shard_stats.append(stats)
    mean_grad = jax.tree.map(lambda *g: sum(g) / devices, *grads)
    updates, _ = tx.update(mean_grad, tx.init(params), params)
    expected = optax.apply_updates(params, updates)

    result = {}
    # |difference| relative to the leaf's scale (absolute below 1).
    diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))
                                             / max(np.max(np.abs(np.asarray(b))), 1.0)),
                         state.params, expected)
    assert all(np.isfinite(x) for x in jax.tree.leaves(diffs)), "non-finite parameters"
    result["max_relative_param_diff"] = max(jax.tree.leaves(diffs))
    result["param_change"] = max(jax.tree.leaves(jax.tree.map(
        lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
        expected, params)))
    stats_diff = 0.0
    for k in range(devices):
        got = jax.tree.map(lambda x: np.asarray(x)[k], state.batch_stats)
        stats_diff = max(stats_diff, max(jax.tree.leaves(jax.tree.map(
            lambda a, b: float(np.max(np.abs(a - np.asarray(b)))), got, shard_stats[k]))))
    result["max_batch_stats_diff"] = stats_diff
    identical = True
    for leaf in jax.tree.leaves(state.params):
        copies = [np.asarray(shard.data) for shard in leaf.addressable_shards]
        assert len(copies) == devices
        identical &= all(np.array_equal(copies[0], c) for c in copies[1:])
    result["replicas_identical"] = bool(identical)
    result["calibration_leaves"] = len(jax.tree.leaves(state.params["calibration"]))
    print("RESULT" + json.dumps(result))
    """
)


@pytest.mark.slow  # about 1.5 minutes on 2 cores
def test_eight_devices_equal_per_device_program_on_one_device():
    env = environment(XLA_FLAGS="--xla_force_host_platform_device_count=8")
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    line = next(x for x in completed.stdout.splitlines() if x.startswith("RESULT"))
    result = json.loads(line[len("RESULT") :])
    assert result["param_change"] > 1e-4  # the step really moved the parameters
    assert result["max_relative_param_diff"] < 1e-5
    assert result["max_batch_stats_diff"] < 1e-5  # per-device statistics stay per device
    assert result["replicas_identical"]  # student and calibration copies agree on all devices
    assert result["calibration_leaves"] > 0


LEARNED_SCALE_SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np, optax
    from sastc_jax import configuration, parallel, train
    from sastc_jax.train import step

    mesh = parallel.make_mesh()
    assert mesh.size == 2, mesh
    devices, local = 2, 8
    config = configuration.base_config()
    config.method = "sastc"
    config.time_steps = 2
    config.teacher.model = "convnet_ann"
    config.teacher.model_kwargs.widths = (4, 8, 8)
    config.student.model = "convnet_snn"
    config.student.model_kwargs.widths = (4, 8, 8)
    config.loss.attention_scale = 2.0
    config.loss.learn_attention_scale = True
    config.loss.beta = 100.0
    rng = np.random.default_rng(1)
    images = rng.normal(size=(devices * local, 12, 12, 1)).astype(np.float32)
    labels = rng.integers(0, 10, size=devices * local).astype(np.int32)
    batch = {"image": images, "label": labels, "mask": np.ones(devices * local, bool)}
    parts = train.build_distillation(config, 10, images[:local])
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    teacher_vars = parts.teacher.init(k1, images[:local], train=False)
    student_vars = parts.student.init(k2, images[:local], train=False)
    params = {"student": student_vars["params"], "calibration": parts.init_calibration(k3)}
    initial = float(params["calibration"]["log_scale"])
    lr = 0.5  # large, so that the log-scale update is far above float noise
    tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(lr, momentum=0.9))
    train_step = step.make_train_step(parts.objective, tx, optax.constant_schedule(lr), mesh)
    state = train.new_state(parallel.replicate(params, mesh), student_vars["batch_stats"],
                            tx, mesh)
    state, _ = train_step(state, parallel.replicate(teacher_vars, mesh),
                          parallel.shard_batch(batch, mesh))

    # Reference on one device: the per-device objective on each shard, gradients averaged.
    shard_grads = []
    for k in range(devices):
        shard = {name: value[k * local:(k + 1) * local] for name, value in batch.items()}
        grad, _ = jax.grad(parts.objective, has_aux=True)(
            params, student_vars["batch_stats"], teacher_vars, shard)
        shard_grads.append(float(grad["calibration"]["log_scale"]))
    mean_grad = float(np.mean(shard_grads))
    expected = initial - lr * (mean_grad + 5e-4 * initial)
    copies = [float(np.asarray(s.data))
              for s in state.params["calibration"]["log_scale"].addressable_shards]
    print("RESULT" + json.dumps({"initial": initial, "shard_grads": shard_grads,
                                 "expected": expected, "copies": copies}))
    """
)


@pytest.mark.slow  # about 75 s on 2 shared cores
def test_learned_attention_scale_is_data_parallel_on_two_devices():
    """The learned log-scale of the attention is averaged over devices like every parameter:
    one data-parallel step on 2 simulated devices moves it exactly as the single-device
    reference (each shard's gradient, averaged, then the SGD update)."""
    env = environment(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    completed = subprocess.run(
        [sys.executable, "-c", LEARNED_SCALE_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    line = next(x for x in completed.stdout.splitlines() if x.startswith("RESULT"))
    result = json.loads(line[len("RESULT") :])
    assert result["initial"] == pytest.approx(np.log(2.0), rel=1e-6)
    first, second = result["shard_grads"]
    # The shards disagree, so a missing pmean would show; the step used their mean.
    assert abs(first - second) > 1e-3 * max(abs(first), abs(second))
    assert abs(result["expected"] - result["initial"]) > 1e-4
    update = result["expected"] - result["initial"]
    for copy in result["copies"]:
        assert copy - result["initial"] == pytest.approx(update, rel=1e-5)
