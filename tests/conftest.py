"""Test-wide setup: eight virtual CPU devices so sharding runs as it would on a pod slice."""

import os

# Must be set before jax initialises its backends (first import anywhere in the session).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
