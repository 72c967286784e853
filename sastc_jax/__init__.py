"""sastc-jax: ANN-to-SNN distillation with Self-Attentive Spatio-Temporal Calibration."""

__version__ = "0.1.0"
