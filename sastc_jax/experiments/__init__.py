"""Studies built on the library: the planted-alignment check of the attention
(:mod:`~sastc_jax.experiments.alignment_check`)."""
