"""Turn-level DAgger post-training for long-horizon LLM agents, in JAX."""

from dagger_jax.accelerators import cpu_unless_tpu_present

# Before any of the package imports JAX's backends (accelerators.py says why).
cpu_unless_tpu_present()
