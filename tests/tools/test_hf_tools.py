"""tools/import_hf.py and tools/export_hf.py as a user runs them, checked by transformers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import transformers

from dagger_jax.storage.store import store_path
from dagger_jax.train.checkpoint import Checkpointer
from tests.models.hf_fixtures import hf_logits, make_hf_qwen3

# Real sandboxes, servers or whole runs: left out of make test-fast.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def run_tool(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / name), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_import_then_export_round_trips_through_transformers(tmp_path):
    hf = make_hf_qwen3(tmp_path / "hf", seed=7, tie_word_embeddings=False, num_key_value_heads=1,
                       max_shard_size="60KB")
    imported = run_tool("import_hf.py", "--hf-dir", tmp_path / "hf", "--workdir", tmp_path / "w")
    assert imported.returncode == 0, imported.stderr
    assert (tmp_path / "w" / "checkpoints" / "0" / "params").is_dir()
    exported = run_tool("export_hf.py", "--workdir", tmp_path / "w", "--out", tmp_path / "out",
                        "--max-shard-bytes", "50000")
    assert exported.returncode == 0, exported.stderr
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    tokens = np.random.default_rng(0).integers(0, 160, size=(1, 11))
    ref, ours = hf_logits(hf, tokens), hf_logits(reloaded, tokens)
    assert np.max(np.abs(ours - ref)) <= 1e-5 * np.max(np.abs(ref))


def test_import_into_a_bucket_then_refuses_a_workdir_that_has_checkpoints(tmp_path, gcs):
    from tests.gcs_emulator import create_bucket
    workdir = create_bucket(gcs, "imports") + "/w"
    make_hf_qwen3(tmp_path / "hf")
    imported = run_tool("import_hf.py", "--hf-dir", tmp_path / "hf", "--workdir", workdir)
    assert imported.returncode == 0, imported.stderr
    assert Checkpointer(store_path(workdir) / "checkpoints").all_steps() == [0]
    again = run_tool("import_hf.py", "--hf-dir", tmp_path / "hf", "--workdir", workdir)
    assert again.returncode == 1 and "already holds steps [0]" in again.stderr
    assert not (ROOT / "gs:").exists()


@pytest.mark.parametrize("breakage, message", [
    ("no_config", "no config.json"),
    ("llama", "expected a dense Qwen3 model"),
    ("shape", "has shape"),
])
def test_import_names_what_is_wrong_with_a_model_dir(tmp_path, breakage, message):
    make_hf_qwen3(tmp_path / "hf")
    config_path = tmp_path / "hf" / "config.json"
    config = json.loads(config_path.read_text())
    if breakage == "no_config":
        config_path.unlink()
    elif breakage == "llama":
        config.update(model_type="llama", architectures=["LlamaForCausalLM"])
        config_path.write_text(json.dumps(config))
    else:
        config["intermediate_size"] = 80
        config_path.write_text(json.dumps(config))
    result = run_tool("import_hf.py", "--hf-dir", tmp_path / "hf", "--workdir", tmp_path / "w")
    assert result.returncode == 1
    assert message in result.stderr
    if breakage == "shape":
        assert "mlp.down_proj.weight has shape [64, 96]" in result.stderr and "[64, 80]" in result.stderr
    else:
        assert str(tmp_path / "hf") in result.stderr


def test_export_of_a_missing_step_says_which_steps_exist(tmp_path):
    make_hf_qwen3(tmp_path / "hf")
    run_tool("import_hf.py", "--hf-dir", tmp_path / "hf", "--workdir", tmp_path / "w")
    result = run_tool("export_hf.py", "--workdir", tmp_path / "w", "--step", "5", "--out", tmp_path / "o")
    assert result.returncode == 1 and "steps present: [0]" in result.stderr
