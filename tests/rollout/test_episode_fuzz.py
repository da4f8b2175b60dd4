"""The episode boundary under fuzz: thousands of random and adversarial action texts, through
both sandbox backends. Whatever a text does to the parser, the tools, the tokenizer or the
sandbox, it is the agent's business: the job finishes, every episode is written with an
outcome of the agent's, and none hits a defect of ours (internal_error)."""

from __future__ import annotations

import asyncio
import random

import pytest

from dagger_jax.data.shards import EpisodeSource
from dagger_jax.envs.tasks.synthetic import generate_tasks
from dagger_jax.policies.actors import Action
from dagger_jax.rollout.collector import CollectionJob, collect
from dagger_jax.rollout.mixed_episode import EpisodeSettings
from dagger_jax.rollout.mixing import RolloutRule

pytestmark = pytest.mark.slow

AGENT_ENDS = {"finish", "turn_limit", "context_limit", "stuck", "policy_error"}

# Values no tool expects: types it does not take, sizes and characters that break naive code.
HOSTILE_VALUES = [
    "", " ", "\n", "0", "-1", "-0", "1e9", "3.5", "0x10", "NaN", "inf", "true", "null", "[]",
    "{}", "[1]", "[1, 2, 3]", "[0, -5]", "[2, 1]", "[true, false]", '["1", "2"]', "[1.5, 2]",
    "9" * 19, "9" * 5000, "-" + "9" * 5000, "[1, " + "9" * 5000 + "]", "[" * 100_000,
    "٣", "１２", "\x00", "a\x00b", "/testbed/\x00x", "\ud800", "x\udfffy", "\udcff",
    "\x1b[31m\x07\x08\r", "\u202e\u2066", "/" * 5000, "/etc/passwd", "../../../../etc/shadow",
    "/proc/self/mem", "/dev/zero", "/testbed", "/testbed/" + "a/" * 300 + "f",
    "x" * 200_000, "</parameter>", "</function>", "<function=finish>",
    "view", "create", "str_replace", "insert", "undo_edit", " view ",
]
TOOLS = {
    "execute_bash": ["command"],
    "str_replace_editor": ["command", "path", "file_text", "old_str", "new_str", "insert_line",
                           "view_range"],
    "finish": ["message"],
    "no_such_tool": ["x"],
}
CHEAP_COMMANDS = ["true", "x" * 200_000, "echo " + "y" * 70_000, "printf '\\x00\\xff\\xfe'", "head -c 3000 /dev/urandom",
                  "echo $'\\xed\\xa0\\x80'", "kill -9 -1", "ulimit -a", "cat /testbed/*.py | head"]


def _call(name: str, params: dict[str, str]) -> str:
    """A call in the action format, written by hand: reserved tags and all may go in."""
    body = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in params.items())
    return f"<function={name}>\n{body}</function>"


def hostile_text(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.15:  # bytes of any kind, as a model's detokenizer might hand them over
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
        return raw.decode("utf-8", rng.choice(["surrogateescape", "replace", "ignore"]))
    if kind < 0.25:  # random code points, lone surrogates included
        return "".join(chr(rng.randrange(0x110000)) for _ in range(rng.randrange(1, 200)))
    if kind < 0.35:  # the format broken in its own ways
        return rng.choice(["<function=", "<function=execute_bash>", "</function>" * 3,
                           "<function=execute_bash>\n<parameter=command>\nls\n",
                           "<function=str_replace_editor><parameter=path>/x</function>",
                           "<function=a><function=b></function></function>"])
    name = rng.choice(sorted(TOOLS))
    keys = TOOLS[name]
    params = {}
    for key in rng.sample(keys, rng.randrange(0, len(keys) + 1)):
        params[key] = rng.choice(HOSTILE_VALUES)
    if name == "execute_bash" and rng.random() < 0.5:
        params["command"] = rng.choice(CHEAP_COMMANDS + HOSTILE_VALUES[:20])
    if name == "str_replace_editor" and rng.random() < 0.6:
        params["command"] = rng.choice(["view", "create", "str_replace", "insert"])
        params.setdefault("path", rng.choice(["/testbed/new.txt", "/testbed", "relative.py",
                                              "/testbed/" + "\udcff.py"]))
    if name == "finish" and rng.random() < 0.97:  # keep most episodes going
        name = "finishh"
    thought = rng.choice(["", "Thinking.", "\ud83d", "\x00" * 3, "<think>" * 50])
    return f"{thought}\n{_call(name, params)}"


class Fuzzer:
    name = "fuzzer"

    def __init__(self, seed: int):
        self.seed = seed
        self.rngs: dict[str, random.Random] = {}  # per episode: the texts do not depend on timing
        self.actions = 0

    async def act(self, state) -> Action:
        self.actions += 1
        rng = self.rngs.setdefault(state.session, random.Random(f"{self.seed}:{state.session}"))
        await asyncio.sleep(0)
        return Action(text=hostile_text(rng), token_ids=None)


@pytest.mark.parametrize("backend_name, episodes", [("bwrap", 16), ("docker", 10)])
def test_hostile_actions_stay_inside_their_episodes(backend_name, episodes, request, tmp_path,
                                                    chat):
    backend = request.getfixturevalue(f"{backend_name}_backend")
    tasks = {t.instance_id: t for t in generate_tasks(episodes, seed=11)}
    student = Fuzzer(seed=episodes)
    job = CollectionJob(job_id=f"fuzz-{backend_name}", iteration=0,
                        rule=RolloutRule(beta=0.0, label="none"), task_ids=tuple(tasks),
                        out_dir=str(tmp_path / "fuzz"),
                        settings=EpisodeSettings(max_turns=60, context_budget=1 << 30,
                                                 max_new_tokens=1, max_observation_chars=2000,
                                                 grading_timeout_s=60))
    report = asyncio.run(collect(job, tasks, student=student, teacher=None, chat=chat,
                                 backend=backend, concurrency=4))
    assert report.episodes_written == episodes, report
    records = [EpisodeSource(tmp_path / "fuzz")[i] for i in range(episodes)]
    ends = {r.outcome.end_reason for r in records}
    assert ends <= AGENT_ENDS, [(r.episode_id, r.outcome.error) for r in records
                                if r.outcome.end_reason not in AGENT_ENDS]
    assert report.stats.get("internal_errors", 0) == 0
    assert sum(len(r.turns) for r in records) >= 30 * episodes  # most texts were acted on
    print(f"{backend_name}: {student.actions} hostile actions, end reasons "
          f"{sorted((e, sum(r.outcome.end_reason == e for r in records)) for e in ends)}")
