"""The outer loop killed (SIGKILL) at several points resumes with the same command to the result
of an uninterrupted run: no episode collected twice, none lost, no step trained twice.

One chain, `python -m dagger_jax.main --config=configs/local.py:dagger` made tiny, killed four
times by watching its workdir (polled every 50 ms) and restarted each time with the same
command:

1. iteration 1, collect: at least one episode finished and handed to the shard writer (its
   shard still a temp file, unlisted) while later episodes still run;
2. iteration 1, evaluate: the student's evaluation episodes are listed in eval/iter_001's
   manifest, the teacher's evaluation / the covariate-shift scoring not done yet;
3. iteration 2, collect: as 1, with the student (the iteration-1 export) acting on some turns
   (beta 0.5) of the episodes run again;
4. iteration 2, train: a checkpoint past the iteration's first step is saved, steps remain.

Each kill is checked to have landed where intended (state.json and the files read after the
process group is dead), so a phase that passed too fast fails the test instead of skipping a
kill point. The last restart runs to the end; the result is then compared with one
uninterrupted reference run of the same command (run alongside, in another workdir): the same
episodes in every data and evaluation directory, each once, with the same tokens and labels;
the same labelled-turn counts (a label budget ends each collection early, and a restart
recounts the stored labels); the same checkpoint steps; the same history in state.json; the
same exported weights.

What is deterministic here, hence compared exactly: the scripted expert; the executor coin of
every turn (episode_seed); the student's rollouts, because they are greedy (loop.temperature=0,
see STUDENT_GREEDY); the manifest order of episodes, because collection is serial
(loop.concurrency=1, see SERIAL); batches as a pure function of (data, step); CPU XLA numerics;
checkpoints that restore the float32 state bit for bit.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from safetensors.numpy import load_file

from dagger_jax.data.shards import EpisodeSource, labelled_turns, read_manifest
from dagger_jax.storage.store import read_text_whole, store_path
from tests.conftest import SUBPROCESS_XLA_FLAGS

# Real sandboxes, servers or whole runs: left out of make test-fast.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ITERATIONS, TASKS, EVAL_TASKS = 2, 3, 2
LABEL_BUDGET, EPISODES = 6, 2  # episodes collected per iteration: the budget's 6 labels / 3
# STUDENT_GREEDY: at loop.temperature > 0 the student's collection samples are not a function
# of the episode: Loop._student builds the LocalSampler without a seed and TokenActor
# sends none per request, so each request draws its sampling seed from an unseeded RNG
# (episode_seed only drives the executor coin). A killed student episode is then re-run with
# other tokens than it had, and no two runs agree on them; ids, counts and coins would still
# match. Greedy rollouts make the student's turns a function of its weights alone.
# SERIAL: with concurrency > 1 episodes are listed in the order they finish (timing), and the
# trajectory pipeline plans its examples in manifest order, so even two uninterrupted runs pack
# different batches. One episode at a time lists them in the job's order, restarts included.
OVERRIDES = [
    # configs/local.py's student at 2 layers of width 32; dense attention (blocked attention is
    # a Python loop over seq/block blocks: slower to compile, and no faster at this size).
    "--config.model.hidden_size=32", "--config.model.intermediate_size=64",
    "--config.model.num_hidden_layers=2", "--config.model.num_attention_heads=2",
    "--config.model.num_key_value_heads=1", "--config.model.head_dim=16",
    "--config.attention_block=0",
    f"--config.loop.iterations={ITERATIONS}", f"--config.loop.tasks_per_iteration={TASKS}",
    # 3 turns of at most 48 tokens; a turn starts only if it fits the context budget, which is
    # the training row: no example is ever too long, no labelled turn dropped.
    "--config.loop.max_turns=3", "--config.loop.max_new_tokens=48",
    "--config.loop.context_budget=2048", "--config.train.seq_len=2048",
    # Every turn is labelled (DAgger), 3 per episode: the budget stops each iteration after 2 of
    # its 3 tasks; a restart counts the labels already stored from the manifest.
    f"--config.loop.label_budget={LABEL_BUDGET}",
    "--config.loop.concurrency=1", "--config.loop.temperature=0.0",  # SERIAL, STUDENT_GREEDY
    "--config.loop.epochs=2",  # at least 4 steps in iteration 2: room for a kill between two
    # Iteration 2 trains one epoch of all the data, then one of iteration 2's alone: two
    # pipelines, one step counter, which a restart must find where it left off.
    "--config.loop.earlier_epochs=1",
    "--config.eval.from_iteration=1",  # kill point 2 is in iteration 1's evaluation
    # The paper's schedule, steeper: beta 1 in iteration 1 (the expert alone), 0.5 in iteration
    # 2, so that the student acts on many of its turns, the re-run ones included.
    '--config.loop.schedule_params={"floor": 0.0, "step": 0.5}',
    f"--config.eval.num_tasks={EVAL_TASKS}", "--config.eval.max_turns=3",
    "--config.eval.shift_states=4",
    # One-row batches, a checkpoint after every step, all kept: the steps of both runs can be
    # compared, and the training kill lands between two checkpoints.
    "--config.train.batch_size=1", "--config.train.log_every=1",
    "--config.train.checkpoint_every=1", "--config.train.keep_checkpoints=100",
    # Each round's rate decays from lr to lr / 10 by its last step (no warmup: a round here is
    # a few steps): a killed round resumes only if every re-run step gets the rate it had.
    "--config.train.round_schedule=cosine", "--config.train.warmup_steps=0",
    "--config.progress=False",
]
POLL_S = 0.05
SEGMENT_TIMEOUT_S = 420
# Covariate-shift NLLs: scored by the same code on (as asserted) the same weights and states,
# so equal in practice; 1e-6 leaves room for nothing but last-bit noise, far below the change
# one training step makes (about 1e-2 nats here).
NLL_TOL = 1e-6
FLOAT_METRICS = ("nll_student_states", "nll_teacher_states", "shift_gap")


def command(workdir: Path) -> list[str]:
    return [sys.executable, "-m", "dagger_jax.main", "--config=configs/local.py:dagger",
            f"--workdir={workdir}", *OVERRIDES]


def environment(tmp: Path) -> dict[str, str]:
    # One device per process, as the demo runs (tests/conftest.py's 8 are for in-process tests).
    env = {**os.environ, "XLA_FLAGS": SUBPROCESS_XLA_FLAGS}
    env["JAX_PLATFORMS"] = "cpu"
    # A killed episode leaves its temp directory (the task's files) behind: here, not in /tmp.
    (tmp / "tmp").mkdir(parents=True, exist_ok=True)
    env["TMPDIR"] = str(tmp / "tmp")
    # Compiled programs (train step, sampler, scorer) are compiled once and reused by the other
    # run and by every restart. Which process compiles a program does not change what it
    # computes (an entry a killed process left half-written is read as a miss and compiled).
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp / "jax_cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return env


def start(workdir: Path, log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "w") as out:
        # A session of its own: the kill reaches the whole process group.
        return subprocess.Popen(command(workdir), cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


def read_state(workdir: Path) -> dict[str, Any] | None:
    """state.json, or None before the loop first writes it (it is replaced atomically)."""
    try:
        return json.loads((workdir / "state.json").read_text())
    except FileNotFoundError:
        return None


def at(state: dict[str, Any] | None, iteration: int, phase: str) -> bool:
    """Whether the loop is at (iteration, phase); no state.json yet means iteration 1 collect."""
    if state is None:
        return (iteration, phase) == (1, "collect")
    return (state["iteration"], state["phase"]) == (iteration, phase)


def checkpoint_steps(workdir: Path) -> list[int]:
    # Orbax writes a step into a temp directory and renames it to its number when complete.
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def unlisted_shard(workdir: Path, iteration: int) -> list[Path]:
    """Temp shards of the iteration: episodes finished and written, not yet listed."""
    directory = workdir / "data" / f"iter_{iteration:03d}"
    if not directory.is_dir():
        return []
    return sorted(directory.glob(f"iter{iteration:03d}-*.arecord.tmp"))


def mid_collection(iteration: int) -> Callable[[Path, Any], bool]:
    def trigger(workdir: Path, state: Any) -> bool:
        return at(state, iteration, "collect") and bool(unlisted_shard(workdir, iteration))
    return trigger


def student_eval_listed(workdir: Path, state: Any) -> bool:
    return at(state, 1, "evaluate") and (workdir / "eval" / "iter_001" / "manifest.jsonl").exists()


def mid_training(workdir: Path, state: Any) -> bool:
    if not at(state, 2, "train") or state["train_start"] is None:
        return False
    steps = checkpoint_steps(workdir)
    return bool(steps) and state["train_start"] < steps[-1] < state["train_end"]


# (name, iteration, phase, trigger)
KILLS = [
    ("collect-1", 1, "collect", mid_collection(1)),
    ("evaluate-1", 1, "evaluate", student_eval_listed),
    ("collect-2", 2, "collect", mid_collection(2)),
    ("train-2", 2, "train", mid_training),
]


def run_until_killed(workdir: Path | str, log: Path, env: dict[str, str], name: str,
                     trigger: Callable[[Any, Any], bool],
                     state_of: Callable[[Any], Any] = read_state) -> float:
    """Starts the command, SIGKILLs its process group once trigger holds; returns the seconds
    it ran. Fails if the run ends (or times out) before the trigger: a missed kill point."""
    began = time.monotonic()
    proc = start(workdir, log, env)
    try:
        while True:
            if trigger(workdir, state_of(workdir)):
                break
            if proc.poll() is not None:
                pytest.fail(f"kill point {name} missed: the run exited ({proc.returncode}) first; "
                            f"state {state_of(workdir)}\n{tail(log)}")
            if time.monotonic() - began > SEGMENT_TIMEOUT_S:
                pytest.fail(f"kill point {name} not reached in {SEGMENT_TIMEOUT_S} s\n{tail(log)}")
            time.sleep(POLL_S)
    finally:
        kill_group(proc)
    return time.monotonic() - began


def wait(proc: subprocess.Popen, log: Path, timeout: float) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        pytest.fail(f"{log.name}: not done in {timeout} s\n{tail(log)}")
    assert proc.returncode == 0, f"{log.name}: exit {proc.returncode}\n{tail(log)}"


def manifest_ids(directory: Path) -> list[str]:
    """Every listed episode id, duplicates included (EpisodeSource would hide them)."""
    return [i for shard in read_manifest(directory) for i in shard.episode_ids]


def records(directory: Path) -> dict[str, Any]:
    return {r.episode_id: r for r in EpisodeSource(directory)}


def turn_view(record) -> list[tuple]:
    return [(t.index, t.executor, t.prompt_len, t.executed_end, list(t.label_ids), t.parse_ok,
             t.finish_reason) for t in record.turns]


def untimed(messages: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(m["role"], re.sub(r"\d+\.\d+s\b", "<seconds>", m["content"])) for m in messages]


RECORD_DIRS = [f"data/iter_{i:03d}" for i in range(1, ITERATIONS + 1)] + \
              [f"eval/iter_{i:03d}" for i in range(1, ITERATIONS + 1)] + ["eval/teacher"]


class Reference:
    """The uninterrupted run both tests compare with: started when the first test asks for it,
    so it runs alongside that test's chain; `done()` waits for it and returns its workdir."""

    def __init__(self, base: Path):
        self.workdir, self.log = base / "reference", base / "reference.log"
        self.proc = start(self.workdir, self.log, environment(base))

    def done(self) -> Path:
        wait(self.proc, self.log, SEGMENT_TIMEOUT_S)
        return self.workdir


@pytest.fixture(scope="module")
def shared(tmp_path_factory, bwrap_backend) -> Path:
    """The module's directory: the reference run, and the compilation cache every run shares."""
    return tmp_path_factory.mktemp("loop")


@pytest.fixture(scope="module")
def reference(shared):
    run = Reference(shared)
    yield run
    kill_group(run.proc)


def test_loop_killed_at_four_points_resumes_to_the_uninterrupted_result(
        tmp_path, shared, reference):
    chain_dir = tmp_path / "chain"
    env = {**environment(shared), "TMPDIR": str(tmp_path)}
    report: list[str] = []
    at_kill: dict[str, Any] = {}
    try:
        # --- the chain: start, kill, restart the same command, ... -------------------------
        for n, (name, iteration, phase, trigger) in enumerate(KILLS):
            before = {d: (chain_dir / d / "manifest.jsonl").read_bytes()
                      for d in RECORD_DIRS if (chain_dir / d / "manifest.jsonl").exists()}
            seconds = run_until_killed(chain_dir, tmp_path / f"chain-{n}-{name}.log", env,
                                       name, trigger)
            state = read_state(chain_dir)
            # Where the dead process left the loop: the kill landed in the intended phase.
            assert at(state, iteration, phase), (name, state)
            where = {k: state[k] for k in ("iteration", "phase", "train_start", "train_end")} \
                if state else "no state.json yet (iteration 1, collect)"
            report.append(f"{name}: killed after {seconds:.1f} s at {where}")
            # Listed shards are append-only: a restart never rewrote what was listed before.
            for d, text in before.items():
                assert (chain_dir / d / "manifest.jsonl").read_bytes().startswith(text), (name, d)
            if phase == "collect":
                # Episodes finished but unlisted (lost with the process, to be run again), and
                # the iteration's data not complete: a real mid-collection kill.
                assert unlisted_shard(chain_dir, iteration), name
                directory = chain_dir / "data" / f"iter_{iteration:03d}"
                assert len(manifest_ids(directory)) < EPISODES, (name, manifest_ids(directory))
            elif phase == "evaluate":
                assert len(manifest_ids(chain_dir / "eval" / "iter_001")) == EVAL_TASKS
                assert not state["history"], state["history"]  # iteration 1 not recorded yet
                at_kill["eval_manifest"] = \
                    (chain_dir / "eval" / "iter_001" / "manifest.jsonl").read_bytes()
            else:
                at_kill["step"], at_kill["train_end"] = checkpoint_steps(chain_dir)[-1], \
                    state["train_end"]
                assert state["train_start"] < at_kill["step"] < state["train_end"], \
                    (at_kill, state)

        began = time.monotonic()
        final_log = tmp_path / f"chain-{len(KILLS)}-final.log"
        wait(start(chain_dir, final_log, env), final_log, SEGMENT_TIMEOUT_S)
        report.append(f"final restart: ran {time.monotonic() - began:.1f} s to the end")
        reference_dir = reference.done()
    finally:
        print("\n".join(report))
    check_restarts(tmp_path, chain_dir, at_kill)
    check_same_result(reference_dir, chain_dir)
    check_two_training_passes(reference.log, reference_dir)


def test_the_loop_in_a_bucket_resumes_on_another_machine_to_the_local_result(
        tmp_path, shared, reference, gcs):
    """--workdir=gs://... (the GCS emulator): killed in iteration 2's collection, with the
    student acting, then restarted with another local temp dir (another machine: no working
    copy of the shards, no cached export), it ends with what the uninterrupted local run has;
    and nothing is written to a local folder named gs:."""
    from tests.gcs_emulator import create_bucket
    workdir = create_bucket(gcs, "loops") + "/dagger"
    run = store_path(workdir)
    machines = [tmp_path / "machine-a", tmp_path / "machine-b"]
    for machine in machines:
        machine.mkdir()
    env = {**environment(shared), **gcs}

    def bucket_state(_workdir: str) -> dict[str, Any] | None:
        return json.loads(read_text_whole(run / "state.json")) if (run / "state.json").exists() \
            else None

    def collecting_2(_workdir: str, state: Any) -> bool:
        return at(state, 2, "collect") and bool(list(machines[0].glob(
            "dagger_jax_store/work/iter_002-*/iter002-*.arecord.tmp")))

    run_until_killed(workdir, tmp_path / "a.log", {**env, "TMPDIR": str(machines[0])},
                     "collect-2 (bucket)", collecting_2, bucket_state)
    assert at(bucket_state(workdir), 2, "collect")
    # Iteration 2's unfinished shard was never published; iteration 1's shards were.
    assert not (run / "data" / "iter_002" / "manifest.jsonl").exists()
    log = tmp_path / "b.log"
    wait(start(workdir, log, {**env, "TMPDIR": str(machines[1])}), log, SEGMENT_TIMEOUT_S)
    # The second machine took iteration 1's shards from the bucket to train on.
    assert "shard(s) taken from gs://loops/dagger/data/iter_001" in log.read_text(), tail(log)
    copy = tmp_path / "downloaded"
    download(run, copy)
    check_same_result(reference.done(), copy)
    assert not (ROOT / "gs:").exists() and not (tmp_path / "gs:").exists()


def download(remote, local: Path) -> None:
    """Every object under a bucket path, into a local directory of the same layout."""
    for child in remote.iterdir():
        if child.is_dir():
            download(child, local / child.name)
        else:
            local.mkdir(parents=True, exist_ok=True)
            (local / child.name).write_bytes(child.read_bytes())


def check_two_training_passes(log: Path, workdir: Path) -> None:
    """Iteration 2 (loop.earlier_epochs=1 of 2) trained one epoch over both iterations' data,
    then one over iteration 2's alone: fewer examples, and the steps are the two passes'."""
    passes = re.findall(r"iteration 2: training steps (\d+)\.\.(\d+) on (\d+) examples x 1 "
                        r"epochs then (\d+) examples x 1 epochs", log.read_text())
    assert passes, tail(log)
    first, last, everything, new = map(int, passes[0])
    assert 0 < new < everything
    rows = [int(n) for n in re.findall(r"(\d+) rows of \d+ \(fill", log.read_text())]
    assert last - first < 2 * max(rows)  # less than two epochs of the aggregate
    history = json.loads((workdir / "state.json").read_text())["history"]
    assert history[1]["train_steps"] == last


def check_restarts(tmp_path: Path, chain_dir: Path, at_kill: dict[str, Any]) -> None:
    """What each restart did, from its log and the files."""
    logs = {name: next(tmp_path.glob(f"chain-{n + 1}-*.log")).read_text()
            for n, (name, *_) in enumerate(KILLS)}
    # After the collect kills, the restart removed the temp shard the dead writer left (its
    # episodes are run again; the comparison below shows each is stored once).
    for name in ("collect-1", "collect-2"):
        assert "left unfinished by a stopped writer" in logs[name], logs[name][-3000:]
    # The evaluation kill: the student's evaluation episodes listed before it were kept as they
    # were (not collected again); the rest of the evaluation was redone.
    assert (chain_dir / "eval" / "iter_001" / "manifest.jsonl").read_bytes() == \
        at_kill["eval_manifest"]
    # The training kill: the restart resumed from the last checkpoint and trained exactly the
    # steps after it (a step saved before the kill is not trained again).
    log = logs["train-2"]
    resumed = re.search(r"resuming from \S+ step (\d+)", log)
    span = re.search(r"training steps (\d+)\.\.(\d+), objective", log)  # the trainer's line
    assert resumed and span, log[-3000:]
    assert int(resumed.group(1)) == int(span.group(1)) == at_kill["step"]
    assert int(span.group(2)) == at_kill["train_end"]
    trained = [int(s) for s in re.findall(r"step (\d+): loss", log)]
    assert trained == list(range(at_kill["step"] + 1, at_kill["train_end"] + 1)), trained


def check_same_result(reference_dir: Path, chain_dir: Path) -> None:
    """The killed-and-resumed run's workdir against the uninterrupted run's."""
    ref_state, chain_state = read_state(reference_dir), read_state(chain_dir)
    assert (chain_state["iteration"], chain_state["phase"]) == (ITERATIONS + 1, "collect")
    assert chain_state["weight_version"] == ref_state["weight_version"]
    assert len(chain_state["history"]) == len(ref_state["history"]) == ITERATIONS
    for ref_row, row in zip(ref_state["history"], chain_state["history"]):
        assert set(row) == set(ref_row)
        exact = {k: v for k, v in row.items() if k not in FLOAT_METRICS}
        assert exact == {k: v for k, v in ref_row.items() if k not in FLOAT_METRICS}
        for key in FLOAT_METRICS:
            assert row[key] == pytest.approx(ref_row[key], abs=NLL_TOL), key

    for d in RECORD_DIRS:
        ids, ref_ids = manifest_ids(chain_dir / d), manifest_ids(reference_dir / d)
        # Each episode exactly once (none twice, none lost), the same ones, in the same order.
        assert len(ids) == len(set(ids)), (d, ids)
        assert ids == ref_ids, d
        assert not list((chain_dir / d).glob("*.tmp")), d
        ref_records, chain_records = records(reference_dir / d), records(chain_dir / d)
        for episode_id, ref in ref_records.items():
            got = chain_records[episode_id]
            # The tokens the trainer and the covariate-shift scorer read (up to the end of the
            # last turn) are equal, and so are the messages; timings are masked in them for
            # tasks whose test command prints them (the synthetic tasks' does not).
            end = ref.turns[-1].executed_end if ref.turns else 0
            assert got.trunk_ids[:end] == ref.trunk_ids[:end], episode_id
            assert turn_view(got) == turn_view(ref), episode_id
            assert untimed(got.messages) == untimed(ref.messages), episode_id
            assert (got.outcome.resolved, got.outcome.end_reason) == \
                (ref.outcome.resolved, ref.outcome.end_reason), episode_id
    for i in range(1, ITERATIONS + 1):
        data = [chain_dir / "data" / f"iter_{k:03d}" for k in range(1, i + 1)]
        ids = manifest_ids(data[-1])  # the job's episodes: one per task, up to the label budget
        assert len({e.split("/")[1] for e in ids}) == len(ids) == EPISODES, ids
        assert all(e.startswith(f"iter{i:03d}/") and e.endswith("/0") for e in ids), ids
        assert labelled_turns(data[-1]) == LABEL_BUDGET
        assert labelled_turns(data) == ref_state["history"][i - 1]["labelled_turns"]
    for i in range(1, ITERATIONS + 1):
        assert len(manifest_ids(chain_dir / "eval" / f"iter_{i:03d}")) == EVAL_TASKS
    # Iteration 2's first episode, finished but unlisted when its collection was killed, hence
    # run again, has student turns: a re-run student episode reproduced its first run's tokens.
    iteration_2 = chain_dir / "data" / "iter_002"
    first = records(iteration_2)[manifest_ids(iteration_2)[0]]
    assert "student" in [t.executor for t in first.turns], turn_view(first)

    # Every step trained once: the same checkpoints, one per step, and the same weights.
    steps = checkpoint_steps(chain_dir)
    last_step = ref_state["history"][-1]["train_steps"]
    assert steps == checkpoint_steps(reference_dir) == list(range(last_step + 1)), steps
    # Tolerance: the same batches on a state restored bit for bit give the same float32 weights
    # on CPU (they are equal to the bit in practice); 1e-7 absolute is orders of magnitude below
    # what one step moves a weight (Adam: about the learning rate, 1e-4 and up after the first
    # warmup step), so a step trained twice or skipped fails here.
    previous = None
    for i in range(ITERATIONS + 1):
        ref = load_file(reference_dir / "exports" / f"iter_{i:03d}" / "model.safetensors")
        got = load_file(chain_dir / "exports" / f"iter_{i:03d}" / "model.safetensors")
        assert set(got) == set(ref)
        for key in ref:
            np.testing.assert_allclose(got[key], ref[key], rtol=1e-6, atol=1e-7, err_msg=key)
        if previous is not None:  # the tolerance would see a step: each iteration moved them
            assert max(np.abs(ref[k] - previous[k]).max() for k in ref) > 1e-5
        previous = ref
