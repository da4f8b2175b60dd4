"""Keeps an installed but unused libtpu quiet on hosts without TPU chips.

The test environment installs libtpu (`jax[tpu]`) so that the train step can be compiled ahead of
time for TPU topologies on a CPU machine (tools/compile_tpu.py). With libtpu installed, JAX's
default platform search tries to start the TPU runtime on every run, and on a host without TPU
chips that prints a page of libtpu start-up errors before falling back to CPU. Where no TPU
chip is present, libtpu is installed, no other accelerator plugin is, and the user has not
chosen platforms (JAX_PLATFORMS), this selects the CPU platform before JAX starts a backend.
Ahead-of-time topologies (`jax.experimental.topologies`) load libtpu themselves and are
unaffected.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

# The PCI vendor id of Google's TPU chips (what JAX's own hardware probe reads).
GOOGLE_PCI_VENDOR = "0x1ae0"
OTHER_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                 "jax_rocm7_plugin")


def tpu_chips_present(pci_root: Path = Path("/sys/bus/pci/devices")) -> bool:
    try:
        return any((device / "vendor").read_text().strip() == GOOGLE_PCI_VENDOR
                   for device in pci_root.iterdir() if (device / "vendor").is_file())
    except OSError:
        return False


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def cpu_unless_tpu_present() -> None:
    if "JAX_PLATFORMS" in os.environ or not _installed("libtpu") or tpu_chips_present():
        return
    if any(_installed(plugin) for plugin in OTHER_PLUGINS):
        return
    os.environ["JAX_PLATFORMS"] = "cpu"
    if "jax" in sys.modules:  # imported first: it read the environment already
        sys.modules["jax"].config.update("jax_platforms", "cpu")
