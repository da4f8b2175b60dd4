"""tools/eval_swebench.py on a harness-shaped instance built locally, graded by swebench's harness.

Real docker (like the other docker tests: the deps are made by tools/ensure_sandbox_deps.sh, a
machine without them fails). The expert and the tiny student run as a user runs the tool (a
subprocess); re-runs, grade-only runs and bad inputs call its main() in this process.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import unidiff

from dagger_jax.tokenizer.sample_corpus import sample_texts
from dagger_jax.data.shards import EpisodeSource, read_manifest
from dagger_jax.models.config import Qwen3Config
from dagger_jax.models.hf_export import export_hf
from dagger_jax.models.qwen3 import params_shape
from dagger_jax.tokenizer import train_bpe_tokenizer
from tests.envs.sandbox.swebench_instances import harness_instance

# Real sandboxes, servers or whole runs: left out of make test-fast.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "eval_swebench.py"
KEYS = {"instance_id", "model_name_or_path", "model_patch"}


def load_tool():
    spec = importlib.util.spec_from_file_location("eval_swebench_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = load_tool()


def run_tool(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def predictions(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def changed_lines(patch: str) -> dict[str, list[str]]:
    """Per file, the removed and added lines: what a patch does, whatever its headers say."""
    return {f.path: [str(line) for hunk in f for line in hunk if line.is_added or line.is_removed]
            for f in unidiff.PatchSet(patch)}


@pytest.fixture(scope="module")
def instance(tmp_path_factory, docker_backend):  # docker made ready first
    root = tmp_path_factory.mktemp("swebench")
    data = harness_instance(root)
    path = root / "instances.jsonl"
    path.write_text(json.dumps(data) + "\n")
    return path, data


def random_params(config: Qwen3Config, seed: int = 0):
    """A random tiny Qwen3 drawn with numpy (no init to compile): norms 1, weights N(0, 0.02)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: jax.numpy.asarray(
            np.ones(leaf.shape, leaf.dtype) if "scale" in jax.tree_util.keystr(path)
            else (0.02 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)), params_shape(config))


def harness_report(out: Path, model: str, instance_id: str) -> tuple[dict, dict]:
    """The tool's report.json, and the harness's own report of the instance (its log layout)."""
    report = json.loads((out / "report.json").read_text())
    own = out / "logs" / "run_evaluation" / report["run_id"] / model / instance_id / "report.json"
    return report, json.loads(own.read_text())[instance_id]


def test_expert_predictions_resolve_under_the_harness_and_a_rerun_skips_them(tmp_path, instance, capsys):
    path, data = instance
    out = tmp_path / "out"
    done = run_tool("--instances", path, "--policy", "expert", "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    [line] = predictions(out)
    assert set(line) == KEYS
    assert line["instance_id"] == data["instance_id"] and line["model_name_or_path"] == "scripted-expert"
    assert changed_lines(line["model_patch"]) == changed_lines(data["patch"])  # the fix, exactly
    report, harness = harness_report(out, "scripted-expert", data["instance_id"])
    assert report["resolved_ids"] == [data["instance_id"]] and report["total"] == 1
    assert report["resolve_rate"] == 1.0 and report["unresolved_ids"] == report["error_ids"] == []
    assert "run_instance" in report["graded_by"] and "get_eval_report" in report["graded_by"]
    assert harness["resolved"] and harness["patch_successfully_applied"]  # the harness's own verdict
    assert "resolved" in done.stdout and "100.0%" in done.stdout

    shards = read_manifest(out / "episodes")
    assert tool.main(["--instances", str(path), "--policy", "expert", "--out", str(out)]) == 0
    assert "0 predictions written, 1 already" in capsys.readouterr().err
    assert predictions(out) == [line] and read_manifest(out / "episodes") == shards
    assert json.loads((out / "report.json").read_text())["resolved_ids"] == [data["instance_id"]]


def test_grade_only_wrong_and_empty_patches_are_unresolved(tmp_path, instance, capsys):
    path, data = instance
    iid, out = data["instance_id"], tmp_path / "out"
    wrong = "\n".join(["diff --git a/NOTES.md b/NOTES.md", "new file mode 100644", "index 0000000..3b18e51",
                       "--- /dev/null", "+++ b/NOTES.md", "@@ -0,0 +1 @@", "+looked, changed nothing", ""])
    preds = tmp_path / "preds.jsonl"
    preds.write_text(json.dumps({"instance_id": iid, "model_name_or_path": "m", "model_patch": wrong}) + "\n")
    assert tool.main(["--instances", str(path), "--grade-only", str(preds), "--out", str(out)]) == 0
    report, harness = harness_report(out, "m", iid)
    assert report["unresolved_ids"] == [iid] and report["resolved"] == 0 and report["errors"] == 0
    assert harness["patch_successfully_applied"] and not harness["resolved"]

    # Same output dir, another patch: the stored report of the old patch is not reused.
    preds.write_text(json.dumps({"instance_id": iid, "model_name_or_path": "m",
                                 "model_patch": data["patch"]}) + "\n")
    assert tool.main(["--instances", str(path), "--grade-only", str(preds), "--out", str(out)]) == 0
    assert harness_report(out, "m", iid)[0]["resolved_ids"] == [iid]

    preds.write_text(json.dumps({"instance_id": iid, "model_name_or_path": "m", "model_patch": ""}) + "\n")
    assert tool.main(["--instances", str(path), "--grade-only", str(preds), "--out", str(tmp_path / "o2")]) == 0
    report = json.loads((tmp_path / "o2" / "report.json").read_text())
    assert report["unresolved_ids"] == report["empty_patch_ids"] == [iid] and report["resolve_rate"] == 0.0
    capsys.readouterr()


def test_bad_inputs_exit_2_with_one_line_naming_the_problem(tmp_path, instance, capsys):
    path, data = instance
    no_image = tmp_path / "no_image.jsonl"
    no_image.write_text(json.dumps({k: v for k, v in data.items() if k != "image"}) + "\n")
    absent = tmp_path / "absent.jsonl"
    absent.write_text(json.dumps({**data, "instance_id": "nope__absent-1",
                                  "image": "sweb.eval.x86_64.nope__absent-1:latest"}) + "\n")
    (tmp_path / "not_a_model").mkdir()
    cases = [
        (["--instances", tmp_path / "missing.jsonl", "--policy", "expert"], "missing.jsonl does not exist"),
        (["--instances", no_image, "--policy", "expert"], "lacks ['image']"),
        (["--instances", absent, "--policy", "expert"], "sweb.eval.x86_64.nope__absent-1:latest is not present"),
        (["--instances", path, "--student", tmp_path / "not_a_model"], "not_a_model has no config.json"),
        (["--instances", path, "--student-endpoints", "http://127.0.0.1:9"], "need the student's tokenizer"),
    ]
    for args, message in cases:
        assert tool.main([*map(str, args), "--out", str(tmp_path / "out")]) == 2, message
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and err[0].startswith("eval_swebench: "), err
    assert not (tmp_path / "out" / "predictions.jsonl").exists()


def test_a_tiny_local_student_runs_end_to_end(tmp_path, instance):
    path, data = instance
    tok = train_bpe_tokenizer(sample_texts(200, seed=0), 512, tmp_path / "tok")
    config = Qwen3Config(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         max_position_embeddings=4096, tie_word_embeddings=True)
    student = export_hf(random_params(config), config, tmp_path / "tiny-student",
                        tokenizer_dir=tok)
    out = tmp_path / "out"
    done = run_tool("--instances", path, "--student", student, "--max-turns", 2,
                    "--max-new-tokens", 16, "--edit-miss-hint", "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    [line] = predictions(out)
    assert set(line) == KEYS and line["model_name_or_path"] == "tiny-student"
    report = json.loads((out / "report.json").read_text())
    assert report["resolved"] == 0 and report["unresolved_ids"] == [data["instance_id"]]
    [record] = list(EpisodeSource(out / "episodes"))
    assert [t.executor for t in record.turns] == ["student", "student"]  # greedy, beta 0
    assert all(t.sample_logprobs for t in record.turns)  # sampled by the LocalSampler
