"""The train step compiled ahead of time for TPU slices by libtpu's compiler, on this CPU host:
tools/compile_tpu.py on a tiny config, the layouts it refuses before compiling, the pod
config's refusal of CPU devices, and libtpu staying quiet on CPU runs."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from dagger_jax.models.config import Qwen3Config
from dagger_jax.train.settings import TrainSettings
from dagger_jax.train.step_program import build_step_program
from dagger_jax.train.tpu_compile import (model_flops_per_step, parse_topology, resolve_mesh,
                                          tpu_slice)

ROOT = Path(__file__).resolve().parents[2]
# configs/local.py at two layers of width 32, dense attention, 4 rows of 256 tokens.
TINY = ["--config.model.hidden_size=32", "--config.model.intermediate_size=64",
        "--config.model.num_hidden_layers=2", "--config.model.num_attention_heads=2",
        "--config.model.num_key_value_heads=1", "--config.model.head_dim=16",
        "--config.attention_block=0", "--config.train.seq_len=256",
        "--config.train.batch_size=4", "--config.train.loss_chunk=128"]
EIGHT_B = Qwen3Config(vocab_size=151_936, hidden_size=4096, intermediate_size=12_288,
                      num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                      head_dim=128, tie_word_embeddings=False)


def compile_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "tools/compile_tpu.py", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def compile_tiny(out: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, dict]:
    """The tiny config (with `overrides`) compiled for v5e:2x2: the tool's output and report."""
    result = compile_tool("--config", "configs/local.py:dagger", "--topology", "v5e:2x2",
                          "--out", str(out), *TINY, *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, json.loads(out.read_text())


@pytest.fixture(scope="module")
def tiny_compile(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    return compile_tiny(tmp_path_factory.mktemp("compile") / "report.json")


def test_the_tiny_config_compiles_for_v5e_2x2_and_reports_what_it_needs(tiny_compile):
    result, report = tiny_compile
    assert (report["generation"], report["chips"], report["devices"], report["hosts"]) == \
        ("v5e", 4, 4, 1)
    assert report["mesh"] == {"data": 1, "fsdp": 4, "sequence": 1, "tensor": 1}
    assert report["batch"] == {"rows": 4, "seq_len": 256, "grad_accum": 1}
    assert report["fits"] and report["hbm_bytes_per_device"] == 16 * 1024**3
    memory = report["per_device_bytes"]
    # The train state is donated: what it occupies as an argument is reused by the output.
    assert memory["arguments"] > 0 and memory["aliased"] > 0 and memory["temporaries"] > 0
    assert memory["total"] < report["hbm_bytes_per_device"]
    # The program's matmuls exceed the model's 6N + causal attention: dense attention computes
    # the whole square, and the chunked loss recomputes each chunk's logits in its backward.
    assert 0.5 < report["model_over_program_flops"] < 1.0
    assert report["roofline_tokens_per_s"] > 0 and report["attention"] == "xla_dense"
    assert "fits" in result.stdout and "roofline" in result.stdout
    # libtpu was told it describes a slice on a host without TPUs: none of its start-up noise.
    assert "InitGoogle" not in result.stderr and "TPU_WORKER_HOSTNAMES" not in result.stderr


def test_a_batch_the_mesh_cannot_split_is_refused_with_a_layout_that_would():
    slice_64 = tpu_slice("v5p:4x4x4")
    settings = TrainSettings(batch_size=16, seq_len=65_536, mesh_shape=(1, -1, 1, 1))
    with pytest.raises(ValueError) as refused:
        resolve_mesh(settings, EIGHT_B, slice_64)
    message = str(refused.value)
    assert "batch_size=16" in message and "64 devices" in message
    # One row per fsdp shard, each row's 64K tokens over four sequence shards.
    assert "--config.mesh.shape='(1, 16, 4, 1)'" in message
    # ... and that layout is accepted, as is one that splits heads instead.
    for shape in ((1, 16, 4, 1), (1, 16, 1, 4)):
        assert resolve_mesh(dataclasses.replace(settings, mesh_shape=shape), EIGHT_B,
                            slice_64) == shape
    # configs/qwen3_4b.py accumulates two micro-batches (sized for 8 chips): on 16, one.
    with pytest.raises(ValueError, match=r"8 rows per micro-batch.*--config.train.grad_accum=1, "
                                         r"or --config.mesh.shape='\(1, 8, 2, 1\)'"):
        resolve_mesh(dataclasses.replace(settings, grad_accum=2), EIGHT_B, tpu_slice("v5p:2x2x4"))
    with pytest.raises(ValueError, match=r"does not cover the 16 devices of v5p:2x2x4.*"
                                         r"mesh.shape='\(1, 16, 1, 1\)'"):
        resolve_mesh(dataclasses.replace(settings, mesh_shape=(2, 4, 1, 1)), EIGHT_B,
                     tpu_slice("v5p:2x2x4"))


@pytest.mark.parametrize("name", ["v5litepod-16", "v9:2x2", "v5p", "tpu:2x2"])
def test_an_unknown_topology_is_one_line_naming_the_form(name):
    with pytest.raises(ValueError, match=r"unknown TPU topology .* e\.g\. v5p:2x2x4"):
        parse_topology(name)


def test_the_tool_refuses_a_layout_before_compiling():
    result = compile_tool("--config", "configs/qwen3_8b.py:dagger", "--topology", "v5p:4x4x4")
    assert result.returncode == 2
    assert "mesh.shape='(1, 16, 4, 1)'" in result.stderr and "Traceback" not in result.stderr


def test_model_flops_are_six_n_plus_causal_attention():
    flops = model_flops_per_step(EIGHT_B, rows=16, seq_len=65_536)
    # Qwen3-8B: 8.19e9 parameters, of which 0.62e9 the input embedding the count leaves out.
    assert flops["matmul_params"] == pytest.approx(7.57e9, rel=0.01)
    assert flops["dense"] == pytest.approx(6 * flops["matmul_params"] * 16 * 65_536)
    assert flops["attention"] == pytest.approx(6 * 36 * 4096 * 65_536**2 * 16)


def test_a_pod_config_refuses_cpu_devices():
    settings = TrainSettings(platform="tpu")
    with pytest.raises(RuntimeError, match=r"config.platform='tpu'.*cpu.*pip install -e '\.\[tpu\]'"):
        build_step_program(settings, dataclasses.replace(EIGHT_B, num_hidden_layers=1),
                           jax.devices()[:1])


def test_cpu_runs_print_no_tpu_start_up_messages_with_libtpu_installed():
    assert importlib.util.find_spec("libtpu"), "the test extra installs libtpu (jax[tpu])"
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    result = subprocess.run([sys.executable, "-c", "import dagger_jax, jax; print(jax.devices())"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "CpuDevice" in result.stdout
    assert "TPU" not in result.stderr and "libtpu" not in result.stderr, result.stderr


def test_the_splash_kernel_lowers_for_tpu_inside_the_train_step_with_rows_split(tmp_path):
    """Each row's 256 tokens split over two sequence shards (context parallelism): queries per
    shard, keys and values gathered."""
    # head_dim 128: the TPU kernel's lane width (Qwen3's own head size).
    _, report = compile_tiny(tmp_path / "report.json", "--config.model.head_dim=128",
                             "--config.attention_impl=splash", "--config.mesh.shape=(1,2,2,1)")
    # Compiled by Mosaic for the TPU, not in interpret mode.
    assert report["attention"] == "pallas_splash" and report["fits"]
    assert report["mesh"] == {"data": 1, "fsdp": 2, "sequence": 2, "tensor": 1}
    assert report["row_blocks"] == 1  # one host feeds both rows


def test_the_memory_levers_compile_for_tpu(tmp_path, tiny_compile):
    """Host offload of the saved activations and a bfloat16 first moment, on the tiny config."""
    _, report = compile_tiny(tmp_path / "report.json", "--config.remat=offload",
                             "--config.train.moment_dtype=bfloat16")
    assert report["remat"] == "offload" and report["fits"]
    # The train state's first moment is bfloat16: its arguments are smaller than in float32.
    _, plain = tiny_compile
    assert report["per_device_bytes"]["arguments"] < plain["per_device_bytes"]["arguments"]
