"""ops: select() decides once; under 'xla' none of the CPU forms is in the computation."""

import jax
import jax.numpy as jnp
import pytest

from sastc_jax import calibration, models, ops
from sastc_jax.ops import cpu, remat

# Ours, by name: the named scopes every computation of the CPU forms runs in, and the
# backward rules of their custom_vjps (ops/cpu.py, ops/remat.py). The neuron surrogates
# (neurons.heaviside, neurons.lif) are custom_jvps and not among them.
CPU_SCOPES = (cpu.NAMED_SCOPE, remat.NAMED_SCOPE)
CPU_BACKWARD_RULES = ("_matmul_kernel_gradient_backward", "_remat_backward")
T, B = 2, 4


def test_select_resolves_auto_by_backend_and_keeps_explicit_names():
    assert ops.select("auto", backend="cpu") is ops.CPU_MATMUL
    assert ops.select("auto", backend="gpu") is ops.XLA
    assert ops.select("auto", backend="tpu") is ops.XLA
    assert ops.select("xla", backend="cpu") is ops.XLA
    assert ops.select("cpu_matmul", backend="gpu") is ops.CPU_MATMUL
    assert ops.select("auto") is ops.select("auto", backend=jax.default_backend())
    assert ops.XLA.conv_general_dilated is jax.lax.conv_general_dilated
    assert {ops.XLA.name, ops.CPU_MATMUL.name} == {"xla", "cpu_matmul"}
    assert len({ops.XLA, ops.CPU_MATMUL, ops.select("xla")}) == 2  # hashable values


def test_unknown_name_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="Unknown ops 'gpu'; allowed: auto, xla, cpu_matmul"):
        ops.select("gpu")


def test_models_and_calibration_default_to_auto():
    model = models.get_model("convnet_snn", num_classes=10, time_steps=T)
    teacher = models.get_model("resnet19_ann", num_classes=10)
    module = calibration.Calibration(((8, 8, 4),), ((8, 8, 4),), batch_size=B)
    assert model.ops is teacher.ops is module.ops is ops.select("auto")
    chosen = models.get_model("vgg11_snn", num_classes=10, time_steps=T, ops=ops.XLA)
    assert chosen.ops is ops.XLA


def names_in(jaxpr) -> list[str]:
    """Every equation's name stack, and the backward rule of every custom_vjp call, in
    ``jaxpr`` and its sub-jaxprs."""
    names = []
    for eqn in jaxpr.eqns:
        names.append(str(eqn.source_info.name_stack))
        if eqn.primitive.name.startswith("custom_vjp"):
            names.append(str(eqn.params.get("bwd", "")))
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    names.extend(names_in(sub))
    return names


def student_and_calibration_gradient_jaxpr(chosen: ops.Ops):
    """make_jaxpr of d(student CE-like + SASTC loss)/d(student, calibration params)."""
    student = models.get_model(
        "resnet19_snn",
        num_classes=10,
        time_steps=T,
        stage_sizes=(1, 1),
        widths=(4, 8),
        strides=(1, 2),
        stem_width=4,
        hidden_features=None,
        remat=True,
        ops=chosen,
    )
    images = jnp.ones((B, 16, 16, 3))
    variables = student.init(jax.random.key(0), images, train=False)
    _, mutated = jax.eval_shape(
        lambda v: student.apply(v, images, mutable=["batch_stats", "intermediates"]), variables
    )
    student_taps = models.get_taps(mutated)
    teacher_taps = [jnp.ones((B, *tap.shape[2:])) for tap in student_taps]
    calibrator = calibration.calibration_module(student_taps, teacher_taps, remat=True, ops=chosen)
    calibration_params = calibration.init_calibration(jax.random.key(1), student_taps, teacher_taps)

    def loss(params):
        logits, mutated = student.apply(
            {"params": params["student"], "batch_stats": variables["batch_stats"]},
            images,
            mutable=["batch_stats", "intermediates"],
        )
        taps = models.get_taps(mutated)
        sastc, _ = calibrator.apply(params["calibration"], taps, teacher_taps)
        return jnp.sum(logits) + sastc

    params = {"student": variables["params"], "calibration": calibration_params}
    return jax.make_jaxpr(jax.grad(loss))(params).jaxpr


@pytest.mark.slow
def test_xla_ops_hold_none_of_the_cpu_forms():
    jaxpr = student_and_calibration_gradient_jaxpr(ops.XLA)
    names = "\n".join(names_in(jaxpr))
    for ours in (*CPU_SCOPES, *CPU_BACKWARD_RULES):
        assert ours not in names


def test_cpu_matmul_ops_hold_the_cpu_forms():
    names = "\n".join(names_in(student_and_calibration_gradient_jaxpr(ops.CPU_MATMUL)))
    for ours in (*CPU_SCOPES, "_matmul_kernel_gradient_backward"):
        assert ours in names, ours
