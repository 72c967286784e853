"""Outside formats, one module each: :mod:`~sastc_jax.interop.pytorch` imports PyTorch /
safetensors teachers, :mod:`~sastc_jax.interop.nir` exports spiking students to NIR (and
reads them back), planned by :mod:`~sastc_jax.interop.nir_plan`."""
