"""The turn-level mixture collector against real sandboxes, with the scripted expert teacher.

The student here is a plain text policy (it always looks at the repo), so these tests are about
the mixing and the bookkeeping; the end-to-end test with a served model student is elsewhere.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from dagger_jax.agent import ToolCall, render_action
from dagger_jax.data.shards import EpisodeSource, existing_episode_ids, read_manifest
from dagger_jax.envs.tasks.synthetic import generate_tasks
from dagger_jax.policies.actors import Action, ExpertActor
from dagger_jax.policies.scripted_expert import ScriptedExpert
from dagger_jax.policies.sglang_client import RequestRejected
from dagger_jax.rollout.collector import CollectionJob, collect
from dagger_jax.rollout.faults import CollectionIncomplete, Patience
from dagger_jax.rollout.mixed_episode import EpisodeSettings
from dagger_jax.rollout.mixing import RolloutRule

# Real sandboxes, servers or whole runs: left out of make test-fast.
pytestmark = pytest.mark.slow

TASKS = {t.instance_id: t for t in generate_tasks(8, seed=5)}


class Looker:
    """A harmless student: lists the repo every turn."""

    name = "looker"

    def __init__(self):
        self.calls = 0

    async def act(self, state) -> Action:
        self.calls += 1
        await asyncio.sleep(0)
        return Action(render_action(ToolCall("execute_bash", {"command": "ls"}), "Looking."), None)


def job(tmp_path, beta, job_id="it0", **kw):
    return CollectionJob(job_id=job_id, iteration=0, rule=RolloutRule(beta=beta), task_ids=tuple(TASKS),
                         out_dir=str(tmp_path / "iter_000"), episodes_per_task=kw.pop("k", 2), seed=3,
                         student_version="v0", teacher_id="expert",
                         settings=EpisodeSettings(max_turns=kw.pop("max_turns", 12)), **kw)


def test_mixture_labels_every_state_and_matches_beta(tmp_path, chat, bwrap_backend):
    student, teacher = Looker(), ExpertActor(ScriptedExpert())
    beta = 0.5
    report = asyncio.run(collect(job(tmp_path, beta), TASKS, student=student, teacher=teacher,
                                 chat=chat, backend=bwrap_backend, concurrency=4, records_per_shard=5))
    assert report.episodes_written == 16 and report.failed == {}
    records = [EpisodeSource(tmp_path / "iter_000")[i] for i in range(16)]
    turns = [t for r in records for t in r.turns]
    assert all(t.label_text is not None and t.label_ids for t in turns)  # every state labelled
    # One teacher call per visited state: the executing call or the labelling call.
    assert report.stats["teacher_calls"] == len(turns) == report.stats["turns"]
    assert report.stats["student_calls"] == student.calls == sum(t.executor == "student" for t in turns)
    n, k = len(turns), sum(t.executor == "student" for t in turns)
    assert abs(k - n * (1 - beta)) <= 3.5 * math.sqrt(n * beta * (1 - beta)), (k, n)
    for r in records:
        for t in r.turns:
            executed = r.trunk_ids[t.prompt_len:t.executed_end]
            if t.executor == "teacher":
                assert executed == t.label_ids and t.executed_text == t.label_text
            else:
                assert executed == chat.assistant_turn_ids(t.executed_text)
                assert "ls" in t.executed_text and t.label_text != t.executed_text
    # With the expert doing half the turns, every episode still gets solved in the turn limit.
    assert report.resolved == 16 and all(r.outcome.resolved for r in records)
    assert len(read_manifest(tmp_path / "iter_000")) == 4  # 16 episodes, 5 per shard


def test_rerun_of_a_job_collects_nothing_twice_and_coins_replay(tmp_path, chat, bwrap_backend):
    teacher = ExpertActor(ScriptedExpert())
    first = asyncio.run(collect(job(tmp_path, 0.3, k=1), TASKS, student=Looker(), teacher=teacher,
                                chat=chat, backend=bwrap_backend, concurrency=3))
    again = asyncio.run(collect(job(tmp_path, 0.3, k=1), TASKS, student=Looker(), teacher=teacher,
                                chat=chat, backend=bwrap_backend, concurrency=3))
    assert first.episodes_written == 8 and again.episodes_written == 0 and again.episodes_skipped == 8
    # The same job id in a fresh directory replays the same coin flips per episode.
    other = tmp_path / "replay"
    replay = CollectionJob(**{**job(tmp_path, 0.3, k=1).__dict__, "out_dir": str(other)})
    asyncio.run(collect(replay, TASKS, student=Looker(), teacher=teacher, chat=chat,
                        backend=bwrap_backend, concurrency=3))
    a, b = EpisodeSource(tmp_path / "iter_000"), EpisodeSource(other)
    by_id = {b[i].episode_id: b[i] for i in range(len(b))}
    for i in range(len(a)):
        ra = a[i]
        assert [t.executor for t in ra.turns] == [t.executor for t in by_id[ra.episode_id].turns]
        assert ra.seed == by_id[ra.episode_id].seed
    assert existing_episode_ids(other) == existing_episode_ids(tmp_path / "iter_000")


class Rejected:
    """A student whose every request the server refuses (HTTP 400): the request's fault."""

    name = "rejected"

    async def act(self, state):
        raise RequestRejected("http://127.0.0.1:9", "the input is longer than the context",
                              status=400)


def test_an_unusable_turn_ends_only_its_episode_with_a_reason(tmp_path, chat, bwrap_backend):
    report = asyncio.run(collect(job(tmp_path, 0.0, k=1), TASKS, student=Rejected(),
                                 teacher=ExpertActor(ScriptedExpert()), chat=chat,
                                 backend=bwrap_backend, concurrency=2))
    assert report.failed == {"policy_error": 8} and report.episodes_written == 8
    record = EpisodeSource(tmp_path / "iter_000")[0]
    assert "longer than the context" in record.outcome.error and not record.outcome.resolved
    # A teacher that fails only while labelling leaves those states unlabelled; episodes go on.
    report = asyncio.run(collect(job(tmp_path, 0.0, job_id="it0b", k=1, max_turns=3), TASKS,
                                 student=Looker(), teacher=Rejected(), chat=chat,
                                 backend=bwrap_backend, concurrency=2))
    records = [r for r in (EpisodeSource(tmp_path / "iter_000")[i] for i in range(16))
               if r.episode_id.startswith("it0b/")]
    assert all(r.outcome.end_reason == "turn_limit" and len(r.turns) == 3 for r in records)
    assert all(t.label_text is None and t.label_ids == [] for r in records for t in r.turns)
    with pytest.raises(ValueError, match="not in the task set"):
        asyncio.run(collect(CollectionJob(**{**job(tmp_path, 0.5).__dict__, "task_ids": ("nope",)}),
                            TASKS, student=Looker(), teacher=None, chat=chat, backend=bwrap_backend))


def test_an_outage_is_waited_out_and_never_recorded(tmp_path, chat, bwrap_backend):
    """A student that refuses connections: its calls wait (with backoff) while the job's patience
    lasts, then the job stops with nothing of the outage written; the same job, rerun once the
    student is back, collects every episode as the agent's own outcome. A student that comes
    back within the patience costs nothing but time."""

    class Down:
        name = "down"

        def __init__(self, failures: int):
            self.failures = failures

        async def act(self, state):
            if self.failures > 0:
                self.failures -= 1
                raise ConnectionRefusedError("connect to http://127.0.0.1:9 refused")
            return await Looker().act(state)

    settings = EpisodeSettings(max_turns=2, infra_patience_s=1.5)
    quick = Patience(settings.infra_patience_s, backoff_initial_s=0.05, backoff_max_s=0.2)
    out = tmp_path / "iter_000"
    the_job = CollectionJob(job_id="outage", iteration=0, rule=RolloutRule(beta=0.0),
                            task_ids=tuple(TASKS)[:4], out_dir=str(out), settings=settings)
    with pytest.raises(CollectionIncomplete, match="4 of 4 episodes were not collected.*refused"
                       ".*run the job again") as info:
        asyncio.run(collect(the_job, TASKS, student=Down(10 ** 6), teacher=ExpertActor(ScriptedExpert()),
                            chat=chat, backend=bwrap_backend, concurrency=2, patience=quick))
    assert len(info.value.missing) == 4
    assert not out.exists() or existing_episode_ids(out) == set()
    # Back after a few refusals: every episode ends by the turn limit, none by a fault.
    report = asyncio.run(collect(the_job, TASKS, student=Down(3), teacher=ExpertActor(ScriptedExpert()),
                                 chat=chat, backend=bwrap_backend, concurrency=2,
                                 patience=Patience(30, backoff_initial_s=0.05)))
    assert report.episodes_written == 4 and report.failed == {}
    assert report.stats["infrastructure_waits"] >= 3
    assert {EpisodeSource(out)[i].outcome.end_reason for i in range(4)} == {"turn_limit"}


def _serve_fake_sglang(log_path, *args: str):
    """tests/policies/fake_sglang.py as a process of its own; (process, port)."""
    import subprocess
    import sys
    import time

    server = Path(__file__).parents[1] / "policies" / "fake_sglang.py"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, str(server), *args], stdout=log,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ports = [line.split()[1] for line in log_path.read_text().splitlines()
                 if line.startswith("PORT ")]
        if ports:
            return proc, int(ports[-1])
        assert proc.poll() is None, log_path.read_text()
        time.sleep(0.05)
    raise TimeoutError(log_path.read_text())


def test_the_only_student_server_killed_and_restarted_costs_no_episode(tmp_path, chat,
                                                                        bwrap_backend):
    """The student's one SGLang endpoint (a reply of 3 tokens cut at max_new_tokens) is SIGKILLed in the middle of the collection and comes
    back on the same port 3 s later: the episodes wait for it and end as the agent's own."""
    import threading

    from dagger_jax.policies.actors import TokenActor
    from dagger_jax.policies.endpoint_pool import EndpointPool
    from dagger_jax.policies.generation import SamplingParams
    from dagger_jax.policies.sglang_client import RetryPolicy, SGLangClient

    log = tmp_path / "server.log"
    first, port = _serve_fake_sglang(log, "--vocab-size", str(len(chat.tokenizer)))
    servers = [first]
    client = SGLangClient(f"http://127.0.0.1:{port}", vocab_size=len(chat.tokenizer),
                          retry=RetryPolicy(max_attempts=2, backoff_initial_s=0.05, jitter_s=0))
    pool = EndpointPool([client], cooldown_s=0.5)
    model = TokenActor("student", pool, chat, SamplingParams(temperature=0.0, max_new_tokens=3))

    class KilledOnItsFifthCall:
        name = "student"
        calls = 0

        async def act(self, state):
            self.calls += 1
            if self.calls == 5:
                first.kill()
                first.wait()
                threading.Timer(3.0, lambda: servers.append(_serve_fake_sglang(
                    log, "--port", str(port), "--vocab-size", str(len(chat.tokenizer)))[0])).start()
            return await model.act(state)

    the_job = CollectionJob(job_id="restart", iteration=0, rule=RolloutRule(beta=0.0),
                            task_ids=tuple(TASKS), out_dir=str(tmp_path / "iter_000"),
                            settings=EpisodeSettings(max_turns=3, max_new_tokens=3))
    async def run():
        try:
            return await collect(the_job, TASKS, student=KilledOnItsFifthCall(),
                                 teacher=ExpertActor(ScriptedExpert()), chat=chat,
                                 backend=bwrap_backend, concurrency=4,
                                 patience=Patience(60, backoff_initial_s=0.2, backoff_max_s=1))
        finally:
            await pool.aclose()

    try:
        report = asyncio.run(run())
    finally:
        for proc in servers:
            proc.kill()
    assert len(servers) == 2 and log.read_text().count("PORT ") == 2
    assert report.episodes_written == 8 and report.failed == {}
    assert report.stats["infrastructure_waits"] >= 1
    records = [EpisodeSource(tmp_path / "iter_000")[i] for i in range(8)]
    assert {r.outcome.end_reason for r in records} == {"turn_limit"}
    assert all(len(r.turns) == 3 and all(t.executor == "student" and t.label_ids for t in r.turns)
               for r in records)


def test_a_lost_sandbox_starts_its_episode_again_and_a_missing_image_is_left_for_a_rerun(
        tmp_path, chat, docker_backend):
    """One task's image is missing and another's container is killed from outside in its first
    episode: the killed episode starts again in a new container and is collected as usual; the
    image's episode is not written (no outcome of the agent's), and the job says so."""
    import dataclasses

    import docker

    tasks = dict(list(TASKS.items())[:3])
    ids = list(tasks)
    tasks[ids[0]] = dataclasses.replace(tasks[ids[0]], image="dagger-jax/no-such-image:1", repo_files=None)
    killed: list[str] = []

    class Killer(Looker):
        async def act(self, state):
            if state.task.instance_id == ids[1] and not killed:
                killed.append(state.sandbox.container_id)
                docker.from_env().containers.get(state.sandbox.container_id).kill()
            return await super().act(state)

    out = tmp_path / "iter_000"
    with pytest.raises(CollectionIncomplete, match="1 of 3 episodes.*no-such-image") as info:
        asyncio.run(collect(
            CollectionJob(job_id="faults", iteration=0, rule=RolloutRule(beta=0.0), task_ids=tuple(ids),
                          out_dir=str(out), settings=EpisodeSettings(max_turns=2)),
            tasks, student=Killer(), teacher=ExpertActor(ScriptedExpert()), chat=chat,
            backend=docker_backend, concurrency=3, patience=Patience(20, backoff_initial_s=0.1)))
    assert info.value.missing == [f"faults/{ids[0]}/0"]
    records = {r.task_id: r for r in (EpisodeSource(out)[i] for i in range(len(EpisodeSource(out))))}
    assert sorted(records) == sorted(ids[1:]) and len(killed) == 1
    assert all(r.outcome.end_reason == "turn_limit" and len(r.turns) == 2 for r in records.values())


def test_label_budget_stops_starting_episodes_and_a_rerun_adds_none(tmp_path, chat, bwrap_backend):
    """Teacher-only episodes of these tasks take 4 labelled turns each: a budget of 10 stops the
    job after the episodes running when it is reached (concurrency 2: 3 or 4 of 16)."""
    teacher = ExpertActor(ScriptedExpert())
    budgeted = job(tmp_path, 1.0, label_budget=10)
    report = asyncio.run(collect(budgeted, TASKS, student=None, teacher=teacher, chat=chat,
                                 backend=bwrap_backend, concurrency=2))
    records = list(EpisodeSource(tmp_path / "iter_000"))
    labelled = sum(1 for r in records for t in r.turns if t.label_ids)
    assert report.episodes_written == len(records) < 16
    assert 10 <= labelled < 10 + 2 * 4 + 4, labelled  # over by at most the episodes in flight
    # The episodes that did run are the first ones of the job's order.
    order = [eid for eid, _ in budgeted.episode_ids()]
    assert sorted(order.index(r.episode_id) for r in records) == list(range(len(records)))
    again = asyncio.run(collect(budgeted, TASKS, student=None, teacher=teacher, chat=chat,
                                backend=bwrap_backend, concurrency=2))
    assert again.episodes_written == 0
    with pytest.raises(ValueError, match="label_budget"):
        job(tmp_path, 1.0, label_budget=-1)


def test_a_stuck_student_ends_its_episode_and_a_repeated_action_that_progresses_does_not(
        tmp_path, chat, bwrap_backend):
    class Mumbler(Looker):  # the same unparseable text every turn: the same error back
        async def act(self, state) -> Action:
            self.calls += 1
            return Action("I am not sure.", None)

    class Counter(Looker):  # the same command every turn, but its output changes
        async def act(self, state) -> Action:
            self.calls += 1
            return Action(render_action(ToolCall("execute_bash", {"command": "echo x >> n; wc -l n"}),
                                        "Counting."), None)

    one = dict(list(TASKS.items())[:1])
    for name, student, turns, reason in (("stuck", Mumbler(), 3, "stuck"),
                                         ("moving", Counter(), 5, "turn_limit")):
        asyncio.run(collect(
            CollectionJob(job_id=name, iteration=0, rule=RolloutRule(beta=0.0, label="none"),
                          task_ids=tuple(one),
                          out_dir=str(tmp_path / name),
                          settings=EpisodeSettings(max_turns=5, stuck_repeats=3)),
            one, student=student, teacher=None, chat=chat, backend=bwrap_backend))
        record = EpisodeSource(tmp_path / name)[0]
        assert (record.outcome.end_reason, len(record.turns), student.calls) == (reason, turns, turns)
        if name == "stuck":  # the parse error, prefixed once, with the format reminder
            error = record.messages[3]["content"]
            assert error.startswith("ERROR: your message contains no tool call.") and error.count("ERROR") == 1
            assert "<function=TOOL_NAME>" in error
    with pytest.raises(ValueError, match="stuck_repeats must be 0 \\(off\\) or >= 2"):
        EpisodeSettings(stuck_repeats=1)


def test_takeover_executes_the_teachers_label_in_place_of_an_unparseable_student_reply(
        tmp_path, chat, bwrap_backend):
    class HalfMumbler(Looker):  # every other reply unparseable, the others a well-formed `ls`
        mumbled = 0

        async def act(self, state) -> Action:
            if self.calls % 2 == 0:
                self.calls += 1
                self.mumbled += 1
                return Action("I am not sure what to", None)
            return await super().act(state)

    tasks = dict(list(TASKS.items())[:3])
    student = HalfMumbler()
    rule = RolloutRule(beta=0.0, takeover_unparseable=True)
    report = asyncio.run(collect(
        CollectionJob(job_id="takeover", iteration=0, rule=rule, task_ids=tuple(tasks),
                      out_dir=str(tmp_path / "takeover"), settings=EpisodeSettings(max_turns=12)),
        tasks, student=student, teacher=ExpertActor(ScriptedExpert()), chat=chat,
        backend=bwrap_backend))
    records = list(EpisodeSource(tmp_path / "takeover"))
    turns = [t for r in records for t in r.turns]
    takeovers = [t for t in turns if t.executor == "teacher"]
    # beta 0: the student is asked at every state; each unparseable reply became a teacher turn
    # (its label executed, the student's latency kept), and no state holds the mumbled text.
    assert student.calls == len(turns) == report.stats["student_calls"]
    assert len(takeovers) == report.stats["student_takeovers"] == student.mumbled > 0
    assert all(t.student_latency_s is not None and t.taken_over and t.parse_ok for t in takeovers)
    for r in records:
        assert not any("I am not sure" in m["content"] for m in r.messages)
        for t in r.turns:
            if t.executor == "teacher":
                assert r.trunk_ids[t.prompt_len:t.executed_end] == t.label_ids
            else:
                assert "ls" in t.executed_text and t.label_text != t.executed_text
    # The teacher's edits, executed on the takeovers, solve every task.
    assert report.resolved == 3 and all(r.outcome.resolved for r in records)
    with pytest.raises(ValueError, match="takeover_unparseable needs the teacher's action"):
        RolloutRule(beta=0.0, label="logprobs", takeover_unparseable=True)
