"""The one async interface the collector calls: a turn's state in, an action out.

Every executor and labeller is an Actor: a model behind token ids (the SGLang pool, one SGLang
server, the local JAX sampler), an OpenAI-compatible chat API, or the scripted expert. An
action carries its text and, when the model works in the student's tokens, the ids exactly as
generated (the student's turns are stored as generated: no re-tokenisation drift), their
sampling log-probs, why it stopped and how long it took.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Protocol, Sequence

from dagger_jax.agent import ChatTokenizer, ToolCall, render_action
from dagger_jax.envs.sandbox.base import Sandbox
from dagger_jax.envs.tasks.task import Task
from dagger_jax.policies.base import AgentState
from dagger_jax.policies.generation import SamplingParams, TokenGenerator


@dataclasses.dataclass(frozen=True)
class TurnState:
    """What an actor may look at. `prompt_ids` is the generation prompt in the student's
    tokens; only privileged actors (the scripted expert) touch `sandbox`."""

    task: Task
    messages: tuple[dict[str, str], ...]
    prompt_ids: tuple[int, ...]
    sandbox: Sandbox | None
    session: str                       # the episode: sticky routing key
    # The turn's sampling seed (from the episode's seed and the turn index): a rerun of a
    # killed episode samples the same tokens. None: the generator picks one.
    seed: int | None = None


@dataclasses.dataclass(frozen=True)
class Action:
    text: str
    token_ids: tuple[int, ...] | None  # student-tokenizer ids as generated; None: text only
    logprobs: tuple[float, ...] = ()
    finish_reason: str = "stop"
    latency_s: float = 0.0
    weight_version: str | None = None


class Actor(Protocol):
    name: str

    async def act(self, state: TurnState) -> Action:
        ...


class TokenActor:
    """A model behind a TokenGenerator that shares the student's tokenizer.

    Samples from the state's prompt ids until end-of-turn; the text is the decoded content
    (the end-of-turn token is not part of it).
    """

    def __init__(self, name: str, generator: TokenGenerator, chat: ChatTokenizer,
                 params: SamplingParams):
        eot = chat.end_of_turn_id
        if eot not in params.stop_token_ids:
            params = dataclasses.replace(params, stop_token_ids=(*params.stop_token_ids, eot))
        self.name, self.generator, self.chat, self.params = name, generator, chat, params

    async def act(self, state: TurnState) -> Action:
        params = self.params
        if params.seed is None and state.seed is not None:
            params = dataclasses.replace(params, seed=state.seed)
        out = await self.generator.generate(state.prompt_ids, params, session=state.session)
        content = out.output_ids[:-1] if out.output_ids[-1:] == (self.chat.end_of_turn_id,) else out.output_ids
        return Action(text=self.chat.decode(content), token_ids=out.output_ids,
                      logprobs=out.logprobs, finish_reason=out.finish_reason,
                      latency_s=out.latency_s, weight_version=out.weight_version)

    async def score(self, state: TurnState, token_ids: Sequence[int]) -> tuple[float, ...]:
        """This model's log-probs of token_ids after the state's prompt (on-policy distillation)."""
        return await self.generator.score(state.prompt_ids, token_ids, session=state.session)


class ExpertActor:
    """The scripted expert behind the async interface: it reads the sandbox (blocking calls),
    so it runs in a worker thread while the student's request is in flight."""

    def __init__(self, expert):
        self.expert = expert
        self.name = expert.name

    async def act(self, state: TurnState) -> Action:
        if state.sandbox is None:
            raise ValueError(f"the {self.name} actor reads the sandbox; the state has none")
        start = time.perf_counter()
        text = await asyncio.to_thread(
            self.expert.act, AgentState(state.task, state.messages, state.sandbox))
        return Action(text=text, token_ids=None, latency_s=time.perf_counter() - start)


class NoopActor:
    """Finishes at once without changing anything: the floor every task must fail at."""

    name = "noop"

    async def act(self, state: TurnState) -> Action:
        return Action(text=render_action(ToolCall("finish", {}), "Nothing to change."),
                      token_ids=None)
