"""Self-attentive spatio-temporal calibration (docs/method.md §5) and its baselines (§8).

Shapes: B = calibration (per-device) batch, T = time steps, S = student taps,
K = teacher taps, d = attention embedding size (B // 4 by default).

- student taps ``F_s[i]``: ``(T, B, H_i, W_i, C_i)``;
- teacher taps ``F_a[j]``: ``(B, H_j, W_j, C_j)``, treated as constants.

Strategies (:class:`Strategy`, passed to :class:`Calibration`):

- :data:`SASTC`: attention over teacher taps per sample, time step and student tap;
- :data:`SPATIAL`: the same without a time index (student taps averaged over T
  first, so the attention has a time axis of length 1);
- :data:`LAYERWISE`: fixed pairs i <-> i with weight 1 at every step (needs S == K).

The functions take a strategy or its name (``method='sastc'``).

The notebook entry points are :func:`init_calibration` and :func:`calibration_loss`.

One forward definition serves init and apply: each (student, teacher) pair has a
:class:`~sastc_jax.regressors.Regressor` (its parameters, ``regressors_{i}_{j}``), and the
regressors that read the same aligned student tap run together as one
:class:`~sastc_jax.regressors.RegressorGroup` (:mod:`sastc_jax.regressors`). The
convolution and rematerialisation forms come from the module's ``ops``
(:mod:`sastc_jax.ops`).

Initialisation as the release, whose MLPs and regressors are plain ``nn.Linear`` /
``nn.Conv2d`` / ``nn.BatchNorm2d`` with PyTorch's defaults: weights and MLP biases
uniform in +-1/sqrt(fan_in), batch norm scale 1 and bias 0.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TypedDict, Unpack

import flax.linen as nn
import jax
import jax.numpy as jnp

from sastc_jax.models.layers import Dense, ops_field
from sastc_jax.ops import Ops
from sastc_jax.regressors import Regressor, RegressorGroup, align_pair

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Strategy:
    """How a calibration weighs its (student tap, teacher tap) pairs.

    Attributes:
      name: what configs and messages call it.
      attention: learn an attention over the teacher taps (query / key MLPs, every pair
        has a regressor); off: fixed pairs i <-> i with weight 1 (needs S == K).
      over_time: one attention per time step; off: the student taps are averaged over T
        first, so the attention and the errors have a time axis of length 1.
    """

    name: str
    attention: bool = True
    over_time: bool = True

    def pairs(self, num_student: int, num_teacher: int) -> list[tuple[int, int]]:
        """The (student, teacher) tap pairs that get a regressor."""
        if not self.attention:
            return [(i, i) for i in range(num_student)]
        return [(i, j) for i in range(num_student) for j in range(num_teacher)]

    def student_view(self, student_taps: Sequence[Array]) -> Sequence[Array]:
        """The student taps the pairs compare: as they are, or their mean over T."""
        if self.over_time:
            return student_taps
        return [jnp.mean(tap, axis=0, keepdims=True) for tap in student_taps]

    def validate(self, student_shapes, teacher_shapes, batch_size: int, embed_dim) -> None:
        """Raise ``ValueError`` for taps or a batch this strategy cannot calibrate."""
        if not self.attention and len(student_shapes) != len(teacher_shapes):
            raise ValueError(
                f"The {self.name!r} calibration pairs student tap i with teacher tap i, so it "
                f"needs as many student taps as teacher taps; got S={len(student_shapes)}, "
                f"K={len(teacher_shapes)}. Use an attention calibration "
                f"({', '.join(repr(s.name) for s in STRATEGIES.values() if s.attention)}), "
                "or models with equal tap counts."
            )
        if self.attention and embed_dim is None and batch_size < 4:
            raise ValueError(
                f"The calibration batch (per-device batch) is {batch_size}, but the attention "
                "embedding d = B // 4 needs B >= 4. Use a per-device batch of at least 4 "
                "(global batch >= 4 x device count) or set embed_dim explicitly."
            )


SASTC = Strategy("sastc")
SPATIAL = Strategy("spatial", over_time=False)
LAYERWISE = Strategy("layerwise", attention=False)
STRATEGIES = {strategy.name: strategy for strategy in (LAYERWISE, SPATIAL, SASTC)}


def get_strategy(method: str | Strategy) -> Strategy:
    """The strategy itself, or the one of this name (``ValueError`` for an unknown one)."""
    if isinstance(method, Strategy):
        return method
    if method not in STRATEGIES:
        raise ValueError(
            f"Unknown calibration method {method!r}; choose one of {tuple(STRATEGIES)}."
        )
    return STRATEGIES[method]


def similarity(features: Array) -> Array:
    """Unnormalised batch similarity ``A A^T`` over the last three axes.

    ``(..., B, H, W, C)`` -> ``(..., B, B)``.
    """
    flat = features.reshape(*features.shape[:-3], -1)
    return jnp.einsum("...bf,...cf->...bc", flat, flat)


class EmbeddingMLP(nn.Module):
    """Embeds similarity rows: dense(B -> 2d), ReLU, dense(2d -> d), L2-normalise."""

    embed_dim: int

    @nn.compact
    def __call__(self, rows: Array) -> Array:
        hidden = nn.relu(Dense(2 * self.embed_dim, name="hidden")(rows))
        embedding = Dense(self.embed_dim, name="out")(hidden)
        # x / max(|x|, 1e-12) with a finite gradient at x = 0: a sample whose spike map
        # is all zero has a zero similarity row, hence a zero embedding.
        squared_norm = jnp.sum(embedding * embedding, axis=-1, keepdims=True)
        return embedding * jax.lax.rsqrt(jnp.maximum(squared_norm, 1e-24))


class Calibration(nn.Module):
    """The SASTC module, built from tap shapes alone.

    Attributes:
      student_shapes: per student tap ``(H, W, C)``.
      teacher_shapes: per teacher tap ``(H, W, C)``.
      batch_size: the calibration batch B (MLP input size); every call must use it.
      strategy: :data:`SASTC`, :data:`SPATIAL` or :data:`LAYERWISE` (:class:`Strategy`).
      embed_dim: d; ``None`` means ``batch_size // 4``.
      dtype: compute dtype of the regressor convolutions.
      remat: recompute each regressor group's activations in the backward pass
        instead of keeping them (less memory, the same numbers).
      ops: the convolution and rematerialisation forms (:mod:`sastc_jax.ops`);
        ``ops.select('auto')`` when not given.
      attention_scale: ``s`` in ``softmax_j(s * <q, k>)`` (docs/method.md §7.1); 1 = the paper.
      learn_attention_scale: learn ``s`` (positive, as the parameter ``log_scale``
        initialised to ``log(attention_scale)``); off, the module has no such parameter.

    ``__call__(student_taps, teacher_taps)`` returns ``(loss, attention)`` with
    attention ``(T', B, S, K)``; T' = 1 for a strategy that is not ``over_time``
    (``spatial``), T otherwise.
    """

    student_shapes: Sequence[tuple[int, int, int]]
    teacher_shapes: Sequence[tuple[int, int, int]]
    batch_size: int
    strategy: Strategy = SASTC
    embed_dim: int | None = None
    dtype: jnp.dtype = jnp.float32
    remat: bool = False
    attention_scale: float = 1.0
    learn_attention_scale: bool = False
    ops: Ops = ops_field()

    def pairs(self) -> list[tuple[int, int]]:
        """The (student, teacher) tap pairs that get a regressor."""
        return self.strategy.pairs(len(self.student_shapes), len(self.teacher_shapes))

    def setup(self):
        validate_calibration(
            self.student_shapes, self.teacher_shapes, self.batch_size, self.strategy, self.embed_dim
        )
        validate_attention_scale(self.attention_scale)
        embed_dim = self.embed_dim or self.batch_size // 4
        if self.strategy.attention:
            self.query_mlps = [EmbeddingMLP(embed_dim) for _ in self.student_shapes]
            self.key_mlps = [EmbeddingMLP(embed_dim) for _ in self.teacher_shapes]
            if self.learn_attention_scale:
                initial = math.log(self.attention_scale)
                self.log_scale = self.param(
                    "log_scale", lambda _: jnp.asarray(initial, jnp.float32)
                )
        self.regressors = {
            f"{i}_{j}": Regressor(self.teacher_shapes[j][-1], dtype=self.dtype, ops=self.ops)
            for i, j in self.pairs()
        }
        self.regressor_groups = [
            RegressorGroup(
                tuple(self.regressors[f"{i}_{j}"] for j in group),
                dtype=self.dtype,
                remat=self.remat,
                ops=self.ops,
            )
            for (i, _), group in self.groups().items()
        ]

    def groups(self) -> dict[tuple[int, tuple[int, int]], list[int]]:
        """``{(i, aligned size): [j, ...]}``: the teacher taps whose regressors read the
        same aligned student tap i (the student map, or its max-pool to that size)."""
        groups: dict[tuple[int, tuple[int, int]], list[int]] = {}
        for i, j in self.pairs():
            student, teacher = self.student_shapes[i], self.teacher_shapes[j]
            pooled = student[0] > teacher[0]  # as in align_pair
            size = tuple(teacher[:2]) if pooled else tuple(student[:2])
            groups.setdefault((i, size), []).append(j)
        return groups

    def scale(self) -> Array | float:
        """The attention scale ``s``: ``exp(log_scale)`` when learned, else the fixed one."""
        if self.learn_attention_scale and self.strategy.attention:
            return jnp.exp(self.log_scale)
        return self.attention_scale

    def attention(self, student_taps: Sequence[Array], teacher_taps: Sequence[Array]) -> Array:
        """Attention ``alpha`` of shape ``(T, B, S, K)``: ``softmax_j(s * <q, k>)``."""
        steps, batch = student_taps[0].shape[:2]
        num_student, num_teacher = len(student_taps), len(teacher_taps)
        if not self.strategy.attention:
            eye = jnp.eye(num_student, num_teacher, dtype=jnp.float32)
            return jnp.broadcast_to(eye, (steps, batch, num_student, num_teacher))
        queries = jnp.stack(
            [
                mlp(similarity(tap.astype(jnp.float32)))
                for mlp, tap in zip(self.query_mlps, student_taps, strict=True)
            ],
            axis=2,
        )  # (T, B, S, d)
        keys = jnp.stack(
            [
                mlp(similarity(tap.astype(jnp.float32)))
                for mlp, tap in zip(self.key_mlps, teacher_taps, strict=True)
            ],
            axis=1,
        )  # (B, K, d)
        logits = jnp.einsum("tbsd,bkd->tbsk", queries, keys)
        if self.learn_attention_scale or self.attention_scale != 1.0:  # 1: the paper's numbers
            logits = self.scale() * logits
        return jax.nn.softmax(logits, axis=-1)

    def pair_errors(self, student_taps: Sequence[Array], teacher_taps: Sequence[Array]) -> Array:
        """Per-pair regression error ``mean_{h,w,c}(R_ij(P(F_s[i])) - P'(F_a[j]))^2``.

        Returns ``(T, B, S, K)``; pairs without a regressor (layerwise off-diagonal) are 0.
        Regressors whose aligned student input is the same array (same student tap,
        same pooled size) run together as one :class:`RegressorGroup`.
        """
        steps, batch = student_taps[0].shape[:2]
        errors = jnp.zeros((steps, batch, len(student_taps), len(teacher_taps)), jnp.float32)
        previous = None
        for ((i, _), group), regressor_group in zip(
            self.groups().items(), self.regressor_groups, strict=True
        ):
            merged = student_taps[i].reshape(steps * batch, *student_taps[i].shape[2:])
            aligned = [align_pair(merged, teacher_taps[j]) for j in group]
            student = aligned[0][0].reshape(steps, batch, *aligned[0][0].shape[1:])
            teachers = [teacher for _, teacher in aligned]
            group_errors = regressor_group(student, teachers, previous)
            previous = group_errors
            for j, error in zip(group, group_errors, strict=True):
                errors = errors.at[:, :, i, j].set(error)
        return errors

    def loss_factors(
        self, student_taps: Sequence[Array], teacher_taps: Sequence[Array]
    ) -> tuple[Array, Array]:
        """The pair errors and the attention, both ``(T', B, S, K)``, whose weighted mean is
        the loss (``T' = 1`` when the strategy averages the student taps over time)."""
        student_taps = self.strategy.student_view(student_taps)
        return self.pair_errors(student_taps, teacher_taps), self.attention(
            student_taps, teacher_taps
        )

    def __call__(
        self, student_taps: Sequence[Array], teacher_taps: Sequence[Array]
    ) -> tuple[Array, Array]:
        check_taps(
            student_taps, teacher_taps, self.student_shapes, self.teacher_shapes, self.batch_size
        )
        teacher_taps = [jax.lax.stop_gradient(tap) for tap in teacher_taps]
        errors, attention = self.loss_factors(student_taps, teacher_taps)
        steps, batch, num_student = attention.shape[:3]
        loss = jnp.sum(attention * errors) / (batch * steps * num_student)
        return loss, attention


def validate_calibration(
    student_shapes,
    teacher_shapes,
    batch_size: int,
    method: str | Strategy,
    embed_dim: int | None,
) -> None:
    """Raise ``ValueError`` for a calibration set-up the strategy cannot run."""
    strategy = get_strategy(method)
    if not student_shapes or not teacher_shapes:
        raise ValueError(
            "Calibration needs at least one student tap and one teacher tap; "
            f"got {len(student_shapes)} student and {len(teacher_shapes)} teacher."
        )
    strategy.validate(student_shapes, teacher_shapes, batch_size, embed_dim)
    if embed_dim is not None and embed_dim < 1:
        raise ValueError(f"embed_dim must be >= 1; got {embed_dim}.")


def validate_attention_scale(scale: float) -> None:
    """Raise ``ValueError`` unless the attention scale is a finite positive number."""
    try:
        valid = math.isfinite(float(scale)) and float(scale) > 0
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(
            f"The attention scale must be a finite number > 0 (1 = the paper's unscaled "
            f"cosines); got {scale!r}."
        )


def check_taps(student_taps, teacher_taps, student_shapes, teacher_shapes, batch_size) -> None:
    """Check tap ranks, counts, per-tap shapes and the batch against the module."""
    if len(student_taps) != len(student_shapes) or len(teacher_taps) != len(teacher_shapes):
        raise ValueError(
            f"Calibration was built for {len(student_shapes)} student / {len(teacher_shapes)} "
            f"teacher taps; got {len(student_taps)} / {len(teacher_taps)}."
        )
    for kind, taps, shapes, rank in (
        ("student", student_taps, student_shapes, 5),
        ("teacher", teacher_taps, teacher_shapes, 4),
    ):
        for index, (tap, shape) in enumerate(zip(taps, shapes, strict=True)):
            if tap.ndim != rank or tuple(tap.shape[-3:]) != tuple(shape):
                layout = "(T, B, H, W, C)" if rank == 5 else "(B, H, W, C)"
                raise ValueError(
                    f"{kind} tap {index} has shape {tap.shape}; expected "
                    f"{layout} with (H, W, C) = {tuple(shape)}."
                )
            if tap.shape[-4] != batch_size:
                raise ValueError(
                    f"{kind} tap {index} has batch {tap.shape[-4]}, but the calibration MLPs "
                    f"were built for batch {batch_size}. Every calibration batch must have the "
                    "same size: drop the remainder in training."
                )


def _tap_shape(tap: Array) -> tuple[int, int, int]:
    return tuple(int(size) for size in tap.shape[-3:])


class CalibrationOptions(TypedDict, total=False):
    """The keywords :func:`init_calibration` and :func:`calibration_loss` pass on to
    :func:`calibration_module`, which holds their defaults."""

    method: str | Strategy
    embed_dim: int | None
    dtype: jnp.dtype
    remat: bool
    attention_scale: float
    learn_attention_scale: bool
    ops: Ops | None


def calibration_module(
    student_taps: Sequence[Array],
    teacher_taps: Sequence[Array],
    *,
    method: str | Strategy = "sastc",
    embed_dim: int | None = None,
    dtype: jnp.dtype = jnp.float32,
    remat: bool = False,
    attention_scale: float = 1.0,
    learn_attention_scale: bool = False,
    ops: Ops | None = None,
) -> Calibration:
    """The :class:`Calibration` module matching these taps (batch from the student taps)
    for ``method`` (a :class:`Strategy` or its name); ``ops=None``: the module's default,
    ``ops.select('auto')``."""
    return Calibration(
        student_shapes=tuple(_tap_shape(tap) for tap in student_taps),
        teacher_shapes=tuple(_tap_shape(tap) for tap in teacher_taps),
        batch_size=int(student_taps[0].shape[1]),
        strategy=get_strategy(method),
        embed_dim=embed_dim,
        dtype=dtype,
        remat=remat,
        attention_scale=attention_scale,
        learn_attention_scale=learn_attention_scale,
        **({} if ops is None else {"ops": ops}),
    )


def init_calibration(
    rng: Array,
    student_taps: Sequence[Array],
    teacher_taps: Sequence[Array],
    **options: Unpack[CalibrationOptions],
) -> dict:
    """Initialise the calibration variables for taps of these shapes.

    Only shapes are read (``jax.ShapeDtypeStruct`` works too); ``options`` as
    :func:`calibration_module`. Returns ``{'params': ...}`` (with a ``log_scale``
    parameter only when ``learn_attention_scale``).
    """
    module = calibration_module(student_taps, teacher_taps, **options)
    student = [jnp.zeros(tap.shape, jnp.float32) for tap in student_taps]
    teacher = [jnp.zeros(tap.shape, jnp.float32) for tap in teacher_taps]
    return module.init(rng, student, teacher)


def calibration_loss(
    variables: dict,
    student_taps: Sequence[Array],
    teacher_taps: Sequence[Array],
    **options: Unpack[CalibrationOptions],
) -> tuple[Array, Array]:
    """The SASTC loss as a pure function.

    Args:
      variables: from :func:`init_calibration` (``{'params': ...}``).
      student_taps: S arrays ``(T, B, H_i, W_i, C_i)``.
      teacher_taps: K arrays ``(B, H_j, W_j, C_j)``; no gradient flows into them.
      **options: :class:`CalibrationOptions`, defaults as :func:`calibration_module`:
        ``method`` (``'sastc'`` | ``'spatial'`` | ``'layerwise'``, or a :class:`Strategy`);
        ``attention_scale``, ``learn_attention_scale`` as :class:`Calibration`
        (docs/method.md §7), a learned scale read from ``variables`` (``log_scale``);
        ``ops``, the convolution forms (:mod:`sastc_jax.ops`), ``None`` for
        ``select('auto')``; ``embed_dim``, ``dtype``, ``remat``.

    Returns:
      ``(loss, attention)``: the scalar ``L_sastc`` of docs/method.md §5.5 and the attention
      ``(T, B, S, K)`` (``(1, B, S, K)`` for ``spatial``); rows sum to 1 for
      ``sastc``/``spatial``. The regressor batch norms use batch statistics only,
      so there is no state to update.

    Raises ``ValueError`` when ``variables`` were built for other taps
    (:func:`check_variables`).
    """
    check_variables(variables, student_taps, teacher_taps)
    module = calibration_module(student_taps, teacher_taps, **options)
    return module.apply(variables, student_taps, teacher_taps)


def _built_for(params: dict) -> tuple[int, int, int | None]:
    """``(S, K, B)`` the calibration ``params`` were built for, from their names and the
    MLPs' input width (B is None for 'layerwise', which has no MLPs)."""
    pairs = [name.split("_")[1:] for name in params if name.startswith("regressors_")]
    students = {int(i) for i, _ in pairs}
    teachers = {int(j) for _, j in pairs}
    mlp = params.get("query_mlps_0")
    batch = int(mlp["hidden"]["kernel"].shape[0]) if mlp is not None else None
    return len(students), len(teachers), batch


def check_variables(
    variables: dict, student_taps: Sequence[Array], teacher_taps: Sequence[Array]
) -> None:
    """Raise ``ValueError`` naming what the calibration ``variables`` were built for and
    what the taps are, when they differ: the student or teacher tap count, or the
    calibration batch B (the MLPs' input width)."""
    params = variables.get("params", {}) if isinstance(variables, dict) else {}
    if not any(name.startswith("regressors_") for name in params):
        raise ValueError(
            "calibration variables must be {'params': ...} from init_calibration, with "
            f"regressors_* entries; got keys {sorted(params) or sorted(variables)}."
        )
    students, teachers, batch = _built_for(params)
    if (students, teachers) != (len(student_taps), len(teacher_taps)):
        raise ValueError(
            f"the calibration variables were built for {students} student / {teachers} "
            f"teacher taps; got {len(student_taps)} / {len(teacher_taps)}. Pass the taps "
            "they were initialised with, or initialise them for these taps."
        )
    got = int(student_taps[0].shape[1]) if student_taps and student_taps[0].ndim == 5 else None
    if batch is not None and got is not None and got != batch:
        raise ValueError(
            f"the calibration variables were built for a batch of {batch} (the MLPs' input "
            f"width); got taps of batch {got}. Every calibration batch must have the size "
            "the variables were initialised with."
        )


def regressor_macs(student_shapes, teacher_shapes, method: str | Strategy = "sastc") -> int:
    """Multiply-accumulates of all regressors for one image and one time step."""
    total = 0
    for i, j in get_strategy(method).pairs(len(student_shapes), len(teacher_shapes)):
        (h_s, w_s, c_s), (h_t, w_t, c_t) = student_shapes[i], teacher_shapes[j]
        area = min(h_s, h_t) * min(w_s, w_t)
        total += area * (9 * c_s * 2 * c_t + 2 * c_t * c_t)
    return total


__all__ = [
    "LAYERWISE",
    "SASTC",
    "SPATIAL",
    "STRATEGIES",
    "Calibration",
    "CalibrationOptions",
    "EmbeddingMLP",
    "Strategy",
    "calibration_loss",
    "calibration_module",
    "get_strategy",
    "init_calibration",
    "regressor_macs",
    "similarity",
]
