"""Episode records built from real conversations, for the data and tools tests.

A small ChatML BPE tokenizer and the agent's ConversationEncoder play the collector: each
turn's prompt is the encoder's generation_prompt_ids(), a student turn is appended as ids
"sampled" by the student (deliberately not the canonical tokenization of its text, as a model
may produce, so a test can tell kept ids from re-tokenised ones), a teacher-executed turn as
the teacher's label ids, and each observation as a tool message.
"""

from __future__ import annotations

import random
from collections.abc import Collection

from dagger_jax.agent import ChatTokenizer, ToolCall, initial_messages, render_action
from dagger_jax.data.records import EpisodeRecord, Outcome, TurnRecord

COMMANDS = ("ls", "cat setup.py", "grep -rn parse src", "python -m pytest -q tests", "git diff")
THOUGHTS = ("Let me look around.", "Check the failing test.", "", "Now run the tests again.")


def sampled_ids(chat: ChatTokenizer, text: str, rng: random.Random) -> list[int]:
    """Ids decoding to text that a sampler could emit: text tokenized in random pieces."""
    ids, start = [], 0
    while start < len(text):
        end = min(len(text), start + rng.randint(1, 6))
        ids += chat.encode(text[start:end])
        start = end
    return [*ids, chat.end_of_turn_id]


def make_episode(
    chat: ChatTokenizer,
    episode_id: str,
    executors: str,
    *,
    failed: Collection[int] = (),
    iteration: int = 0,
    beta: float = 0.5,
    seed: int = 0,
    full_prompt: bool = False,
    resolved: bool = False,
    end_reason: str = "finish",
    observation_chars: int = 40,
) -> tuple[EpisodeRecord, list[list[int]]]:
    """An episode whose turn i is executed by executors[i] ('s' student, 't' teacher, 'a' the
    student agreeing with the teacher: it executed exactly the label's ids).

    Turns in `failed` (student turns) have no label, as when the teacher call failed.
    Returns the record and each turn's generation_prompt_ids() as the encoder gave them.
    """
    rng = random.Random(f"{episode_id}/{seed}")
    if full_prompt:
        messages = initial_messages(f"Fix the bug in episode {episode_id}.")
    else:
        messages = [
            {"role": "system", "content": "You fix bugs with tools."},
            {"role": "user", "content": f"Fix the bug of {episode_id}."},
        ]
    encoder = chat.conversation(messages)
    turns, prompts = [], []
    for index, who in enumerate(executors):
        executor = {"s": "student", "a": "student", "t": "teacher"}[who]
        prompt = encoder.generation_prompt_ids()
        prompts.append(prompt)
        teacher_text = render_action(
            ToolCall("execute_bash", {"command": f"cat src/module_{index}.py"}),
            rng.choice(THOUGHTS),
        )
        label_ok = index not in failed
        if who in "ta":
            assert label_ok, "a turn that executed its label has the label"
            executed = chat.assistant_turn_ids(teacher_text)
        else:
            student_text = render_action(
                ToolCall("execute_bash", {"command": rng.choice(COMMANDS)}), rng.choice(THOUGHTS)
            )
            executed = sampled_ids(chat, student_text, rng)
        executed_text = encoder.append_generated(executed)
        start, end = encoder.assistant_spans[-1]
        assert start == len(prompt) and encoder.ids[start:end] == executed
        turns.append(
            TurnRecord(
                index=index,
                executor=executor,
                prompt_len=start,
                executed_end=end,
                executed_text=executed_text,
                label_text=teacher_text if label_ok else None,
                label_ids=chat.assistant_turn_ids(teacher_text) if label_ok else [],
                sample_logprobs=[-0.5] * len(executed) if executor == "student" else [],
                student_latency_s=0.2 if executor == "student" else None,
                teacher_latency_s=0.3,
                parse_ok=True,
            )
        )
        observation = "".join(rng.choice("abcdef \n") for _ in range(observation_chars))
        encoder.append({"role": "tool", "content": f"exit code 0\n{observation}"})
    record = EpisodeRecord(
        episode_id=episode_id,
        task_id=episode_id.rsplit("/", 1)[0],
        iteration=iteration,
        beta=beta,
        seed=seed,
        student_version=f"step_{iteration * 100}",
        teacher_id="scripted-expert",
        trunk_ids=encoder.ids,
        messages=[dict(m) for m in encoder.messages],
        turns=turns,
        outcome=Outcome(
            resolved=resolved,
            end_reason=end_reason,
            fail_to_pass_passed=1 if resolved else 0,
            fail_to_pass_total=1,
            pass_to_pass_passed=3,
            pass_to_pass_total=3,
            patch="diff --git a/x b/x\n" if resolved else "",
        ),
        timings={"episode_s": 1.5, "sandbox_s": 0.4},
        metadata={"job_id": "job0", "recipe": "dagger", "split": "train"},
    )
    record.validate()
    return record, prompts


def episode_batch(
    chat: ChatTokenizer, count: int, *, iteration: int = 0, seed: int = 0, prefix: str = "task"
) -> list[EpisodeRecord]:
    """count varied episodes (3-7 turns, mixed executors, an occasional failed label)."""
    rng = random.Random(f"{prefix}/{iteration}/{seed}")
    out = []
    for k in range(count):
        executors = "".join(rng.choice("st") for _ in range(rng.randint(3, 7)))
        failed = [i for i, who in enumerate(executors) if who == "s" and rng.random() < 0.15]
        record, _ = make_episode(
            chat,
            f"job{iteration}/{prefix}_{k}/0",
            executors,
            failed=failed,
            iteration=iteration,
            seed=seed,
            resolved=rng.random() < 0.4,
            end_reason=rng.choice(["finish", "finish", "turn_limit"]),
        )
        out.append(record)
    return out
