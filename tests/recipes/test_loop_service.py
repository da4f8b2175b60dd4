"""The outer loop collecting through the rollout service (config.loop.rollout_service).

The integration test runs every part in its own process, as on a cluster, each with a temp
dir of its own and the run in a bucket (the GCS emulator), so that they share no path: the
rollout service (`python -m dagger_jax.rollout.service`), a stand-in SGLang server for the
student (`tools/serve_local.py`) that starts on another model than the loop's, its export
sidecar (`python -m dagger_jax.rollout.export_sidecar`), and
`python -m dagger_jax.main --config=configs/local.py:dagger` made tiny (one iteration at
beta 0.5, so the student acts in training collection). It checks that the iteration's shards
were written by the service, that the student's turns came from the stand-in server after it
was told to load the loop's initial export, that training ran on them, and that evaluation
stayed in the loop's process. Alongside the loop, main is run with the service but no student
endpoints and must refuse at config time.

The unit tests check the config-time refusal (a student that acts in collection but is not
served) and that in-process and service collection build their actors from the same specs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dagger_jax.storage import layout
from dagger_jax.config_base import base_config
from dagger_jax.data.shard_sync import SyncedShardDir
from dagger_jax.data.shards import EpisodeSource, read_manifest
from dagger_jax.envs.tasks.task import Task, read_tasks
from dagger_jax.models.config import Qwen3Config
from dagger_jax.models.hf_export import export_hf
from dagger_jax.models.qwen3 import init_params
from dagger_jax.policies.actors import ExpertActor, TokenActor
from dagger_jax.recipes.recipes import get_recipe
from dagger_jax.settings import actor_source, read_settings, teacher_spec
from dagger_jax.rollout.actor_specs import build_actor
from dagger_jax.storage.store import is_published, store_path
from tests.conftest import SUBPROCESS_XLA_FLAGS
from tests.rollout.test_service import free_port, start_service

# Real sandboxes, servers or whole runs: left out of make test-fast.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TASKS = 2
MODEL = dict(vocab_size=1024, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=2, num_key_value_heads=1, head_dim=16, rope_theta=10_000.0,
             rms_norm_eps=1e-6, tie_word_embeddings=True, attention_bias=False,
             max_position_embeddings=4096)
# configs/local.py:dagger at tests/recipes/test_loop_resume.py's size, one iteration at beta
# 0.5 (the paper schedule's iteration 1 is the expert alone), two tasks, small evaluation.
OVERRIDES = [
    *(f"--config.model.{k}={v}" for k, v in MODEL.items() if k in (
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim")),
    "--config.attention_block=0",
    "--config.loop.iterations=1", f"--config.loop.tasks_per_iteration={TASKS}",
    "--config.loop.schedule=constant", '--config.loop.schedule_params={"value": 0.5}',
    "--config.loop.label_budget=0", "--config.loop.max_turns=3",
    "--config.loop.max_new_tokens=32", "--config.loop.context_budget=2048",
    "--config.train.seq_len=2048", "--config.loop.concurrency=2", "--config.loop.epochs=1",
    "--config.loop.sandbox=bwrap", "--config.loop.temperature=0.0",  # greedy: reproducible
    "--config.eval.num_tasks=1", "--config.eval.max_turns=2", "--config.eval.shift_states=2",
    "--config.train.batch_size=1", "--config.train.log_every=1", "--config.progress=False",
]
TIMEOUT_S = 300


def environment(tmp: Path) -> dict[str, str]:
    # One CPU device per process (conftest's 8 are for this one).
    env = {**os.environ, "XLA_FLAGS": SUBPROCESS_XLA_FLAGS}
    env["JAX_PLATFORMS"] = "cpu"
    (tmp / "tmp").mkdir(parents=True, exist_ok=True)
    env["TMPDIR"] = str(tmp / "tmp")
    return env


def main_command(workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dagger_jax.main", "--config=configs/local.py:dagger",
            f"--workdir={workdir}", *OVERRIDES, *extra]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def refusal_command(workdir: Path, service_url: str) -> list[str]:
    """DAgger over 3 iterations of the paper schedule: beta is 0.8 in the second, where the
    student acts, and no student endpoints: the service cannot sample the student."""
    return [sys.executable, "-m", "dagger_jax.main", "--config=configs/local.py:dagger",
            f"--workdir={workdir}", f"--config.loop.rollout_service={service_url}",
            "--config.loop.iterations=3", "--config.loop.schedule=paper",
            "--config.loop.schedule_params={}", "--config.progress=False"]


def random_params(config: Qwen3Config):
    """Small random weights of the model's shapes (init_params run eagerly costs seconds)."""
    rng = np.random.default_rng(123)
    shapes = jax.eval_shape(lambda key: init_params(config, key), jax.random.key(0))
    return jax.tree.map(lambda s: jnp.asarray(0.02 * rng.standard_normal(s.shape), s.dtype), shapes)


def start_sidecar(server_url: str, cache: Path, log: Path, env: dict[str, str]):
    """An export sidecar for the server on a free port; returns (process, its URL)."""
    sidecar = subprocess.Popen([sys.executable, "-m", "dagger_jax.rollout.export_sidecar",
                                "--server", server_url, "--port", "0", "--cache", str(cache)],
                               stdout=subprocess.PIPE, stderr=log.open("w"), text=True, env=env)
    line = sidecar.stdout.readline().strip()
    assert "listening on http://" in line, log.read_text()
    return sidecar, line.rsplit(" ", 1)[-1]


def test_loop_collects_through_the_rollout_service(tmp_path, bwrap_backend, gcs):
    """Every part has a temp dir of its own and the run is in a bucket (the GCS emulator): the
    loop, the service, the student server and its export sidecar share no path."""
    from tests.gcs_emulator import create_bucket
    began = time.monotonic()
    workdir = create_bucket(gcs, "loop-service") + "/run"
    run = store_path(workdir)
    machines = {name: tmp_path / name for name in ("loop", "service", "fleet")}
    env = {name: {**environment(machine), **gcs} for name, machine in machines.items()}
    # The run's tokenizer, made as main makes it (main then reuses it), and a model for the
    # stand-in server to start on: random weights that are not the loop's initial student.
    from dagger_jax.main import prepare_tokenizer
    tokenizer = prepare_tokenizer(run, vocab_size=1024)
    other = export_hf(random_params(Qwen3Config(**MODEL)), Qwen3Config(**MODEL),
                      machines["fleet"] / "other_model", tokenizer_dir=tokenizer)
    port = free_port()
    service_url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, str(ROOT / "tools" / "serve_local.py"), "--model",
                               str(other), "--port", "0", "--max-batch", "4",
                               "--weight-version", "standin"], stdout=subprocess.PIPE,
                              stderr=(tmp_path / "server.log").open("w"), text=True,
                              env=env["fleet"])
    refused_dir, refused_log = tmp_path / "refused", tmp_path / "refused.log"
    shutil.copytree(tokenizer, layout.tokenizer_dir(refused_dir))
    service = refused = sidecar = None
    log_path = tmp_path / "loop.log"
    sidecar_cache = machines["fleet"] / "exports"
    try:
        service = start_service(port, tmp_path / "service.log", machines["service"] / "tmp")
        server_url = server.stdout.readline().strip()
        assert server_url.startswith("http://"), (tmp_path / "server.log").read_text()
        sidecar, sidecar_url = start_sidecar(server_url, sidecar_cache, tmp_path / "sidecar.log",
                                             env["fleet"])
        # Alongside the loop: the refusal, in a workdir of its own (the tokenizer copied).
        with refused_log.open("w") as out:
            refused = subprocess.Popen(refusal_command(refused_dir, service_url), cwd=ROOT,
                                       env=env["loop"], stdout=out, stderr=subprocess.STDOUT)
        with log_path.open("w") as out:
            loop = subprocess.run(main_command(workdir,
                                               f"--config.loop.rollout_service={service_url}",
                                               f"--config.loop.student_endpoints={server_url}",
                                               f"--config.loop.student_loaders={sidecar_url}"),
                                  cwd=ROOT, env=env["loop"], stdout=out,
                                  stderr=subprocess.STDOUT, timeout=TIMEOUT_S)
        loop_log = log_path.read_text()
        assert loop.returncode == 0, loop_log[-5000:]
        job = get_json(f"{service_url}/jobs/iter001")
        health = get_json(f"{service_url}/health")
        model_info = get_json(f"{server_url}/get_model_info")
        refused.wait(timeout=TIMEOUT_S)
    finally:
        for process in (p for p in (server, service, refused, sidecar) if p is not None):
            process.kill()
            process.wait()

    # Config time: a service without student endpoints, for a recipe whose student acts, is
    # refused before anything runs (no checkpoint, no job sent: the service saw only iter001).
    refusal = refused_log.read_text()
    assert refused.returncode != 0, refusal[-3000:]
    assert "config.loop.rollout_service" in refusal and \
        "config.loop.student_endpoints is empty" in refusal, refusal[-3000:]
    assert "(iteration 2: beta=0.8" in refusal, refusal[-3000:]
    assert not (refused_dir / "checkpoints").exists()

    state = json.loads((run / "state.json").read_text())

    # The training tasks went to the service as a task file in the bucket.
    tasks = [t for t in read_tasks(run / "tasks" / "train.jsonl") if isinstance(t, Task)]
    num_train = json.loads((run / "config.json").read_text())["tasks"]["num_train"]
    assert len(tasks) == num_train > TASKS  # all of configs/local.py's tasks; the job names 2

    # The service ran the iteration's job (and only it: evaluation stayed in the loop) and
    # published its shards to the bucket: one episode per task, named as in-process collection
    # names them.
    assert job["state"] == "done", job
    report = job["report"]
    assert report["episodes_written"] == TASKS and report["episodes_skipped"] == 0, report
    assert health["jobs"] == 1, health
    assert "POST /jobs" in (tmp_path / "service.log").read_text()
    data = SyncedShardDir(run / "data" / "iter_001", cache=tmp_path / "check").pull()
    ids = [e for shard in read_manifest(data) for e in shard.episode_ids]
    assert sorted(ids) == sorted(f"iter001/{t.instance_id}/0" for t in tasks[:TASKS]), ids
    assert all(shard.startswith("iter001-") for shard in os.listdir(data)
               if shard.endswith(".arecord")), os.listdir(data)
    records = list(EpisodeSource(data))
    assert {r.metadata["job_id"] for r in records} == {"iter001"}
    assert {(r.student_version, r.beta) for r in records} == {("iter000", 0.5)}

    # The student's turns came from the stand-in server: the service's pool sent them there,
    # after the loop had it load the initial export (iter_000) in place of the model it
    # started on; after training the loop loaded iter_001 on it. Both went through the
    # sidecar, which copied each export from the bucket to the fleet's disk.
    student_turns = sum(1 for r in records for t in r.turns if t.executor == "student")
    assert student_turns > 0, [[t.executor for t in r.turns] for r in records]
    [endpoint] = report["endpoints"]["student"]["endpoints"]
    assert endpoint["endpoint"] == server_url and endpoint["served"] >= student_turns, endpoint
    assert report["stats"]["student_turns"] == student_turns, report["stats"]
    server_log = (tmp_path / "server.log").read_text()
    loads = re.findall(r"loaded weights from (\S+) \(version (\S+)\)", server_log)
    assert [version for _, version in loads] == ["iter000", state["weight_version"]], loads
    assert all(path.startswith(str(sidecar_cache)) for path, _ in loads), loads
    sidecar_log = (tmp_path / "sidecar.log").read_text()
    for export in ("iter_000", "iter_001"):
        assert f"(copy of {workdir}/exports/{export})" in sidecar_log, sidecar_log[-3000:]
    # The older copy was removed once the server held the newer weights.
    assert [p.name.split("-")[0] for p in sidecar_cache.iterdir()] == ["iter_001"]
    assert model_info["weight_version"] == state["weight_version"], model_info
    assert loop_log.index("do not serve version iter000") < \
        loop_log.index("submitting rollout job iter001"), loop_log[-5000:]

    # Training ran on the service's episodes, and the iteration finished (evaluation included,
    # in the loop's process: its shards are in the bucket, no job of the service).
    trained = re.search(r"iteration 1: training steps (\d+)\.\.(\d+) on (\d+) examples", loop_log)
    assert trained and int(trained.group(2)) > int(trained.group(1)) and int(trained.group(3)) > 0
    assert (state["iteration"], state["phase"]) == (2, "collect"), state
    [row] = state["history"]
    assert row["train_steps"] == int(trained.group(2)) > 0, row
    assert is_published(run / "exports" / "iter_001")
    # configs/local.py evaluates from iteration 2, but the last iteration always is evaluated.
    evaluated = [e for shard in read_manifest(SyncedShardDir(
        run / "eval" / "iter_001", cache=tmp_path / "check").pull()) for e in shard.episode_ids]
    assert len(evaluated) == 1, evaluated
    assert not (ROOT / "gs:").exists()
    print(f"loop through the rollout service: {time.monotonic() - began:.1f} s, "
          f"{student_turns} student turns, {row['train_steps']} steps")


def loop_config(recipe: str, **loop_fields) -> ml_collections.ConfigDict:
    c = base_config()
    c.model.update(MODEL)
    c.loop.update({"enabled": True, "recipe": recipe, "iterations": 3,
                   "rollout_service": "http://127.0.0.1:1", **loop_fields})
    return c


@pytest.mark.parametrize("recipe, fields, iteration", [
    ("dagger", {}, 2),                                   # paper schedule: beta 0.8 at 2
    ("dagger", {"schedule": "constant", "schedule_params": '{"value": 0.5}'}, 1),
    ("aggrevate", {}, 1),                                # a student prefix
    ("opd", {"teacher": "sglang", "teacher_endpoints": "http://t:1"}, 1),
    ("grpo", {}, 1),
])
def test_a_student_that_acts_needs_student_endpoints(recipe, fields, iteration):
    with pytest.raises(ValueError) as refused:
        read_settings(loop_config(recipe, **fields))
    message = str(refused.value)
    assert "config.loop.rollout_service" in message and "config.loop.student_endpoints" in message
    assert f"recipe {recipe!r}" in message and f"(iteration {iteration}:" in message


@pytest.mark.parametrize("recipe, fields", [
    ("sft", {}), ("rs_sft", {}),                         # the teacher acts alone
    ("dagger", {"iterations": 1}),                       # paper schedule: beta 1 at 1
    ("dagger", {"student_endpoints": "http://s:1"}),     # the student is served
    ("grpo", {"student_endpoints": "http://s:1,http://s:2"}),
])
def test_no_refusal_when_the_student_does_not_act_or_is_served(recipe, fields):
    assert read_settings(loop_config(recipe, **fields)).loop.rollout_service


def test_in_process_and_service_collection_share_the_actor_specs(tmp_path):
    c = base_config().loop
    c.update(dict(temperature=0.7, top_p=0.9, max_new_tokens=64))
    assert teacher_spec(c) == {"kind": "expert", "search": "function"}
    c.update(dict(teacher="sglang", teacher_endpoints="http://a:1, http://b:2,"))
    assert teacher_spec(c) == {"kind": "sglang", "endpoints": ["http://a:1", "http://b:2"],
                               "sampling": {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 64}}
    c.update(dict(teacher="openai", teacher_endpoints="http://api/v1", teacher_model="m"))
    assert teacher_spec(c) == {"kind": "openai", "base_url": "http://api/v1", "model": "m",
                               "sampling": {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 64}}
    c.teacher = "expert"
    assert actor_source(c, get_recipe("dagger")).student_spec(greedy=False) is None  # in-process
    c.student_endpoints = "http://s:1,http://s:2"
    spec = actor_source(c, get_recipe("dagger")).student_spec(greedy=False)
    assert spec == {"kind": "sglang", "endpoints": ["http://s:1", "http://s:2"],
                    "sampling": {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 64}}
    # What the service builds from the spec is the actor the loop builds in-process.
    from dagger_jax.agent import ChatTokenizer
    from dagger_jax.tokenizer.sample_corpus import sample_texts
    from dagger_jax.tokenizer import train_bpe_tokenizer
    chat = ChatTokenizer.from_path(train_bpe_tokenizer(sample_texts(50, seed=0), 300, tmp_path))
    student = build_actor(json.loads(json.dumps(spec)), chat, "student")
    assert isinstance(student, TokenActor) and student.name == "student"
    assert (student.params.temperature, student.params.top_p, student.params.max_new_tokens) == \
        (0.7, 0.9, 64)
    assert student.generator.endpoints == ["http://s:1", "http://s:2"]
    assert isinstance(build_actor(teacher_spec(base_config().loop), chat, "teacher"), ExpertActor)
