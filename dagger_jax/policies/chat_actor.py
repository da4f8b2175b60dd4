"""An API teacher behind the Actor interface: messages in, text out (no token ids).

The API's model has its own tokenizer, so its text is re-tokenised with the student's when
it becomes a label (the collector does that); its own token counts are not ours.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from dagger_jax.policies.actors import Action, TurnState
from dagger_jax.policies.generation import SamplingParams
from dagger_jax.policies.openai_client import OpenAIChatClient


class APIChatActor:
    def __init__(self, client: OpenAIChatClient, params: SamplingParams, name: str | None = None):
        self.client, self.params = client, params
        self.name = name or client.name

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], params: SamplingParams) -> "APIChatActor":
        """spec: base_url, model, and optionally api_key_env (the variable holding the key:
        keys never travel inside job specs)."""
        key_env = spec.get("api_key_env")
        api_key = os.environ.get(key_env) if key_env else None
        if key_env and not api_key:
            raise ValueError(f"teacher spec: environment variable {key_env} (api_key_env) is not set")
        return cls(OpenAIChatClient(spec["base_url"], spec["model"], api_key), params, spec.get("name"))

    async def act(self, state: TurnState) -> Action:
        out = await self.client.chat(list(state.messages), temperature=self.params.temperature,
                                     top_p=self.params.top_p, max_tokens=max(self.params.max_new_tokens, 1),
                                     stop=self.params.stop, seed=self.params.seed)
        finish = out.finish_reason if out.finish_reason in ("stop", "length") else "stop"
        return Action(text=out.text, token_ids=None, finish_reason=finish, latency_s=out.latency_s)

    async def aclose(self) -> None:
        await self.client.aclose()
